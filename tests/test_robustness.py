"""Interruption, bad input and untrusted checkpoints (nothing lost, nothing trusted blindly)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline import infer, make_folds, train
from pipeline.io import load_checkpoint
from pipeline.errors import PipelineError

REPO = Path(__file__).resolve().parents[1]


def cli(*args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture
def trained(tiny_comp, workdir):
    assert make_folds.main(["--data", str(tiny_comp)]) == 0
    assert train.main(["--data", str(tiny_comp), "--epochs", "1", "--batch-size", "32"]) == 0
    return str(tiny_comp)


def test_existing_experiment_is_not_overwritten(trained, workdir, capsys):
    before = (workdir / "weights/digit_cnn/fold0.pth").read_bytes()
    assert train.main(["--data", trained, "--epochs", "1", "--batch-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "experiment exists" in err and "add --resume to continue it, --overwrite to replace it" in err
    assert (workdir / "weights/digit_cnn/fold0.pth").read_bytes() == before
    assert train.main(["--data", trained, "--epochs", "1", "--batch-size", "32", "--fold", "2", "--overwrite"]) == 0
    assert (workdir / "weights/digit_cnn/fold0.pth").read_bytes() == before  # other folds untouched


def test_resume_refuses_a_changed_recipe(trained, capsys):
    assert train.main(["--data", trained, "--epochs", "1", "--batch-size", "32", "--lr", "0.1", "--resume"]) == 2
    assert "--resume: weights/digit_cnn was trained with lr=0.003" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--fold", "7"], "--fold: must be 'all' or 0..4 (the folds file has 5), got 7"),
    (["--n-splits", "1"], "unrecognized arguments: --n-splits"),
    (["--lr", "-1"], "--lr: must be > 0"),
])
def test_invalid_flags_refused_before_work(trained, workdir, args, message, capsys):
    assert train.main(["--data", trained, "--exp", "new", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (workdir / "weights/new").exists()


def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path):
    """As a user sees it: a real process, one stderr line, no traceback, no folds file."""
    comp = tmp_path / "comp"
    comp.mkdir()
    (comp / "train.csv").write_text("label,pixel0\n1,2\n")
    result = cli("pipeline.make_folds", "--data", str(comp), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {comp}/train.csv: expected 785 columns (label + 784 pixels), found 2"]
    assert not (tmp_path / "folds").exists()
    missing = cli("pipeline.train", "--data", str(tmp_path / "nope"), cwd=tmp_path)
    assert missing.returncode == 2 and "kaggle competitions download -c digit-recognizer" in missing.stderr


def test_truncated_checkpoint(trained, workdir, capsys):
    path = workdir / "weights/digit_cnn/fold2.pth"
    path.write_bytes(path.read_bytes()[:1000])
    assert infer.main(["--data", trained]) == 2
    assert "fold2.pth: truncated or corrupted checkpoint" in capsys.readouterr().err
    assert not (workdir / "submissions/digit_cnn.csv").exists()


def test_checkpoint_with_wrong_input_channels(trained, workdir, capsys):
    path = workdir / "weights/digit_cnn/fold1.pth"
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["in_chans"] = 3
    torch.save(ckpt, path)
    assert infer.main(["--data", trained]) == 2
    assert "fold1.pth: checkpoint has in_chans=3, the data needs 1" in capsys.readouterr().err


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_and_runs_nothing(trained, workdir, tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = workdir / "weights/digit_cnn/fold0.pth"
    torch.save({"state_dict": {}, "config": {}, "payload": Exploit(marker)}, path)
    with pytest.raises(PipelineError, match="refused to load"):
        load_checkpoint(path)
    assert infer.main(["--data", trained]) == 2
    assert "fold0.pth: refused to load" in capsys.readouterr().err
    assert not marker.exists()


def run_until_killed(args, cwd, exp_dir, fold, rows):
    """Start training, SIGKILL it once fold `fold` has `rows` epochs in metrics.csv."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.train", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        metrics = exp_dir / "metrics.csv"
        if metrics.is_file() and (exp_dir / f"fold{fold}.last.pth").is_file():
            try:
                done = (pd.read_csv(metrics)["fold"] == fold).sum()
            except (pd.errors.EmptyDataError, KeyError):
                done = 0
            if done >= rows:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return done
        time.sleep(0.02)
    proc.kill()
    pytest.fail("training finished or hung before it could be killed mid-fold")


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(small_comp, tmp_path):
    """Killed mid-fold and resumed: the same metrics, OOF and CV as a run never stopped (the model, optimizer,
    generator and schedule as in every run, and the plateau scheduler's counters, the SWA average and the EMA
    weights, all carried by the snapshot: one recipe with all of them)."""
    recipe = ["--sched", "plateau", "--decay-epochs", "1", "--swa-epochs", "2", "--ema", "0.9"]
    common = ["--data", str(small_comp), "--epochs", "4", "--seed", "3", *recipe]
    for name in ("straight", "killed"):
        (tmp_path / name).mkdir()
        assert cli("pipeline.make_folds", "--data", str(small_comp), "--n-splits", "3", cwd=tmp_path / name).returncode == 0
    assert cli("pipeline.train", *common, cwd=tmp_path / "straight").returncode == 0

    killed_dir = tmp_path / "killed" / "weights" / "digit_cnn"
    run_until_killed(common, tmp_path / "killed", killed_dir, fold=1, rows=2)
    fold0 = (killed_dir / "fold0.pth").read_bytes()
    resumed = cli("pipeline.train", *common, "--resume", cwd=tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert "resume: folds 0 already finished" in resumed.stdout and "resume: fold 1 continues after epoch" in resumed.stdout
    assert (killed_dir / "fold0.pth").read_bytes() == fold0  # finished fold untouched

    straight_dir = tmp_path / "straight" / "weights" / "digit_cnn"
    a, b = (pd.read_csv(d / "metrics.csv").drop(columns="seconds") for d in (straight_dir, killed_dir))
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(pd.read_csv(straight_dir / "oof.csv"), pd.read_csv(killed_dir / "oof.csv"))
    cv_a, cv_b = (json.loads((d / "cv.json").read_text()) for d in (straight_dir, killed_dir))
    assert cv_a["oof"] == cv_b["oof"]
    assert sorted(p.name for p in killed_dir.iterdir()) == sorted(p.name for p in straight_dir.iterdir())


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
    from pipeline.io import atomic_path

    path = tmp_path / "oof.csv"
    path.write_text("complete old file")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as tmp:
            tmp.write_text("half of the new")
            raise KeyboardInterrupt
    assert path.read_text() == "complete old file" and list(tmp_path.iterdir()) == [path]


def test_overwriting_one_fold_keeps_one_recipe(trained, capsys):
    assert train.main(["--data", trained, "--epochs", "1", "--batch-size", "32", "--fold", "1", "--lr", "0.01",
                       "--overwrite"]) == 2
    assert "one experiment holds one recipe" in capsys.readouterr().err
