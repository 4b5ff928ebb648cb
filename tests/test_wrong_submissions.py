"""No silent wrong submission: cases where the local CV looked right and the submission was wrong, each checked end to
end against the test truth (or as a one-line refusal). LightGBM keeps them to seconds."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline import infer, make_folds, train

RNG = np.random.default_rng(0)
N_TRAIN, N_TEST = 240, 80


def write(root, train: pd.DataFrame, test: pd.DataFrame, sample: pd.DataFrame | None):
    root.mkdir(parents=True, exist_ok=True)
    train.to_csv(root / "train.csv", index=False)
    test.to_csv(root / "test.csv", index=False)
    if sample is not None:
        sample.to_csv(root / "sample_submission.csv", index=False)
    return root


def submission(root, *train_args, folds_args=()):
    """make_folds -> train lightgbm -> infer; the submission as written."""
    assert make_folds.main(["--data", str(root), "--n-splits", "3", *folds_args]) == 0
    assert train.main(["--data", str(root), "--model", "lightgbm", "--exp", "g", *train_args]) == 0
    assert infer.main(["--data", str(root), "--exp", "g", "--out", "sub.csv"]) == 0
    return pd.read_csv("sub.csv", dtype={0: str})


def signal(n: int) -> np.ndarray:
    return RNG.normal(size=n)


def test_an_id_column_named_in_another_case_pairs_predictions_by_id(tmp_path, workdir, capsys):
    a = signal(N_TRAIN + N_TEST)
    y = 3 * a
    keys = RNG.permutation(np.arange(1000, 1000 + len(a)))
    test_keys = keys[N_TRAIN:]
    root = write(tmp_path / "c", pd.DataFrame({"Key": keys[:N_TRAIN], "a": a[:N_TRAIN], "target": y[:N_TRAIN]}),
                 pd.DataFrame({"Key": test_keys, "a": a[N_TRAIN:]}),
                 pd.DataFrame({" key": test_keys[::-1], "target": 0}))  # other case, a space, reversed order
    sub = submission(root)
    assert "table: id Key," in capsys.readouterr().out  # the id, not a feature
    truth = dict(zip(test_keys.astype(str), y[N_TRAIN:]))
    assert sub[" key"].tolist() == test_keys[::-1].astype(str).tolist()
    assert np.corrcoef(sub["target"], sub[" key"].map(truth))[0, 1] > 0.8


def test_sample_ids_that_no_test_column_holds_are_refused_not_paired_by_position(tmp_path, workdir, capsys):
    a = signal(N_TRAIN + N_TEST)
    ids = np.arange(5000, 5000 + N_TEST)
    root = write(tmp_path / "c", pd.DataFrame({"a": a[:N_TRAIN], "target": a[:N_TRAIN]}),
                 pd.DataFrame({"ident": ids, "a": a[N_TRAIN:]}), pd.DataFrame({"row": ids[::-1], "target": 0}))
    assert make_folds.main(["--data", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sample_submission.csv: its id column 'row' names no column of" in err
    assert "column 'ident' holds them: --id-col ident" in err
    # the hint as printed works
    assert make_folds.main(["--data", str(root), "--id-col", "ident"]) == 0


def test_sample_ids_that_are_the_row_numbers_pair_with_an_id_less_test(tmp_path, workdir):
    a = signal(N_TRAIN + N_TEST)
    root = write(tmp_path / "c", pd.DataFrame({"a": a[:N_TRAIN], "target": 2 * a[:N_TRAIN]}),
                 pd.DataFrame({"a": a[N_TRAIN:]}), pd.DataFrame({"row": np.arange(1, N_TEST + 1), "target": 0}))
    sub = submission(root)
    assert np.corrcoef(sub["target"], 2 * a[N_TRAIN:])[0, 1] > 0.8


@pytest.mark.parametrize("labels, column, metric", [
    (("cancer", "healthy"), "cancer", ()),  # no --metric: a column named after a class still holds a probability
    (("cancer", "healthy"), "cancer", ("--metric", "roc_auc")),  # the column names the class that sorts first
    (("alpha", "zeta"), "zeta", ("--metric", "roc_auc")),  # ... and the one that sorts last
    ((0, 1), "1", ("--metric", "roc_auc")), ((0, 1), "0", ("--metric", "log_loss")),  # 0/1 labels
    (("no", "yes"), "insured", ("--metric", "roc_auc")),  # a column naming no class: the second class (P(yes))
])
def test_a_binary_probability_column_holds_the_probability_of_the_class_it_names(tmp_path, workdir, capsys,
                                                                                  labels, column, metric):
    a = signal(N_TRAIN + N_TEST)
    positive = labels[1] if column not in map(str, labels) else next(x for x in labels if str(x) == column)
    y = np.where(a > 0, labels[0], labels[1])
    root = write(tmp_path / "c", pd.DataFrame({"id": np.arange(N_TRAIN), "a": a[:N_TRAIN], "label": y[:N_TRAIN]}),
                 pd.DataFrame({"id": np.arange(N_TRAIN, N_TRAIN + N_TEST), "a": a[N_TRAIN:]}),
                 pd.DataFrame({"id": np.arange(N_TRAIN, N_TRAIN + N_TEST), column: 0.5}))
    sub = submission(root, folds_args=metric)
    assert f"P({positive}) in {column}" in capsys.readouterr().out
    is_positive = (y[N_TRAIN:] == positive).astype(float)
    assert np.corrcoef(sub[column], is_positive)[0, 1] > 0.9


def test_a_text_column_that_test_writes_as_numbers_keeps_its_categories(tmp_path, workdir, capsys):
    k = RNG.choice(["1", "2", "A"], size=N_TRAIN + N_TEST)
    y = np.select([k == "1", k == "2"], [0.0, 5.0], 10.0)
    test_k = np.where(k[N_TRAIN:] == "A", "", k[N_TRAIN:])  # no 'A' in test: pandas reads 1, 2, NaN as floats
    rewritten = np.flatnonzero(test_k != "")[:6]
    test_k[rewritten] = [f"{v}.0" for v in test_k[rewritten]]  # and numbers written otherwise than train wrote them
    root = write(tmp_path / "c", pd.DataFrame({"id": np.arange(N_TRAIN), "k": k[:N_TRAIN], "target": y[:N_TRAIN]}),
                 pd.DataFrame({"id": np.arange(N_TRAIN, N_TRAIN + N_TEST), "k": test_k}),
                 pd.DataFrame({"id": np.arange(N_TRAIN, N_TRAIN + N_TEST), "target": 0}))
    sub = submission(root)
    seen = test_k != ""
    assert np.abs(sub["target"].to_numpy()[seen] - y[N_TRAIN:][seen]).max() < 0.5
    assert "never seen" not in capsys.readouterr().err


def test_test_values_never_seen_in_train_are_named_in_one_notice(tmp_path, workdir, capsys):
    k = RNG.choice(["red", "blue"], size=N_TRAIN)
    test_k = np.array(["red", "blue", "violet", "mauve"] * (N_TEST // 4))
    root = write(tmp_path / "c", pd.DataFrame({"id": np.arange(N_TRAIN), "k": k, "x": signal(N_TRAIN),
                                               "target": signal(N_TRAIN)}),
                 pd.DataFrame({"id": np.arange(N_TEST) + N_TRAIN, "k": test_k, "x": signal(N_TEST)}), None)
    submission(root)
    notices = [line for line in capsys.readouterr().err.splitlines() if "never seen" in line]
    assert notices and all("test.csv: column k: 40 of 80 values were never seen in the train file" in n
                           for n in notices)


def test_ids_with_leading_zeros_stay_text(tmp_path, workdir):
    a = signal(N_TRAIN + N_TEST)
    ids = [f"{i:05d}" for i in range(N_TRAIN + N_TEST)]
    root = write(tmp_path / "c", pd.DataFrame({"id": ids[:N_TRAIN], "a": a[:N_TRAIN], "target": a[:N_TRAIN]}),
                 pd.DataFrame({"id": ids[N_TRAIN:], "a": a[N_TRAIN:]}),
                 pd.DataFrame({"id": ids[N_TRAIN:][::-1], "target": 0}))
    sub = submission(root)
    assert sub["id"].tolist() == ids[N_TRAIN:][::-1]
    assert np.corrcoef(sub["target"], a[N_TRAIN:][::-1])[0, 1] > 0.8


def test_resume_refuses_lightgbm_parameters_edited_since_the_first_folds(tmp_path, workdir, capsys):
    a = signal(N_TRAIN)
    root = write(tmp_path / "c", pd.DataFrame({"id": np.arange(N_TRAIN), "a": a, "target": a}),
                 pd.DataFrame({"id": np.arange(10), "a": a[:10]}), None)
    params = tmp_path / "p.yaml"
    params.write_text("num_leaves: 7\n")
    assert make_folds.main(["--data", str(root), "--n-splits", "3"]) == 0
    base = ["--data", str(root), "--model", "lightgbm", "--exp", "g", "--gbm-params", str(params)]
    assert train.main([*base, "--fold", "0"]) == 0
    saved = json.loads((workdir / "weights/g/config.json").read_text())
    assert saved["gbm_param_values"] == {"num_leaves": 7} and len(saved["gbm_params_hash"]) == 16
    params.write_text("num_leaves: 7\nlearning_rate: 0.5\n")
    capsys.readouterr()
    assert train.main([*base, "--fold", "all", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "gbm_param_values={'num_leaves': 7}" in err and "'learning_rate': 0.5" in err
    params.write_text("# the same parameters\nnum_leaves: 7\n")  # a comment changes the file, not the recipe
    assert train.main([*base, "--fold", "all", "--resume"]) == 0


def test_a_saturated_metric_keeps_the_iteration_with_the_lower_loss(tmp_path, workdir):
    a = signal(N_TRAIN)
    y = np.where(a > 0, "b", "a")  # one split separates them: AUC 1.0 from the first tree
    root = write(tmp_path / "c", pd.DataFrame({"id": np.arange(N_TRAIN), "a": a, "label": y}),
                 pd.DataFrame({"id": np.arange(10), "a": a[:10]}), None)
    assert make_folds.main(["--data", str(root), "--n-splits", "3", "--metric", "roc_auc"]) == 0
    assert train.main(["--data", str(root), "--model", "lightgbm", "--exp", "g"]) == 0
    metrics = pd.read_csv(workdir / "weights/g/metrics.csv")
    assert (metrics["valid_roc_auc"] == 1.0).all()
    assert (metrics["epoch"] > 20).all() and (metrics["valid_loss"] < 0.05).all()
