"""The linear learner (`--model linear`): scikit-learn's ridge regression (every target at once) or logistic
regression (multiclass; one-vs-rest for multilabel) on the fold's preprocessing as the MLP gets it (median
imputation, scaling, one-hot with the unseen slot). Its regularisation is chosen by an inner cross-validation on the
fold's training rows alone (RidgeCV's leave-one-out, LogisticRegressionCV's 3 folds), never on its validation rows.
Saved as JSON (coefficients, intercepts, classes, the chosen strength; fold<k>.linear.json), never a pickle; predicted
with numpy. pipeline.learners.gbm lists the names every table library has.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError, quote
from pipeline.io import read_json, write_json
from pipeline.learners.gbm import load_params  # noqa: F401  (the interface: --gbm-params is refused below)

TITLE, PACKAGE, EXTRA = "scikit-learn's linear models", "sklearn", None
IMPORTANCE = "mean |coefficient| of the standardized column"  # what feature_importance measures (the report's label)
SUFFIX, ROWS, SEEDED = ".linear.json", "vector", False
VERSION = 1
ALPHAS = tuple(np.logspace(-3, 4, 15).tolist())  # ridge strengths tried by the inner leave-one-out
CS = 10  # inverse strengths tried by the logistic regression's inner CV (LogisticRegressionCV's grid, 1e-4..1e4)
INNER_FOLDS = 3
MAX_ITER = 2000


def fit_fold(train: tuple, valid: tuple, categorical: list[int], task, params: dict, seed: int,
             deadline: float | None = None, threads: int | None = None):
    """(model as a JSON-able dict, 1, valid predictions): the regularisation picked on the training rows only."""
    (x_train, y_train), (x_valid, y_valid) = train, valid
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV

    x_train = np.asarray(x_train, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs's ConvergenceWarning at the weakest strengths of the grid
        if task.kind == "regression":
            y = np.asarray(y_train, dtype=np.float64).reshape(len(x_train), -1)
            ridge = RidgeCV(alphas=ALPHAS).fit(x_train, y)
            model = {"kind": "ridge", "coef": np.atleast_2d(ridge.coef_), "intercept": np.atleast_1d(ridge.intercept_),
                     "strength": {"alpha": float(ridge.alpha_)}}
        elif task.kind == "multiclass":
            present = np.unique(y_train)
            if len(present) < 2:
                raise PipelineError(f"--model linear: the fold's training rows hold one class ({int(present[0])}); "
                                    "a logistic regression needs two")
            logit = LogisticRegressionCV(Cs=CS, cv=_inner(y_train, seed), scoring="neg_log_loss",
                                         max_iter=MAX_ITER).fit(x_train, y_train)
            model = {"kind": "softmax" if len(present) > 2 else "logistic", "coef": logit.coef_,
                     "intercept": logit.intercept_, "classes": logit.classes_,
                     "strength": {"C": float(np.ravel(logit.C_)[0])}}
        else:  # multilabel: one logistic regression per label
            coefs, intercepts, strengths = [], [], []
            for j in range(task.num_outputs):
                yj = np.asarray(y_train)[:, j].astype(np.int64)
                if len(np.unique(yj)) < 2:  # a label always on (or off) in these rows: its rate, no slope
                    rate = float(np.clip(yj.mean(), 1e-4, 1 - 1e-4))
                    coefs.append(np.zeros(x_train.shape[1]))
                    intercepts.append(np.log(rate / (1 - rate)))
                    strengths.append(0.0)
                    continue
                logit = LogisticRegressionCV(Cs=CS, cv=_inner(yj, seed), scoring="neg_log_loss",
                                             max_iter=MAX_ITER).fit(x_train, yj)
                coefs.append(logit.coef_[0])
                intercepts.append(float(logit.intercept_[0]))
                strengths.append(float(np.ravel(logit.C_)[0]))
            model = {"kind": "one_vs_rest", "coef": np.array(coefs), "intercept": np.array(intercepts),
                     "strength": {"C": strengths}}
    model = _jsonable(model | {"version": VERSION, "n_features": int(x_train.shape[1]), "outputs": task.num_outputs})
    return model, 1, predict(model, x_valid, task)


def _inner(y: np.ndarray, seed: int):
    """The inner folds of the training rows (stratified, seeded); fewer when a class is rarer than the folds."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(np.asarray(y, dtype=np.int64))
    smallest = int(counts[counts > 0].min())
    return StratifiedKFold(n_splits=max(2, min(INNER_FOLDS, smallest)), shuffle=True, random_state=seed)


