"""Detect the competition's layout and task, and write the K-fold file every experiment shares.

    python -m pipeline.make_folds                       # folds/folds.csv + folds/folds.json from data/digit-recognizer/
    python -m pipeline.make_folds --data data/cassava-leaf-disease-classification.zip --n-splits 5 --seed 42
    python -m pipeline.make_folds --data data/petfinder --target-col Pawpularity --metric rmse
    python -m pipeline.make_folds --data data/x --layout csv-images --id-col file --image-dir imgs --task multilabel

folds/folds.json records what was found (layout, id and target columns, image folder, task, classes, metric):
train and infer read it, so every stage agrees.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import data
from pipeline.io import write_csv, write_json
from pipeline.config import Config, parse_config
from pipeline.errors import PipelineError, main_guard
from pipeline.folds import description_path, folds_frame, group_codes, read_description

FLAGS = ["data", "folds_path", "n_splits", "seed", "group_col", "layout", "id_col", "target_col", "image_dir", "task",
         "metric", "threshold", "overwrite", "features", "drop_cols", "group_dups", "audit_dir"]


def run(cfg: Config) -> np.ndarray:
    src = data.resolve(cfg.data)
    desc, train = data.describe(src, data.Options.from_flags(cfg))
    print(desc.summary())
    groups = train.groups
    if cfg.group_dups:
        from pipeline.audit import read_groups  # the audit's stack (torch, lightgbm) only when asked for

        groups = with_duplicates(groups, read_groups(cfg.audit_dir, train.train_hash, len(train.targets)))
    folds = desc.task.split(train.targets, cfg.n_splits, cfg.seed, groups)
    frame = folds_frame(train.ids, train.targets, folds, train.train_hash, groups)
    description = {"train_hash": train.train_hash, "rows": len(folds), "n_splits": cfg.n_splits, "seed": cfg.seed,
                   "group_col": cfg.group_col, "data": desc.to_dict()} | test_size(src, desc) | (
        {"group_dups": str(Path(cfg.audit_dir) / "groups.csv")} if cfg.group_dups else {})
    path = Path(cfg.folds_path)
    check_own_files(path)
    if path.is_file() and not cfg.overwrite:
        if _same(path, frame):
            if read_description(path) != description:
                write_json(description, description_path(path))
                print(f"{path} is up to date ({len(folds):,} rows, {cfg.n_splits} folds); updated its description")
            else:
                print(f"{path} is up to date ({len(folds):,} rows, {cfg.n_splits} folds): kept as it is")
            return folds
        raise PipelineError(f"{path}: exists with other folds (other data, seed, --n-splits or --group-col); "
                            "experiments trained on it would no longer match. Add --overwrite to replace it "
                            "(experiments on the old folds will then refuse to resume or blend), or use --folds-path")
    write_json(description, description_path(path))  # first: the folds file is what commits the change
    write_csv(frame, path)
    sizes = np.bincount(folds, minlength=cfg.n_splits)
    how = {"multiclass": "stratified by label", "multilabel": "multilabel-stratified",
           "regression": "stratified by target bins"}[desc.task.kind]
    grouped = " and ".join(filter(None, [cfg.group_col or ("utterance" if train.groups is not None else ""),  # frames
                                         "the audit's duplicate groups" if cfg.group_dups else ""]))
    print(f"wrote {path}: {len(folds):,} rows in {cfg.n_splits} folds of {sizes.min():,}-{sizes.max():,} "
          f"({how}{', grouped by ' + grouped if grouped else ''}, seed {cfg.seed})")
    return folds


def with_duplicates(groups: np.ndarray | None, duplicates: np.ndarray) -> np.ndarray:
    """Groups that keep both --group-col's groups (or utterances) and the audit's duplicate groups whole: rows sharing
    either are in one group."""
    from pipeline.fingerprints import clusters, equal_pairs

    if groups is None:
        return duplicates
    n = len(duplicates)
    pairs = [equal_pairs(group_codes(groups)), equal_pairs(duplicates)]
    return clusters(n, np.concatenate(pairs))


def test_size(src, desc) -> dict:
    """{'test_rows': the submission's row count} (the CV's test-sized spread), or {} where it cannot be read."""
    try:
        return {"test_rows": len(data.submission_sample(src, desc))}
    except PipelineError:
        return {}


def check_own_files(path: Path) -> None:
    """The folds file and its description may be replaced only when make_folds wrote them (never a user's file)."""
    if path.is_file():
        try:
            header = pd.read_csv(path, nrows=0).columns
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            header = []
        if not {"id", "fold", "train_hash"} <= set(header):
            raise PipelineError(f"--folds-path: {path} exists and is not a folds file (no id, fold, train_hash "
                                "columns); refusing to replace it: choose another --folds-path")
    info = description_path(path)
    if info.exists():
        try:
            ours = {"train_hash", "n_splits"} <= set(json.loads(info.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, IsADirectoryError):
            ours = False
        if not ours:
            raise PipelineError(f"--folds-path: {info} exists and is not a folds description written by make_folds; "
                                "refusing to replace it: choose another --folds-path")


def _same(path: Path, frame: pd.DataFrame) -> bool:
    try:
        old = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return False
    if "group" not in old.columns:  # made before folds recorded their groups: the same folds, kept (their hash too)
        frame = frame.drop(columns="group", errors="ignore")
    return list(old.columns) == list(frame.columns) and old.astype(str).equals(frame.astype(str))


def main(argv=None) -> int:
    return main_guard(lambda a: run(parse_config(a, "make_folds", FLAGS, __doc__)), argv)


if __name__ == "__main__":
    sys.exit(main())
