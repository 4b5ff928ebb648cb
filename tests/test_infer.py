import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import infer, make_folds, train

from conftest import write_comp

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory, sample_dir):
    """Two experiments (a, b) on a tiny competition, trained once for the module: 200 train rows, 40 test rows."""
    root = tmp_path_factory.mktemp("infer")
    train_rows = pd.read_csv(sample_dir / "train.csv").groupby("label", group_keys=False).head(20)
    comp = str(write_comp(root / "comp", train_rows.reset_index(drop=True), pd.read_csv(sample_dir / "test.csv").head(40)))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert make_folds.main(["--data", comp]) == 0
        for exp, lr in (("a", "3e-3"), ("b", "1e-3")):
            assert train.main(["--data", comp, "--epochs", "2", "--batch-size", "32", "--lr", lr, "--exp", exp]) == 0
    return root, comp


@pytest.fixture
def two_experiments(trained_once, workdir):
    """A fresh copy of the trained folds and weights in this test's folder (tests damage them); the competition."""
    root, comp = trained_once
    for folder in ("folds", "weights"):
        shutil.copytree(root / folder, workdir / folder)
    return comp


def test_mean_and_learned_ensembles(two_experiments, workdir, capsys):
    comp = two_experiments
    assert infer.main(["--data", comp, "--exp", "a", "b", "--ensemble", "mean"]) == 0
    pa, pb = (np.load(workdir / "weights" / e / "test_probs.npy") for e in "ab")
    mean_sub = pd.read_csv("submissions/a+b_mean.csv")
    assert (mean_sub["Label"].to_numpy() == ((pa + pb) / 2).argmax(1)).all()
    assert infer.main(["--data", comp, "--exp", "a", "b", "--ensemble", "learned"]) == 0
    out = capsys.readouterr().out
    assert "OOF mean blend" in out and "OOF learned blend (weights fitted on the other folds)" in out
    blend = json.loads((workdir / "weights" / "blend_a+b.json").read_text())
    w = np.array(blend["weights"])
    assert w.sum() == pytest.approx(1) and (w > 0).all()
    learned = pd.read_csv("submissions/a+b_learned.csv")
    assert (learned["Label"].to_numpy() == (w[0] * pa + w[1] * pb).argmax(1)).all()


def test_missing_fold_weights_listed(two_experiments, workdir, capsys):
    os.remove(workdir / "weights" / "a" / "fold1.pth")
    os.remove(workdir / "weights" / "a" / "fold3.pth")
    assert infer.main(["--data", two_experiments, "--exp", "a"]) == 2
    assert "missing fold weights fold1.pth, fold3.pth of 5" in capsys.readouterr().err


def test_checkpoint_classes_must_match_data(two_experiments, workdir, capsys):
    path = workdir / "weights" / "a" / "fold0.pth"
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["num_classes"] = 7
    torch.save(ckpt, path)
    assert infer.main(["--data", two_experiments, "--exp", "a"]) == 2
    assert "fold0.pth: checkpoint has num_classes=7, the data needs 10" in capsys.readouterr().err


def test_several_experiments_need_a_name(two_experiments, capsys):
    assert infer.main(["--data", two_experiments]) == 2
    assert "holds several experiments (a, b)" in capsys.readouterr().err


