"""The gbm learner: `--model lightgbm` (any library in GBM_LEARNERS, one module each with pipeline.learners.gbm's
functions).

Per fold: the table's preprocessing fitted on the fold's training rows (feature selection, categories the fold
never saw -> missing), the booster fitted with early stopping on the fold's validation rows in the competition
metric, saved as `fold<k>.txt` (the library's text model at its best iteration) beside `fold<k>.prep.json`; its
validation predictions are the fold's OOF rows. metrics.csv gets one row per fold (epoch = the best iteration),
so runs, report and the CV read it as they read a neural fold.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

import importlib

from pipeline import experiment, preprocess
from pipeline.errors import PipelineError
from pipeline.experiment import GBM_RECIPE
from pipeline.io import file_hash
from pipeline.learners import GBM_LEARNERS, Learner

SUFFIX = ".txt"  # the fold's model file: fold<k>.txt
MIN_LEAF_ALIASES = ("min_data_in_leaf", "min_data_per_leaf", "min_data", "min_child_samples", "min_samples_leaf")


def gbm_learner(name: str):
    """The module that fits and predicts with the gradient-boosting library `name`."""
    if name not in GBM_LEARNERS:
        raise PipelineError(f"--model: unknown gradient-boosting learner {name!r}; valid: {', '.join(GBM_LEARNERS)}")
    return importlib.import_module("pipeline.learners.gbm")


class Boosted(Learner):
    form = "gbm"
    suffix = SUFFIX
    recipe = tuple(GBM_RECIPE)
    report_keys = tuple(GBM_RECIPE[:3])

    def __init__(self, name: str):
        self.name, self.library = name, gbm_learner(name)

    def check(self, cfg, task, n_features: int) -> dict:
        """A bad params file or a task the library cannot fit fails here, before any work; the parameters themselves
        are the recipe (every fold and --resume read them from config.json), not the file's path."""
        params = self.library.load_params(cfg.gbm_params) if cfg.gbm_params else {}
        self.library.check_task(task, params)
        if not cfg.gbm_params:
            return {}
        return {"gbm_param_values": params, "gbm_params_hash": file_hash(Path(cfg.gbm_params).read_bytes())}

    def resolve(self, cfg, kind, features: dict, say):
        from dataclasses import replace

        from pipeline.config import Config

        if cfg.cat_encoding != Config().cat_encoding:
            say(f"notice: --cat-encoding {cfg.cat_encoding} applies to a neural model on a table's categorical "
                "columns; LightGBM splits on categories itself: ignored")
            cfg = replace(cfg, cat_encoding=Config().cat_encoding)  # not saved as the recipe: --resume without it works
        return cfg

    def fit_fold(self, setup, k: int, rows: tuple, run) -> np.ndarray:
        if run.ranks.distributed:
            raise PipelineError(f"--model {self.name}: a boosting library trains a fold in one process; run it without "
                                "torchrun (--gpus cpu,cpu trains folds in parallel)")
        params = setup.resolved.setting("gbm_param_values") or {}  # read once at setup: one recipe for every fold
        return train_fold(setup.cfg, params, setup.spec, k, rows, setup.folds.fold, setup.exp_dir, run.ranks.main)

    def train_full(self, setup, run) -> dict:
        raise PipelineError(f"--fold full: {self.name} picks its number of trees on a fold's validation rows, which "
                            "--fold full does not have; train --fold all and infer from the fold models")

    def predict_fold(self, path: Path, rows: torch.Tensor, cfg, config, preset: str, device, desc: str) -> np.ndarray:
        from pipeline.inputs.spec import DataSpec

        spec = DataSpec.from_config(config, str(path.parent / "config.json"))
        return predict_fold(path, rows.cpu().numpy(), spec, self.name)

    def importance(self, exp_dir: Path):
        return importance(exp_dir, self.name)

    def runs_columns(self, config) -> dict:
        return {"epochs": "-", "batch": "-", "lr": "-", "smooth": "-"}  # no epochs, batches or lr schedule

    def search_space(self, trial, cfg) -> dict:
        return self.library.search_space(trial)

    def trial_config(self, cfg, params: dict, path: Path):
        """A point becomes a params file in the study folder, under the user's own --gbm-params."""
        from dataclasses import replace

        from pipeline.io import write_json

        base = self.library.load_params(cfg.gbm_params) if cfg.gbm_params else {}
        write_json(base | params, path)
        return replace(cfg, gbm_params=str(path))


def learner(name: str) -> Boosted:
    return Boosted(name)


