"""Blending several experiments (pure): the plain mean, a learned softmax-weighted mean (the seed notebook's),
Caruana's greedy selection, and rank averaging for AUC-type metrics.

Weights are fitted on out-of-fold predictions only, never on test. Each blend's own score is estimated
honestly: weights fitted on the other folds' OOF rows, scored on the held-out fold.
"""
from __future__ import annotations

import numpy as np
import torch

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
    if method in ("mean", "rank"):  # nothing is fitted: the plain OOF score is already honest
        return task.scores(combine(probs, targets, task, method)[1], targets)
    out = np.empty(probs.shape[1:])
    for k in np.unique(folds):
        held = folds == k
        weights = combine(probs[:, ~held], targets[~held], task, method)[0]
        out[held] = blend(probs[:, held], weights)
    return task.scores(out, targets)
