"""Write the stratified K-fold file that every experiment shares.

    python -m pipeline.make_folds                       # folds/folds.csv from data/digit-recognizer/
    python -m pipeline.make_folds --data data/digit-recognizer.zip --n-splits 5 --seed 42
"""
from __future__ import annotations

import sys

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import data
from pipeline.checkpoint import write_csv, write_json
from pipeline.config import Config, parse_config
from pipeline.errors import PipelineError, main_guard
from pipeline.folds import assign_folds, description_path, folds_frame, read_description

FLAGS = ["data", "folds_path", "n_splits", "seed", "group_col", "overwrite"]


def run(cfg: Config) -> np.ndarray:
    train = data.read_train(data.resolve(cfg.data), cfg.group_col)
    folds = assign_folds(train.labels, cfg.n_splits, cfg.seed, train.groups)
    frame = folds_frame(train.ids, train.labels, folds, train.train_hash)
    description = {"train_hash": train.train_hash, "rows": len(folds), "n_splits": cfg.n_splits, "seed": cfg.seed,
                   "group_col": cfg.group_col}
    if Path(cfg.folds_path).is_file() and not cfg.overwrite:
        if _same(Path(cfg.folds_path), frame) and read_description(cfg.folds_path).get("group_col", "") == cfg.group_col:
            print(f"{cfg.folds_path} is up to date ({len(folds):,} rows, {cfg.n_splits} folds): kept as it is")
            return folds
        raise PipelineError(f"{cfg.folds_path}: exists with other folds (other data, seed, --n-splits or --group-col); "
                            "experiments trained on it would no longer match. Add --overwrite to replace it "
                            "(experiments on the old folds will then refuse to resume or blend), or use --folds-path")
    write_json(description, description_path(cfg.folds_path))  # first: the folds file is what commits the change
    write_csv(frame, cfg.folds_path)
    sizes = np.bincount(folds, minlength=cfg.n_splits)
    print(f"wrote {cfg.folds_path}: {len(folds):,} rows in {cfg.n_splits} folds of {sizes.min():,}-{sizes.max():,} "
          f"(stratified by label{', grouped by ' + cfg.group_col if cfg.group_col else ''}, seed {cfg.seed})")
    return folds


def _same(path: Path, frame: pd.DataFrame) -> bool:
    try:
        old = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return False
    return list(old.columns) == list(frame.columns) and old.astype(str).equals(frame.astype(str))


def main(argv=None) -> int:
    return main_guard(lambda a: run(parse_config(a, "make_folds", FLAGS, __doc__)), argv)


if __name__ == "__main__":
    sys.exit(main())