def test_kaggle_notebook_runs_offline(two_experiments, workdir):
    """The repository's notebook cells, with its settings cell pointed at this run's files (the exported notebook
    is this one with that cell written by pipeline.export; tests/test_export.py runs it in a Kaggle-like venv)."""
    nb = json.loads(open(os.path.join(os.path.dirname(__file__), "..", "notebooks", "kaggle_inference.ipynb")).read())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)  # outputs stripped
    cells = ["".join(c["source"]) for c in code]
    assert cells[0].startswith("# settings: written by `python -m pipeline.export`")
    assert "import pipeline" not in "".join(cells).replace("from pipeline", "")  # the notebook imports the package only
    cells[0] = "\n".join([f"COMPETITION = {two_experiments!r}", "CODE = 'unused: this version is installed'",
                          f"WEIGHTS = {str(workdir / 'weights')!r}", "from pipeline import __version__ as VERSION",
                          "SETTINGS = {'exp': ['a', 'b'], 'tta': True, 'ensemble': 'learned'}",
                          f"OUT = {str(workdir / 'submission.csv')!r}"])
    namespace = {}
    exec(compile("\n".join(cells), "kaggle_inference.ipynb", "exec"), namespace)
    assert len(pd.read_csv(workdir / "submission.csv")) == 40
    cfg = namespace["cfg"]  # what the notebook asked for: no hub weights, TTA, the two experiments blended
    assert cfg.pretrained is False and cfg.tta is True and cfg.exp == ("a", "b") and cfg.ensemble == "learned"
    assert cfg.weights_dir == str(workdir / "weights") and cfg.out == str(workdir / "submission.csv")


def test_greedy_ensemble_and_rank_refused_for_accuracy(two_experiments, workdir, capsys):
    comp = two_experiments
    assert infer.main(["--data", comp, "--exp", "a", "b", "--ensemble", "greedy"]) == 0
    out = capsys.readouterr().out
    assert "OOF a: accuracy" in out and "OOF greedy blend (weights fitted on the other folds): accuracy" in out
    saved = json.loads((workdir / "weights" / "blend_a+b.json").read_text())
    assert saved["method"] == "greedy" and sum(saved["weights"]) == pytest.approx(1)
    assert all(w * 25 == pytest.approx(round(w * 25)) for w in saved["weights"])  # picks out of 25 rounds
    pa, pb = (np.load(workdir / "weights" / e / "test_probs.npy") for e in "ab")
    sub = pd.read_csv("submissions/a+b_greedy.csv")
    w = saved["weights"]
    assert (sub["Label"].to_numpy() == (w[0] * pa + w[1] * pb).argmax(1)).all()
    assert infer.main(["--data", comp, "--exp", "a", "b", "--ensemble", "rank"]) == 2
    assert "--ensemble rank: rank averaging keeps only the order" in capsys.readouterr().err


def test_full_data_model_joins_the_folds(two_experiments, workdir, capsys):
    comp = two_experiments
    assert train.main(["--data", comp, "--exp", "a", "--fold", "full", "--epochs", "2", "--batch-size", "32",
                       "--lr", "3e-3"]) == 0
    assert (workdir / "weights/a/full.pth").is_file() and "no CV for it" in capsys.readouterr().out
    assert infer.main(["--data", comp, "--exp", "a"]) == 0
    folds_only = np.load(workdir / "weights/a/test_probs.npy")
    assert infer.main(["--data", comp, "--exp", "a", "--with-full"]) == 0
    with_full = np.load(workdir / "weights/a/test_probs.npy")
    from pipeline import data
    from pipeline.training.engine import predict
    from pipeline.predict import load_fold_model

    model, spec = load_fold_model(workdir / "weights/a/full.pth", torch.device("cpu"))
    test = data.read_test(data.resolve(comp), data.Description("pixels", spec.task, side=28), 28, ".cache")[0]
    full = predict(model, torch.from_numpy(test), 64, spec, torch.device("cpu"))
    np.testing.assert_allclose(with_full, (5 * folds_only + full) / 6, atol=1e-6)
    capsys.readouterr()
    assert train.main(["--data", comp, "--exp", "a", "--fold", "full", "--epochs", "2", "--batch-size", "32",
                       "--lr", "1e-3"]) == 2
    assert "must share the folds' recipe" in capsys.readouterr().err
    assert infer.main(["--data", comp, "--exp", "b", "--with-full"]) == 2
    assert "--with-full: weights/b has no full.pth" in capsys.readouterr().err
