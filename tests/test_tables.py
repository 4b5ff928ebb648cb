"""Table competitions through the same commands: make_folds -> train -> infer -> submit --dry-run, no layout flags.

The tables are real data from scikit-learn's bundled sets, written the ways Kaggle ships tables: the diabetes
sample (HW1's shape: *_train.csv, *_test.csv, id,target), wine with a text category and missing cells, and a
repeated header as HW1 has (pandas reads target, target.1; the submission writes target).
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_wine

from pipeline import data, infer, make_folds, submit, train
from pipeline.io import read_json

pytestmark = pytest.mark.slow


def stages(capsys, root, *train_args, exp="t"):
    """The three stages and a dry-run submit; returns what they printed."""
    assert make_folds.main(["--data", str(root), "--n-splits", "3"]) == 0
    assert train.main(["--data", str(root), "--exp", exp, *train_args]) == 0
    assert infer.main(["--data", str(root), "--exp", exp]) == 0
    assert submit.main([f"submissions/{exp}.csv", "--data", str(root), "--dry-run"]) == 0
    return capsys.readouterr()


@pytest.fixture
def wine(tmp_path):
    """Wine (3 cultivars): a text column (colour intensity as low/mid/high), 5% of cells missing, ids as strings."""
    frame = load_wine(as_frame=True).frame.rename(columns={"target": "cultivar"})
    rng = np.random.default_rng(0)
    frame["shade"] = pd.cut(frame.pop("color_intensity"), [0, 3.5, 6, 20], labels=["low", "mid", "high"]).astype(str)
    for col in ("alcohol", "magnesium", "shade"):
        frame.loc[rng.random(len(frame)) < 0.05, col] = np.nan
    frame.insert(0, "wine_id", [f"w{i:03d}" for i in range(len(frame))])
    frame["cultivar"] = frame["cultivar"].map({0: "barolo", 1: "grignolino", 2: "barbera"})
    test = frame.sample(frac=0.25, random_state=0)
    train_rows = frame.drop(test.index)
    root = tmp_path / "wine"
    root.mkdir()
    train_rows.to_csv(root / "train.csv", index=False)
    test = test.drop(columns="cultivar")
    test.loc[test.index[0], "shade"] = "violet"  # a category train never had
    test.to_csv(root / "test.csv", index=False)
    pd.DataFrame({"wine_id": test["wine_id"], "cultivar": "barolo"}).to_csv(root / "sample_submission.csv", index=False)
    return root


def test_regression_table_with_lightgbm_and_mlp_and_their_blend(workdir, capsys):
    out = stages(capsys, "sample-table", exp="gbm").out
    assert "table: id id, target target (regression on target, metric rmse), 10 numeric + 0 categorical" in out
    sub = pd.read_csv("submissions/gbm.csv")
    sample = pd.read_csv(workdir / "data/sample-diabetes/sample_submission.csv")
    assert list(sub.columns) == ["id", "target"] and sub["id"].tolist() == sample["id"].tolist()
    truth = pd.read_csv(workdir / "data/sample-diabetes/solution.csv")["target"].to_numpy()
    rmse = float(np.sqrt(np.mean((sub["target"].to_numpy() - truth) ** 2)))
    assert rmse < 0.85 * truth.std()  # it learned: well below predicting the mean
    assert train.main(["--data", "sample-table", "--model", "mlp", "--epochs", "3", "--exp", "net"]) == 0
    assert infer.main(["--data", "sample-table", "--exp", "gbm", "net", "--ensemble", "learned"]) == 0
    assert pd.read_csv("submissions/gbm+net_learned.csv").shape == sample.shape
    from pipeline import report

    assert report.main(["--exp", "gbm", "--data", "sample-table"]) == 0
    assert report.main(["--exp", "net", "--data", "sample-table"]) == 0
    gbm, net = workdir / "weights/gbm/report", workdir / "weights/net/report"
    importance = pd.read_csv(gbm / "importance.csv")  # every feature, its gain in each fold's model, their mean
    assert sorted(importance["feature"]) == sorted(pd.read_csv(workdir / "data/sample-diabetes/diabetes_test.csv")
                                                   .drop(columns="id").columns)
    assert importance["mean"].to_numpy() == pytest.approx(importance.filter(like="fold ").mean(axis=1).to_numpy())
    assert importance["mean"].is_monotonic_decreasing and importance["mean"].iloc[0] > 0
    assert {p.name for p in gbm.iterdir()} == {"report.md", "importance.csv", "importance.png", "residuals.png"}
    assert {p.name for p in net.iterdir()} == {"report.md", "curves.png", "lr.png", "residuals.png"}
    text = (gbm / "report.md").read_text()
    oof = pd.read_csv(workdir / "weights/gbm/oof.csv")
    worst = (oof["p0"] - oof["target"]).abs().idxmax()  # the row predicted furthest from its truth comes first
    assert f"| {oof['id'][worst]} | {oof['target'][worst]:.6g} | {oof['p0'][worst]:.6g} |" in text
    from pipeline import runs

    capsys.readouterr()
    assert runs.main([]) == 0
    gbm_row = next(line for line in capsys.readouterr().out.splitlines() if line.split()[:2] == ["gbm", "lightgbm"])
    assert gbm_row.split()[2:6] == ["-", "-", "-", "-"]  # no epochs, batch, lr or smoothing for a boosted model
    result = runs.compare(workdir / "weights", "gbm", "net")  # regression: Wilcoxon on each row's squared error
    net = pd.read_csv(workdir / "weights/net/oof.csv").sort_values("id")
    ours = pd.read_csv(workdir / "weights/gbm/oof.csv").sort_values("id")
    closer = ((net["p0"] - net["target"]).abs().to_numpy() < (ours["p0"] - ours["target"]).abs().to_numpy()).sum()
    from scipy.stats import wilcoxon

    squared = [((t["p0"] - t["target"]) ** 2).to_numpy() for t in (ours, net)]
    assert result["b_only"] == closer and result["p_value"] == pytest.approx(wilcoxon(*squared).pvalue)
    rmse = lambda t: float(np.sqrt(((t["p0"] - t["target"]) ** 2).mean()))  # noqa: E731
    assert result["difference"] == pytest.approx(rmse(net) - rmse(ours), rel=1e-5)
    from pipeline import export  # a code competition: its check runs the exported notebook on the local data

    assert export.main(["--exp", "gbm", "net", "--ensemble", "learned", "--data", "sample-table",
                        "--competition", "ml2023spring-hw1"]) == 0
    shipped = {p.name for p in (workdir / "export").glob("*/weights/gbm/*")}
    assert {f"fold{k}{s}" for k in range(3) for s in (".txt", ".prep.json")} <= shipped
    local, exported = sorted((workdir / "export").glob("*/check/*.csv"))
    assert local.read_bytes() == exported.read_bytes()


def test_each_fold_fits_its_own_preprocessing_on_its_training_rows(workdir):
    assert make_folds.main(["--data", "sample-table", "--n-splits", "3"]) == 0
    assert train.main(["--data", "sample-table", "--model", "mlp", "--epochs", "1", "--exp", "m"]) == 0
    raw = data.read_train(data.resolve("sample-table")).rows  # (N, F) float32 as the table reads
    folds = pd.read_csv("folds/folds.csv")["fold"].to_numpy()
    for k in range(3):
        state = read_json(workdir / f"weights/m/fold{k}.prep.json", "prep")
        means = np.array(state["numeric"]["mean"])
        assert means == pytest.approx(raw[folds != k].mean(0), rel=1e-5)  # the fold's training rows ...
        assert not np.allclose(means, raw.mean(0), rtol=1e-5)  # ... not all rows: that would leak its validation rows


def test_text_categories_missing_cells_and_an_unseen_category(wine, workdir, capsys):
    printed = stages(capsys, wine, "--model", "lightgbm", exp="w")
    assert "table: id wine_id, target cultivar (multiclass, 3 classes" in printed.out
    assert "12 numeric + 1 categorical features" in printed.out
    sub = pd.read_csv("submissions/w.csv")
    assert set(sub["cultivar"]) <= {"barolo", "grignolino", "barbera"} and sub["wine_id"].iloc[0].startswith("w")
    cv = json.loads((workdir / "weights/w/cv.json").read_text())
    assert cv["oof"]["accuracy"] > 0.85  # wine is easy: a working pipeline separates the cultivars
    assert infer.main(["--data", str(wine), "--exp", "w", "--tta"]) == 2
    assert "--tta: tables have no test-time augmentation" in capsys.readouterr().err
    from pipeline import report

    assert report.main(["--exp", "w", "--data", str(wine)]) == 0  # classes: confusions, no picture of a row
    assert {p.name for p in (workdir / "weights/w/report").iterdir()} == {
        "report.md", "importance.csv", "importance.png", "confusion.png", "confusion.csv", "per_class.csv"}
    confusion = pd.read_csv(workdir / "weights/w/report/confusion.csv", index_col="true")
    assert sorted(confusion.index) == sorted(confusion.columns) == ["barbera", "barolo", "grignolino"]
    assert confusion.to_numpy().sum() == len(pd.read_csv(wine / "train.csv"))  # every train row once


def test_repeated_header_as_hw1_ships_it(tmp_path, workdir, capsys):
    """Two days of the same columns; the target is the last day's (absent from test), written under its own name."""
    frame = load_diabetes(as_frame=True, scaled=False).frame
    day = frame[["bmi", "bp", "s5", "target"]]
    header = ["id", "bmi", "bp", "s5", "target", "bmi", "bp", "s5", "target"]
    body = np.column_stack([np.arange(len(frame)), day.to_numpy() * 0.97, day.to_numpy()])
    root = tmp_path / "hw1"
    root.mkdir()
    rows = [",".join(header)] + [",".join(f"{v:g}" for v in r) for r in body]
    (root / "covid_train.csv").write_text("\n".join(rows[:351]) + "\n")
    (root / "covid_test.csv").write_text("\n".join([",".join(header[:-1])] + [r.rsplit(",", 1)[0] for r in rows[351:]]) + "\n")
    out = stages(capsys, root, "--model", "lightgbm", exp="hw1").out
    assert "target target.1 (regression on target.1" in out and "7 numeric + 0 categorical" in out
    sub = pd.read_csv("submissions/hw1.csv")
    assert list(sub.columns) == ["id", "target"] and len(sub) == len(frame) - 350  # no sample: the test ids


