"""Competition metrics (pure, scikit-learn), each with its direction, shared by validation, OOF, CV and the ensemble.

Predictions are what the task's activation gives: class probabilities (N, C) for multiclass, per-label
probabilities (N, C) for multilabel, values (N, T) for regression on T targets. Targets: class indices (N,) int,
0/1 matrix (N, C), values (N,) or (N, T). rmse, mse and mae pool every cell of several targets; mcrmse (the mean over
the target columns of each column's RMSE, CommonLit's and Feedback Prize's metric) weighs each target alike.
"""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

EPS = 1e-15


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose most probable class is the label.

    >>> accuracy(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 0]))
    0.5
    """
    return float((probs.argmax(1) == labels).mean())


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-probability of the hard label (probabilities clipped to [1e-15, 1])."""
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, EPS, 1.0)).mean())


def bce(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean binary cross-entropy over every label of every row (multilabel log loss)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)  # float32's 1 - 1e-15 is 1.0: log(0)
    return float(-(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean())


def rmse(values: np.ndarray, targets: np.ndarray) -> float:
    return float(np.sqrt(np.mean((values.reshape(-1) - targets.reshape(-1)) ** 2)))


def mcrmse(values: np.ndarray, targets: np.ndarray) -> float:
    """Mean column-wise RMSE: each target column's RMSE, averaged (one target: its RMSE).

    >>> mcrmse(np.array([[0.0, 0.0], [0.0, 0.0]]), np.array([[3.0, 1.0], [3.0, 1.0]]))
    2.0
    """
    diff = values.reshape(len(values), -1) - targets.reshape(len(values), -1)
    return float(np.sqrt((diff ** 2).mean(0)).mean())


def mean_roc_auc(scores: np.ndarray, onehot: np.ndarray) -> float:
    """Macro ROC AUC over the columns that have both positives and negatives here (a small fold may lack a class)."""
    cols = [c for c in range(onehot.shape[1]) if 0 < onehot[:, c].sum() < len(onehot)]
    if not cols:
        return float("nan")
    return float(np.mean([skm.roc_auc_score(onehot[:, c], scores[:, c]) for c in cols]))


def _hard(preds: np.ndarray, kind: str, threshold: float) -> np.ndarray:
    """Class indices (multiclass), 0/1 matrix (multilabel) or rounded values (regression, for qwk)."""
    if kind == "multiclass":
        return preds.argmax(1)
    if kind == "multilabel":
        return (preds >= threshold).astype(np.int64)
    return np.rint(preds.reshape(-1)).astype(np.int64)


def _onehot(targets: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.int64)[targets] if targets.ndim == 1 else targets.astype(np.int64)


def compute(name: str, preds: np.ndarray, targets: np.ndarray, kind: str, threshold: float = 0.5) -> float:
    """The metric `name` of these predictions (see METRICS for which task kinds each accepts)."""
    if name == "log_loss":
        return log_loss(preds, targets) if kind == "multiclass" else bce(preds, targets)
    if name == "rmse":
        return rmse(preds, targets)
    if name == "mse":  # HW1's metric
        return rmse(preds, targets) ** 2
    if name == "mcrmse":
        return mcrmse(preds, targets)
    if name == "mae":
        return float(np.mean(np.abs(preds.reshape(-1) - targets.reshape(-1))))
    if name == "roc_auc":
        return mean_roc_auc(preds, _onehot(targets, preds.shape[1]))
    hard = _hard(preds, kind, threshold)
    truth = np.rint(targets.reshape(-1)).astype(np.int64) if kind == "regression" else targets.astype(np.int64)
    if name == "accuracy":
        return float((hard == truth).all(1).mean() if hard.ndim == 2 else (hard == truth).mean())
    if name in ("macro_f1", "micro_f1"):
        labels = None if kind == "multilabel" else np.arange(preds.shape[1])
        return float(skm.f1_score(truth, hard, average=name.split("_")[0], labels=labels, zero_division=0))
    if name == "qwk":
        return float(skm.cohen_kappa_score(truth, hard, weights="quadratic")) if len(np.unique(truth)) > 1 else 0.0
    raise KeyError(name)


# name -> (higher is better, task kinds it applies to)
METRICS = {
    "accuracy": (True, ("multiclass", "multilabel")),
    "macro_f1": (True, ("multiclass", "multilabel")),
    "micro_f1": (True, ("multiclass", "multilabel")),
    "roc_auc": (True, ("multiclass", "multilabel")),
    "log_loss": (False, ("multiclass", "multilabel")),
    "rmse": (False, ("regression",)),
    "mse": (False, ("regression",)),
    "mae": (False, ("regression",)),
    "mcrmse": (False, ("regression",)),
    "qwk": (True, ("multiclass", "regression")),
}
DEFAULT_METRIC = {"multiclass": "accuracy", "multilabel": "roc_auc", "regression": "rmse"}
LOSS_NAME = {"multiclass": "log_loss", "multilabel": "log_loss", "regression": "rmse"}


def scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Multiclass accuracy and log loss: the figures Digit Recognizer is judged and tie-broken by."""
    return {"accuracy": accuracy(probs, labels), "log_loss": log_loss(probs, labels)}
