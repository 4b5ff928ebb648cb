"""The table portfolio: the linear, CatBoost and XGBoost learners (save/load, damaged and edited files, a missing
library), --seeds and its resume, the stack's honesty and refusals, --time-limit, the portfolio stage, tune --storage.

One portfolio is trained once per module (3 folds of the diabetes sample) and shared by the tests that read it.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from pipeline import infer, make_folds, portfolio, preprocess, train
from pipeline.errors import PipelineError
from pipeline.ensemble import Stack, honest_stack
from pipeline.io import read_json
from pipeline.learners import boosted
from pipeline.tasks import Task

from test_gbm import TASKS, table

pytest.importorskip("catboost")
pytest.importorskip("xgboost")

LIBRARIES = ("linear", "catboost", "xgboost")
QUICK = {"catboost": {"iterations": 60, "thread_count": 1}, "xgboost": {"num_boost_round": 60, "nthread": 1},
         "linear": {}, "lightgbm": {"num_threads": 1, "n_estimators": 60}}
TABLE_LEARNERS = ("linear", "lightgbm", "catboost", "xgboost")


def fit(name: str, kind: str, deadline=None):
    library = boosted.gbm_learner(name)
    x, y = table(kind.split("_")[0])
    if library.ROWS == "vector":  # the linear model takes the one-hot rows
        state = preprocess.fit(x[:200], [2], [4], ["a", "b", "c"])
        x = preprocess.apply(state, x)
    return library, x, y, library.fit_fold((x[:200], y[:200]), (x[200:], y[200:]), [2] if library.ROWS == "gbm" else [],
                                           TASKS[kind], QUICK[name], 0, deadline, 1)


@pytest.mark.parametrize("name", LIBRARIES)
@pytest.mark.parametrize("kind", ["regression", "multiclass", "binary"])
def test_save_load_round_trip_gives_identical_predictions(tmp_path, name, kind):
    library, x, y, (model, best, preds) = fit(name, kind)
    task = TASKS[kind]
    assert preds.shape == (100, task.num_outputs) and preds.dtype == np.float32
    path = tmp_path / f"fold0{library.SUFFIX}"
    library.save(model, path, best)
    again = library.predict(library.load(path, task.num_outputs), x[200:], task)
    np.testing.assert_allclose(again, preds, rtol=1e-5, atol=1e-6)
    if task.kind != "regression":
        np.testing.assert_allclose(preds.sum(1), 1.0, rtol=1e-5)
    score = task.scores(preds, y[200:])[task.metric]  # better than predicting the training mean or majority
    base = np.tile(np.bincount(y[:200], minlength=task.num_outputs) / 200, (100, 1)) if task.kind != "regression" \
        else np.full((100, 1), y[:200].mean())
    assert task.better({task.metric: score, "loss": 0.0}, {task.metric: task.scores(base, y[200:])[task.metric],
                                                             "loss": 0.0})


def test_linear_fits_several_targets_and_labels_and_keeps_unseen_classes():
    library = boosted.gbm_learner("linear")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4))
    targets = np.c_[x[:, 0] * 2 + 1, -x[:, 1]]
    model, _, preds = library.fit_fold((x[:90], targets[:90]), (x[90:], targets[90:]), [], Task("regression", ("a", "b")),
                                       {}, 0)
    assert preds.shape == (30, 2) and np.abs(preds - targets[90:]).max() < 0.1
    labels = (x[:, :3] > 0).astype(np.int64)
    model, _, preds = library.fit_fold((x[:90], labels[:90]), (x[90:], labels[90:]), [], Task("multilabel", ("p", "q", "r")),
                                       {}, 0)
    assert model["kind"] == "one_vs_rest" and ((preds > 0.5) == labels[90:]).mean() > 0.9
    y = np.where(x[:, 0] > 0, 0, 2)  # class 1 never seen in training: probability 0, still a column
    model, _, preds = library.fit_fold((x[:90], y[:90]), (x[90:], y[90:]), [], Task("multiclass", ("a", "b", "c")), {}, 0)
    assert preds.shape == (30, 3) and np.all(preds[:, 1] == 0) and model["classes"] == [0, 2]


@pytest.mark.parametrize("name", LIBRARIES)
def test_damaged_model_is_one_line_error_naming_the_file(tmp_path, name):
    library, _, _, (model, best, _) = fit(name, "multiclass")
    path = tmp_path / f"fold0{library.SUFFIX}"
    library.save(model, path, best)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match=rf"{path.name}: (truncated or corrupted|unreadable linear model)") as e:
        library.load(path, 3)
    assert "\n" not in str(e.value)


def test_a_missing_library_names_its_extra_and_the_others_still_run(monkeypatch, workdir, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "catboost" else real(name, *a))
    assert make_folds.main(["--data", "sample-table", "--n-splits", "3"]) == 0
    assert train.main(["--data", "sample-table", "--model", "catboost"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'pipeline[catboost]'" in err
    assert not (workdir / "weights/catboost").exists()
    assert portfolio.main(["--data", "sample-table", "--learners", "catboost", "linear"]) == 0
    out = capsys.readouterr().out
    assert "notice: portfolio: catboost skipped: --model catboost: needs the catboost package" in out
    assert (workdir / "weights/portfolio_linear/oof.csv").is_file()


# -- one portfolio trained for the tests below --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("portfolio")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert make_folds.main(["--data", "sample-table", "--n-splits", "3"]) == 0
        assert portfolio.main(["--data", "sample-table", "--learners", *TABLE_LEARNERS, "--seeds", "2"]) == 0
    return root


@pytest.fixture
def at(trained, monkeypatch):
    monkeypatch.chdir(trained)
    return trained


@pytest.mark.slow
def test_portfolio_leaderboard_and_best_submission(at):
    board = pd.read_csv(at / "weights/portfolio_leaderboard.csv")
    assert set(board["experiment"]) == {f"portfolio_{n}" for n in TABLE_LEARNERS} | {"mean of 4", "greedy of 4",
                                                                                      "stack of 4"}
    assert board["cv"].is_monotonic_increasing  # rmse: the best first
    for name in TABLE_LEARNERS:  # each learner's CV is its experiment's own
        row = board[board["experiment"] == f"portfolio_{name}"].iloc[0]
        assert row["cv"] == pytest.approx(read_json(at / f"weights/portfolio_{name}/cv.json", "cv")["oof"]["rmse"])
    sub = pd.read_csv(at / "submissions/portfolio.csv")
    assert list(sub.columns) == ["id", "target"] and len(sub) == 89 and sub["target"].notna().all()


@pytest.mark.slow
@pytest.mark.parametrize("name", TABLE_LEARNERS)
def test_seeds_are_averaged_into_the_oof(at, name):
    from pipeline.predict import experiment_data

    library = boosted.gbm_learner(name)
    exp = at / f"weights/portfolio_{name}"
    spec = experiment_data(exp)[1]
    state = preprocess.load(exp / "fold1.prep.json", spec.features)
    expected = ["fold1" + library.SUFFIX] + (["fold1.s1" + library.SUFFIX] if library.SEEDED else [])
    assert sorted(state["models"]) == sorted(expected)  # linear: one fit whatever --seeds
    folds = pd.read_csv(at / "folds/folds.csv")
    train_rows = pd.read_csv(at / "data/sample-diabetes/diabetes_train.csv")
    rows = np.flatnonzero(folds["fold"].to_numpy() == 1)  # the OOF ids are the train rows' positions
    raw = train_rows.iloc[rows].drop(columns=["id", "target"]).to_numpy(np.float32)
    x = boosted.fold_rows(library, state, raw)
    each = [library.predict(library.load(exp / n), x, spec.task) for n in expected]
    oof = pd.read_csv(exp / "oof.csv").set_index("id").loc[rows, "p0"].to_numpy()
    np.testing.assert_allclose(oof, np.mean(each, axis=0)[:, 0], rtol=1e-4)
    if len(each) == 2:
        assert not np.allclose(each[0], each[1])  # two seeds, two models


@pytest.mark.slow
def test_resume_keeps_the_seeds_a_fold_finished(at, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    shutil.copytree(at, work, ignore=shutil.ignore_patterns(".cache"))
    monkeypatch.chdir(work)
    exp = work / "weights/portfolio_catboost"
    before = pd.read_csv(exp / "oof.csv")
    # a kill after fold 2's first seed: its second model unrecorded, no OOF rows for it yet
    state = read_json(exp / "fold2.prep.json", "prep")
    state["models"].pop("fold2.s1.cbm")
    (exp / "fold2.prep.json").write_text(json.dumps(state))
    (exp / "fold2.s1.cbm").unlink()
    first = (exp / "fold2.cbm").read_bytes()
    oof = before[before["fold"] != 2]
    oof.to_csv(exp / "oof.csv", index=False)
    capsys.readouterr()
    assert train.main(["--data", "sample-table", "--model", "catboost", "--exp", "portfolio_catboost", "--seeds", "2",
                       "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resume: fold 2: 1 seed(s) already fitted (fold2.cbm), kept" in out
    assert "fold 0: catboost" not in out and "fold 2: catboost" in out  # only the unfinished fold trains
    assert (exp / "fold2.cbm").read_bytes() == first and (exp / "fold2.s1.cbm").is_file()
    after = pd.read_csv(exp / "oof.csv").sort_values("id")
    np.testing.assert_allclose(after["p0"], before.sort_values("id")["p0"], rtol=1e-5)  # same seeds, same OOF


@pytest.mark.slow
@pytest.mark.parametrize("name, edit", [
    ("linear", lambda text: json.dumps(json.loads(text) | {"intercept": [0.0]})),  # still a well-formed model
    ("xgboost", lambda text: text.replace('"base_score":"', '"base_score":"1', 1)),
    ("catboost", None),
    ("lightgbm", lambda text: text.replace("objective=regression", "objective=huber", 1)),
])
def test_a_model_edited_by_hand_is_refused_naming_it(at, tmp_path, monkeypatch, capsys, name, edit):
    work = tmp_path / "w"
    shutil.copytree(at / "weights", work / "weights")
    shutil.copytree(at / "data", work / "data")
    monkeypatch.chdir(work)
    library = boosted.gbm_learner(name)
    path = work / f"weights/portfolio_{name}/fold1{library.SUFFIX}"
    if edit is None:  # a binary file: one byte changed where CatBoost still reads it
        data = bytearray(path.read_bytes())
        data[-9] ^= 1
        path.write_bytes(bytes(data))
    else:
        text = path.read_text()
        assert edit(text) != text
        path.write_text(edit(text))
    capsys.readouterr()
    assert infer.main(["--data", "sample-table", "--exp", f"portfolio_{name}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path.name}: changed since it was trained" in err, err


@pytest.mark.slow
def test_a_rerun_with_another_recipe_stops_before_replacing_the_submission(at, tmp_path, monkeypatch, capsys):
    work = tmp_path / "w"
    shutil.copytree(at, work, ignore=shutil.ignore_patterns(".cache"))
    monkeypatch.chdir(work)
    before = (work / "submissions/portfolio.csv").read_bytes()
    assert portfolio.main(["--data", "sample-table", "--learners", *TABLE_LEARNERS, "--seeds", "3"]) == 2
    assert "--resume: weights/portfolio_lightgbm was trained with seeds=2, this run has 3" in capsys.readouterr().err
    assert (work / "submissions/portfolio.csv").read_bytes() == before


@pytest.mark.slow
def test_an_unfinished_fold_or_a_record_of_other_seeds_is_refused_at_infer(at, tmp_path, monkeypatch, capsys):
    work = tmp_path / "w"
    shutil.copytree(at, work, ignore=shutil.ignore_patterns(".cache"))
    monkeypatch.chdir(work)
    exp = work / "weights/portfolio_xgboost"
    state = read_json(exp / "fold0.prep.json", "prep")
    state["models"].pop("fold0.s1.xgb.json")  # one seed dropped from the record
    (exp / "fold0.prep.json").write_text(json.dumps(state))
    capsys.readouterr()
    assert infer.main(["--data", "sample-table", "--exp", "portfolio_xgboost"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fold0.prep.json: its record of the fold's models is not the experiment's" in err
    oof = pd.read_csv(work / "weights/portfolio_catboost/oof.csv")
    oof[oof["fold"] != 2].to_csv(work / "weights/portfolio_catboost/oof.csv", index=False)  # fold 2 interrupted
    assert infer.main(["--data", "sample-table", "--exp", "portfolio_catboost"]) == 2
    assert "fold(s) 2 unfinished (no OOF rows yet)" in capsys.readouterr().err


@pytest.mark.slow
def test_stack_in_infer_prints_every_blend_and_writes_the_submission(at, capsys):
    exps = [f"portfolio_{n}" for n in TABLE_LEARNERS]
    assert infer.main(["--data", "sample-table", "--exp", *exps, "--ensemble", "stack", "--stack-features"]) == 0
    out = capsys.readouterr().out
    for line in ("OOF mean blend", "OOF learned blend", "OOF greedy blend",
                 "OOF stack (linear + the table columns, fitted on the other folds)"):
        assert line in out
    blend = read_json(at / f"weights/blend_{'+'.join(exps)}.json", "blend")
    assert blend["method"] == "stack" and blend["stack_features"] and min(blend["weights"]) >= 0
    assert pd.read_csv(at / f"submissions/{'+'.join(exps)}_stack.csv")["target"].notna().all()
    assert infer.main(["--data", "sample-table", "--exp", *exps[:2], "--stacker", "lightgbm"]) == 2
    assert "--stacker: sets up --ensemble stack" in capsys.readouterr().err


@pytest.mark.slow
def test_stacking_experiments_of_other_folds_or_another_task_is_refused(at, tmp_path, monkeypatch, capsys):
    work = tmp_path / "w"
    shutil.copytree(at / "weights", work / "weights")
    shutil.copytree(at / "data", work / "data")
    monkeypatch.chdir(work)
    assert make_folds.main(["--data", "sample-table", "--n-splits", "3", "--seed", "7",
                            "--folds-path", "folds/other.csv"]) == 0
    assert train.main(["--data", "sample-table", "--model", "linear", "--folds-path", "folds/other.csv",
                       "--exp", "other_folds"]) == 0
    assert make_folds.main(["--data", "sample-table", "--n-splits", "3", "--target-col", "bmi",
                            "--folds-path", "folds/bmi.csv"]) == 0
    assert train.main(["--data", "sample-table", "--model", "linear", "--folds-path", "folds/bmi.csv",
                       "--exp", "bmi"]) == 0
    capsys.readouterr()
    assert infer.main(["--data", "sample-table", "--exp", "portfolio_linear", "other_folds", "--ensemble", "stack"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other_folds was trained on folds file" in err and "portfolio_linear" in err
    assert infer.main(["--data", "sample-table", "--exp", "portfolio_linear", "bmi", "--ensemble", "stack"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bmi was trained for another task than portfolio_linear" in err, err


# -- the stack's honesty -------------------------------------------------------------------------------------------
def _level1(kind: str, seed: int = 0):
    """(probs (3, n, C), targets, folds, task): three 'experiments' of different quality on 4 folds."""
    rng = np.random.default_rng(seed)
    n = 240
    folds = np.repeat(np.arange(4), n // 4)
    if kind == "regression":
        y = rng.normal(size=n) * 10 + 50
        probs = np.stack([y + rng.normal(scale=s, size=n) for s in (2.0, 4.0, 8.0)])[..., None]
        return probs, y, folds, Task("regression", ("target",))
    y = rng.integers(0, 3, n)
    probs = []
    for s in (1.0, 2.0, 4.0):
        logits = np.eye(3)[y] * 2 + rng.normal(scale=s, size=(n, 3))
        probs.append(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    return np.stack(probs), y, folds, Task("multiclass", ("a", "b", "c"))


@pytest.mark.parametrize("kind", ["regression", "multiclass"])
@pytest.mark.parametrize("stacker", ["linear", "lightgbm"])
@pytest.mark.parametrize("with_features", [False, True])
def test_the_stack_never_sees_a_rows_own_fold(kind, stacker, with_features):
    probs, y, folds, task = _level1(kind)
    features = np.random.default_rng(1).normal(size=(len(y), 2)) if with_features else None
    before = honest_stack(probs, y, folds, task, stacker, features)
    changed = y.copy()
    if kind == "regression":
        changed[folds == 0] += 100.0  # fold 0's truth moved: only the models fitted on fold 0 can know it
    else:
        changed[folds == 0] = (changed[folds == 0] + 1) % 3
    after = honest_stack(probs, changed, folds, task, stacker, features)
    np.testing.assert_array_equal(before[folds == 0], after[folds == 0])  # its own fold never fitted on
    assert not np.allclose(before[folds != 0], after[folds != 0])  # the other folds' stacks did see it


def test_the_linear_stack_weights_are_non_negative_and_favour_the_better_model():
    probs, y, folds, task = _level1("regression")
    stack = Stack(task).fit(probs, y)
    assert stack.weights[0] > stack.weights[1] > stack.weights[2] > 0
    # a 'model' that least squares would subtract (y = 2 a - 2 c exactly): weight ~0 here, never negative
    a = probs[0]
    c = a - 0.5 * (y[:, None] - y.mean())
    free = np.linalg.lstsq(np.c_[a, c, np.ones(len(y))], y, rcond=None)[0]
    assert free[1] < -1  # what an unconstrained level-2 model would do
    weights = Stack(task).fit(np.stack([a, c]), y).weights
    assert np.all(weights >= 0) and weights[1] < 0.02 * weights[0]
    honest = task.scores(honest_stack(probs, y, folds, task), y)["rmse"]
    assert honest < task.scores(probs[0], y)["rmse"] * 1.02  # no worse than the best model alone


# -- --time-limit --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lightgbm", "catboost", "xgboost"])
def test_a_fold_past_its_deadline_stops_at_its_best_iteration_so_far(name):
    x, y = table("regression")
    library = boosted.gbm_learner(name)
    params = {k: v for k, v in QUICK[name].items() if k not in ("iterations", "num_boost_round", "n_estimators")}
    free = library.fit_fold((x[:200], y[:200]), (x[200:], y[200:]), [2], TASKS["regression"], params, 0, None, 1)
    cut = library.fit_fold((x[:200], y[:200]), (x[200:], y[200:]), [2], TASKS["regression"], params, 0,
                           time.monotonic() - 1, 1)
    assert cut[1] <= 2 < free[1]  # stopped after its first iteration, where it kept its best so far
    np.testing.assert_allclose(library.predict(cut[0], x[200:], TASKS["regression"]), cut[2], rtol=1e-5)


def test_a_network_past_its_deadline_keeps_its_best_epoch(workdir, capsys):
    from pipeline.config import Config

    assert make_folds.main(["--data", "sample-table", "--n-splits", "3"]) == 0
    train.run(Config(data="sample-table", model="mlp", epochs=4, exp=("m",)), deadline=time.monotonic())
    out = capsys.readouterr().out
    assert out.count("its share of --time-limit is spent after epoch 1") == 3
    metrics = pd.read_csv(workdir / "weights/m/metrics.csv")
    assert metrics.groupby("fold")["epoch"].max().tolist() == [1, 1, 1]


def test_a_network_bags_its_seeds_and_resume_keeps_the_finished_ones(workdir, capsys):
    assert make_folds.main(["--data", "sample-table", "--n-splits", "3"]) == 0
    args = ["--data", "sample-table", "--model", "mlp", "--epochs", "2", "--seeds", "2", "--exp", "m"]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert out.count("2 seeds: each valid rmse") == 3
    exp = workdir / "weights/m"
    assert all((exp / f"fold{k}.s1.pth").is_file() for k in range(3))
    before = pd.read_csv(exp / "oof.csv").sort_values("id")
    # a kill during fold 1's second seed: its first recorded as finished, the second not saved, no OOF rows yet
    (exp / "fold1.seeds.json").write_text(json.dumps({"done": [0]}))
    (exp / "fold1.s1.pth").unlink()
    before[before["fold"] != 1].to_csv(exp / "oof.csv", index=False)
    assert train.main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resume: fold 1 seed 0 already finished, predicting with fold1.pth" in out
    assert "fold 1 seed 1 epoch" in out and "fold 0 seed 1 epoch" not in out
    after = pd.read_csv(exp / "oof.csv").sort_values("id")
    np.testing.assert_allclose(after["p0"], before["p0"], rtol=1e-4)  # seed 0 predicted, seed 1 retrained alike
    assert infer.main(["--data", "sample-table", "--exp", "m"]) == 0
    (exp / "fold2.s1.pth").unlink()
    capsys.readouterr()
    assert infer.main(["--data", "sample-table", "--exp", "m"]) == 2
    assert "fold2.s1.pth missing (the experiment was trained with --seeds 2)" in capsys.readouterr().err


def test_a_budget_too_short_for_any_learner_skips_each_with_a_notice(workdir, capsys):
    assert make_folds.main(["--data", "sample-table", "--n-splits", "3"]) == 0
    assert portfolio.main(["--data", "sample-table", "--time-limit", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out.count("skipped:") == 5 and "under 1s for each of its 3 folds" in captured.out
    assert "portfolio: no learner was trained" in captured.err
    assert not (workdir / "weights").exists() or not list((workdir / "weights").glob("portfolio_*"))


def test_the_portfolio_refuses_what_it_cannot_run(workdir, tiny_comp, capsys):
    assert make_folds.main(["--data", str(tiny_comp)]) == 0
    assert portfolio.main(["--data", str(tiny_comp)]) == 2
    assert "portfolio: runs the table learners" in capsys.readouterr().err
    assert make_folds.main(["--data", "sample-table", "--n-splits", "3", "--overwrite"]) == 0
    assert portfolio.main(["--data", "sample-table", "--learners", "resnet18"]) == 2
    assert "--learners: 'resnet18' is not a table learner" in capsys.readouterr().err
    assert train.main(["--data", "sample-table", "--model", "linear", "--gbm-params", "p.json"]) == 2
    (workdir / "seed.json").write_text(json.dumps({"random_seed": 5}))
    capsys.readouterr()
    assert train.main(["--data", "sample-table", "--model", "catboost", "--seeds", "2", "--gbm-params", "seed.json"]) == 2
    assert "random_seed fixes one seed for every model of --seeds 2" in capsys.readouterr().err
    (workdir / "eta.json").write_text(json.dumps({"eta": -1}))
    assert train.main(["--data", "sample-table", "--model", "catboost", "--gbm-params", "eta.json"]) == 2
    assert "CatBoost's learning rate must be a number in (0, 1], got -1" in capsys.readouterr().err
    (workdir / "alias.json").write_text(json.dumps({"eta": 0.2, "n_estimators": 30, "max_depth": 3}))
    assert train.main(["--data", "sample-table", "--model", "catboost", "--gbm-params", "alias.json"]) == 0  # aliases
    assert portfolio.main(["--data", "sample-table", "--learners", "linear", "linear"]) == 2
    assert "names a learner twice" in capsys.readouterr().err


# -- tune ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, keys", [("catboost", {"learning_rate", "depth", "l2_leaf_reg"}),
                                        ("xgboost", {"eta", "max_depth", "min_child_weight"})])
def test_each_new_learner_has_a_search_space_its_library_accepts(name, keys):
    optuna = pytest.importorskip("optuna")
    library = boosted.gbm_learner(name)
    study = optuna.create_study()
    point = library.search_space(study.ask())
    assert keys <= set(point)
    library.check_task(TASKS["multiclass"], point)  # a one-iteration fit with these parameters


def test_tune_storage_is_shared_and_continued(workdir, capsys):
    pytest.importorskip("optuna")
    from pipeline import tune

    assert make_folds.main(["--data", "sample-table", "--n-splits", "3"]) == 0
    journal = workdir / "shared/tune.log"
    for _ in range(2):  # two machines (or two runs) adding one trial each to one study
        assert tune.main(["--data", "sample-table", "--model", "xgboost", "--trials", "1", "--storage",
                          str(journal)]) == 0
    out = capsys.readouterr().out
    assert "study 'study' continues: 1 trials already in" in out and "2 trials completed" in out
    params = [read_json(workdir / f"weights/tunes/study/trial{n}.gbm_params.json", "p") for n in range(2)]
    assert params[0] != params[1]  # the second run did not draw the first one's point again
    assert tune.main(["--data", "sample-table", "--model", "xgboost", "--trials", "0", "--storage", str(journal)]) == 0
    out = capsys.readouterr().out
    assert "continues: 2 trials" in out and "== trial" not in out and "2 trials completed" in out


def test_submit_reads_the_task_from_the_weights_folder_infer_used(workdir, capsys):
    from pipeline import submit

    assert make_folds.main(["--data", "sample-table", "--n-splits", "3"]) == 0
    assert train.main(["--data", "sample-table", "--model", "linear", "--weights-dir", "elsewhere", "--exp", "x"]) == 0
    assert make_folds.main(["--data", "sample-table", "--n-splits", "3", "--target-col", "sex",
                            "--folds-path", "folds/sex.csv"]) == 0  # a classification under the same name
    assert train.main(["--data", "sample-table", "--model", "linear", "--folds-path", "folds/sex.csv", "--exp", "x"]) == 0
    assert infer.main(["--data", "sample-table", "--weights-dir", "elsewhere", "--exp", "x", "--out", "s.csv"]) == 0
    capsys.readouterr()
    assert submit.main(["s.csv", "--data", "sample-table", "--dry-run"]) == 0, capsys.readouterr().err
    assert "regression on target" in capsys.readouterr().out
