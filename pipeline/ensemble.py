"""Blending several experiments: the plain mean and a learned softmax-weighted mean (pure).

Weights are fitted on out-of-fold predictions only, never on test. The learned blend's own
score is estimated honestly: weights fitted on the other folds' OOF rows, scored on the held-out fold.
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


def _blend_loss(blended: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """The task's loss of blended predictions: log loss, binary log loss, or squared error."""
    if kind == "multiclass":
        return -torch.log(blended[torch.arange(len(targets)), targets].clamp_min(1e-15)).mean()
    if kind == "multilabel":
        p = blended.clamp(1e-15, 1 - 1e-15)
        return -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    return ((blended[:, 0] - targets) ** 2).mean()


def fit_weights(probs: np.ndarray, targets: np.ndarray, task: Task, steps: int = 300, lr: float = 0.05) -> np.ndarray:
    """Softmax-normalised weights (M,) minimising the task's loss of blend(probs, w) on these rows.

    One learnable logit per model, trained by full-batch Adam from equal weights.
    """
    p = torch.tensor(probs, dtype=torch.float64)  # (M, N, C)
    y = torch.tensor(targets, dtype=torch.long if task.kind == "multiclass" else torch.float64)
    logits = torch.zeros(len(probs), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        loss = _blend_loss(torch.tensordot(logits.softmax(0), p, dims=1), y, task.kind)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return logits.detach().softmax(0).numpy()


def honest_blend_scores(probs: np.ndarray, targets: np.ndarray, folds: np.ndarray, task: Task) -> dict[str, float]:
    """Scores of the learned blend where each fold's rows are blended with weights fitted on the other folds."""
    out = np.empty(probs.shape[1:])
    for k in np.unique(folds):
        held = folds == k
        out[held] = blend(probs[:, held], fit_weights(probs[:, ~held], targets[~held], task))
    return task.scores(out, targets)
