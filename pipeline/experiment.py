"""The files of one experiment folder, weights/<exp>/, and the local CV computed from them.

config.json  resolved config            fold<k>.pth       best epoch: state dict + config + score
oof.csv      id, fold, label, p0..p9     fold<k>.last.pth  end of the last finished epoch (for --resume)
oof.fold<k>.npz  fold k's OOF rows (id, targets, p) instead of oof.csv when they would be large (OOF_CSV_CELLS)
metrics.csv  one row per fold and epoch  cv.json           per-fold and overall local CV
schedule.csv learning rate of every optimizer step, as applied
selection.csv per fold: the best epoch's and the SWA average's scores, and which of the two fold<k>.pth holds
.lock        held by the one training that writes here; says who holds it
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import intervals, tracking
from pipeline.io import atomic_path, read_json, write_csv, write_json
from pipeline.config import Config, ExperimentConfig
from pipeline.errors import PipelineError
from pipeline.tasks import Task

# Fields that define what an experiment trains; --resume refuses a run that changes one of them.
RECIPE = ["model", "pretrained_path", "img_size", "hidden", "layers", "pool", "crop_len", "context", "select_features", "cat_encoding", "gbm_params", "epochs", "batch_size", "lr", "weight_decay",
          "label_smoothing", "warmup_epochs", "rotate", "scale", "shift", "aug", "precision", "ema", "clip_grad", "patience", "opt", "momentum",
          "mixup", "cutmix", "sched", "min_lr", "warmup_lr", "decay_epochs", "decay_rate", "swa_epochs",
          "drop_rate", "drop_path_rate", "seed", "seeds"]
# The recipe fields a boosting library's fold reads (the rest are the torch engine's): its hints and report name these.
GBM_RECIPE = ["model", "select_features", "gbm_params", "seed", "seeds"]
# Values train resolves from a flag (the parameters in --gbm-params' file): compared as the recipe is.
RESOLVED = ["gbm_param_values"]
# What the rows were split by: every fold of one experiment must come from the same folds file.
DATA_IDENTITY = ["train_hash", "folds_hash"]
# Everything the pipeline writes into an experiment folder; --overwrite removes these and nothing else.
_NAMES = r"config\.json|cv\.json|oof\.csv|oof_tta\.csv|oof\.fold(?:0|[1-9]\d*)\.npz|oof_tta\.fold(?:0|[1-9]\d*)\.npz|metrics\.csv|schedule\.csv|selection\.csv|test_probs\.npy|test_probs\.json" \
         r"|fold\d+(?:\.s\d+)?\.pth|fold\d+(?:\.s\d+)?\.last\.pth|full\.pth|fold\d+\.prep\.json|full\.prep\.json" \
         r"|full\.txt|fold\d+\.seeds\.json|tracking\.json" \
         r"|fold\d+(?:\.s\d+)?(?:\.txt|\.cbm|\.xgb\.json|\.linear\.json)"  # models, one per --seeds seed
ARTIFACTS = re.compile(rf"({_NAMES})|\.({_NAMES})\.\w+\.tmp")  # a temp file of an artifact: .oof.csv.k3j2.tmp
LITTER = re.compile(rf"\.({_NAMES})\.\w+\.tmp")
_REPORT = r"report\.md|curves\.png|lr\.png|confusion\.png|confusion\.csv|per_class\.csv|wrong\.png"
REPORT_FILES = re.compile(rf"({_REPORT})|\.({_REPORT})\.\w+\.tmp")


def prob_columns(num_classes: int) -> list[str]:
    return [f"p{c}" for c in range(num_classes)]


def read_table(path: Path) -> pd.DataFrame | None:
    """A CSV the pipeline wrote, or None when absent; a damaged one is a one-line error naming it."""
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: unreadable ({str(e).strip().splitlines()[0][:80]}); "
                            "retrain the experiment with --overwrite") from None
    if "fold" in table.columns and table.empty:  # every row removed (the one fold trained is being retrained)
        table["fold"] = table["fold"].astype(np.int64)
    if "fold" not in table.columns or not pd.api.types.is_integer_dtype(table["fold"]):
        raise PipelineError(f"{path}: damaged (no integer 'fold' column); retrain the experiment with --overwrite")
    return table


# Up to this many OOF prediction cells (train rows x outputs) an experiment's OOF rows are one oof.csv, rewritten
# as each fold ends; above it (HW2's 2.1M frames x 41 classes: a CSV of 1.5 GB) each fold's rows are written once, to
# oof.fold<k>.npz (float32 predictions: 345 MB for HW2), and every reader takes them through read_oof.
OOF_CSV_CELLS = 2_000_000


def oof_parts(exp_dir: Path, name: str = "oof") -> dict[int, Path]:
    """The per-fold binary OOF files of a large experiment, by fold."""
    if not exp_dir.is_dir():
        return {}
    parts = {int(m.group(1)): p for p in exp_dir.iterdir() if (m := re.fullmatch(rf"{name}\.fold(0|[1-9]\d*)\.npz", p.name))}
    return dict(sorted(parts.items()))


def oof_where(exp_dir: Path, name: str = "oof") -> str:
    """What error messages name: oof.csv, or the per-fold files."""
    return str(exp_dir / (f"{name}.fold*.npz" if oof_parts(exp_dir, name) else f"{name}.csv"))


def read_oof(exp_dir: Path, name: str = "oof") -> pd.DataFrame | None:
    """An experiment's OOF rows (id, fold, targets, p0..) sorted by id, from oof.csv or the per-fold .npz files;
    None when neither exists. Damaged files are one-line errors naming them."""
    parts = oof_parts(exp_dir, name)
    if not parts:
        return read_table(exp_dir / f"{name}.csv")
    if (exp_dir / f"{name}.csv").is_file():
        raise PipelineError(f"{exp_dir}: holds both {name}.csv and {parts[next(iter(parts))].name}; retrain the "
                            "experiment with --overwrite")
    # Memory: the predictions once (float32) plus one fold's while it is read, not the folds and their concatenation.
    heads = [_read_part(path) for path in parts.values()]  # ids and targets; predictions stay on disk for now
    if any(h.keys() != heads[0].keys() for h in heads):
        raise PipelineError(f"{oof_where(exp_dir, name)}: the folds' files hold different columns; retrain with --overwrite")
    ids = np.concatenate([h["id"] for h in heads])
    order = np.argsort(ids, kind="stable")
    where = np.empty_like(order)
    where[order] = np.arange(len(order))  # row i of the concatenation goes to row where[i] of the sorted table
    preds, start = None, 0
    for path, head in zip(parts.values(), heads):
        p = _read_part(path, "p")
        if p.ndim != 2 or len(p) != len(head["id"]) or (preds is not None and p.shape[1] != preds.shape[1]):
            raise PipelineError(f"{path}: damaged (its predictions do not match its ids or the other folds'); "
                                "retrain with --overwrite")
        if preds is None:
            preds = np.empty((len(ids), p.shape[1]), dtype=np.float32)
        preds[where[start:start + len(p)]] = p
        start += len(p)
    table = pd.DataFrame(preds, columns=prob_columns(preds.shape[1]), copy=False)
    columns = {"id": ids[order], "fold": np.repeat(np.array(list(parts), dtype=np.int64),
                                                   [len(h["id"]) for h in heads])[order]}
    columns |= {key.removeprefix("t_"): np.concatenate([h[key] for h in heads])[order] for key in heads[0] if key != "id"}
    for i, (key, values) in enumerate(columns.items()):
        table.insert(i, key, values)
    return table


def _read_part(path: Path, key: str | None = None):
    """One fold's file: its ids and targets checked (key None), or one array of it."""
    import zipfile

    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with f:
            _check_declared_sizes(f)
            if key is not None:
                return f[key]
            if "id" not in f.files or "p" not in f.files:
                raise ValueError("no 'id' or 'p' array")
            data = {k: f[k] for k in f.files if k != "p"}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise PipelineError(f"{path}: unreadable ({str(e).strip()[:80]}); retrain the experiment with --overwrite") from None
    if not (data["id"].ndim == 1 and np.issubdtype(data["id"].dtype, np.integer)
            and all(v.shape[:1] == data["id"].shape for v in data.values())):
        raise PipelineError(f"{path}: damaged (needs integer 'id' and targets of one length); retrain with --overwrite")
    return data


