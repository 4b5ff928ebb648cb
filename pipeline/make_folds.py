"""Write the stratified K-fold file that every experiment shares.

    python -m pipeline.make_folds                       # folds/folds.csv from data/digit-recognizer/
    python -m pipeline.make_folds --data data/digit-recognizer.zip --n-splits 5 --seed 42
"""
from __future__ import annotations

import sys

import numpy as np

from pipeline import data
from pipeline.checkpoint import write_csv
from pipeline.config import Config, parse_config
from pipeline.errors import main_guard
from pipeline.folds import assign_folds, folds_frame

FLAGS = ["data", "folds_path", "n_splits", "seed", "group_col"]


def run(cfg: Config) -> np.ndarray:
    train = data.read_train(data.resolve(cfg.data), cfg.group_col)
    folds = assign_folds(train.labels, cfg.n_splits, cfg.seed, train.groups)
    write_csv(folds_frame(train.ids, train.labels, folds, train.train_hash), cfg.folds_path)
    sizes = np.bincount(folds, minlength=cfg.n_splits)
    print(f"wrote {cfg.folds_path}: {len(folds):,} rows in {cfg.n_splits} folds of {sizes.min():,}-{sizes.max():,} "
          f"(stratified by label{', grouped by ' + cfg.group_col if cfg.group_col else ''}, seed {cfg.seed})")
    return folds


def main(argv=None) -> int:
    return main_guard(lambda a: run(parse_config(a, "make_folds", FLAGS, __doc__)), argv)


if __name__ == "__main__":
    sys.exit(main())
