import numpy as np
import pytest
import torch

from pipeline.ensemble import blend, fit_weights, honest_blend_scores
from pipeline.tasks import Task
from pipeline.tta import PRESETS, digit_transforms, with_tta

DIGITS = Task("multiclass", tuple(str(i) for i in range(10)))


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
    w = fit_weights(probs, labels, DIGITS)
    assert w.sum() == pytest.approx(1) and w[0] > 0.9 > w[1]
    honest = honest_blend_scores(probs, labels, np.arange(len(labels)) % 5, DIGITS)
    assert honest["accuracy"] == 1.0


def test_learned_weights_not_fit_on_held_out_fold():
    """Model A is right on fold 0 and confidently wrong on fold 1; model B the reverse. Weights fitted on the
    other fold pick the model that is wrong on the held-out one: the honest blend scores about 0. Weights that
    saw the held-out fold would be about equal and score about 0.5."""
    rng = np.random.default_rng(0)
    n = 400
    labels, folds = rng.integers(0, 10, n), np.arange(n) % 2
    wrong = (labels + 1 + rng.integers(0, 9, n)) % 10
    right_p, wrong_p = np.full((n, 10), 0.01), np.full((n, 10), 0.01)
    right_p[np.arange(n), labels] = 0.91
    wrong_p[np.arange(n), wrong] = 0.91
    a = np.where((folds == 0)[:, None], right_p, wrong_p)
    b = np.where((folds == 0)[:, None], wrong_p, right_p)
    probs = np.stack([a, b])
    assert honest_blend_scores(probs, labels, folds, DIGITS)["accuracy"] < 0.1
    leaked = blend(probs, fit_weights(probs, labels, DIGITS))  # what fitting on every row would give
    assert DIGITS.scores(leaked, labels)["accuracy"] > 0.3


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


def test_tta_wrapper_averages_model_outputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)).eval()
    wrapped = with_tta(model, "digits")
    x = torch.randn(2, 1, 28, 28)
    expected = torch.stack([model(t.augment_image(x)) for t in digit_transforms()]).mean(0)
    torch.testing.assert_close(wrapped(x), expected)
    assert set(PRESETS) == {"digits", "hflip", "flips", "d4"}


def test_d4_preset_has_the_eight_dihedral_views():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    views = {tuple(t.augment_image(x).flatten().tolist()) for t in PRESETS["d4"]()}
    assert len(views) == 8


def test_greedy_picks_the_better_model_and_its_honest_score_never_sees_the_held_out_fold():
    from pipeline.ensemble import greedy_weights, honest_scores

    probs, labels = synthetic()
    w = greedy_weights(probs, labels, DIGITS)
    assert w.tolist() == [1.0, 0.0]  # 25 rounds, every one picks the good model
    # model A right on fold 0 and wrong on fold 1, B the reverse: greedy fitted on the other fold picks the wrong one
    rng = np.random.default_rng(1)
    n = 200
    labels, folds = rng.integers(0, 10, n), np.arange(n) % 2
    right, wrong = np.full((n, 10), 0.01), np.full((n, 10), 0.01)
    right[np.arange(n), labels] = 0.91
    wrong[np.arange(n), (labels + 1) % 10] = 0.91
    a = np.where((folds == 0)[:, None], right, wrong)
    probs = np.stack([a, np.where((folds == 0)[:, None], wrong, right)])
    assert honest_scores(probs, labels, folds, DIGITS, "greedy")["accuracy"] == 0.0


def test_rank_average_keeps_order_only():
    from pipeline.ensemble import rank_average

    a = np.array([[0.1], [0.9], [0.5]])
    b = np.array([[0.0001], [0.2], [0.0002]])  # same order as a, another scale
    np.testing.assert_allclose(rank_average(np.stack([a, b])), [[1 / 3], [1.0], [2 / 3]])
