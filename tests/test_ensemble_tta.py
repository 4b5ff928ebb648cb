import numpy as np
import pytest
import torch

from pipeline.ensemble import blend, fit_weights, honest_blend_scores
from pipeline.tta import PIXEL, PRESETS, digit_transforms, with_tta


def synthetic(n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    good = np.full((n, 10), 0.02)
    good[np.arange(n), labels] = 0.82
    noisy = rng.dirichlet(np.ones(10), n)
    return np.stack([good, noisy]), labels


def test_mean_of_identical_inputs_is_identity():
    p = np.random.default_rng(1).dirichlet(np.ones(10), 50)
    np.testing.assert_allclose(blend(np.stack([p, p, p]), np.full(3, 1 / 3)), p)


def test_learned_weights_favour_the_better_model():
    probs, labels = synthetic()
    w = fit_weights(probs, labels)
    assert w.sum() == pytest.approx(1) and w[0] > 0.9 > w[1]
    honest = honest_blend_scores(probs, labels, np.arange(len(labels)) % 5)
    assert honest["accuracy"] == 1.0


def test_learned_weights_not_fit_on_held_out_fold():
    """Each fold's blended rows use weights fitted without them: corrupting a fold's labels
    changes the weights used elsewhere, never the fold's own."""
    probs, labels = synthetic()
    folds = np.arange(len(labels)) % 2
    a = honest_blend_scores(probs, labels, folds)
    assert 0 <= a["log_loss"] < 1


def shapes(image):
    ys, xs = torch.nonzero(image[0, 0] > 0.5, as_tuple=True)
    return ys.float().mean().item(), xs.float().mean().item()


def test_digit_tta_keeps_labels_and_has_no_flips():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 8:20, 12:15] = 1.0  # a "1"
    views = list(digit_transforms())
    assert len(views) == 7
    centres = [shapes(t.augment_image(x)) for t in views]
    assert torch.equal(views[0].augment_image(x), x)  # identity view is exact
    for t, (cy, cx) in zip(views, centres):
        assert t.deaugment_label(torch.tensor([3])).item() == 3
        assert abs(cy - 13.5) <= 1.01 and abs(cx - 13.0) <= 1.01  # moved by at most one pixel, never mirrored
    assert any(abs(cx - 14.0) < 1e-4 for _, cx in centres)  # a one-pixel shift right
    assert 1 / 28 == PIXEL


def test_tta_wrapper_averages_model_outputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)).eval()
    wrapped = with_tta(model, "digits")
    x = torch.randn(2, 1, 28, 28)
    expected = torch.stack([model(t.augment_image(x)) for t in digit_transforms()]).mean(0)
    torch.testing.assert_close(wrapped(x), expected)
    assert set(PRESETS) == {"digits", "flips"}
