"""The CatBoost learner (`--model catboost`): one fold fit with early stopping on the competition metric, the table's
categorical columns passed as categories (CatBoost's ordered target statistics, not one-hot); the model saved in
CatBoost's own binary format (fold<k>.cbm) and loaded without pickle. pipeline.learners.gbm lists the names every
table library has.

Rows are preprocess.gbm_apply's (NaN = missing; categories as codes, those the fold never saw = missing), given to
CatBoost as a frame whose categorical columns are integer codes (-1 = missing).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError, cut, one_line, quote
from pipeline.io import atomic_path
from pipeline.learners.gbm import _check_fold, _outputs, _targets, load_params  # noqa: F401  (load_params: the interface)

TITLE, PACKAGE, EXTRA = "CatBoost", "catboost", "catboost"
IMPORTANCE = "prediction values change"  # what feature_importance measures (the report's label)
SUFFIX, ROWS, SEEDED = ".cbm", "gbm", True
DEFAULTS = {"iterations": 2000, "learning_rate": 0.06, "depth": 6, "od_type": "Iter", "od_wait": 100}
# CatBoost's other names for the parameters the pipeline gives defaults to (it refuses two names of one parameter)
ALIASES = {"learning_rate": ("learning_rate", "eta"), "depth": ("depth", "max_depth"),
           "iterations": ("iterations", "num_boost_round", "n_estimators", "num_trees"),
           "od_wait": ("od_wait", "early_stopping_rounds"), "random_seed": ("random_seed", "random_state"),
           "thread_count": ("thread_count", "nthread")}
# set by the pipeline: the loss follows the task, early stopping reads the competition metric, columns come from data
SET_BY_PIPELINE = ("eval_metric", "cat_features", "class_names", "use_best_model", "custom_metric", "custom_loss",
                   "train_dir", "allow_writing_files", "classes_count")
# CatBoost's own metrics that order iterations as the competition metric does (faster than a Python metric)
BUILT_IN = {"rmse": "RMSE", "mse": "RMSE", "mae": "MAE", "accuracy": "Accuracy"}


def fit_fold(train: tuple, valid: tuple, categorical: list[int], task, params: dict, seed: int,
             deadline: float | None = None, threads: int | None = None):
    """(model cut to its best iteration, best iteration (1-based), valid predictions at it)."""
    (x_train, y_train), (x_valid, y_valid) = train, valid
    from catboost import CatBoost, CatBoostError, Pool

    _check_fold(x_train, y_train, x_valid, y_valid, task)
    settings = resolve_params(params, task, seed, threads)
    settings["eval_metric"] = eval_metric(task)
    train = Pool(frame(x_train, categorical), _targets(y_train, task), cat_features=list(categorical))
    valid = Pool(frame(x_valid, categorical), _targets(y_valid, task), cat_features=list(categorical))
    model = CatBoost(settings)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Failed to import numba for optimizing custom metrics"
            model.fit(train, eval_set=valid, use_best_model=True, verbose=False,
                      callbacks=[_Deadline(deadline)] if deadline is not None else None)
    except CatBoostError as e:
        raise PipelineError(f"--gbm-params: CatBoost refused the training parameters ({cut(one_line(e), 200)})") \
            from None
    best = int(model.get_best_iteration() or 0) + 1
    return model, best, predict(model, x_valid, task)


def resolve_params(params: dict, task, seed: int, threads: int | None = None) -> dict:
    """CatBoost's parameters: the defaults, the seed, this process's threads, the user's --gbm-params over them, then
    the loss the task needs."""
    fixed = [key for key in params if key in SET_BY_PIPELINE]
    if fixed:
        raise PipelineError(f"--gbm-params: {fixed[0]!r} is set by the pipeline (early stopping uses the competition "
                            f"metric {task.metric}; categorical columns come from the data); remove it")
    own = DEFAULTS | {"random_seed": seed, "allow_writing_files": False} | ({"thread_count": threads} if threads else {})
    user = {k: v for k, v in params.items() if k not in ("loss_function", "objective")}
    for name, aliases in ALIASES.items():  # a user's alias replaces the default, which CatBoost would refuse beside it
        if any(a in user for a in aliases):
            own.pop(name, None)
    rate = next((user[a] for a in ALIASES["learning_rate"] if a in user), None)
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1):
        raise PipelineError(f"--gbm-params: CatBoost's learning rate must be a number in (0, 1], got {quote(rate, 60)}")
    loss = {"loss_function": _loss(task, params.get("loss_function", params.get("objective")))}
    classes = {} if task.kind == "regression" else {"class_names": list(range(task.num_outputs))}  # a class a fold lacks
    return own | user | loss | classes


def eval_metric(task):
    """CatBoost's built-in metric where it ranks iterations as the competition metric does, else the competition
    metric itself computed in Python (task.scores) on CatBoost's raw values."""
    if task.metric in BUILT_IN:
        return BUILT_IN[task.metric]
    if task.metric == "roc_auc" and task.num_outputs == 2:
        return "AUC"
    if task.metric == "log_loss":
        return "Logloss" if task.num_outputs == 2 else "MultiClass"
    return _Metric(task)