def _check_declared_sizes(f) -> None:
    """Each array's header against the bytes stored for it: a header declaring (10^6, 10^6) over a few bytes would
    have numpy allocate terabytes before finding the data short."""
    for info in f.zip.infolist():
        with f.zip.open(info) as member:
            version = np.lib.format.read_magic(member)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(member)
        declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if declared > info.file_size:
            raise ValueError(f"{info.filename} declares shape {shape} ({declared:,} bytes) but holds {info.file_size:,}")


def write_oof_rows(exp_dir: Path, k: int, rows: pd.DataFrame, total_rows: int, name: str = "oof") -> None:
    """Replace fold k's OOF rows (id, fold, targets, p0..): in name.csv while small, else in name.fold<k>.npz."""
    cols = [c for c in rows.columns if re.fullmatch(r"p\d+", c)]
    with tables_locked(exp_dir):
        if oof_parts(exp_dir, name) or total_rows * len(cols) > OOF_CSV_CELLS:
            arrays = {"id": rows["id"].to_numpy(np.int64), "p": rows[cols].to_numpy(np.float32)}
            arrays |= {f"t_{c}": rows[c].to_numpy() for c in rows.columns if c not in cols and c not in ("id", "fold")}
            with atomic_path(exp_dir / f"{name}.fold{k}.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)
            return
        old = read_table(exp_dir / f"{name}.csv")
        if old is not None:
            rows = pd.concat([old[old["fold"] != k], rows], ignore_index=True)
        write_csv(rows.sort_values("id", kind="stable").reset_index(drop=True), exp_dir / f"{name}.csv")


def experiment_dir(weights_dir: str | Path, name: str) -> Path:
    """weights/<name>: a name that passed config.check_name cannot point outside weights/."""
    from pipeline.config import check_name

    return Path(weights_dir) / check_name(name, "--exp")


@contextlib.contextmanager
def locked(exp_dir: Path, fold: int | None = None):
    """Hold exp_dir/.lock for the block; a second writer is refused with the holder's pid, host and command.

    A run of one fold (`--fold K`, e.g. one job of a SLURM array) shares .lock with the other single-fold runs
    and holds .lock.fold<K> alone: different folds train at once, the same fold or a whole-experiment run is
    refused. The kernel drops the locks when their process dies (kill -9 included): a lock is never stale.
    """
    exp_dir.mkdir(parents=True, exist_ok=True)
    shared = fold is not None
    fd = os.open(exp_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fold_fd = os.open(exp_dir / f".lock.fold{fold}", os.O_RDWR | os.O_CREAT, 0o644) if shared else None
    try:
        for handle, mode in ((fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX), (fold_fd, fcntl.LOCK_EX)):
            if handle is None:
                continue
            try:
                fcntl.flock(handle, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                busy = _busy_folds(exp_dir) if handle == fd and not shared else []
                holder = (f"single-fold runs of fold(s) {', '.join(busy)}" if busy else
                          os.pread(handle, 500, 0).decode(errors="replace").strip() or "another process")
                raise PipelineError(f"{exp_dir}: another training is writing to this experiment"
                                    f"{' (fold %d)' % fold if handle == fold_fd else ''} ({holder}); "
                                    "wait for it to finish, or use another --exp") from None
        me = f"pid {os.getpid()} on {socket.gethostname()} since {dt.datetime.now():%Y-%m-%d %H:%M:%S}: " \
             f"{' '.join(['python -m pipeline.' + Path(sys.argv[0]).stem, *sys.argv[1:]])[:300]}"
        mine = fold_fd if shared else fd
        os.ftruncate(mine, 0)
        os.pwrite(mine, me.encode(), 0)
        if not shared:
            _remove_matching(exp_dir, LITTER)  # temp files of a killed write: nobody else writes here now
        yield HeldLock([h for h in (fd, fold_fd) if h is not None])
    finally:
        os.close(fd)
        if fold_fd is not None:
            os.close(fold_fd)


class HeldLock:
    """The open lock files of one experiment, as `locked` holds them.

    Pickled into a spawned fold process (--gpus), it travels as duplicates of the same open files: an flock
    belongs to the open file, so the experiment stays locked until this process and every fold process have
    exited. A parent killed with kill -9 therefore never frees the experiment for a second writer while one of
    its fold processes still writes there.
    """

    def __init__(self, fds: list[int]):
        self.fds = fds

    def __reduce__(self):
        from multiprocessing import reduction

        return _adopt_lock, tuple(reduction.DupFd(fd) for fd in self.fds)


def _adopt_lock(*dups) -> HeldLock:
    """In the fold process: keep the inherited descriptors open (so the lock is held) for the process's life."""
    return HeldLock([d.detach() for d in dups])


def writer(exp_dir: Path) -> str:
    """Who is training this experiment now, as its lock says ('' = nobody): a hint to train its missing folds would
    only be refused while it runs."""
    path = exp_dir / ".lock"
    if not path.is_file():
        return ""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a whole-experiment run holds it exclusively
    except BlockingIOError:
        return os.pread(fd, 500, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)
    busy = _busy_folds(exp_dir)
    return f"single-fold runs of fold(s) {', '.join(busy)}" if busy else ""


def _busy_folds(exp_dir: Path) -> list[str]:
    """Folds whose single-fold run holds its lock now."""
    busy = []
    for path in sorted(exp_dir.glob(".lock.fold*")):
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy.append(path.name.removeprefix(".lock.fold"))
        finally:
            os.close(fd)
    return busy


@contextlib.contextmanager
def tables_locked(exp_dir: Path):
    """One writer at a time for the shared tables (oof.csv, metrics.csv, ...): folds trained in parallel
    processes (--gpus) each update them."""
    fd = os.open(exp_dir / ".tables.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_artifacts(exp_dir: Path) -> None:
    """Delete what the pipeline wrote in exp_dir (never other files, never through a symbolic link)."""
    if exp_dir.is_symlink():
        raise PipelineError(f"--overwrite: {exp_dir} is a symbolic link; refusing to delete through it "
                            "(remove the link yourself, or use another --exp)")
    _remove_matching(exp_dir, ARTIFACTS)
    report = exp_dir / "report"
    if report.is_symlink():
        report.unlink()
    elif report.is_dir():
        _remove_matching(report, REPORT_FILES)
        with contextlib.suppress(OSError):
            report.rmdir()  # only when nothing of the user's is left in it


def done_folds(exp_dir: Path) -> list[int]:
    """Folds whose OOF rows are written: training of those folds finished."""
    if parts := oof_parts(exp_dir):
        return list(parts)
    oof = read_table(exp_dir / "oof.csv")
    return sorted(int(k) for k in oof["fold"].unique()) if oof is not None else []


def _remove_matching(folder: Path, names: re.Pattern) -> None:
    for path in folder.iterdir():
        if names.fullmatch(path.name) and (path.is_file() or path.is_symlink()):
            path.unlink()  # a link itself, never its target


def prepare(exp_dir: Path, config: ExperimentConfig, folds: list[int], resume: bool, overwrite: bool) -> list[int]:
    """Apply the no-silent-overwrite policy (call while holding the lock); return the folds still to train."""
    saved = read_json(exp_dir / "config.json", "experiment config") if (exp_dir / "config.json").exists() else None
    artifacts = sorted(p.name for p in exp_dir.glob("*") if p.name != "config.json" and not p.name.startswith(".")) if exp_dir.is_dir() else []
    if not artifacts and (not resume or saved is None):
        return folds  # nothing trained yet (--resume on a new experiment, a SLURM job's first fold): start
    if overwrite and len(folds) == config.n_splits:
        remove_artifacts(exp_dir)
        return folds
    if not resume and not overwrite:
        raise PipelineError(f"{exp_dir}: experiment exists ({', '.join(artifacts[:4])}...); "
                            "add --resume to continue it, --overwrite to replace it, or choose another --exp")
    if saved is None:
        raise PipelineError(f"{'--resume' if resume else '--overwrite --fold ' + ','.join(map(str, folds))}: {exp_dir} "
                            "has no config.json, so which folds file and recipe its folds used is unknown; retrain "
                            "every fold with --overwrite --fold all, or use another --exp")
    changed = changed_fields(saved, config)
    stale = other_folds_hash(exp_dir, config.folds_hash, folds if overwrite else [])
    if stale and "folds_hash" not in changed:  # config.json says one folds file, a kept checkpoint another
        changed, saved = ["folds_hash", *changed], saved | {"folds_hash": stale}
    if overwrite:
        if changed:
            raise PipelineError(f"--overwrite: {exp_dir}'s other folds were trained with {_what(changed[0])}="
                                f"{saved.get(changed[0])!r}, this run has {config.setting(changed[0])!r}; one experiment "
                                "holds one recipe and one folds file: use --fold all, or another --exp")
        for k in folds:
            forget_fold(exp_dir, k)
        return folds
    if changed:
        f = changed[0]
        advice = ("the folds file was remade since; resuming would mix two fold assignments (leakage). Retrain "
                  "with --overwrite --fold all, or restore the old folds file" if f == "folds_hash" else
                  "resume with the same settings or use --overwrite / another --exp")
        raise PipelineError(f"--resume: {exp_dir} was trained with {_what(f)}={saved.get(f)!r}, this run has "
                            f"{config.setting(f)!r}; {advice}")
    finished = done_folds(exp_dir)
    for k in finished:  # a kill between writing the OOF and removing the epoch state leaves a stale one
        (exp_dir / f"fold{k}.last.pth").unlink(missing_ok=True)
    if finished:
        print(f"resume: folds {', '.join(map(str, finished))} already finished, kept as they are")
    return [k for k in folds if k not in finished]


def prepare_full(exp_dir: Path, config: ExperimentConfig, overwrite: bool) -> None:
    """--fold full joins an experiment only with the same recipe and data; an existing full.pth needs --overwrite."""
    saved = read_json(exp_dir / "config.json", "experiment config") if (exp_dir / "config.json").exists() else None
    changed = changed_fields(saved, config) if saved is not None else []
    if changed:
        raise PipelineError(f"--fold full: {exp_dir}'s folds were trained with {_what(changed[0])}="
                            f"{saved.get(changed[0])!r}, this run has {config.setting(changed[0])!r}; the full-data model "
                            "must share the folds' recipe: use the same flags, or another --exp")
    if (exp_dir / "full.pth").exists() and not overwrite:
        raise PipelineError(f"{exp_dir}/full.pth exists; add --overwrite to train it again")


def other_folds_hash(exp_dir: Path, folds_hash: str, retrained: list[int]) -> str | None:
    """The folds hash of a kept fold checkpoint that differs from `folds_hash` (config.json may have been replaced)."""
    from pipeline.io import load_checkpoint

    for path in sorted(exp_dir.iterdir()):
        match = re.fullmatch(r"fold(\d+)\.pth", path.name)
        if match and int(match.group(1)) not in retrained and path.is_file():
            config = load_checkpoint(path).get("config")
            found = config.get("folds_hash") if isinstance(config, dict) else None
            if found != folds_hash:
                return str(found)
    return None


def changed_fields(saved: dict, config: ExperimentConfig) -> list[str]:
    """The recipe and data fields in which an experiment's saved config.json and `config` differ: one experiment holds
    one recipe and one folds file."""
    return [f for f in RECIPE + RESOLVED + DATA_IDENTITY if _saved(saved, f) != config.setting(f)]


def _saved(saved: dict, field: str):
    """A recipe field of an experiment's config.json; a field added since it was trained has its default."""
    return saved.get(field, getattr(Config(), field, None))


def _what(field: str) -> str:
    return {"folds_hash": "folds file hash", "train_hash": "train.csv hash"}.get(field, field)


def forget_fold(exp_dir: Path, k: int) -> None:
    """Remove fold k's checkpoints and rows, leaving the other folds intact."""
    for path in [*exp_dir.glob(f"fold{k}.*"), exp_dir / f"oof.fold{k}.npz", exp_dir / f"oof_tta.fold{k}.npz"]:
        if ARTIFACTS.fullmatch(path.name):  # fold<k>'s models (every seed's), epoch state and preprocessing
            path.unlink(missing_ok=True)
    with tables_locked(exp_dir):  # another fold's job may be writing these tables now
        for name in ("oof.csv", "metrics.csv", "schedule.csv", "oof_tta.csv", "selection.csv"):
            table = read_table(exp_dir / name)
            if table is not None:
                write_csv(table[table["fold"] != k], exp_dir / name)
        tracking.forget_fold(exp_dir, k)  # --track: the retrained fold gets a new child run

def append_metrics(exp_dir: Path, row: dict, lrs: list[float]) -> None:
    """Add one epoch's metrics row and its per-step learning rates (schedule.csv).

    Rows of the same fold from this epoch on are replaced first: a resumed epoch is written once.
    """
    fold, epoch = row["fold"], row["epoch"]
    first_step = 0
    with tables_locked(exp_dir):
        schedule = read_table(exp_dir / "schedule.csv")
        if schedule is not None:
            schedule = schedule[~((schedule["fold"] == fold) & (schedule["epoch"] >= epoch))]
            first_step = int((schedule["fold"] == fold).sum())
        steps = pd.DataFrame({"fold": fold, "epoch": epoch, "step": np.arange(first_step, first_step + len(lrs)),
                              "lr": lrs})
        _replace_rows(exp_dir / "metrics.csv", pd.DataFrame([row]), fold, epoch)
        if lrs:  # a boosting fold has no optimizer steps
            _replace_rows(exp_dir / "schedule.csv", steps, fold, epoch)
        tracking.sync(exp_dir)  # --track: the epoch mirrored in the fold's child run


def _replace_rows(path: Path, new: pd.DataFrame, fold: int, epoch: int) -> None:
    table = read_table(path)
    if table is not None:
        keep = ~((table["fold"] == fold) & (table["epoch"] >= epoch))
        new = pd.concat([table[keep], new], ignore_index=True)
    write_csv(new, path)


def write_selection(exp_dir: Path, row: dict) -> None:
    """Replace fold row["fold"]'s row of selection.csv (best epoch vs SWA: the scores and which was kept)."""
    with tables_locked(exp_dir):
        old = read_table(exp_dir / "selection.csv")
        new = pd.DataFrame([row])
        if old is not None:
            new = pd.concat([old[old["fold"] != row["fold"]], new], ignore_index=True).sort_values("fold")
        write_csv(new, exp_dir / "selection.csv")


def read_selection(exp_dir: Path, folds: list[int]) -> dict:
    """{fold: {best_epoch, best_epoch_<metric>, swa_epochs, swa_<metric>, kept}} for the folds present, from
    selection.csv (absent for experiments trained before it existed)."""
    table = read_table(exp_dir / "selection.csv")
    if table is None:
        return {}
    rows = table[table["fold"].isin(folds)].set_index("fold")
    return {int(k): {c: (None if isinstance(v, float) and v != v else v.item() if hasattr(v, "item") else v)
                     for c, v in row.items()} for k, row in rows.iterrows()}


def write_oof(exp_dir: Path, ids: np.ndarray, k: int, targets: np.ndarray, preds: np.ndarray, task: Task,
              total_rows: int) -> None:
    """Replace fold k's OOF rows with the best epoch's validation predictions (total_rows: the train set's)."""
    rows = pd.concat([pd.DataFrame({"id": ids, "fold": k}), task.targets_frame(targets),
                      pd.DataFrame(preds, columns=prob_columns(preds.shape[1]))], axis=1)
    write_oof_rows(exp_dir, k, rows, total_rows)


def oof_arrays(oof: pd.DataFrame, task: Task, where: str = "oof.csv") -> tuple[np.ndarray, np.ndarray]:
    """(predictions (N, outputs), targets) from oof.csv rows, checked: finite, in range, integer ids."""
    cols = prob_columns(task.num_outputs)
    missing = [c for c in cols + task.target_columns() if c not in oof.columns]
    if missing:
        raise PipelineError(f"{where}: no column {missing[0]!r} for this {task.kind} task; retrain with --overwrite")
    try:
        preds = oof[cols].to_numpy()  # float32 from the per-fold files (half the memory), float64 from a CSV
        if preds.dtype not in (np.float32, np.float64):
            preds = preds.astype(np.float64)
        targets = task.targets_from(oof)
    except (ValueError, TypeError) as e:
        raise PipelineError(f"{where}: non-numeric predictions or targets ({str(e)[:80]}); retrain with --overwrite") from None
    bad = ~np.isfinite(preds).all(1) | ~np.isfinite(np.asarray(targets, dtype=np.float64).reshape(len(oof), -1)).all(1)
    if task.outputs_probabilities:
        bad |= ((preds < 0) | (preds > 1)).any(1)
    if not pd.api.types.is_integer_dtype(oof["id"]) or (oof["id"] < 0).any():
        raise PipelineError(f"{where}: ids must be the train rows' numbers (0, 1, ...); retrain with --overwrite")
    if bad.any():
        raise PipelineError(f"{where}: row {int(np.flatnonzero(bad)[0]) + 1}: predictions or targets are missing, "
                            "NaN or out of range; retrain with --overwrite")
    if task.has_classes and ((targets < 0) | (targets >= task.num_outputs)).any():
        raise PipelineError(f"{where}: labels outside 0..{task.num_outputs - 1}; retrain with --overwrite")
    return preds, targets


@dataclass
class CVSummary:
    """An experiment's local CV (cv.json): each fold's scores and the OOF rows' together, in the competition metric.
    The JSON also holds what follows from these (folds present, complete, fold mean and std) for other readers."""
    metric: str
    higher_is_better: bool
    n_splits: int
    per_fold: dict[int, dict[str, float]]  # fold -> {metric: value, 'loss': value, ...}
    oof: dict[str, float]  # every OOF row scored together: the local CV
    rows: int
    train_seconds: float | None = None  # the train run that wrote it, wall time
    selection: dict = field(default_factory=dict)  # fold -> which of its best epoch and SWA average it kept
    oof_tta: dict | None = None  # OOF scores with TTA and their 'preset' (train --oof-tta, infer --oof-tta)
    interval: dict | None = None  # the CV's bootstrap interval and a test-sized draw's spread (pipeline.intervals)

    @property
    def folds_present(self) -> list[int]:
        return sorted(self.per_fold)

    @property
    def complete(self) -> bool:
        return len(self.per_fold) == self.n_splits

    @property
    def score(self) -> float:
        return self.oof[self.metric]

    @property
    def fold_mean(self) -> float:
        values = [s[self.metric] for s in self.per_fold.values()]
        return float(np.nanmean(values)) if values else float("nan")

    @property
    def fold_std(self) -> float:
        values = [s[self.metric] for s in self.per_fold.values()]
        return float(np.nanstd(values)) if values else float("nan")

    def to_dict(self) -> dict:
        out = {"metric": self.metric, "higher_is_better": self.higher_is_better, "folds_present": self.folds_present,
               "n_splits": self.n_splits, "complete": self.complete, "per_fold": self.per_fold, "oof": self.oof,
               "rows": self.rows, "fold_mean": self.fold_mean, "fold_std": self.fold_std, "selection": self.selection}
        extra = {"train_seconds": self.train_seconds, "oof_tta": self.oof_tta, "interval": self.interval}
        return out | {k: v for k, v in extra.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict, where: str = "cv.json") -> CVSummary:
        """A cv.json as read, checked; files from before a field existed get its old name (log_loss for the loss)."""
        try:
            metric = str(d.get("metric", "accuracy"))
            score = lambda s: {str(m): float(v) for m, v in s.items()} | (  # noqa: E731
                {"loss": float(s["log_loss"])} if "loss" not in s and "log_loss" in s else {})
            tta = d.get("oof_tta")
            cv = cls(metric, bool(d.get("higher_is_better", True)), int(d["n_splits"]),
                     {int(k): score(s) for k, s in d["per_fold"].items()}, score(d["oof"]), int(d["rows"]),
                     float(d["train_seconds"]) if d.get("train_seconds") is not None else None,
                     dict(d.get("selection") or {}),
                     score({k: v for k, v in tta.items() if k != "preset"}) | {"preset": str(tta.get("preset", "?"))}
                     if isinstance(tta, dict) else None, _interval(d.get("interval")))
            cv.score  # noqa: B018 - the metric must be among the scores
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PipelineError(f"{where}: damaged CV summary ({type(e).__name__}: {str(e)[:60]}); rewrite it with: "
                                "python -m pipeline.train --resume (same --exp)") from None
        return cv

    @classmethod
    def read(cls, path: Path) -> CVSummary:
        return cls.from_dict(read_json(path, "CV summary"), str(path))


def _interval(d) -> dict | None:
    """A saved interval, checked (None when absent: a cv.json from before intervals)."""
    if d is None:
        return None
    out = dict(d) | {k: float(d[k]) for k in ("low", "high", "level")} | {"units": int(d["units"]), "unit": str(d["unit"])}
    if "test" in d:
        out["test"] = {"rows": int(d["test"]["rows"]), "low": float(d["test"]["low"]), "high": float(d["test"]["high"])}
    return out


def cv_summary(oof: pd.DataFrame, n_splits: int, task: Task, where: str = "oof.csv") -> CVSummary:
    """Per-fold and overall scores in the competition's metric, from OOF rows (pure); `where` names them in errors."""
    preds, targets = oof_arrays(oof, task, where)
    if oof["id"].duplicated().any():  # two fold assignments mixed: every CV figure would be wrong
        dup = oof["id"][oof["id"].duplicated()].iloc[0]
        raise PipelineError(f"{where}: id {dup} appears in more than one fold's rows (two folds files mixed, or a "
                            "stray fold file); retrain it with --overwrite --fold all")
    fold = oof["fold"].to_numpy()
    if len(fold) and (fold.min() < 0 or fold.max() >= n_splits):
        raise PipelineError(f"{where}: rows of fold {int(fold.max() if fold.max() >= n_splits else fold.min())}, "
                            f"but the experiment has folds 0..{n_splits - 1}; remove the stray file or retrain with "
                            "--overwrite --fold all")
    per_fold = {int(k): task.scores(preds[fold == k], targets[fold == k]) for k in sorted(np.unique(fold))}
    return CVSummary(task.metric, task.higher_is_better, n_splits, per_fold, task.scores(preds, targets), int(len(oof)))


def write_cv(exp_dir: Path, n_splits: int, train_seconds: float, task: Task, groups: np.ndarray | None = None,
             test_rows: int | None = None) -> CVSummary:
    """cv.json from the OOF rows, with the CV's bootstrap interval (over `groups`, each train row's, when the folds
    were grouped) and the spread of a test of `test_rows` rows."""
    oof = read_oof(exp_dir)
    cv = cv_summary(oof, n_splits, task, oof_where(exp_dir))
    preds, targets = oof_arrays(oof, task, oof_where(exp_dir))
    ids = oof["id"].to_numpy()
    cv.interval = intervals.cv_interval(preds, targets, task, None if groups is None or ids.max() >= len(groups) else groups[ids],
                              test_rows)
    cv.train_seconds = train_seconds
    cv.selection = read_selection(exp_dir, cv.folds_present)
    write_json(cv.to_dict(), exp_dir / "cv.json")
    return cv


def _kept(sel: dict | None, metric: str) -> str:
    """'  (SWA of 3 epochs; best epoch 14: 0.99012)' when the fold trained with --swa-epochs."""
    if not sel or not sel.get("swa_epochs"):
        return ""
    other = f"best epoch {sel['best_epoch']}: {sel[f'best_epoch_{metric}']:.5f}"
    swa = f"SWA of {sel['swa_epochs']} epochs: {sel[f'swa_{metric}']:.5f}"
    return f"  (kept {'SWA' if sel['kept'] == 'swa' else 'the best epoch'}; {swa}, {other})"


def format_cv(cv: CVSummary, name: str) -> str:
    metric = cv.metric
    chosen = {int(k): v for k, v in cv.selection.items()}
    lines = [f"fold {k}: {metric} {s[metric]:.5f}  loss {s['loss']:.4f}{_kept(chosen.get(int(k)), metric)}"
             for k, s in cv.per_fold.items()]
    present = "all folds" if cv.complete else f"folds {', '.join(map(str, cv.folds_present))} of {cv.n_splits} only"
    interval = intervals.describe(cv.interval)
    lines.append(f"local CV ({name}, {present}, {cv.rows:,} OOF rows): {metric} {cv.score:.5f}"
                 f"{'  ' + interval if interval else ''}  loss {cv.oof['loss']:.4f}")
    test = intervals.describe_test(cv.interval)
    lines.append(f"  {test + '; ' if test else ''}fold mean {cv.fold_mean:.5f} +- {cv.fold_std:.5f} (std over folds: "
                 "the folds share training rows, not an interval)")
    return "\n".join(lines)
