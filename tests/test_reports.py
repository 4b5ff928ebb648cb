"""report, runs, sweep, tune and OOF TTA on a tiny competition (files exist, are valid, hold the right numbers)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import make_folds, report, runs, sweep, train, tune
from pipeline.reporting import most_confident_wrong, per_class_scores
from pipeline.runs import paired_test

pytestmark = pytest.mark.slow
FAST = ["--epochs", "2", "--batch-size", "32"]


@pytest.fixture
def experiment(tiny_comp, workdir):
    comp = str(tiny_comp)
    assert make_folds.main(["--data", comp]) == 0
    assert train.main(["--data", comp, *FAST, "--oof-tta", "--report"]) == 0
    return comp


def test_train_report_and_oof_tta(experiment, workdir):
    exp = workdir / "weights" / "digit_cnn"
    out = exp / "report"
    for name in ("curves.png", "lr.png", "confusion.png", "wrong.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 200
    confusion = pd.read_csv(out / "confusion.csv", index_col="true")
    assert confusion.index.astype(str).tolist() == [str(c) for c in range(10)]  # each row names its true class
    confusion = confusion.to_numpy()
    assert confusion.shape == (10, 10) and confusion.sum() == 200  # every train row once
    classes = pd.read_csv(out / "per_class.csv")
    assert list(classes["class"].astype(str)) == [str(c) for c in range(10)] + ["macro avg"]
    assert classes["support"].iloc[:10].sum() == 200
    text = (out / "report.md").read_text()
    assert all(f"]({n})" in text for n in ("curves.png", "lr.png", "confusion.png", "wrong.png"))
    cv = json.loads((exp / "cv.json").read_text())
    tta = pd.read_csv(exp / "oof_tta.csv")
    tta_accuracy = (tta[[f"p{c}" for c in range(10)]].to_numpy().argmax(1) == tta["label"].to_numpy()).mean()
    assert len(tta) == 200 and cv["oof_tta"]["accuracy"] == pytest.approx(tta_accuracy)
    schedule = pd.read_csv(exp / "schedule.csv")
    assert len(schedule) == 5 * 2 * (160 // 32)  # every optimizer step of every fold, as applied:
    first = schedule[schedule["fold"] == 0]["lr"].to_numpy()  # warmup from lr/5 over 5 steps to 3e-3, then cosine
    assert first[:5] == pytest.approx(6e-4 + np.arange(5) * (3e-3 - 6e-4) / 5) and first[5] == pytest.approx(3e-3)
    assert all(a > b for a, b in zip(first[5:], first[6:]))


def test_report_cli_refuses_other_data(experiment, sample_dir, capsys):
    assert report.main(["--data", experiment]) == 0
    assert report.main(["--data", str(sample_dir)]) == 2
    assert "is not the one digit_cnn was trained on" in capsys.readouterr().err


def test_runs_table_and_compare(experiment, capsys):
    assert train.main(["--data", experiment, *FAST, "--lr", "1e-3", "--exp", "slow"]) == 0
    capsys.readouterr()
    assert runs.main([]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "cv_tta" in table[0] and table[1].split()[0] in ("digit_cnn", "slow") and len(table) == 3
    assert runs.main(["--compare", "digit_cnn", "slow"]) == 0
    assert "McNemar exact p" in capsys.readouterr().out


def test_sweep_grid(tiny_comp, workdir, capsys):
    comp = str(tiny_comp)
    assert make_folds.main(["--data", comp]) == 0
    assert sweep.main(["--data", comp, "--lr", "3e-3", "1e-3", "--batch-size", "16", "32", "--epochs", "1"]) == 0
    table = pd.read_csv("weights/sweeps/lr_bs/sweep.csv")
    assert len(table) == 4 and set(table["batch_size"]) == {16, 32}
    with Image.open("weights/sweeps/lr_bs/sweep.png") as image:
        assert image.format == "PNG"
    assert set(table["metric"]) == {"accuracy"}
    best = table.sort_values(["valid_score", "valid_loss"], ascending=[False, True]).iloc[0]
    assert f"best: lr {best['lr']:g}, batch size {int(best['batch_size'])}" in capsys.readouterr().out


def test_tune_writes_a_config_train_accepts(tiny_comp, workdir):
    comp = str(tiny_comp)
    assert make_folds.main(["--data", comp]) == 0
    assert tune.main(["--data", comp, "--trials", "2", "--epochs", "3", "--min-lr", "2e-3", "--swa-epochs", "2"]) == 0
    best = json.loads(open("weights/tunes/study/best.json").read())
    assert {"lr", "weight_decay", "label_smoothing", "batch_size", "epochs"} <= set(best)
    assert best["min_lr"] == pytest.approx(2e-3 * best["lr"] / 3e-3)  # moved with the trial's lr, as it trained
    assert best["epochs"] >= 2  # never fewer epochs than --swa-epochs averages
    assert train.main(["--config", "weights/tunes/study/best.json", "--data", comp, "--fold", "0", "--exp", "tuned"]) == 0


def test_tune_without_optuna(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert tune.main(["--trials", "1"]) == 2
    assert "pip install -e '.[tune]'" in capsys.readouterr().err


def test_pure_report_helpers():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 0, 1, 1])
    assert most_confident_wrong(probs, labels, 5).tolist() == [1, 2]
    table = per_class_scores(labels, probs.argmax(1), 2)
    assert table["recall"].tolist()[:2] == [0.5, 0.5] and table["support"].iloc[-1] == 4
    assert paired_test(np.array([1, 1, 0, 1], bool), np.array([1, 0, 0, 1], bool)) == {"a_only": 1, "b_only": 0, "p_value": 1.0}
