"""Train one model per fold (a timm backbone, the project's mlp, or lightgbm); save fold weights, OOF predictions
and the local CV. The folds themselves are trained by pipeline.trainer.

    python -m pipeline.train --fold all                      # weights/digit_cnn/ on folds/folds.csv
    python -m pipeline.train --fold all --model lightgbm     # a table: weights/lightgbm/fold<k>.txt
    python -m pipeline.train --fold 0 --epochs 1 --data data/digit-recognizer.zip
    python -m pipeline.train --model resnet18 --lr 1e-3 --exp r18 --config my.yaml
    python -m pipeline.train --fold all --resume             # after an interruption
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from pipeline import distributed, experiment, tracking
from pipeline.io import write_json
from pipeline.config import TRAIN_FLAGS, Config, ExperimentConfig, command, parse_config
from pipeline.distributed import Ranks
from pipeline.device import resolve_device
from pipeline.errors import PipelineError, main_guard
from pipeline.folds import read_description
from pipeline.predict import oof_tta
from pipeline.learners import Run
from pipeline.trainer import Setup, check_batch, for_ranks, setup

FLAGS = TRAIN_FLAGS
REPORT_FLAGS = ["exp", "data", "weights_dir", "cache_dir"]  # what `python -m pipeline.report` needs to find the run


def prepared(exp_dir: Path, resolved: ExperimentConfig, fold_ids: list[int], cfg: Config) -> list[int] | str:
    """The folds still to train, or why not (as text, so rank 0 can tell the other ranks before it stops)."""
    try:
        return experiment.prepare(exp_dir, resolved, fold_ids, cfg.resume, cfg.overwrite)
    except PipelineError as e:
        return str(e)


@contextlib.contextmanager
def locked_or_message(exp_dir: Path, fold: int | None, ranks: Ranks):
    """Rank 0 holds the experiment's lock for the block; yields ('', the held lock) or (why it could not, None),
    so every rank can stop on rank 0's refusal."""
    if not ranks.main:
        yield "", None
        return
    try:
        lock = experiment.locked(exp_dir, fold)
        held = lock.__enter__()
    except PipelineError as e:
        yield str(e), None
        return
    try:
        yield "", held
    finally:
        lock.__exit__(None, None, None)


def run(cfg: Config, on_epoch=None, deadline: float | None = None) -> dict:
    """Train the folds named by cfg.fold; `on_epoch(epoch, valid_scores)` is called after every epoch. `deadline`
    (time.monotonic(), the portfolio's): each fold gets an even share of the time left, and stops at its best
    iteration or epoch so far when it runs over."""
    with distributed.joined(cfg.device) as (ranks, device_name), distributed.peer_loss_as_one_line(ranks):
        cfg = for_ranks(cfg, ranks, device_name)
        devices = distributed.parse_devices(cfg.gpus) if cfg.gpus else []
        if cfg.fold == "full" and len(devices) > 1:
            print(f"notice: --gpus {cfg.gpus}: --fold full trains one model in one process; on {devices[0]} only")
        if len(devices) == 1 or (devices and (cfg.fold.isdigit() or cfg.fold == "full")):
            cfg, devices = replace(cfg, device=devices[0], gpus=""), devices[:1]
        job = setup(cfg, quiet=not ranks.main, world=ranks.world)
        check_batch(job.cfg, ranks)
        if cfg.fold == "full":
            return job.train_full(Run(resolve_device(job.cfg.device), ranks))
        return train_folds(job, devices, ranks, on_epoch, deadline)


