"""Blending several experiments: the plain mean and a learned softmax-weighted mean (pure).

Weights are fitted on out-of-fold probabilities only, never on test. The learned blend's own
score is estimated honestly: weights fitted on the other folds' OOF rows, scored on the held-out fold.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.metrics import scores


def blend(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of M models' probabilities: (M, N, C), (M,) summing to 1 -> (N, C).

    >>> blend(np.array([[[1.0, 0.0]], [[0.0, 1.0]]]), np.array([0.75, 0.25])).tolist()
    [[0.75, 0.25]]
    """
    return np.tensordot(weights, probs, axes=1)


def fit_weights(probs: np.ndarray, labels: np.ndarray, steps: int = 300, lr: float = 0.05) -> np.ndarray:
    """Softmax-normalised weights (M,) minimising the log loss of blend(probs, w) on these rows.

    One learnable logit per model, trained by full-batch Adam from equal weights.
    """
    p = torch.tensor(probs[:, np.arange(len(labels)), labels], dtype=torch.float64)  # (M, N): p(label) per model
    logits = torch.zeros(len(probs), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        w = logits.softmax(0)
        loss = -torch.log((w[:, None] * p).sum(0).clamp_min(1e-15)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return logits.detach().softmax(0).numpy()


def honest_blend_scores(probs: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> dict[str, float]:
    """Scores of the learned blend where each fold's rows are blended with weights fitted on the other folds."""
    out = np.empty(probs.shape[1:])
    for k in np.unique(folds):
        held = folds == k
        out[held] = blend(probs[:, held], fit_weights(probs[:, ~held], labels[~held]))
    return scores(out, labels)
