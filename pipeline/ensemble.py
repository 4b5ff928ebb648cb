"""Blending several experiments (pure): the plain mean, a learned softmax-weighted mean (the seed notebook's),
Caruana's greedy selection, and rank averaging for AUC-type metrics.

Weights are fitted on out-of-fold predictions only, never on test. Each blend's own score is estimated
honestly: weights fitted on the other folds' OOF rows, scored on the held-out fold.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.tasks import Task


def blend(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of M models' predictions: (M, N, C), (M,) summing to 1 -> (N, C).

    >>> blend(np.array([[[1.0, 0.0]], [[0.0, 1.0]]]), np.array([0.75, 0.25])).tolist()
    [[0.75, 0.25]]
    """
    return np.tensordot(weights, probs, axes=1)


def fit_weights(probs: np.ndarray, targets: np.ndarray, task: Task, steps: int = 300, lr: float = 0.05) -> np.ndarray:
    """Softmax-normalised weights (M,) minimising the task's loss of blend(probs, w) on these rows.

    One learnable logit per model, trained by full-batch Adam from equal weights.
    """
    p = torch.tensor(probs, dtype=torch.float64)  # (M, N, C)
    y = torch.tensor(targets, dtype=torch.long if task.has_classes else torch.float64)
    logits = torch.zeros(len(probs), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        loss = task.prediction_loss(torch.tensordot(logits.softmax(0), p, dims=1), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return logits.detach().softmax(0).numpy()


def honest_blend_scores(probs: np.ndarray, targets: np.ndarray, folds: np.ndarray, task: Task) -> dict[str, float]:
    """Scores of the learned blend where each fold's rows are blended with weights fitted on the other folds."""
    return honest_scores(probs, targets, folds, task, "learned")


def greedy_weights(probs: np.ndarray, targets: np.ndarray, task: Task, rounds: int = 25) -> np.ndarray:
    """Caruana's forward selection with replacement (AutoGluon's default of 25 rounds): each round adds the model
    whose addition gives the best metric of the running mean (ties: the lower loss); weights = times picked / rounds.
    """
    counts = np.zeros(len(probs))
    total = np.zeros(probs.shape[1:])
    for r in range(rounds):
        candidates = [task.scores((total + p) / (r + 1), targets) for p in probs]
        best = 0
        for m, s in enumerate(candidates[1:], 1):
            if task.better(s, candidates[best]):
                best = m
        counts[best] += 1
        total += probs[best]
    return counts / rounds


def rank_average(probs: np.ndarray) -> np.ndarray:
    """Mean over models of each column's ranks scaled to (0, 1]: for AUC, where only the order of scores counts."""
    from scipy.stats import rankdata

    return np.mean([rankdata(p, axis=0) / len(p) for p in probs], axis=0)


def combine(probs: np.ndarray, targets: np.ndarray, task: Task, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(weights, OOF predictions of the blend) for method mean | learned | greedy | rank, fitted on these rows."""
    if method == "rank":
        return np.full(len(probs), 1 / len(probs)), rank_average(probs)
    weights = {"mean": lambda: np.full(len(probs), 1 / len(probs)),
               "learned": lambda: fit_weights(probs, targets, task),
               "greedy": lambda: greedy_weights(probs, targets, task)}[method]()
    return weights, blend(probs, weights)


def honest_scores(probs: np.ndarray, targets: np.ndarray, folds: np.ndarray, task: Task, method: str) -> dict:
    """The blend's OOF score where each fold's rows are blended with what was fitted on the other folds only."""
    return task.scores(honest_predictions(probs, targets, folds, task, method), targets)


def honest_predictions(probs: np.ndarray, targets: np.ndarray, folds: np.ndarray, task: Task, method: str) -> np.ndarray:
    """The blend's OOF predictions, each fold's rows blended with what was fitted on the other folds only."""
    if method in ("mean", "rank"):  # nothing is fitted: the plain OOF blend is already honest
        return combine(probs, targets, task, method)[1]
    out = np.empty(probs.shape[1:])
    for k in np.unique(folds):
        held = folds == k
        weights = combine(probs[:, ~held], targets[~held], task, method)[0]
        out[held] = blend(probs[:, held], weights)
    return out


# -- stacking: a level-2 model over the experiments' OOF predictions -------------------------------------------------
STACKERS = ("linear", "lightgbm")
STACK_L2 = 1e-2  # ridge penalty on the table's own columns (--stack-features), per row; the experiments' weights have none
STACK_GBM = {"objective": None, "learning_rate": 0.05, "num_leaves": 4, "min_data_in_leaf": 20, "feature_fraction": 0.8,
             "lambda_l2": 1.0, "verbosity": -1, "seed": 0}
STACK_GBM_ROUNDS = 150


def stack_columns(probs: np.ndarray, task: Task) -> np.ndarray:
    """(M, N, C) predictions -> (N, M, C) level-2 inputs: log-probabilities (multiclass), log-odds (multilabel), or
    the values themselves (regression)."""
    p = np.asarray(probs, dtype=np.float64)
    if task.kind == "regression":
        z = p
    elif task.kind == "multilabel":
        q = np.clip(p, 1e-6, 1 - 1e-6)
        z = np.log(q / (1 - q))
    else:
        z = np.log(np.clip(p, 1e-7, 1.0))
    return np.transpose(z, (1, 0, 2))


class Stack:
    """A level-2 model: `fit(probs, targets, features)` on OOF rows, `predict(probs, features)` on any rows.

    linear: out = sum_m w_m * z_m + b (+ X V), w_m >= 0 (softplus), one weight per experiment shared by the classes,
    z the stack_columns; softmax (multiclass), sigmoid (multilabel) or identity (regression); fitted by L-BFGS on the
    task's loss. lightgbm: a small booster (few leaves, fixed rounds) on the flattened columns and features."""

    def __init__(self, task: Task, kind: str = "linear"):
        if kind not in STACKERS:
            raise ValueError(kind)
        self.task, self.kind = task, kind
        self.weights = None

    def fit(self, probs: np.ndarray, targets: np.ndarray, features: np.ndarray | None = None) -> "Stack":
        z = stack_columns(probs, self.task)
        if self.kind == "lightgbm":
            return self._fit_gbm(z, targets, features)
        n, m, c = z.shape
        x = torch.tensor(features if features is not None else np.zeros((n, 0)), dtype=torch.float64)
        zt = torch.tensor(z, dtype=torch.float64)
        y = torch.tensor(targets, dtype=torch.long if self.task.has_classes else torch.float64)
        if self.task.kind == "regression":  # scaled so one L-BFGS setting suits prices and log-wages alike
            self.shift, self.scale = float(y.mean()), float(y.std()) or 1.0
        else:
            self.shift, self.scale = 0.0, 1.0
        raw = torch.full((m,), float(np.log(np.expm1(1.0 / m))), dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(c, dtype=torch.float64, requires_grad=True)
        v = torch.zeros((x.shape[1], c), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([raw, bias, v], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            out = self._output(zt, x, torch.nn.functional.softplus(raw), bias, v)
            loss = self._loss(out, y) + STACK_L2 * (v ** 2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        self.weights = torch.nn.functional.softplus(raw).detach().numpy()
        self.bias, self.v = bias.detach().numpy(), v.detach().numpy()
        return self

    def predict(self, probs: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        z = stack_columns(probs, self.task)
        if self.kind == "lightgbm":
            return self._predict_gbm(z, features)
        x = torch.tensor(features if features is not None else np.zeros((len(z), 0)), dtype=torch.float64)
        out = self._output(torch.tensor(z), x, torch.tensor(self.weights), torch.tensor(self.bias),
                           torch.tensor(self.v))
        return self._activate(out).numpy()

    def _output(self, z, x, w, bias, v):
        scaled = (z - self.shift) / self.scale if self.task.kind == "regression" else z
        return torch.einsum("nmc,m->nc", scaled, w) + bias + x @ v

    def _loss(self, out, y):
        if self.task.kind == "regression":
            return ((out - (y.reshape(out.shape) - self.shift) / self.scale) ** 2).mean()
        if self.task.kind == "multilabel":
            return torch.nn.functional.binary_cross_entropy_with_logits(out, y)
        return torch.nn.functional.cross_entropy(out, y)

    def _activate(self, out):
        if self.task.kind == "regression":
            return out * self.scale + self.shift
        return torch.sigmoid(out) if self.task.kind == "multilabel" else out.softmax(1)

    def _gbm_rows(self, z: np.ndarray, features) -> np.ndarray:
        flat = z.reshape(len(z), -1)
        return flat if features is None else np.concatenate([flat, features], axis=1)

    def _fit_gbm(self, z, targets, features) -> "Stack":
        import lightgbm as lgb

        if self.task.kind == "multilabel" or self.task.several_targets:
            raise PipelineError("--stacker lightgbm: fits one target or one class column; this task has several "
                                "labels or targets: use --stacker linear")
        params = dict(STACK_GBM)
        if self.task.kind == "regression":
            params["objective"] = "regression"
            y = np.asarray(targets, dtype=np.float64).reshape(-1)
        elif self.task.num_outputs == 2:
            params["objective"], y = "binary", np.asarray(targets)
        else:
            params |= {"objective": "multiclass", "num_class": self.task.num_outputs}
            y = np.asarray(targets)
        self.booster = lgb.train(params, lgb.Dataset(self._gbm_rows(z, features), label=y), STACK_GBM_ROUNDS)
        self.weights = np.full(z.shape[1], np.nan)  # no per-experiment weight to show
        return self

    def _predict_gbm(self, z, features) -> np.ndarray:
        raw = np.asarray(self.booster.predict(self._gbm_rows(z, features)), dtype=np.float64)
        if self.task.kind == "regression":
            return raw.reshape(-1, 1)
        return np.stack([1 - raw, raw], axis=1) if raw.ndim == 1 else raw


def honest_stack(probs: np.ndarray, targets: np.ndarray, folds: np.ndarray, task: Task, kind: str = "linear",
                 features: np.ndarray | None = None) -> np.ndarray:
    """The stack's OOF predictions where each fold's rows are predicted by a level-2 model fitted on the other folds'
    OOF rows only (never on the row's own fold)."""
    out = np.empty((probs.shape[1], probs.shape[2]))
    for k in np.unique(folds):
        held = folds == k
        model = Stack(task, kind).fit(probs[:, ~held], targets[~held], None if features is None else features[~held])
        out[held] = model.predict(probs[:, held], None if features is None else features[held])
    return out