@pytest.mark.parametrize("edit, message", [
    (lambda tr, te: (tr.drop(columns="target"), te), "no column that"),
    (lambda tr, te: (tr.assign(target=tr["target"].where(tr.index != 3)), te), "row 4, column target: missing target"),
    (lambda tr, te: (tr, te.assign(bmi=["x"] * len(te))), "column bmi holds text ('x') where the train file has numbers"),
    (lambda tr, te: (tr, te.assign(id=0)), "id '0' in column id appears twice"),
    (lambda tr, te: (tr.head(0), te), "train.csv: header only, no rows"),
], ids=["no-target", "missing-target", "test-type", "duplicate-id", "header-only"])
def test_bad_tables_are_one_line_before_any_training(tmp_path, workdir, capsys, edit, message):
    frame = load_diabetes(as_frame=True, scaled=False).frame.head(60)
    frame.insert(0, "id", np.arange(60))
    tr, te = edit(frame.head(40), frame.tail(20).drop(columns="target"))
    root = tmp_path / "bad"
    root.mkdir()
    tr.to_csv(root / "train.csv", index=False)
    te.to_csv(root / "test.csv", index=False)
    assert make_folds.main(["--data", str(root), "--n-splits", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (workdir / "folds").exists() or not any((workdir / "folds").iterdir())


def test_name_like_and_empty_columns_are_left_out_with_a_notice(tmp_path, workdir, capsys):
    frame = load_diabetes(as_frame=True, scaled=False).frame.head(100)
    frame.insert(0, "id", np.arange(100))
    frame["name"] = [f"patient {i}" for i in range(100)]
    frame["empty"] = np.nan
    root = tmp_path / "names"
    root.mkdir()
    frame.head(80).to_csv(root / "train.csv", index=False)
    frame.tail(20).drop(columns="target").to_csv(root / "test.csv", index=False)
    assert make_folds.main(["--data", str(root), "--n-splits", "2"]) == 0
    err = capsys.readouterr().err
    assert "notice: " in err and "column name left out (text with 80 distinct values" in err
    assert "column empty left out (entirely empty)" in err
    described = json.loads((workdir / "folds/folds.json").read_text())["data"]["table"]
    assert "name" not in described["categorical"] and "empty" not in described["numeric"]


def test_a_target_written_as_floats_is_regression(tmp_path, workdir, capsys):
    frame = load_diabetes(as_frame=True, scaled=False).frame.head(80)
    frame.insert(0, "id", np.arange(80))
    frame["target"] = (frame["target"] // 60).astype(float)  # 0.0 .. 5.0: six values, written with a decimal point
    root = tmp_path / "floats"
    root.mkdir()
    frame.head(60).to_csv(root / "train.csv", index=False)
    frame.tail(20).drop(columns="target").to_csv(root / "test.csv", index=False)
    assert make_folds.main(["--data", str(root), "--n-splits", "2"]) == 0
    assert "(regression on target, metric rmse)" in capsys.readouterr().out


def test_lightgbm_folds_in_parallel_processes(workdir, capsys):
    assert make_folds.main(["--data", "sample-table", "--n-splits", "3"]) == 0
    assert train.main(["--data", "sample-table", "--model", "lightgbm", "--gpus", "cpu,cpu", "--exp", "par"]) == 0
    out = capsys.readouterr().out
    workers = set(re.findall(r"started on cpu \(process (\d+)\)", out))  # folds of 0.1 s: one may take them all
    assert workers and str(os.getpid()) not in workers  # fitted in the spawned fold processes, not here
    assert sorted(pd.read_csv(workdir / "weights/par/oof.csv")["fold"].unique()) == [0, 1, 2]
    assert sorted(p.name for p in (workdir / "weights/par").glob("fold*.txt")) == ["fold0.txt", "fold1.txt", "fold2.txt"]


def test_a_sample_written_with_fractions_makes_integer_targets_regression(tmp_path, workdir, capsys):
    """A 1-5 rating in train.csv whose sample holds 2.5: values are wanted, not five classes (HW1's repeated
    header too: the sample's `rating` is the train file's `rating.1`)."""
    frame = load_wine(as_frame=True).frame.iloc[:, :4].copy()
    frame.insert(0, "id", range(len(frame)))
    frame["rating"] = frame["rating.1"] = 1 + np.arange(len(frame)) % 5
    frame = frame.rename(columns={"rating": "rating_lag"})
    root = tmp_path / "ratings"
    root.mkdir()
    frame.iloc[:150].to_csv(root / "train.csv", index=False)
    frame.iloc[150:].drop(columns="rating.1").to_csv(root / "test.csv", index=False)
    for value, found in ((2.5, "regression on rating.1, metric rmse"), (3, "multiclass, 5 classes")):
        pd.DataFrame({"id": frame["id"].iloc[150:], "rating": value}).to_csv(root / "sample_submission.csv",
                                                                             index=False)
        assert make_folds.main(["--data", str(root), "--overwrite"]) == 0
        assert found in capsys.readouterr().out, value



def test_lightgbm_refuses_a_multilabel_table_before_any_training(wine, workdir, capsys):
    frame = pd.read_csv(wine / "train.csv")
    frame["red"] = (frame.pop("cultivar") != "barolo").astype(int)  # two 0/1 columns the test lacks: multilabel
    frame["aged"] = (frame["proline"] > 700).astype(int)
    frame.to_csv(wine / "train.csv", index=False)
    (wine / "sample_submission.csv").unlink()
    assert make_folds.main(["--data", str(wine), "--n-splits", "3"]) == 0
    assert "multilabel" in capsys.readouterr().out
    assert train.main(["--data", str(wine), "--model", "lightgbm", "--exp", "ml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "multilabel tasks are not supported by the gbm learner" in err, err
    assert not (workdir / "weights/ml").exists()  # refused before any work: no experiment folder
    assert train.main(["--data", str(wine), "--model", "mlp", "--epochs", "1", "--exp", "net"]) == 0


def test_tune_searches_lightgbm_parameters(workdir, capsys):
    from pipeline import tune

    assert make_folds.main(["--data", "sample-table", "--n-splits", "3"]) == 0
    assert tune.main(["--data", "sample-table", "--model", "lightgbm", "--trials", "2"]) == 0
    study = workdir / "weights/tunes/study"
    trials = [read_json(study / f"trial{n}.gbm_params.json", "params") for n in range(2)]
    assert set(trials[0]) == {"learning_rate", "num_leaves", "min_data_in_leaf", "feature_fraction",
                              "bagging_fraction", "lambda_l2"} and trials[0] != trials[1]
    for n in range(2):  # each trial trained with its own parameters
        assert read_json(study / f"trial{n}/config.json", "config")["gbm_params"] == \
            f"weights/tunes/study/trial{n}.gbm_params.json"
    best = read_json(study / "best.json", "best")
    scores = [read_json(study / f"trial{n}/cv.json", "cv")["oof"]["rmse"] for n in range(2)]
    assert read_json(best["gbm_params"], "params") == trials[int(np.argmin(scores))]  # the lower rmse's
    assert train.main(["--data", "sample-table", "--config", str(study / "best.json"), "--exp", "tuned"]) == 0
    from pipeline import sweep

    capsys.readouterr()
    assert sweep.main(["--data", "sample-table", "--model", "lightgbm"]) == 2  # its grid is a neural recipe
    assert "python -m pipeline.tune --model lightgbm --data sample-table" in capsys.readouterr().err


def test_regression_on_several_targets_at_once(tmp_path, workdir, capsys):
    """Diabetes with two targets the test lacks, on scales 1,000x apart (disease progression 25..346, blood pressure
    62..133 divided by 1,000), the sample naming them in the other order: one network fits both, each in its units."""
    frame = load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"})
    frame["bp"] = frame["bp"] / 1000
    frame.insert(0, "id", np.arange(len(frame)))
    root = tmp_path / "two"
    root.mkdir()
    frame.iloc[:350].to_csv(root / "train.csv", index=False)
    frame.iloc[350:].drop(columns=["progression", "bp"]).to_csv(root / "test.csv", index=False)
    pd.DataFrame({"id": frame["id"].iloc[350:], "progression": 0.0, "bp": 0.0}).to_csv(root / "sample_submission.csv",
                                                                                        index=False)
    out = stages(capsys, root, "--model", "mlp", "--epochs", "15", exp="two").out
    assert "target bp, progression (regression on bp, progression, metric rmse)" in out  # train.csv's order
    sub = pd.read_csv("submissions/two.csv")
    assert list(sub.columns) == ["id", "progression", "bp"]  # the sample's order, each column its own target
    truth = frame.iloc[350:]
    for col in ("bp", "progression"):  # each in its target's units, and learned (the mean would score 1.0 std)
        assert abs(sub[col].mean() - truth[col].mean()) < 0.5 * truth[col].std(), col
        assert np.sqrt(np.mean((sub[col].to_numpy() - truth[col].to_numpy()) ** 2)) < 0.9 * truth[col].std(), col
    oof = pd.read_csv(workdir / "weights/two/oof.csv")
    assert {"y0", "y1", "p0", "p1"} <= set(oof.columns)
    assert oof.sort_values("id")["y0"].to_numpy() == pytest.approx(frame["bp"].iloc[:350].to_numpy())
    assert train.main(["--data", str(root), "--model", "lightgbm", "--exp", "gbm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a booster fits one target" in err and "--model mlp" in err
    from pipeline import report, runs

    assert report.main(["--exp", "two", "--data", str(root)]) == 0
    assert {"residuals.png", "residuals_1.png"} <= {p.name for p in (workdir / "weights/two/report").iterdir()}
    assert "Residuals of bp" in (workdir / "weights/two/report/report.md").read_text()
    assert train.main(["--data", str(root), "--model", "mlp", "--epochs", "2", "--exp", "short"]) == 0
    result = runs.compare(workdir / "weights", "short", "two")
    a, b = (pd.read_csv(workdir / f"weights/{e}/oof.csv").sort_values("id") for e in ("short", "two"))
    errors = [(((t[["p0", "p1"]].to_numpy() - t[["y0", "y1"]].to_numpy()) ** 2).mean(1)) for t in (a, b)]
    from scipy.stats import wilcoxon

    assert result["p_value"] == pytest.approx(wilcoxon(*errors).pvalue)
    pd.DataFrame({"id": frame["id"].iloc[350:], "bp": 0.0}).to_csv(root / "sample_submission.csv", index=False)
    assert make_folds.main(["--data", str(root), "--overwrite"]) == 2  # refused before any training, not at infer
    assert "predicts 1 (bp); name the target with --target-col bp" in capsys.readouterr().err


def test_categorical_columns_as_learned_embeddings(wine, workdir, capsys):
    """--cat-encoding embed: the fold's state holds each text column as one slot index, the network looks each up in
    its own embedding (3 colours + the unseen slot -> 4 rows of width 2), and a colour train never had still predicts."""
    printed = stages(capsys, wine, "--model", "mlp", "--epochs", "8", "--cat-encoding", "embed", exp="emb")
    state = read_json(workdir / "weights/emb/fold0.prep.json", "prep")
    assert state["encoding"] == "embed" and state["names"][-1] == "shade"
    from pipeline import preprocess
    from pipeline.predict import load_fold_model

    assert preprocess.output_names(state)[-1] == "shade" and preprocess.embedding_sizes(state) == [4]
    import torch

    model = load_fold_model(workdir / "weights/emb/fold0.pth", torch.device("cpu"))[0]
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert [tuple(t.weight.shape) for t in tables] == [(4, 2)]
    cv = json.loads((workdir / "weights/emb/cv.json").read_text())
    assert cv["oof"]["accuracy"] > 0.85, printed.out
    sub = pd.read_csv("submissions/emb.csv")
    assert set(sub["cultivar"]) <= {"barolo", "grignolino", "barbera"}
    assert train.main(["--data", str(wine), "--model", "lightgbm", "--cat-encoding", "embed", "--exp", "g"]) == 0
    assert "notice: --cat-encoding embed applies to a neural model" in capsys.readouterr().out
    assert train.main(["--data", str(wine), "--model", "lightgbm", "--exp", "g", "--resume"]) == 0  # ignored: not kept
    for flags, message in ((["--cutmix", "1"], "--cutmix: cuts and pastes image patches"),
                           (["--mixup", "0.4", "--cat-encoding", "embed"], "--mixup: would blend the category slot")):
        assert train.main(["--data", str(wine), "--model", "mlp", "--exp", "mx", *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_columns_named_or_left_by_the_flags(tmp_path, workdir, capsys):
    """--features keeps a column the guess would leave out; --target-col leaves out another column test lacks."""
    frame = load_diabetes(as_frame=True, scaled=False).frame.head(90)
    frame.insert(0, "id", np.arange(90))
    frame["batch"] = 7  # constant: left out unless named
    frame["t_b"] = frame["bp"] * 2
    root = tmp_path / "cols"
    root.mkdir()
    frame.head(60).to_csv(root / "train.csv", index=False)
    frame.tail(30).drop(columns=["target", "t_b"]).to_csv(root / "test.csv", index=False)
    assert make_folds.main(["--data", str(root), "--n-splits", "2", "--target-col", "target"]) == 0
    printed = capsys.readouterr()
    assert "column t_b left out (not in" in printed.err and "column batch left out (constant)" in printed.err
    assert "10 numeric + 0 categorical" in printed.out
    assert make_folds.main(["--data", str(root), "--n-splits", "2", "--target-col", "target", "--overwrite",
                            "--features", "bmi", "batch"]) == 0
    assert "2 numeric + 0 categorical" in capsys.readouterr().out
