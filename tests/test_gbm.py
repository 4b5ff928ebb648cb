"""The LightGBM learner on tiny synthetic tables: early stopping by the competition metric, save/load, parameters."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from pipeline.learners import boosted
from pipeline.errors import PipelineError
from pipeline.learners import gbm
from pipeline.tasks import Task

lgb = pytest.importorskip("lightgbm")

# small trees and quick stopping keep every fit well under a second on one thread
PARAMS = {"num_threads": 1, "learning_rate": 0.1, "min_data_in_leaf": 5, "min_data_per_group": 5, "cat_smooth": 1,
          "n_estimators": 400, "early_stopping_rounds": 20}
STOPPING = PARAMS["early_stopping_rounds"]


def table(kind: str, n: int = 300, seed: int = 0):
    """(x (n, 3) float32, y): two numeric columns and a categorical one (codes 0..3, NaN in every 10th row)."""
    rng = np.random.default_rng(seed)
    x = np.c_[rng.normal(size=(n, 2)), rng.integers(0, 4, n)].astype(np.float32)
    x[::10, 2] = np.nan
    signal = x[:, 0] + 1.5 * (x[:, 2] == 1) + 0.5 * x[:, 1] + rng.normal(scale=0.7, size=n)
    y = {"regression": signal, "multiclass": np.digitize(signal, [-0.5, 0.8]), "binary": (signal > 0.3)}[kind]
    return x, y.astype(np.float32 if kind == "regression" else np.int64)


TASKS = {
    "regression": Task("regression", ("target",)),  # rmse, lower is better
    "multiclass": Task("multiclass", ("a", "b", "c")),  # accuracy, higher is better
    "binary": Task("multiclass", ("no", "yes"), "log_loss"),  # trained with the binary objective
    "regression_qwk": Task("regression", ("target",), "qwk"),  # higher is better on a regression objective
}


def fit(name: str, **overrides):
    x, y = table(name.split("_")[0])
    booster, best, preds = gbm.fit_fold((x[:200], y[:200]), (x[200:], y[200:]), [2], TASKS[name], PARAMS | overrides, 0)
    return x, y, booster, best, preds


@pytest.mark.parametrize("name", list(TASKS))
def test_early_stopping_keeps_the_best_iteration_of_the_competition_metric(name):
    task = TASKS[name]
    x, y, _, best, preds = fit(name)
    # the same boosting without early stopping, scored by the metric at every iteration, independently of gbm's feval
    params, _, _ = gbm.resolve_params(PARAMS, task, 0)
    train = lgb.Dataset(x[:200], label=y[:200], categorical_feature=[2])
    full = lgb.train(params, train, num_boost_round=best + STOPPING)
    scores = np.array([task.scores(gbm._outputs(full.predict(x[200:], num_iteration=i), task), y[200:])[task.metric]
                       for i in range(1, best + STOPPING + 1)])
    expected = (np.argmax(scores) if task.higher_is_better else np.argmin(scores)) + 1  # first best, 1-based
    assert best == expected and best > 1
    assert scores[best - 1] != (np.min(scores) if task.higher_is_better else np.max(scores))
    np.testing.assert_allclose(preds, gbm._outputs(full.predict(x[200:], num_iteration=best), task), rtol=1e-6)


def test_the_best_iteration_follows_the_metric_not_the_objective():
    assert fit("regression")[3] != fit("regression_qwk")[3]  # one L2 objective, two metrics: rmse and qwk


@pytest.mark.parametrize("name, width", [("regression", 1), ("multiclass", 3), ("binary", 2)])
def test_predictions_have_the_task_form(name, width):
    *_, preds = fit(name)
    assert preds.shape == (100, width) and preds.dtype == np.float32
    if width > 1:
        np.testing.assert_allclose(preds.sum(1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["regression", "multiclass", "binary"])
def test_save_load_round_trip_gives_identical_predictions(tmp_path, name):
    x, _, booster, best, preds = fit(name)
    path = tmp_path / "fold0.lgb.txt"
    gbm.save(booster, path, best)
    loaded = gbm.load(path)
    assert path.read_text().startswith("tree\n") and loaded.current_iteration() == best
    np.testing.assert_array_equal(gbm.predict(loaded, x[200:], TASKS[name]), preds)
    np.testing.assert_array_equal(gbm.predict(loaded, x, TASKS[name]), gbm.predict(booster, x, TASKS[name]))


def _damage(text: str, how: str) -> str:
    last = text.rindex("\nTree=")
    return {"empty": "", "garbage": "hello\nworld\n", "half": text[: len(text) // 2],
            "inside_last_tree": text[: last + 120], "no_trees": text[: text.index("Tree=0")],
            "longer_tree": text.replace("leaf_value=", "leaf_value=1 ", 1),
            "feature_out_of_range": re.sub(r"\nsplit_feature=\d", "\nsplit_feature=7", text, count=1),  # 3 features
            "merged_numbers": re.sub(r"(\nleaf_value=\S+) ", r"\1_", text, count=1),  # same size, one value fewer
            "cut_after_trees": text[: text.index("end of trees")],  # LightGBM itself would load this one
            "tree_sizes": text.replace("tree_sizes=", "tree_sizes=7 ", 1)}[how]


@pytest.mark.parametrize("how", ["empty", "garbage", "half", "inside_last_tree", "no_trees", "longer_tree",
                                 "feature_out_of_range", "merged_numbers", "cut_after_trees",
                                 "tree_sizes"])
def test_damaged_model_is_one_line_error_naming_the_file(tmp_path, how):
    _, _, booster, best, _ = fit("multiclass", n_estimators=30)
    path = tmp_path / "fold0.lgb.txt"
    gbm.save(booster, path, best)
    path.write_text(_damage(path.read_text(), how))
    with pytest.raises(PipelineError, match="truncated or corrupted LightGBM model") as e:
        gbm.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def _edit_tree(text: str, pattern: str, repl: str) -> str:
    """Edit the first tree block `pattern` matches and keep the header's tree_sizes true: an edit that passes a
    check of sizes alone."""
    header, trees = text[:text.index("Tree=0\n")], text[text.index("Tree=0\n"):]
    sizes = [int(v) for v in re.search(r"tree_sizes=([\d ]+)", header).group(1).split()]
    starts = np.cumsum([0] + sizes)
    i = next(i for i in range(len(sizes)) if re.search(pattern, trees[starts[i]:starts[i + 1]]))
    block = trees[starts[i]:starts[i + 1]]
    edited = re.sub(pattern, repl, block, count=1)
    sizes[i] += len(edited) - len(block)
    header = re.sub(r"tree_sizes=[\d ]+", "tree_sizes=" + " ".join(map(str, sizes)), header)
    return header + trees[:starts[i]] + edited + trees[starts[i + 1]:]


@pytest.mark.parametrize("name, edit, outputs", [
    ("nan_category", lambda t: _edit_tree(t, r"(num_cat=[1-9][\s\S]*?\nthreshold=)(\S+ )*?(\d+)(?= |\n)", r"\1\2nan"), None),
    ("root_as_its_child", lambda t: _edit_tree(t, r"\nleft_child=\d+", "\nleft_child=0"), None),
    ("a_node_twice", lambda t: _edit_tree(t, r"\nright_child=\S+", "\nright_child=1"), None),
    ("num_class", lambda t: t.replace("num_class=1\n", "num_class=3\n", 1), None),
    ("classes_of_another_experiment", lambda t: t, 3),  # a binary model in a 3-class experiment
])
def test_hand_edited_model_is_refused_before_lightgbm_reads_it(tmp_path, name, edit, outputs):
    x, y, booster, best, _ = fit("binary", n_estimators=30)
    path = tmp_path / "fold0.txt"
    gbm.save(booster, path, best)
    text = path.read_text()
    assert "num_cat=1" in text  # a categorical split to damage
    edited = edit(text)
    assert edited != text or outputs
    path.write_text(edited)
    with pytest.raises(PipelineError, match="truncated or corrupted LightGBM model") as e:
        gbm.load(path, outputs or 2)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_model_file_is_one_line(tmp_path):
    with pytest.raises(PipelineError, match="LightGBM model not found"):
        gbm.load(tmp_path / "fold0.lgb.txt")


def test_resolve_params_defaults_aliases_and_objective():
    params, rounds, stopping = gbm.resolve_params({"colsample_bytree": 0.5, "n_estimators": 50}, TASKS["multiclass"], 7)
    assert (rounds, stopping) == (50, gbm.EARLY_STOPPING_ROUNDS)
    assert params["feature_fraction"] == 0.5 and "colsample_bytree" not in params  # the user's alias wins
    assert params["seed"] == 7 and params["learning_rate"] == 0.05 and params["num_threads"] == 0
    assert params["objective"] == "multiclass" and params["num_class"] == 3 and params["metric"] == "None"
    assert gbm.resolve_params({}, TASKS["binary"], 0)[0]["objective"] == "binary"
    assert gbm.resolve_params({"objective": "huber"}, TASKS["regression"], 0)[0]["objective"] == "huber"


@pytest.mark.parametrize("params, task, message", [
    ({"metric": "auc"}, "multiclass", "'metric' is set by the pipeline"),
    ({"objective": "multiclassova"}, "multiclass", "the objective of a 3-class task is 'multiclass'"),
    ({"early_stopping_round": 0}, "regression", "early_stopping_round must be an integer >= 1, got 0"),
    ({}, "multilabel", "multilabel tasks are not supported by the gbm learner"),
    ({"num_leaves": -3}, "regression", "LightGBM refused the training parameters"),
    ({"num_leavs": 7}, "regression", "'num_leavs' is not a LightGBM parameter; did you mean num_leaves"),
    ({"tree_learner": "data"}, "regression", "tree_learner: 'data' asks for distributed training"),
    ({"num_machines": 2}, "regression", "num_machines: 2 asks for distributed training"),
    ({"workers": "a:1,b:2"}, "regression", "workers: 'a:1,b:2' asks for distributed training"),
    ({"objective": "binary"}, "regression", "objective 'binary' does not fit a regression on target"),
    ({"objective": "softmax"}, "regression", "objective 'softmax' does not fit a regression"),
    ({"interaction_constraints": [[100, 200]]}, "regression", "interaction_constraints names feature 100; the fold's "
                                                             "rows have 3 features"),  # LightGBM would crash
])
def test_bad_requests_are_one_line(params, task, message):
    task = Task("multilabel", ("x", "y")) if task == "multilabel" else TASKS[task]
    x, y = table("regression" if task.kind == "regression" else "multiclass", n=60)
    if task.kind == "multilabel":
        y = np.stack([y == 0, y == 1], 1).astype(np.float32)  # (n, 2) 0/1
    with pytest.raises(PipelineError, match=message):
        gbm.fit_fold((x[:40], y[:40]), (x[40:], y[40:]), [2], task, {"num_threads": 1} | params, 0)


def test_alias_table_matches_lightgbm():
    aliases = getattr(lgb.basic, "_ConfigAliases", None)
    if aliases is None:
        pytest.skip("this LightGBM does not expose its alias table")
    for key, names in gbm.ALIASES.items():
        assert set(names) == set(aliases.get(key)), key


@pytest.mark.parametrize("suffix, text", [(".json", '{"num_leaves": 15, "lambda_l2": 1.0}'),
                                          (".yaml", "num_leaves: 15\nlambda_l2: 1.0\n")])
def test_load_params_json_and_yaml(tmp_path, suffix, text):
    path = tmp_path / f"gbm{suffix}"
    path.write_text(text)
    assert gbm.load_params(path) == {"num_leaves": 15, "lambda_l2": 1.0}
    path.write_text("interaction_constraints: [[0, 1], [2]]\n" if suffix == ".yaml" else "{}")
    assert gbm.load_params(path) == ({"interaction_constraints": [[0, 1], [2]]} if suffix == ".yaml" else {})


@pytest.mark.parametrize("suffix, text, message", [
    (".json", '["num_leaves", 15]', "expected a mapping of names to values, found list"),
    (".yaml", "just a string", "expected a mapping of names to values, found str"),
    (".json", '{"num_leaves": ', "not valid JSON"),
    (".yaml", "a: [1, 2", "not valid YAML"),
    (".txt", "a: [1, 2", "not valid YAML"),  # YAML unless the name says JSON
    (".yaml", "a:\n  b: 1\n", "a must be a number, string, boolean or a list of them"),
    (".yaml", "a: [[[1]]]\n", "a must be a number, string, boolean or a list of them"),
    # 307 bytes that expand to 10^9 values: refused by counting, without expanding them
    (".yaml", "a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
              "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",
     "must be a number, string, boolean or a list of them"),
    (".yaml", "a: &a [" + ",".join(["1"] * 100) + "]\nb: [" + ",".join(["*a"] * 101) + "]\n",
     "more than 10,000 values in all"),
])
def test_load_params_refuses_other_files(tmp_path, suffix, text, message):
    path = tmp_path / f"gbm{suffix}"
    path.write_text(text)
    with pytest.raises(PipelineError, match=message) as e:
        gbm.load_params(path)
    assert str(e.value).startswith(f"--gbm-params {path}:") and "\n" not in str(e.value)


def test_feature_importance_puts_the_signal_first():
    x, y = table("regression")
    x = x[:, [1, 2, 0]]  # the strongest column last
    booster, _, _ = gbm.fit_fold((x[:200], y[:200]), (x[200:], y[200:]), [1], TASKS["regression"], PARAMS, 0)
    ranked = gbm.feature_importance(booster, ["x1", "city", "x0"])
    assert ranked[0][0] == "x0" and [g for _, g in ranked] == sorted((g for _, g in ranked), reverse=True)
    with pytest.raises(PipelineError, match="2 feature names for a model of 3 features"):
        gbm.feature_importance(booster, ["x1", "city"])


def test_predict_refuses_rows_of_another_width():
    _, _, booster, _, _ = fit("regression", n_estimators=20)
    with pytest.raises(PipelineError, match=r"rows of 3 features .* got shape \(5, 2\)"):
        gbm.predict(booster, np.zeros((5, 2), dtype=np.float32), TASKS["regression"])


def test_learner_registry():
    assert boosted.gbm_learner("lightgbm") is gbm
    with pytest.raises(PipelineError, match="unknown table learner 'xgb'; valid: lightgbm, catboost, xgboost, linear"):
        boosted.gbm_learner("xgb")
    assert json.dumps(gbm.DEFAULTS)  # the defaults can be saved beside the model as they are
