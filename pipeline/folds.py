"""Fold assignment (pure) and the folds file that every experiment shares."""
from __future__ import annotations

import io
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.io import file_hash, read_json
from pipeline.config import DEFAULT_DATA, Config
from pipeline.errors import PipelineError

DEFAULT_FOLDS_PATH = Config().folds_path


@dataclass(frozen=True)
class Folds:
    fold: np.ndarray  # (N,) int64 fold of every train row, 0..n_splits-1
    n_splits: int
    folds_hash: str  # first 16 hex digits of sha256(folds file bytes): the identity every experiment records
    groups: np.ndarray | None = None  # (N,) int group of every row when the folds were grouped (its `group` column)


def description_path(folds_path: str | Path) -> Path:
    """The folds file's description (how it was made), beside it: folds/folds.csv -> folds/folds.json."""
    return Path(folds_path).with_suffix(".json")


def make_folds_command(data: str, folds_path: str | Path, overwrite: bool = True) -> str:
    """The make_folds command that (re)makes `folds_path` from `data`, as a hint to run as printed.

    >>> make_folds_command("data/my comp", "folds/folds.csv")
    "python -m pipeline.make_folds --data 'data/my comp' --overwrite"
    """
    words = ["python -m pipeline.make_folds", "--data", shlex.quote(str(data))]
    if str(folds_path) != DEFAULT_FOLDS_PATH:
        words += ["--folds-path", shlex.quote(str(folds_path))]
    return " ".join(words + (["--overwrite"] if overwrite else []))


def read_description(folds_path: str | Path, data: str = DEFAULT_DATA) -> dict:
    """What make_folds recorded beside the folds file (layout, task, group column); {} for an older folds file.
    `data`: the competition it was made from, for the hint to remake it."""
    path = description_path(folds_path)
    if not path.exists():
        return {}
    info = read_json(path, "folds description")
    if not isinstance(info.get("group_col", ""), str) or not isinstance(info.get("data", {}), dict):
        raise PipelineError(f"{path}: damaged folds description; remake it with: {make_folds_command(data, folds_path)}")
    return info


def folds_frame(ids: np.ndarray, labels: np.ndarray, folds: np.ndarray, train_hash: str,
                groups: np.ndarray | None = None) -> pd.DataFrame:
    """One row per train row: its id, its label (class index or value; left out for multilabel), its fold, and when
    the folds were grouped its group's number (the CV's interval resamples whole groups)."""
    frame = pd.DataFrame({"id": ids})
    if labels.ndim == 1:
        frame["label"] = labels
    frame = frame.assign(fold=folds, train_hash=train_hash)
    if groups is not None:
        frame["group"] = group_codes(groups)
    return frame


def group_codes(groups: np.ndarray) -> np.ndarray:
    """Each row's group as 0, 1, ... in order of first appearance."""
    _, first, inverse = np.unique(np.asarray(groups).astype(str), return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse.reshape(-1)]


def read_folds(path: str, train_hash: str, n_rows: int, data: str = DEFAULT_DATA) -> Folds:
    """Fold of every train row from the folds file, refusing one made from other data (`data`: the competition the
    caller reads, for the hint to make the file)."""
    remake = make_folds_command(data, path)
    if not Path(path).is_file():
        state = "is a directory" if Path(path).is_dir() else "not found"
        raise PipelineError(f"{path}: {state}; make the folds file first with: "
                            f"{make_folds_command(data, path, overwrite=Path(path).is_dir())}")
    raw = Path(path).read_bytes()
    try:
        df = pd.read_csv(io.BytesIO(raw))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: not a readable folds file ({str(e).strip().splitlines()[0][:100]})") from None
    missing = [c for c in ("id", "fold", "train_hash") if c not in df.columns]
    if missing:
        raise PipelineError(f"{path}: missing column(s) {', '.join(missing)}; remake it with: {remake}")
    if set(df["train_hash"].astype(str)) != {train_hash} or len(df) != n_rows:
        raise PipelineError(f"{path}: made from a different train.csv (hash/rows {df['train_hash'].iloc[0]}/{len(df)}, "
                            f"now {train_hash}/{n_rows}); remake it with: {remake}")
    if not df["id"].equals(pd.Series(np.arange(n_rows), name="id")):
        raise PipelineError(f"{path}: ids must be the train rows 0..{n_rows - 1} in order; remake it with: {remake}")
    folds = pd.to_numeric(df["fold"], errors="coerce").to_numpy()
    n_splits = len(np.unique(folds))
    bad = ~np.isin(folds, np.arange(n_splits))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise PipelineError(f"{path}: row {row + 1}: fold must be 0..{n_splits - 1} (the file has {n_splits} folds), found {df['fold'].iloc[row]}")
    groups = pd.to_numeric(df["group"], errors="coerce").to_numpy() if "group" in df.columns else None
    if groups is not None:
        bad = ~np.isfinite(groups) | (groups != np.round(groups)) | (np.abs(groups) >= 2 ** 53)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise PipelineError(f"{path}: row {row + 1}: group must be a whole number, found {str(df['group'].iloc[row])!r}; "
                                f"remake it with: {remake}")
    return Folds(folds.astype(np.int64), n_splits, file_hash(raw), None if groups is None else groups.astype(np.int64))


def folds_groups(folds_path: str | None, folds_hash: str, rows: int) -> np.ndarray | None:
    """The folds file's groups when it is the one the experiments were trained on (same hash) and recorded them."""
    if not folds_path or not Path(folds_path).is_file() or file_hash(Path(folds_path).read_bytes()) != folds_hash:
        return None
    try:
        frame = pd.read_csv(folds_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    if "group" not in frame.columns or len(frame) != rows:
        return None
    return frame["group"].to_numpy()