def train_folds(job: Setup, devices: list[str], ranks: Ranks, on_epoch=None, deadline: float | None = None) -> dict:
    """The folds of cfg.fold, under the experiment's lock: sequentially, in --gpus processes, or over the ranks."""
    cfg, exp_dir, desc = job.cfg, job.exp_dir, job.desc
    device = resolve_device(cfg.device)
    fold_ids = cfg.fold_ids(job.folds.n_splits)
    single = int(cfg.fold) if cfg.fold.isdigit() else None  # one fold: other folds may train at once (SLURM)
    with locked_or_message(exp_dir, single, ranks) as (refused, held):
        if distributed.agree(refused, ranks):
            raise PipelineError(refused)
        todo = distributed.agree(prepared(exp_dir, job.resolved, fold_ids, cfg) if ranks.main else None, ranks)
        if isinstance(todo, str):  # rank 0 refused: every rank stops with its one line
            raise PipelineError(todo)
        if len(devices) > max(1, len(todo)):  # a process without a fold would start, load the data and idle
            print(f"notice: --gpus {cfg.gpus}: {len(devices)} processes for {len(todo)} fold(s) to train; "
                  f"starting {max(1, len(todo))}")
            devices = devices[:max(1, len(todo))]
        if ranks.main:
            exp_dir.mkdir(parents=True, exist_ok=True)
            tracking.start(exp_dir, cfg.track, cfg.track_uri, cfg.exp_name, data_name(cfg.data), job.resolved.to_dict())
            write_json(job.resolved.to_dict(), exp_dir / "config.json")
            where = (f"{len(devices)} parallel fold processes on {', '.join(devices)}" if len(devices) > 1 else
                     f"{ranks.world} ranks (DistributedDataParallel)" if ranks.distributed else
                     f"device {device}{', %d GPUs' % torch.cuda.device_count() if device.type == 'cuda' else ''}")
            print(f"{desc.summary()}\ntraining {cfg.model} on {len(job.train.targets):,} rows, folds {fold_ids} -> "
                  f"{exp_dir}/ ({where})")
        distributed.barrier(ranks)
        started, images, failed = time.perf_counter(), None, {}
        if len(devices) > 1 and len(todo) > 1:
            from pipeline.parallel import parallel_folds

            failed = parallel_folds(cfg, todo, devices, held)
        else:
            if devices:  # one fold left of a --gpus run: on the first listed device
                device = resolve_device(devices[0])
            images, targets = job.rows(device)
            for i, k in enumerate(todo):
                share = None if deadline is None else \
                    time.monotonic() + max(0.0, deadline - time.monotonic()) / (len(todo) - i)
                preds = job.fit_fold(k, (images, targets), Run(device, ranks, on_epoch, deadline=share))
                if ranks.main:
                    job.finish_fold(k, preds)
        if not ranks.main:
            return {}
        if failed and len(failed) == len(todo) and not experiment.done_folds(exp_dir):
            raise PipelineError("; ".join(failed.values()))
        with experiment.tables_locked(exp_dir):  # single-fold jobs may be writing their rows meanwhile
            cv = experiment.write_cv(exp_dir, job.folds.n_splits, round(time.perf_counter() - started, 1), desc.task,
                                     job.folds.groups, read_description(cfg.folds_path, cfg.data).get("test_rows"))
        print(experiment.format_cv(cv, cfg.exp_name))
        if failed:
            raise PipelineError(f"{len(failed)} of {len(todo)} folds did not finish: " + "; ".join(failed.values())
                                + ". The others are saved; finish with: "
                                + command("train", cfg, FLAGS, fold="all", resume=True, overwrite=False))
        if cfg.oof_tta or cfg.report:
            images = images if images is not None else job.rows(device)[0]
        if cfg.oof_tta:
            cv = oof_tta(exp_dir, images, cfg.tta_preset or desc.tta_preset, cfg.batch_size, device, cfg.precision)
        if cfg.report:
            from pipeline.reporting import write_report
            print(f"report: {write_report(exp_dir, images)}")
        else:
            print(f"figures: {command('report', cfg, REPORT_FLAGS, exp=(cfg.exp_name,))}")
        tracking.finish(exp_dir, cv, experiment.done_folds(exp_dir))
    return cv


def data_name(data: str) -> str:
    """The MLflow experiment an experiment's run goes in: the competition's folder or zip name."""
    return Path(data.rstrip("/")).name.removesuffix(".zip") or "pipeline"


def main(argv=None) -> int:
    return main_guard(lambda a: run(parse_config(a, "train", FLAGS, __doc__)), argv)


if __name__ == "__main__":
    sys.exit(main())