def predict(model: dict, x: np.ndarray, task) -> np.ndarray:
    """(n, features) rows -> (n, C) probabilities or (n, targets) values, float32."""
    x = np.asarray(x, dtype=np.float64)
    coef, intercept = np.asarray(model["coef"], np.float64), np.asarray(model["intercept"], np.float64)
    if x.ndim != 2 or x.shape[1] != coef.shape[1]:
        raise PipelineError(f"linear: the model takes rows of {coef.shape[1]} features (the fold's encoded columns), "
                            f"got shape {x.shape}")
    z = x @ coef.T + intercept
    if model["kind"] == "ridge":
        return z.astype(np.float32)
    if model["kind"] == "one_vs_rest":
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    classes = np.asarray(model["classes"], dtype=np.int64)
    if model["kind"] == "logistic":  # two classes: one column of log-odds for the second
        z = np.concatenate([np.zeros_like(z), z], axis=1)
    out = np.zeros((len(x), task.num_outputs))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out[:, classes] = e / e.sum(axis=1, keepdims=True)  # a class the fold never saw: probability 0
    return out.astype(np.float32)


def save(model: dict, path: str | Path, best_iteration: int) -> None:
    write_json(model, path)


def load(path: str | Path, num_outputs: int | None = None) -> dict:
    """A saved model, its structure checked: a damaged or foreign file is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: linear model not found" + (" (it is a directory)" if path.is_dir() else ""))
    model = read_json(path, "linear model")
    try:
        problem = _problem(model, num_outputs)
    except (KeyError, TypeError, ValueError) as e:
        problem = f"{type(e).__name__}: {quote(e, 80)}"
    if problem:
        raise PipelineError(f"{path}: not a linear model written by the pipeline ({problem}); retrain this fold "
                            "with --overwrite")
    return model


def _problem(model, num_outputs: int | None) -> str:
    if not isinstance(model, dict) or model.get("version") != VERSION:
        return f"version {quote(model.get('version') if isinstance(model, dict) else model)}, expected {VERSION}"
    kind = model["kind"]
    if kind not in ("ridge", "logistic", "softmax", "one_vs_rest"):
        return f"kind {quote(kind)}"
    coef, intercept = np.asarray(model["coef"], dtype=np.float64), np.asarray(model["intercept"], dtype=np.float64)
    if coef.ndim != 2 or intercept.shape != (coef.shape[0],) or coef.shape[1] != model["n_features"]:
        return f"coefficients of shape {coef.shape} and intercepts of shape {intercept.shape}"
    if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
        return "coefficients that are not finite"
    if kind in ("logistic", "softmax"):
        classes = model["classes"]
        if not (isinstance(classes, list) and all(type(c) is int for c in classes) and classes == sorted(set(classes))
                and len(classes) == (2 if kind == "logistic" else coef.shape[0])
                and (num_outputs is None or 0 <= classes[0] and classes[-1] < num_outputs)):
            return "classes that are not the task's"
    elif num_outputs is not None and coef.shape[0] != num_outputs:
        return f"{coef.shape[0]} outputs, the task has {num_outputs}"
    return ""


def feature_importance(model: dict, names: list[str]) -> list[tuple[str, float]]:
    """(name, mean absolute coefficient over the outputs) for every encoded column (standardized, so comparable),
    the most useful first."""
    weight = np.abs(np.asarray(model["coef"], dtype=np.float64)).mean(axis=0)
    if len(names) != len(weight):
        raise PipelineError(f"linear: {len(names)} feature names for a model of {len(weight)} features")
    order = np.argsort(-weight, kind="stable")
    return [(str(names[i]), float(weight[i])) for i in order]


def search_space(trial) -> dict:
    raise PipelineError("tune --model linear: its one setting, the regularisation strength, is already chosen by an "
                        "inner cross-validation on each fold's training rows; train it with --fold all")


def check_task(task, params: dict) -> None:
    if params:
        raise PipelineError(f"--gbm-params: --model linear takes no parameters (its regularisation is chosen by an "
                            f"inner CV on each fold's training rows); remove {quote(next(iter(params)), 60)}")


def describe(model: dict) -> str:
    strength = model["strength"]
    if "alpha" in strength:
        return f"ridge alpha {strength['alpha']:.3g}"
    c = strength["C"]
    return f"C {c:.3g}" if isinstance(c, float) else f"C {np.median(c):.3g} (median over labels)"


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
