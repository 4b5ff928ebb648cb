"""Offline inference: k fold models (pretrained=False) averaged, optional TTA, optional blend of experiments.

    python -m pipeline.infer --tta                          # submissions/digit_cnn.csv
    python -m pipeline.infer --exp a b --ensemble learned   # blend two experiments, weights fitted on OOF
    python -m pipeline.infer --exp a b c --ensemble greedy  # Caruana's forward selection on OOF
    python -m pipeline.infer --data /kaggle/input/digit-recognizer --weights-dir /kaggle/input/my-weights
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import data
from pipeline.checkpoint import check_fold_config, load_checkpoint, read_json, write_csv, write_json, write_npy
from pipeline.config import Config, flag, parse_config
from pipeline.engine import DataSpec, on_device, predict, resolve_device
from pipeline.ensemble import blend, combine, honest_scores, rank_average
from pipeline.errors import PipelineError, main_guard
from pipeline.experiment import RECIPE, cv_summary, experiment_dir, oof_arrays, prob_columns, read_table
from pipeline.tasks import Task
from pipeline.inputs import input_kind, model_form
from pipeline.models import build_model

FLAGS = ["data", "exp", "weights_dir", "tta", "tta_preset", "ensemble", "out", "device", "batch_size", "cache_dir",
         "precision", "with_full"]


def run(cfg: Config) -> pd.DataFrame:
    exps = cfg.exp or (default_experiment(Path(cfg.weights_dir), cfg.model),)
    out = Path(cfg.out or f"submissions/{'+'.join(exps)}{'_' + cfg.ensemble if len(exps) > 1 else ''}.csv")
    check_writable(out, "--out")
    exp_dirs = [experiment_dir(cfg.weights_dir, e) for e in exps]
    desc, spec = experiment_data(exp_dirs[0])
    for d in exp_dirs[1:]:
        if experiment_data(d)[1].task != spec.task:
            raise PipelineError(f"--exp: {d.name} was trained for another task than {exp_dirs[0].name} "
                                f"({experiment_data(d)[1].task.describe()} vs {spec.task.describe()})")
    if len(exps) == 1 and cfg.ensemble != "mean":
        print(f"notice: --ensemble {cfg.ensemble}: one experiment ({exps[0]}) has nothing to blend; "
              "the flag is ignored", file=sys.stderr)
    # fitted on OOF before any inference, so a refused blend (other folds files, rank without AUC) costs nothing
    weights = ensemble_weights(Path(cfg.weights_dir), exps, cfg.ensemble) if len(exps) > 1 else None
    src = data.resolve(cfg.data)
    test, sample = data.read_test(src, desc, spec.img_size, cfg.cache_dir)
    submission_shape = spec.task.submission_mode(sample)  # refuse a sample this task cannot fill, before inference
    check_replaceable(out, sample, src)
    before = previous_settings(out)
    device = resolve_device(cfg.device)
    images = on_device(test, device)  # (N, C, H, W) uint8, on the GPU when it fits
    preset = cfg.tta_preset or desc.tta_preset
    if cfg.tta:
        input_kind(desc.kind).tta_check(preset)  # a kind without TTA refuses it in one line
    test_probs = np.stack([predict_experiment(d, images, cfg, preset, device) for d in exp_dirs])
    if weights is None:
        final = test_probs[0]
    else:
        final = rank_average(test_probs) if cfg.ensemble == "rank" else blend(test_probs, weights)
    submission = spec.task.submission(final, sample)
    write_csv(submission, out)
    record_settings(out, submission_settings(cfg, exps, preset), before)
    print(f"wrote {out}: {len(submission):,} rows, {submission_shape[0]} in {', '.join(submission_shape[1][:3])}"
          f"{', ...' if len(submission_shape[1]) > 3 else ''}; {prediction_summary(final, spec.task)}")
    return submission


def prediction_summary(preds: np.ndarray, task: Task) -> str:
    if task.kind == "multiclass":
        return f"predicted class counts {np.bincount(preds.argmax(1), minlength=preds.shape[1]).tolist()}"
    if task.kind == "multilabel":
        return f"labels per row {(preds >= task.threshold).sum(1).mean():.2f} on average"
    return f"predictions {preds.min():.4g}..{preds.max():.4g} (mean {preds.mean():.4g})"


def experiment_data(exp_dir: Path) -> tuple[data.Description, DataSpec]:
    """What an experiment was trained on (its saved data description) and how its models see images."""
    config = experiment_config(exp_dir)
    where = str(exp_dir / "config.json")
    spec = DataSpec.from_config(config, where)
    if "data" in config:
        return data.Description.from_dict(config["data"], where), spec
    return data.Description("pixels", spec.task, side=28, channels=1), spec  # trained before layouts existed


def default_experiment(weights_dir: Path, model: str) -> str:
    found = sorted(p.parent.name for p in weights_dir.glob("*/config.json"))
    if model in found or len(found) == 1:
        return model if model in found else found[0]
    if not found:
        raise PipelineError(f"{weights_dir}/: no trained experiment; train one with: python -m pipeline.train --fold all")
    raise PipelineError(f"--exp: {weights_dir}/ holds several experiments ({', '.join(found)}); name one or more")


def check_writable(path: Path, what: str) -> None:
    """Fail before any work when `path` cannot be written: a folder in its place, or an unwritable parent."""
    if path.is_dir():
        raise PipelineError(f"{what}: {path} is a directory; give a file name such as {path / 'submission.csv'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK):
        raise PipelineError(f"{what}: cannot write into {path.parent}/ (permission denied); choose another path")


def check_replaceable(out: Path, sample: pd.DataFrame, src: data.Source) -> None:
    """An existing --out is replaced only when it is an earlier submission (the sample's header), never another file,
    and nothing is written inside the competition's data (its sample_submission.csv has the same header)."""
    where = Path(os.path.realpath(out.parent)) / out.name  # realpath, unlike resolve, never raises on a link loop
    if src.path.is_dir() and where.is_relative_to(os.path.realpath(src.path)):
        raise PipelineError(f"--out: {out} is inside the competition data {src.path}/, which is read-only input; "
                            "write the submission elsewhere (default: submissions/)")
    if not out.is_file():
        return
    try:
        header = [str(c) for c in pd.read_csv(out, nrows=0).columns]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        header = None
    if header != [str(c) for c in sample.columns]:
        raise PipelineError(f"--out: {out} exists and is not a submission of this competition (header "
                            f"{','.join(map(str, sample.columns))}); refusing to replace it: choose another --out")


def settings_path(out: Path) -> Path:
    """Where the settings that made a submission are kept: submissions/a.csv -> submissions/a.csv.json."""
    return out.with_name(f"{out.name}.json")


def submission_settings(cfg: Config, exps: tuple[str, ...], preset: str) -> dict:
    """What decides a submission's predictions, beside the experiments' weights."""
    return {"written_by": "pipeline.infer", "exp": list(exps), "ensemble": cfg.ensemble if len(exps) > 1 else None,
            "tta": preset if cfg.tta else None, "with_full": cfg.with_full}


def previous_settings(out: Path) -> dict | None:
    """The settings recorded beside an existing --out (None: no earlier submission, or one made before they were
    recorded); a file in the record's place that infer did not write is never replaced."""
    path = settings_path(out)
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        saved = None
    if not isinstance(saved, dict) or saved.get("written_by") != "pipeline.infer":
        raise PipelineError(f"--out: {path} exists and is not the settings record infer writes beside {out.name}; "
                            "refusing to replace it: move it or choose another --out")
    return saved if out.is_file() else None


def describe_settings(settings: dict) -> str:
    """'exp a + b, learned blend, TTA digits, with full.pth' (pure)."""
    parts = [f"exp {' + '.join(map(str, settings.get('exp') or ['?']))}"]
    parts += [f"{settings['ensemble']} blend"] if settings.get("ensemble") else []
    parts += [f"TTA {settings['tta']}" if settings.get("tta") else "no TTA"]
    parts += ["with full.pth"] if settings.get("with_full") else []
    return ", ".join(parts)


def record_settings(out: Path, settings: dict, before: dict | None) -> None:
    """Save the settings beside the submission; replacing one made otherwise is said, old vs new."""
    write_json(settings, settings_path(out))
    if before is not None and describe_settings(before) != describe_settings(settings):
        print(f"notice: replaced {out}, made with {describe_settings(before)}, by one made with "
              f"{describe_settings(settings)}", file=sys.stderr)


def experiment_config(exp_dir: Path) -> dict:
    """config.json of a trained experiment, checked for what inference and blending rely on."""
    if not (exp_dir / "config.json").exists():
        found = sorted(p.parent.name for p in exp_dir.parent.glob("*/config.json"))
        raise PipelineError(f"{exp_dir}: not a trained experiment (no config.json); "
                            + (f"experiments in {exp_dir.parent}/: {', '.join(found)}" if found else "none trained yet"))
    config = read_json(exp_dir / "config.json", "experiment config")
    n_splits = config.get("n_splits")
    if not isinstance(n_splits, int) or isinstance(n_splits, bool) or not 2 <= n_splits <= 20:
        raise PipelineError(f"{exp_dir / 'config.json'}: n_splits must be 2..20, found {n_splits!r}; "
                            "retrain the experiment with --overwrite")
    return config


def fold_checkpoints(exp_dir: Path, cfg: Config | None = None) -> list[Path]:
    """The k fold checkpoints of an experiment, refusing a partial set (cfg: the --data and --weights-dir in use)."""
    config = experiment_config(exp_dir)
    n_splits, suffix = config["n_splits"], model_suffix(config)
    paths = [exp_dir / f"fold{k}{suffix}" for k in range(n_splits)]
    missing = [k for k, p in enumerate(paths) if not p.is_file()]
    if missing:
        oof = read_table(exp_dir / "oof.csv")
        finished = set(oof["fold"].astype(int)) if oof is not None and "fold" in oof else set()
        if finished.isdisjoint(missing):  # unfinished folds (an interrupted run): --resume trains them
            how = train_command(exp_dir, cfg or Config(), "--fold all --resume")
        else:  # finished folds whose weights are gone: --resume would keep them as done, so each is retrained
            how = " && ".join(train_command(exp_dir, cfg or Config(), f"--fold {k} --overwrite") for k in missing)
        raise PipelineError(f"{exp_dir}: missing fold weights {', '.join(paths[k].name for k in missing)} of "
                            f"{n_splits}; train them with: {how}")
    return paths


def model_suffix(config: dict) -> str:
    """A fold's model file: fold<k>.pth (torch), fold<k>.txt (a boosting library's text model)."""
    from pipeline.learners.boosted import SUFFIX

    return SUFFIX if model_form(str(config.get("model", ""))) == "gbm" else ".pth"


def fold_input(path: Path, rows: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """Rows as the fold at `path` sees them: its own saved preprocessing applied (tables), or as they are."""
    kind = spec.input_kind
    if not kind.has_preprocessing:
        return rows
    prep = path.with_name(path.name.split(".")[0] + ".prep.json")
    if not prep.is_file():
        raise PipelineError(f"{prep}: missing (the preprocessing {path.name} was trained with); retrain with --overwrite")
    from pipeline import preprocess

    return kind.apply_fold(preprocess.load(prep), rows)


def fold_predictions(path: Path, rows: torch.Tensor, cfg: Config, config: dict, preset: str, device: torch.device,
                     desc: str) -> np.ndarray:
    """One fold's predictions (N, outputs) for raw rows, by its learner, through its own preprocessing."""
    spec = DataSpec.from_config(config, str(path.parent / "config.json"))
    if model_form(str(config.get("model", ""))) == "gbm":
        from pipeline.learners import boosted

        return boosted.predict_fold(path, rows.cpu().numpy(), spec, str(config["model"]))
    model, spec = load_fold_model(path, device, config)
    if cfg.tta:
        from pipeline.tta import with_tta  # ttach is needed only with --tta
        model = with_tta(model, preset)
    return predict(model, fold_input(path, rows, spec), cfg.batch_size or 1024, spec, device, desc=desc,
                   precision=cfg.precision)


def train_command(exp_dir: Path, cfg: Config, what: str) -> str:
    """The train command that adds to an experiment (`what`: --fold full, --fold all --resume): its data, folds and
    recipe as saved in config.json, since train refuses to add to an experiment with another recipe."""
    config, defaults = experiment_config(exp_dir), Config()
    words = ["python -m pipeline.train --exp", shlex.quote(exp_dir.name), what]
    where = {"data": cfg.data, "weights_dir": cfg.weights_dir, "folds_path": config.get("folds_path")}
    for name in ["pretrained", *where, *RECIPE]:
        value = where[name] if name in where else config.get(name)
        if value is None or value == getattr(defaults, name):
            continue
        words += [flag(name)] if value is True else [flag(name), shlex.quote(str(value))]
    return " ".join(words)


def load_fold_model(path: Path, device: torch.device, experiment: dict | None = None) -> tuple[torch.nn.Module, DataSpec]:
    """Rebuild the fold's model from the config stored in its checkpoint (pretrained=False).

    `experiment`: the experiment's config.json; a checkpoint trained on other folds or for other outputs is refused.
    """
    ckpt = load_checkpoint(path)
    saved = check_fold_config(ckpt, path)
    experiment = experiment or saved
    if saved.get("folds_hash") != experiment.get("folds_hash"):
        raise PipelineError(f"{path}: trained on folds file {saved.get('folds_hash')!r}, the experiment's config.json "
                            f"says {experiment.get('folds_hash')!r}; its folds mix two fold assignments: retrain with "
                            "--overwrite --fold all")
    for key, default in (("num_classes", 10), ("in_chans", 1)):
        want = experiment.get(key, default)
        if saved.get(key) != want:
            raise PipelineError(f"{path}: checkpoint has {key}={saved.get(key)!r}, the data needs {want}")
    spec = DataSpec.from_config(saved, str(path))
    n_features = fold_input(path, torch.zeros(0, len(spec.features.get("names", []))), spec).shape[1] \
        if spec.input_kind.has_preprocessing else 0  # the width the fold's preprocessing gives
    model = build_model(saved["model"], saved["num_classes"], saved["in_chans"], saved["img_size"], pretrained=False,
                        n_features=n_features, hidden=str(saved.get("hidden", "")))
    model = spec.task.output_head(model)  # regression: its mean and std come with the weights
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        detail = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise PipelineError(f"{path}: weights do not fit {saved['model']} ({detail[min(1, len(detail) - 1)][:120]})") from None
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model.to(device).eval(), spec


def predict_experiment(exp_dir: Path, images: torch.Tensor, cfg: Config, preset: str, device: torch.device) -> np.ndarray:
    """Mean of the k fold models' test predictions (N, C); saved as weights/<exp>/test_probs.npy."""
    paths = fold_checkpoints(exp_dir, cfg)
    config = experiment_config(exp_dir)
    if cfg.with_full:
        if not (exp_dir / "full.pth").is_file():
            raise PipelineError(f"--with-full: {exp_dir} has no full.pth; train it with: "
                                f"{train_command(exp_dir, cfg, '--fold full')}")
        paths = [*paths, exp_dir / "full.pth"]
    total = None
    for k, path in enumerate(paths):
        probs = fold_predictions(path, images, cfg, config, preset, device,
                                 f"{exp_dir.name} fold {k}{' tta' if cfg.tta else ''}")
        if not np.isfinite(probs).all():
            raise PipelineError(f"{path}: the model predicts NaN or infinite probabilities; "
                                "this fold is unusable: retrain it with --overwrite")
        total = probs if total is None else total + probs
    mean = total / len(paths)
    where = writable_dir(exp_dir, Path(cfg.out).parent if cfg.out else Path("submissions"))
    prefix = "" if where == exp_dir else f"{exp_dir.name}_"
    write_npy(mean, where / f"{prefix}test_probs.npy")
    write_json({"tta": cfg.tta, "tta_preset": preset if cfg.tta else None, "folds": len(paths),
                "rows": len(mean)}, where / f"{prefix}test_probs.json")
    print(f"{exp_dir.name}: {len(paths) - cfg.with_full} folds{' + the full-data model' if cfg.with_full else ''}"
          f"{' with TTA (' + preset + ')' if cfg.tta else ''} -> "
          f"{where / (prefix + 'test_probs.npy')}")
    return mean


def writable_dir(preferred: Path, fallback: Path) -> Path:
    """The experiment folder, or the output folder when weights are read-only (a Kaggle input dataset)."""
    if os.access(preferred, os.W_OK):
        return preferred
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def oof_tta(exp_dir: Path, images: torch.Tensor, preset: str, batch_size: int, device: torch.device,
            precision: str = "auto") -> dict:
    """Each fold's best model with TTA on its own validation rows: oof_tta.csv and its scores in cv.json."""
    from pipeline.tta import with_tta

    spec, config = experiment_data(exp_dir)[1], experiment_config(exp_dir)
    oof = read_table(exp_dir / "oof.csv")
    parts = []
    for k, part in oof.groupby("fold"):
        model, fold_spec = load_fold_model(exp_dir / f"fold{k}.pth", device, config)
        rows = torch.tensor(part["id"].to_numpy(), device=images.device)
        probs = predict(with_tta(model, preset), images[rows], batch_size or 1024, fold_spec, device,
                        desc=f"OOF TTA fold {k}", precision=precision)
        parts.append(part[["id", "fold", *spec.task.target_columns()]].reset_index(drop=True).join(
            pd.DataFrame(probs, columns=prob_columns(probs.shape[1]))))
    table = pd.concat(parts).sort_values("id").reset_index(drop=True)
    write_csv(table, exp_dir / "oof_tta.csv")
    cv = read_json(exp_dir / "cv.json", "CV summary")
    cv["oof_tta"] = cv_summary(table, cv["n_splits"], spec.task)["oof"] | {"preset": preset}
    write_json(cv, exp_dir / "cv.json")
    m = spec.task.metric
    print(f"OOF with TTA ({preset}): {m} {cv['oof_tta'][m]:.5f}  loss {cv['oof_tta']['loss']:.4f}  "
          f"(without: {cv['oof'][m]:.5f}  {cv['oof']['loss']:.4f})")
    return cv


def read_oofs(weights_dir: Path, exps: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, Task]:
    """(M, N, C) OOF predictions of the experiments, their targets, folds and task; all must share the folds."""
    frames, hashes = [], []
    task = experiment_data(experiment_dir(weights_dir, exps[0]))[1].task
    for e in exps:
        hashes.append(experiment_config(experiment_dir(weights_dir, e)).get("folds_hash"))
        path = weights_dir / e / "oof.csv"
        table = read_table(path)
        if table is None:
            raise PipelineError(f"{path}: not found; the ensemble needs every experiment's OOF (train --fold all)")
        frames.append(table.sort_values("id").reset_index(drop=True))
    if len(set(hashes)) > 1:
        i = next(i for i, h in enumerate(hashes) if h != hashes[0])
        raise PipelineError(f"--exp: {exps[i]} was trained on folds file {hashes[i]!r}, {exps[0]} on {hashes[0]!r}; "
                            "a blend fitted on OOF rows from two fold assignments leaks: retrain one of them on the "
                            "same folds file (train --overwrite --fold all)")
    first = frames[0]
    for e, f in zip(exps[1:], frames[1:]):
        if not (f["id"].equals(first["id"]) and f["fold"].equals(first["fold"])):
            raise PipelineError(f"--exp: {e} and {exps[0]} have different OOF rows or folds; "
                                "blend experiments trained on the same folds file with --fold all")
    arrays = [oof_arrays(f, task, str(weights_dir / e / "oof.csv")) for e, f in zip(exps, frames)]
    return np.stack([a[0] for a in arrays]), arrays[0][1], first["fold"].to_numpy(), task


def ensemble_weights(weights_dir: Path, exps: tuple[str, ...], method: str) -> np.ndarray:
    """The blend's weights fitted on OOF (equal for mean and rank); prints every experiment's OOF score and the
    blend's honest one (fitted on the other folds, scored on the held-out fold) in the competition's metric."""
    probs, targets, folds, task = read_oofs(weights_dir, exps)
    if method == "rank" and task.metric != "roc_auc":
        raise PipelineError(f"--ensemble rank: rank averaging keeps only the order of scores, which only AUC judges; "
                            f"this competition's metric is {task.metric}: use mean, learned or greedy")
    m = task.metric
    for e, p in zip(exps, probs):
        own = task.scores(p, targets)
        print(f"OOF {e}: {m} {own[m]:.5f}  loss {own['loss']:.4f}")
    if method != "mean":
        mean = task.scores(probs.mean(0), targets)
        print(f"OOF mean blend (nothing fitted): {m} {mean[m]:.5f}  loss {mean['loss']:.4f}")
    weights = combine(probs, targets, task, method)[0]
    honest = honest_scores(probs, targets, folds, task, method)
    print(f"OOF {method} blend ({'weights fitted on the other folds' if method in ('learned', 'greedy') else 'nothing fitted'}"
          f"): {m} {honest[m]:.5f}  loss {honest['loss']:.4f}; weights on all OOF: "
          + ", ".join(f"{e} {w:.3f}" for e, w in zip(exps, weights)))
    write_json({"experiments": list(exps), "method": method, "weights": weights.tolist(), "metric": m,
                "oof_each": {e: task.scores(p, targets) for e, p in zip(exps, probs)}, "oof_blend_honest": honest},
               writable_dir(weights_dir, Path("submissions")) / f"blend_{'+'.join(exps)}.json")
    return weights


def main(argv=None) -> int:
    return main_guard(lambda a: run(parse_config(a, "infer", FLAGS, __doc__)), argv)


if __name__ == "__main__":
    sys.exit(main())
