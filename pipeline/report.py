"""Figures and a one-page report of an experiment, from the files training left in weights/<exp>/.

    python -m pipeline.report --exp digit_cnn        # weights/digit_cnn/report/report.md + PNGs
    python -m pipeline.train --fold all --report     # the same, at the end of training
"""
from __future__ import annotations

import sys
from pathlib import Path

from pipeline import data
from pipeline.config import Config, parse_config
from pipeline.inputs import input_kind
from pipeline.errors import PipelineError, main_guard
from pipeline.experiment import done_folds, experiment_dir
from pipeline.reporting import write_report

FLAGS = ["exp", "data", "weights_dir", "model", "cache_dir"]


def run(cfg: Config) -> Path:
    exp_dir = experiment_dir(cfg.weights_dir, cfg.exp[0] if cfg.exp else cfg.model)
    if not done_folds(exp_dir):
        raise PipelineError(f"{exp_dir}: no OOF rows (oof.csv) to report on; train it with: python -m pipeline.train --exp {exp_dir.name}")
    from pipeline.predict import experiment_config, experiment_data

    config = experiment_config(exp_dir)
    desc = experiment_data(exp_dir)[0]
    src = data.resolve(cfg.data)
    train = data.read_train_as(src, desc, cfg.data, str(exp_dir / "config.json"), new_folds=False)
    trained_on = config.train_hash
    if trained_on != train.train_hash:
        raise PipelineError(f"--data: train.csv (hash {train.train_hash}) is not the one {exp_dir.name} was trained on "
                            f"({trained_on}); pass the same --data")
    images = data.train_rows(src, desc, train, config.img_size, cfg.cache_dir) \
        if input_kind(desc.kind).pictures else None  # a table's or a sequence's row has no picture to show
    path = write_report(exp_dir, images)
    print(f"wrote {path} and its figures in {path.parent}/")
    return path


def main(argv=None) -> int:
    return main_guard(lambda a: run(parse_config(a, "report", FLAGS, __doc__)), argv)


if __name__ == "__main__":
    sys.exit(main())