class _Metric:
    """A CatBoost user metric: the competition metric of the validation rows (one call per iteration)."""

    def __init__(self, task):
        self.task = task

    def is_max_optimal(self) -> bool:
        return self.task.higher_is_better

    def evaluate(self, approxes, target, weight):
        raw = np.array(approxes, dtype=np.float64)  # (outputs, n) raw values
        if self.task.kind == "regression":
            preds = raw[0].reshape(-1, 1)
        elif len(raw) == 1:  # binary: the log-odds of class 1
            p = 1.0 / (1.0 + np.exp(-raw[0]))
            preds = np.stack([1.0 - p, p], axis=1)
        else:
            e = np.exp(raw - raw.max(axis=0))
            preds = (e / e.sum(axis=0)).T
        return float(self.task.scores(preds, np.asarray(target).astype(
            np.int64 if self.task.kind == "multiclass" else np.float64))[self.task.metric]), 1.0

    def get_final_error(self, error, weight):
        return error


class _Deadline:
    """Stops boosting once the fold's share of --time-limit is spent (use_best_model keeps the best so far)."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def after_iteration(self, info) -> bool:
        return time.monotonic() < self.deadline


def frame(x: np.ndarray, categorical: list[int]):
    """gbm rows as CatBoost takes them: numeric columns as floats (NaN = missing), categorical ones as int codes."""
    import pandas as pd

    x = np.asarray(x, dtype=np.float32)
    out = pd.DataFrame(x, columns=[f"f{j}" for j in range(x.shape[1])])
    for j in categorical:
        col = x[:, j]
        out[f"f{j}"] = np.where(np.isfinite(col), col, -1).astype(np.int64)
    return out


def predict(model, x: np.ndarray, task) -> np.ndarray:
    """(n, features) gbm rows -> (n, C) class probabilities or (n, 1) values, float32."""
    from catboost import CatBoostError

    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != len(model.feature_names_):
        raise PipelineError(f"catboost: the model takes rows of {len(model.feature_names_)} features (the fold's gbm "
                            f"columns), got shape {x.shape}")
    categorical = list(model.get_cat_feature_indices())
    try:
        if task.kind == "regression":
            out = _outputs(model.predict(frame(x, categorical), prediction_type="RawFormulaVal"), task)
        else:
            out = np.asarray(model.predict(frame(x, categorical), prediction_type="Probability"), dtype=np.float32)
            out = out.reshape(len(x), -1)
    except CatBoostError as e:
        raise PipelineError(f"catboost: could not predict with the fold's model ({cut(one_line(e), 160)}); retrain "
                            "it with --overwrite") from None
    if out.shape[1] != task.num_outputs:
        raise PipelineError(f"catboost: the model predicts {out.shape[1]} outputs, the task has {task.num_outputs} "
                            "(a model from another experiment? retrain with --overwrite)")
    return out


def save(model, path: str | Path, best_iteration: int) -> None:
    """CatBoost's binary model (already cut to its best iteration), written atomically."""
    with atomic_path(path) as tmp:
        model.save_model(str(tmp), format="cbm")


