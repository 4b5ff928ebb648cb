"""The XGBoost learner (`--model xgboost`): one fold fit with early stopping on the competition metric, the table's
categorical columns as XGBoost's native categories (feature type "c"); the model saved as XGBoost's JSON
(fold<k>.xgb.json) and loaded without pickle. pipeline.learners.gbm lists the names every table library has.

Rows are preprocess.gbm_apply's: NaN = missing, categories as codes (those the fold never saw = missing).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError, cut, one_line, quote
from pipeline.io import atomic_path
from pipeline.learners.gbm import _check_fold, _outputs, _targets, load_params  # noqa: F401  (load_params: the interface)

TITLE, PACKAGE, EXTRA = "XGBoost", "xgboost", "xgboost"
IMPORTANCE = "total split gain"  # what feature_importance measures (the report's label)
SUFFIX, ROWS, SEEDED = ".xgb.json", "gbm", True
DEFAULTS = {"eta": 0.05, "max_depth": 6, "subsample": 0.8, "colsample_bytree": 0.8, "min_child_weight": 1.0,
            "tree_method": "hist", "max_cat_to_onehot": 1}
NUM_BOOST_ROUND, EARLY_STOPPING_ROUNDS = 2000, 100
ROUND_KEYS = ("num_boost_round", "n_estimators", "num_round")
STOP_KEYS = ("early_stopping_rounds",)
# set by the pipeline: the objective follows the task, early stopping reads the competition metric
SET_BY_PIPELINE = ("eval_metric", "num_class", "disable_default_eval_metric", "enable_categorical", "feature_types")
REGRESSION_OBJECTIVES = ("reg:squarederror", "reg:squaredlogerror", "reg:absoluteerror", "reg:pseudohubererror",
                         "reg:tweedie", "reg:gamma", "count:poisson", "reg:quantileerror")


def fit_fold(train: tuple, valid: tuple, categorical: list[int], task, params: dict, seed: int,
             deadline: float | None = None, threads: int | None = None):
    """(booster cut to its best iteration, best iteration (1-based rounds), valid predictions at it)."""
    (x_train, y_train), (x_valid, y_valid) = train, valid
    import xgboost as xgb

    _check_fold(x_train, y_train, x_valid, y_valid, task)
    settings, rounds, stopping = resolve_params(params, task, seed, threads)
    types = feature_types(np.shape(x_train)[1], categorical)
    train = xgb.DMatrix(np.asarray(x_train, np.float32), label=_targets(y_train, task), feature_types=types,
                        enable_categorical=True)
    valid = xgb.DMatrix(np.asarray(x_valid, np.float32), label=_targets(y_valid, task), feature_types=types,
                        enable_categorical=True)
    y_valid = _targets(y_valid, task)

    def metric(predt: np.ndarray, _matrix) -> tuple[str, float]:
        return task.metric, float(task.scores(_shape(predt, task), y_valid)[task.metric])

    callbacks = [xgb.callback.EarlyStopping(rounds=stopping, maximize=task.higher_is_better, save_best=True)]
    if deadline is not None:
        callbacks.append(_deadline(deadline))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            booster = xgb.train(settings, train, num_boost_round=rounds, evals=[(valid, "valid")],
                                custom_metric=metric, callbacks=callbacks, verbose_eval=False)
    except xgb.core.XGBoostError as e:
        raise PipelineError(f"--gbm-params: XGBoost refused the training parameters "
                            f"({cut(one_line(e).split('Stack trace')[0], 200)})") from None
    best = booster.num_boosted_rounds()  # save_best: the booster comes back cut to its best iteration
    return booster, best, predict(booster, x_valid, task)


def resolve_params(params: dict, task, seed: int, threads: int | None = None) -> tuple[dict, int, int]:
    """(XGBoost's parameters, boosting rounds, early-stopping rounds): the defaults, the seed, this process's threads,
    the user's --gbm-params over them, then the objective the task needs."""
    user = dict(params)
    fixed = [key for key in user if key in SET_BY_PIPELINE]
    if fixed:
        raise PipelineError(f"--gbm-params: {fixed[0]!r} is set by the pipeline (early stopping uses the competition "
                            f"metric {task.metric}; classes and categorical columns come from the data); remove it")
    rounds = _int(next((user.pop(k) for k in ROUND_KEYS if k in user), NUM_BOOST_ROUND), "num_boost_round")
    stopping = _int(next((user.pop(k) for k in STOP_KEYS if k in user), EARLY_STOPPING_ROUNDS), "early_stopping_rounds")
    objective = _objective(task, user.pop("objective", None))
    own = DEFAULTS | {"seed": seed, "verbosity": 0} | ({"nthread": threads} if threads else {})
    return own | user | objective | {"disable_default_eval_metric": 1}, rounds, stopping


def _deadline(deadline: float):
    import xgboost as xgb

    class Deadline(xgb.callback.TrainingCallback):
        """Stops boosting once the fold's share of --time-limit is spent (save_best keeps the best so far)."""

        def after_iteration(self, model, epoch, evals_log) -> bool:
            return time.monotonic() > deadline
    return Deadline()


def feature_types(n: int, categorical: list[int]) -> list[str]:
    return ["c" if j in set(categorical) else "q" for j in range(n)]


def predict(booster, x: np.ndarray, task) -> np.ndarray:
    """(n, features) gbm rows -> (n, C) class probabilities or (n, 1) values, float32."""
    import xgboost as xgb

    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != booster.num_features():
        raise PipelineError(f"xgboost: the model takes rows of {booster.num_features()} features (the fold's gbm "
                            f"columns), got shape {x.shape}")
    types = booster.feature_types or ["q"] * x.shape[1]
    out = _shape(booster.predict(xgb.DMatrix(x, feature_types=types, enable_categorical=True)), task)
    if out.shape[1] != task.num_outputs:
        raise PipelineError(f"xgboost: the model predicts {out.shape[1]} outputs, the task has {task.num_outputs} "
                            "(a model from another experiment? retrain with --overwrite)")
    return out


def save(booster, path: str | Path, best_iteration: int) -> None:
    """XGBoost's JSON model (already cut to its best iteration), written atomically."""
    raw = booster.save_raw(raw_format="json")
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(bytes(raw))


def load(path: str | Path, num_outputs: int | None = None):
    """A saved JSON model; a truncated or damaged file is one line naming it."""
    import xgboost as xgb

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: XGBoost model not found" + (" (it is a directory)" if path.is_dir() else ""))
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(path.read_bytes()))
    except (xgb.core.XGBoostError, ValueError) as e:
        raise PipelineError(f"{path}: truncated or corrupted XGBoost model ({cut(one_line(e).split('Stack trace')[0], 120)}); "
                            "retrain this fold with --overwrite") from None
    return booster


