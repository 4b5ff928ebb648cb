"""make_folds -> train --fold all -> infer --tta -> a valid submission, on CPU, on a tiny competition."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import infer, make_folds, submit, train

pytestmark = pytest.mark.slow


def test_whole_pipeline(tiny_comp, workdir, capsys):
    comp = str(tiny_comp)
    assert make_folds.main(["--data", comp]) == 0
    folds = pd.read_csv("folds/folds.csv")
    assert sorted(folds["id"]) == list(range(200)) and set(folds["fold"]) == set(range(5))

    assert train.main(["--data", comp, "--fold", "all", "--epochs", "2", "--batch-size", "32"]) == 0
    exp = workdir / "weights" / "digit_cnn"
    assert sorted(p.name for p in exp.glob("fold*.pth")) == [f"fold{k}.pth" for k in range(5)]
    oof = pd.read_csv(exp / "oof.csv")
    assert list(oof.columns) == ["id", "fold", "label"] + [f"p{c}" for c in range(10)]
    assert sorted(oof["id"]) == list(range(200))
    np.testing.assert_allclose(oof[[f"p{c}" for c in range(10)]].sum(axis=1), 1, atol=1e-4)
    assert (oof["fold"].to_numpy() == folds["fold"].to_numpy()).all()
    metrics = pd.read_csv(exp / "metrics.csv")
    assert len(metrics) == 10 and {"train_loss", "valid_loss", "valid_accuracy", "lr", "seconds"} <= set(metrics.columns)
    cv = json.loads((exp / "cv.json").read_text())
    assert cv["complete"] and cv["folds_present"] == [0, 1, 2, 3, 4]
    assert cv["oof"]["accuracy"] == pytest.approx((oof[[f"p{c}" for c in range(10)]].to_numpy().argmax(1) == oof["label"]).mean())
    ckpt = torch.load(exp / "fold0.pth", weights_only=True)
    assert ckpt["config"]["model"] == "digit_cnn" and "accuracy" in ckpt["score"]
    assert "local CV" in capsys.readouterr().out

    assert infer.main(["--data", comp, "--tta"]) == 0
    sub = pd.read_csv("submissions/digit_cnn.csv")
    sample = pd.read_csv(tiny_comp / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns) and (sub["ImageId"] == sample["ImageId"]).all()
    assert sub["Label"].between(0, 9).all()
    assert np.load(exp / "test_probs.npy").shape == (40, 10)
    assert submit.main(["submissions/digit_cnn.csv", "--data", comp, "--dry-run"]) == 0


def test_training_on_real_format_learns(sample_dir, workdir):
    """On the full bundled sample, a short run is far above chance: the loop really learns."""
    assert make_folds.main(["--data", str(sample_dir)]) == 0
    assert train.main(["--data", str(sample_dir), "--fold", "0", "--epochs", "4"]) == 0
    cv = json.loads((workdir / "weights" / "digit_cnn" / "cv.json").read_text())
    assert cv["folds_present"] == [0] and not cv["complete"]
    assert cv["oof"]["accuracy"] > 0.8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_whole_pipeline_on_cuda(tiny_comp, workdir):
    """bf16 autocast, channels_last and the GPU-resident data path end to end."""
    comp = str(tiny_comp)
    assert make_folds.main(["--data", comp]) == 0
    assert train.main(["--data", comp, "--epochs", "2", "--device", "cuda"]) == 0
    assert infer.main(["--data", comp, "--tta", "--device", "cuda"]) == 0
    assert len(pd.read_csv("submissions/digit_cnn.csv")) == 40