def train_fold(cfg, params: dict, spec, k: int, rows: tuple, folds: np.ndarray, exp_dir: Path,
               main: bool = True) -> np.ndarray:
    """Fit fold k with the library's `params` (--gbm-params as read at setup and saved in config.json) on `rows`
    ((data, targets) of every row); save its model and preprocessing; return its validation predictions."""
    library = gbm_learner(cfg.model)
    data, targets = rows
    raw, y = data.cpu().numpy(), targets.cpu().numpy()
    train_rows, valid_rows = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
    features = spec.features
    state = preprocess.fit(raw[train_rows], list(features.get("categorical", [])),
                           list(features.get("cardinalities", [])), list(features.get("names", [])),
                           y=y[train_rows], task_kind=spec.task.kind, select_k=cfg.select_features)
    x_train, x_valid = preprocess.gbm_apply(state, raw[train_rows]), preprocess.gbm_apply(state, raw[valid_rows])
    if not any(alias in params for alias in ("num_threads", "num_thread", "nthread", "nthreads", "n_jobs")):
        # the threads this process was given (a --gpus cpu,cpu worker has its share): LightGBM's own default takes
        # every core, and OpenMP threads spinning against another process's cost ten times their work
        params = params | {"num_threads": torch.get_num_threads()}
    started = time.perf_counter()
    booster, best, preds = library.fit_fold(x_train, y[train_rows], x_valid, y[valid_rows],
                                            preprocess.gbm_categorical(state), spec.task, params, cfg.seed + k)
    seconds = time.perf_counter() - started
    if best <= 1:  # the first tree alone scored best: usually no split was possible
        leaf = next((params[a] for a in MIN_LEAF_ALIASES if a in params), 20)
        print(f"notice: fold {k}: {cfg.model} kept its first iteration only; {len(train_rows):,} training rows with "
              f"min_data_in_leaf {leaf} leave few splits: set a lower min_data_in_leaf in --gbm-params", flush=True)
    valid = spec.task.scores(preds, y[valid_rows])
    if main:
        preprocess.save(state, exp_dir / f"fold{k}.prep.json")
        library.save(booster, exp_dir / f"fold{k}{SUFFIX}", best)
        row = {"fold": k, "epoch": best, "train_loss": float("nan"), "train_accuracy": float("nan"),
               "valid_loss": valid["loss"]} | {f"valid_{m}": v for m, v in valid.items() if m != "loss"} \
            | {"lr": float("nan"), "seconds": round(seconds, 3)}
        experiment.append_metrics(exp_dir, row, [])
        experiment.write_selection(exp_dir, {"fold": k, "best_epoch": best, f"best_epoch_{spec.task.metric}":
                                             valid[spec.task.metric], "swa_epochs": 0,
                                             f"swa_{spec.task.metric}": float("nan"), "kept": "best_epoch"})
    top = ", ".join(name for name, _ in library.feature_importance(booster, preprocess.gbm_names(state))[:3])
    print(f"fold {k}: {cfg.model} best iteration {best}  valid {spec.task.metric} {valid[spec.task.metric]:.5f}  "
          f"valid loss {valid['loss']:.4f}  {seconds:.1f}s  (top features: {top})", flush=True)
    return preds


def importance(exp_dir: Path, model_name: str) -> "pd.DataFrame":
    """Total split gain of every raw feature in each saved fold's model, the folds' mean last, the most useful first
    (a feature a fold's selection dropped counts 0 there)."""
    import pandas as pd

    library, folds = gbm_learner(model_name), {}
    for path in sorted(exp_dir.glob(f"fold[0-9]*{SUFFIX}"), key=lambda p: int(p.stem.removeprefix("fold"))):
        prep = path.with_name(path.name.removesuffix(SUFFIX) + ".prep.json")
        if prep.is_file():
            gains = library.feature_importance(library.load(path), preprocess.gbm_names(preprocess.load(prep)))
            folds[f"fold {path.stem.removeprefix('fold')}"] = dict(gains)
    if not folds:
        raise PipelineError(f"{exp_dir}: no fold{SUFFIX} model with its .prep.json to read feature importance from")
    table = pd.DataFrame(folds).fillna(0.0)
    table["mean"] = table.mean(axis=1)
    table = table.sort_values("mean", ascending=False, kind="stable")
    return table.rename_axis("feature").reset_index()


def predict_fold(path: Path, raw: np.ndarray, spec, model_name: str) -> np.ndarray:
    """A saved fold's predictions (n, outputs) for raw table rows, through the fold's own preprocessing."""
    prep = path.with_name(path.name.removesuffix(SUFFIX) + ".prep.json")
    if not prep.is_file():
        raise PipelineError(f"{prep}: missing (the preprocessing fold {path.name} was trained with); retrain with "
                            "--overwrite")
    library = gbm_learner(model_name)
    state = preprocess.load(prep, spec.features)
    return library.predict(library.load(path, spec.task.num_outputs), preprocess.gbm_apply(state, raw), spec.task)
