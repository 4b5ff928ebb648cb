"""The gbm learner's fold: what train and infer call for `--model lightgbm` (and any library in GBM_LEARNERS).

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

from pipeline import experiment, preprocess
from pipeline.errors import PipelineError
from pipeline.learners import gbm_learner

SUFFIX = ".txt"  # the fold's model file: fold<k>.txt
MIN_LEAF_ALIASES = ("min_data_in_leaf", "min_data_per_leaf", "min_data", "min_child_samples", "min_samples_leaf")


def train_fold(cfg, params: dict, spec, k: int, data: torch.Tensor, targets: torch.Tensor, folds: np.ndarray,
               exp_dir: Path, main: bool = True) -> np.ndarray:
    """Fit fold k with the library's `params` (--gbm-params as read at setup and saved in config.json); save its
    model and preprocessing; return its validation predictions (n_valid, outputs)."""
    library = gbm_learner(cfg.model)
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