def feature_importance(booster, names: list[str]) -> list[tuple[str, float]]:
    """(name, total gain of its splits) for every feature, the most useful first (unused features: 0)."""
    scores = booster.get_score(importance_type="total_gain")
    if len(names) != booster.num_features():
        raise PipelineError(f"xgboost: {len(names)} feature names for a model of {booster.num_features()} features")
    gain = np.array([scores.get(f"f{j}", 0.0) for j in range(len(names))], dtype=np.float64)
    order = np.argsort(-gain, kind="stable")
    return [(str(names[i]), float(gain[i])) for i in order]


def search_space(trial) -> dict:
    """One point of tune's search space for XGBoost, in XGBoost's parameter names (an Optuna trial)."""
    return {"eta": trial.suggest_float("eta", 0.01, 0.2, log=True),
            "max_depth": trial.suggest_int("max_depth", 3, 10),
            "min_child_weight": trial.suggest_float("min_child_weight", 0.5, 20.0, log=True),
            "subsample": trial.suggest_float("subsample", 0.5, 1.0),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
            "lambda": trial.suggest_float("lambda", 1e-3, 10.0, log=True)}


def check_task(task, params: dict) -> None:
    """Refuse, before any work, a task XGBoost cannot fit here or --gbm-params it refuses (names it does not know
    among them: XGBoost would only warn): one round on a few synthetic rows."""
    import xgboost as xgb

    settings, _, _ = resolve_params(dict(params), task, 0, 1)
    n = max(8, 2 * task.num_outputs)
    y = np.arange(n) % task.num_outputs if task.kind == "multiclass" else np.linspace(0.0, 1.0, n)
    try:
        booster = xgb.train(settings, xgb.DMatrix(np.arange(n, dtype=np.float32).reshape(-1, 1), label=y), 1)
    except xgb.core.XGBoostError as e:
        raise PipelineError(f"--gbm-params: XGBoost refused the training parameters "
                            f"({cut(one_line(e).split('Stack trace')[0], 200)})") from None
    import json

    known = set(_keys(json.loads(booster.save_config())))
    unknown = [k for k in params if k not in known and k not in ROUND_KEYS + STOP_KEYS + ("seed", "nthread", "eta")]
    if unknown:
        raise PipelineError(f"--gbm-params: {quote(unknown[0], 60)} is not an XGBoost parameter (the names: its "
                            "Parameters page, e.g. eta, max_depth, min_child_weight, subsample, lambda)")


def describe(booster) -> str:
    return f"best iteration {booster.num_boosted_rounds()}"


def _keys(config, out=None) -> list[str]:
    """Every parameter name in XGBoost's saved configuration (nested mappings)."""
    out = [] if out is None else out
    if isinstance(config, dict):
        for key, value in config.items():
            out.append(key)
            _keys(value, out)
    return out


def _shape(predt: np.ndarray, task) -> np.ndarray:
    """XGBoost's predictions in the task's form: P(class 1) (n,) -> (n, 2); (n, C) as is; values -> (n, 1)."""
    return _outputs(predt, task)


def _objective(task, requested) -> dict:
    if task.kind == "multilabel":
        raise PipelineError("--model xgboost: multilabel tasks are not supported by the table learners' boosting "
                            "(one model per label); train --model linear or a neural model for this competition")
    if task.several_targets:
        raise PipelineError(f"--model xgboost: fits one target here; this regression has {task.num_outputs} "
                            f"({', '.join(task.classes[:4])}); train --model linear or mlp for all of them at once")
    if task.kind == "regression":
        if requested is not None and str(requested) not in REGRESSION_OBJECTIVES:
            raise PipelineError(f"--gbm-params: objective {quote(requested)} does not fit a regression; use one of "
                                f"{', '.join(REGRESSION_OBJECTIVES[:4])}, ... or remove it")
        return {"objective": requested or "reg:squarederror"}
    derived = {"objective": "binary:logistic"} if task.num_outputs == 2 else \
        {"objective": "multi:softprob", "num_class": task.num_outputs}
    if requested not in (None, derived["objective"]):
        raise PipelineError(f"--gbm-params: the objective of a {task.num_outputs}-class task is "
                            f"{derived['objective']!r}, set by the pipeline; remove objective {quote(requested)}")
    return derived


def _int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PipelineError(f"--gbm-params: {key} must be an integer >= 1, got {quote(value, 60)}")
    return value