def load(path: str | Path, num_outputs: int | None = None):
    """A saved .cbm model; a truncated or damaged file is one line naming it."""
    from catboost import CatBoost, CatBoostError

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: CatBoost model not found" + (" (it is a directory)" if path.is_dir() else ""))
    model = CatBoost()
    try:
        model.load_model(str(path), format="cbm")
    except (CatBoostError, OSError, ValueError) as e:
        raise PipelineError(f"{path}: truncated or corrupted CatBoost model ({cut(one_line(e), 120)}); retrain this "
                            "fold with --overwrite") from None
    return model


def feature_importance(model, names: list[str]) -> list[tuple[str, float]]:
    """(name, CatBoost's PredictionValuesChange) for every feature, the most useful first."""
    gain = np.asarray(model.get_feature_importance(), dtype=np.float64)
    if len(names) != len(gain):
        raise PipelineError(f"catboost: {len(names)} feature names for a model of {len(gain)} features")
    order = np.argsort(-gain, kind="stable")
    return [(str(names[i]), float(gain[i])) for i in order]


def search_space(trial) -> dict:
    """One point of tune's search space for CatBoost, in CatBoost's parameter names (an Optuna trial)."""
    return {"learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
            "depth": trial.suggest_int("depth", 4, 10),
            "l2_leaf_reg": trial.suggest_float("l2_leaf_reg", 1.0, 30.0, log=True),
            "random_strength": trial.suggest_float("random_strength", 0.1, 10.0, log=True),
            "bagging_temperature": trial.suggest_float("bagging_temperature", 0.0, 1.0)}


def check_task(task, params: dict) -> None:
    """Refuse, before any work, a task CatBoost cannot fit here or --gbm-params it refuses: a one-iteration fit on
    a few synthetic rows (CatBoost checks its parameters when it starts fitting)."""
    settings = resolve_params(dict(params), task, 0, 1)
    from catboost import CatBoost, CatBoostError

    n = max(8, 2 * task.num_outputs)
    y = np.arange(n) % task.num_outputs if task.kind == "multiclass" else np.linspace(0.0, 1.0, n)
    quick = {k: v for k, v in settings.items() if k not in ALIASES["iterations"] + ALIASES["od_wait"]}
    try:
        CatBoost(quick | {"iterations": 1, "od_type": "Iter", "od_wait": 1}).fit(
            np.arange(n, dtype=np.float32).reshape(-1, 1), y, verbose=False)
    except CatBoostError as e:
        raise PipelineError(f"--gbm-params: CatBoost refused the training parameters ({cut(one_line(e), 200)})") \
            from None


def describe(model) -> str:
    return f"best iteration {model.tree_count_}"


def _loss(task, requested) -> str:
    if task.kind == "multilabel":
        raise PipelineError("--model catboost: multilabel tasks are not supported by the table learners' boosting "
                            "(one model per label); train --model linear or a neural model for this competition")
    if task.several_targets:
        raise PipelineError(f"--model catboost: fits one target here; this regression has {task.num_outputs} "
                            f"({', '.join(task.classes[:4])}); train --model linear or mlp for all of them at once")
    if task.kind == "regression":
        return str(requested) if requested else "RMSE"
    derived = "Logloss" if task.num_outputs == 2 else "MultiClass"
    if requested not in (None, derived):
        raise PipelineError(f"--gbm-params: the loss of a {task.num_outputs}-class task is {derived!r}, set by the "
                            f"pipeline; remove loss_function {quote(requested)}")
    return derived
