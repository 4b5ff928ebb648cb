"""Task kinds on small arrays: several regression targets (detection, standardised outputs, loss, scores, folds,
submissions) and the rules submit checks cells with."""
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import metrics
from pipeline.data.targets import encode, infer_task
from pipeline.errors import PipelineError
from pipeline.tasks import Standardized, Task, level, target_bins

TWO = Task("regression", ("price", "rooms"))


def test_several_numeric_columns_are_regression_and_several_zero_one_columns_multilabel():
    values = pd.DataFrame({"price": [100.5, 230.0, 180.0], "rooms": [2, 5, 3]})
    assert infer_task(values, "train.csv") == TWO
    assert encode(values, TWO, "train.csv").tolist() == [[100.5, 2.0], [230.0, 5.0], [180.0, 3.0]]
    labels = pd.DataFrame({"cat": [0, 1, 1], "dog": [1, 0, 1]})
    assert infer_task(labels, "train.csv").kind == "multilabel"
    assert infer_task(labels, "train.csv", kind="regression").classes == ("cat", "dog")
    with pytest.raises(PipelineError, match="column rooms: a regression target must be numeric, found 'many'"):
        infer_task(values.assign(rooms=["2", "many", "3"]), "train.csv", kind="regression")
    with pytest.raises(PipelineError, match="row 2, column rooms: target must be a finite number"):
        encode(values.assign(rooms=[2, np.inf, 3]), TWO, "train.csv")


def test_each_target_is_standardised_on_its_own_and_weighed_in_its_own_units():
    targets = np.array([[100.0, 0.01], [300.0, 0.03]])
    head = TWO.output_head(torch.nn.Identity(), targets)
    assert head(torch.zeros(1, 2))[0].tolist() == pytest.approx([200.0, 0.02])  # a fresh net answers each mean
    assert head(torch.ones(1, 2))[0].tolist() == pytest.approx([300.0, 0.03])  # one std up, in each target's units
    wrapped = torch.nn.DataParallel(head)
    scale = TWO.loss_scale(wrapped)
    assert scale.tolist() == pytest.approx([100.0, 0.01])
    preds, truth = torch.tensor([[110.0, 0.02]]), torch.tensor([[100.0, 0.01]])
    assert TWO.loss(preds, truth, 0.0, scale).item() == pytest.approx((0.1 ** 2 + 1.0 ** 2) / 2)
    one = Task("regression", ("price",))
    assert one.loss_scale(one.output_head(torch.nn.Identity(), targets[:, 0])) is None  # one target: its own units
    assert one.output_head(torch.nn.Identity(), targets[:, 0]).target_mean.shape == ()  # as older checkpoints hold


def test_scores_folds_and_submissions_of_several_targets():
    preds, truth = np.array([[0.0, 0.0], [0.0, 0.0]]), np.array([[3.0, 1.0], [3.0, 1.0]])
    assert metrics.compute("mcrmse", preds, truth, "regression") == pytest.approx(2.0)
    assert metrics.compute("rmse", preds, truth, "regression") == pytest.approx(np.sqrt(5.0))
    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.normal(0, 1, 200), rng.normal(0, 1000, 200)])
    folds = TWO.split(rows, 4, 0)
    bins = target_bins(level(rows), 4)  # stratified on each row's level over both targets, not on the first alone
    assert all(np.ptp(np.bincount(folds[bins == b], minlength=4)) <= 1 for b in np.unique(bins))
    sample = pd.DataFrame({"id": [7, 8], "rooms": [0, 0], "price": [0, 0]})
    out = TWO.submission(np.array([[150.0, 2.0], [250.0, 4.0]]), sample)
    assert out["price"].tolist() == [150.0, 250.0] and out["rooms"].tolist() == [2.0, 4.0]  # by name
    renamed = sample.set_axis(["id", "a", "b"], axis=1)
    assert TWO.submission(np.array([[150.0, 2.0]]), renamed.head(1))["a"].tolist() == [150.0]  # else in order
    with pytest.raises(PipelineError, match="1 value column"):
        TWO.submission_mode(sample[["id", "price"]])
    bad, rule = TWO.bad_cells(pd.Series([1.5, "x", np.nan]), "values")
    assert bad.tolist() == [False, True, True] and rule == "a finite number"


def test_standardized_loads_checkpoints_of_the_bare_network():
    net = torch.nn.Linear(2, 1)
    head = Standardized(torch.nn.Linear(2, 1), 5.0, 2.0)
    head.load_state_dict(net.state_dict())
    assert head.net.weight.tolist() == net.weight.tolist()


def test_several_targets_refusals_notices_and_edge_cases(capsys):
    with pytest.raises(PipelineError, match="--metric qwk: agreement on one rating"):
        Task("regression", ("a", "b"), "qwk")
    sample = pd.DataFrame({"id": [1], "t_b": [0], "t_a": [0], "T_C": [0]})  # two names match, one is renamed
    out = Task("regression", ("t_a", "t_b", "t_c")).submission(np.array([[1.0, 2.0, 3.0]]), sample)
    assert out[["t_b", "t_a", "T_C"]].iloc[0].tolist() == [2.0, 1.0, 3.0]
    frame = pd.DataFrame({"t_a": [150.0, 75.0, 60.0], "t_b": [1.0, "abc", 2.0]})
    with pytest.raises(PipelineError, match="column t_b: a regression target must be numeric, found 'abc'"):
        infer_task(frame, "train.csv")
    labels = pd.DataFrame({"a": [0, 1] * 60, "b": [1, 0] * 59 + [0.5, 1]})
    assert infer_task(labels, "train.csv").kind == "regression"
    assert "row 119, column b holds 0.5: regression on all of them" in capsys.readouterr().err
    head = TWO.output_head(torch.nn.Identity(), np.array([[100.0, 3.0], [300.0, 3.0]]))
    assert head(torch.full((1, 2), 5.0))[0, 1].item() == 3.0  # a constant target is predicted as that constant
    assert TWO.loss_scale(head).tolist() == [100.0, 1.0]
