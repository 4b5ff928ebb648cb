"""The files of one experiment folder, weights/<exp>/, and the local CV computed from them.

config.json  resolved config            fold<k>.pth       best epoch: state dict + config + score
oof.csv      id, fold, label, p0..p9     fold<k>.last.pth  end of the last finished epoch (for --resume)
metrics.csv  one row per fold and epoch  cv.json           per-fold and overall local CV
schedule.csv learning rate of every optimizer step, as applied
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.checkpoint import write_csv, write_json
from pipeline.errors import PipelineError
from pipeline.metrics import scores

# Fields that define what an experiment trains; --resume refuses a run that changes one of them.
RECIPE = ["model", "pretrained_path", "img_size", "epochs", "batch_size", "lr", "weight_decay",
          "label_smoothing", "warmup_epochs", "rotate", "scale", "shift", "seed"]


def prob_columns(num_classes: int) -> list[str]:
    return [f"p{c}" for c in range(num_classes)]


def read_table(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


def done_folds(exp_dir: Path) -> list[int]:
    """Folds whose OOF rows are written: training of those folds finished."""
    oof = read_table(exp_dir / "oof.csv")
    return sorted(int(k) for k in oof["fold"].unique()) if oof is not None else []


def prepare(exp_dir: Path, config: dict, folds: list[int], resume: bool, overwrite: bool) -> list[int]:
    """Apply the no-silent-overwrite policy; return the folds still to train."""
    saved = json.loads((exp_dir / "config.json").read_text()) if (exp_dir / "config.json").is_file() else None
    artifacts = sorted(p.name for p in exp_dir.glob("*") if p.name != "config.json") if exp_dir.is_dir() else []
    if not artifacts and not resume:
        return folds
    changed = [f for f in RECIPE + ["train_hash"] if saved is not None and saved.get(f) != config.get(f)]
    if overwrite:
        if len(folds) == config["n_splits"]:
            shutil.rmtree(exp_dir)
            return folds
        if changed:
            raise PipelineError(f"--overwrite: {exp_dir}'s other folds were trained with {changed[0]}="
                                f"{saved.get(changed[0])!r}, this run has {config.get(changed[0])!r}; one experiment "
                                "holds one recipe: use --fold all, or another --exp")
        for k in folds:
            forget_fold(exp_dir, k)
        return folds
    if not resume:
        raise PipelineError(f"{exp_dir}: experiment exists ({', '.join(artifacts[:4])}...); "
                            "add --resume to continue it, --overwrite to replace it, or choose another --exp")
    if saved is None:
        raise PipelineError(f"--resume: {exp_dir} has no config.json to resume from")
    if changed:
        f = changed[0]
        raise PipelineError(f"--resume: {exp_dir} was trained with {f}={saved.get(f)!r}, this run has "
                            f"{config.get(f)!r}; resume with the same settings or use --overwrite / another --exp")
    finished = done_folds(exp_dir)
    for k in finished:  # a kill between writing the OOF and removing the epoch state leaves a stale one
        (exp_dir / f"fold{k}.last.pth").unlink(missing_ok=True)
    if finished:
        print(f"resume: folds {', '.join(map(str, finished))} already finished, kept as they are")
    return [k for k in folds if k not in finished]


def forget_fold(exp_dir: Path, k: int) -> None:
    """Remove fold k's checkpoints and rows, leaving the other folds intact."""
    for name in (f"fold{k}.pth", f"fold{k}.last.pth"):
        (exp_dir / name).unlink(missing_ok=True)
    for name in ("oof.csv", "metrics.csv", "schedule.csv", "oof_tta.csv"):
        table = read_table(exp_dir / name)
        if table is not None:
            write_csv(table[table["fold"] != k], exp_dir / name)


def append_metrics(exp_dir: Path, row: dict, lrs: list[float]) -> None:
    """Add one epoch's metrics row and its per-step learning rates (schedule.csv).

    Rows of the same fold from this epoch on are replaced first: a resumed epoch is written once.
    """
    fold, epoch = row["fold"], row["epoch"]
    first_step = 0
    schedule = read_table(exp_dir / "schedule.csv")
    if schedule is not None:
        schedule = schedule[~((schedule["fold"] == fold) & (schedule["epoch"] >= epoch))]
        first_step = int((schedule["fold"] == fold).sum())
    steps = pd.DataFrame({"fold": fold, "epoch": epoch, "step": np.arange(first_step, first_step + len(lrs)), "lr": lrs})
    _replace_rows(exp_dir / "metrics.csv", pd.DataFrame([row]), fold, epoch)
    _replace_rows(exp_dir / "schedule.csv", steps, fold, epoch)


def _replace_rows(path: Path, new: pd.DataFrame, fold: int, epoch: int) -> None:
    table = read_table(path)
    if table is not None:
        keep = ~((table["fold"] == fold) & (table["epoch"] >= epoch))
        new = pd.concat([table[keep], new], ignore_index=True)
    write_csv(new, path)


def write_oof(exp_dir: Path, ids: np.ndarray, k: int, labels: np.ndarray, probs: np.ndarray) -> None:
    """Replace fold k's rows of oof.csv with the best epoch's validation probabilities."""
    rows = pd.DataFrame(probs, columns=prob_columns(probs.shape[1]))
    rows.insert(0, "label", labels)
    rows.insert(0, "fold", k)
    rows.insert(0, "id", ids)
    old = read_table(exp_dir / "oof.csv")
    if old is not None:
        rows = pd.concat([old[old["fold"] != k], rows], ignore_index=True)
    write_csv(rows.sort_values("id", kind="stable").reset_index(drop=True), exp_dir / "oof.csv")


def cv_summary(oof: pd.DataFrame, n_splits: int) -> dict:
    """Per-fold and overall accuracy / log loss from OOF rows (pure)."""
    probs = oof[[c for c in oof.columns if c.startswith("p") and c[1:].isdigit()]].to_numpy()
    labels, fold = oof["label"].to_numpy(), oof["fold"].to_numpy()
    per_fold = {int(k): scores(probs[fold == k], labels[fold == k]) for k in sorted(np.unique(fold))}
    accs = np.array([s["accuracy"] for s in per_fold.values()])
    return {
        "folds_present": list(per_fold), "n_splits": n_splits, "complete": len(per_fold) == n_splits,
        "per_fold": per_fold, "oof": scores(probs, labels), "rows": int(len(oof)),
        "fold_accuracy_mean": float(accs.mean()), "fold_accuracy_std": float(accs.std()),
    }


def write_cv(exp_dir: Path, n_splits: int, extra: dict) -> dict:
    cv = cv_summary(pd.read_csv(exp_dir / "oof.csv"), n_splits) | extra
    write_json(cv, exp_dir / "cv.json")
    return cv


def format_cv(cv: dict, name: str) -> str:
    lines = [f"fold {k}: accuracy {s['accuracy']:.5f}  log loss {s['log_loss']:.4f}" for k, s in cv["per_fold"].items()]
    present = "all folds" if cv["complete"] else f"folds {', '.join(map(str, cv['folds_present']))} of {cv['n_splits']} only"
    lines.append(f"local CV ({name}, {present}, {cv['rows']:,} OOF rows): accuracy {cv['oof']['accuracy']:.5f} "
                 f"(fold mean {cv['fold_accuracy_mean']:.5f} +- {cv['fold_accuracy_std']:.5f})  "
                 f"log loss {cv['oof']['log_loss']:.4f}")
    return "\n".join(lines)
