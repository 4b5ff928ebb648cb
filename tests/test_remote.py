"""python -m pipeline.remote against the stand-in Kaggle server (tests/fake_kaggle.py), which runs each pushed kernel
script here on the CPU: the round trip equals a local run, refusals come before any upload, Ctrl-C leaves the kernel
running for --attach, damaged outputs are refused, a kernel stopped by the session limit resumes in the next one,
and folds trained there merge with folds trained here."""
from __future__ import annotations

import hashlib
import json
import shutil
import types
from pathlib import Path

import pandas as pd
import pytest

from fake_kaggle import FakeKaggle
from pipeline import infer, make_folds, train
from pipeline import remote
from pipeline.remote import build, install, kernel

SAMPLE = ["--data", "sample", "--epochs", "1", "--poll", "0.05"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Built once: the code dataset's folder, and a local run on the sample (folds and weights/ref/) to compare with."""
    root = tmp_path_factory.mktemp("remote-shared")
    build.code_dataset(root / "code", "alice/pipeline-code")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert make_folds.main(["--data", "sample"]) == 0
        assert train.main(["--data", "sample", "--epochs", "1", "--exp", "ref"]) == 0
    return root


@pytest.fixture
def project(shared, tmp_path, monkeypatch, kaggle_env):
    """A project folder with the shared folds and the code dataset's folder (built, never uploaded)."""
    shutil.copytree(shared / "folds", tmp_path / "folds")
    shutil.copytree(shared / "code", tmp_path / "remote" / "code")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def error_line(capsys, err: str | None = None) -> str:
    """The last line of stderr (read from capsys unless given): `error: ...`, and no traceback anywhere."""
    err = (capsys.readouterr().err if err is None else err).strip().splitlines()
    assert err and err[-1].startswith("error: ") and not any("Traceback" in line for line in err), err
    return err[-1]


def test_round_trip_on_the_sample_equals_a_local_run(shared, project, capsys):
    with FakeKaggle() as server:
        assert remote.main([*SAMPLE, "--exp", "rt"]) == 0
    out = capsys.readouterr().out
    assert "kaggle: pushed kernel alice/rt-train version 1 on T4x2" in out and "installed alice/rt-train/1" in out
    push = server.kernels["alice/rt-train"][0]
    assert (push["kernelType"], push["enableGpu"], push["enableInternet"], push["machineShape"]) == \
        ("script", True, False, "NvidiaTeslaT4")
    assert push["datasetDataSources"] == ["alice/pipeline-code", "alice/rt-train-run"]
    assert push["competitionDataSources"] == ["digit-recognizer"] and not push.get("kernelDataSources")
    assert push["text"] == (project / "remote/rt-train/kernel/kaggle_train.py").read_text()
    assert "EXP = 'rt'" in push["text"] and "DATA = 'sample'" in push["text"]
    shipped = server.dataset_files("alice/rt-train-run")
    assert sorted(shipped) == ["folds.csv", "folds.json", "run.json", "train.json"]
    assert shipped["folds.csv"] == (project / "folds/folds.csv").read_bytes()  # the local folds, trained on there

    ours, ref = project / "weights/rt", shared / "weights/ref"
    files = [sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) for d in (ours, ref)]  # not locks
    assert files[0] == files[1] and "fold4.pth" in files[0]
    assert (ours / "oof.csv").read_bytes() == (ref / "oof.csv").read_bytes()
    cv, cv_ref = (json.loads((d / "cv.json").read_text()) for d in (ours, ref))
    assert cv.pop("train_seconds") > 0 and {k: v for k, v in cv_ref.items() if k != "train_seconds"} == cv
    config, config_ref = (json.loads((d / "config.json").read_text()) for d in (ours, ref))
    assert config.pop("exp") == ["rt"] and config_ref.pop("exp") == ["ref"] and config == config_ref
    for exp_dir in (ours, ref):
        assert infer.main(["--data", "sample", "--exp", exp_dir.name, "--weights-dir", str(exp_dir.parent), "--tta",
                           "--out", f"submissions/{exp_dir.name}.csv"]) == 0
    assert (project / "submissions/rt.csv").read_bytes() == (project / "submissions/ref.csv").read_bytes()


def test_refusals_come_before_anything_is_uploaded(project, monkeypatch, capsys):
    with FakeKaggle(accept_rules=False) as server:
        assert remote.main([*SAMPLE, "--exp", "no"]) == 2
    assert "accept the rules of digit-recognizer first at https://www.kaggle.com/competitions/digit-recognizer/rules" \
        in error_line(capsys)
    assert server.datasets == {} and server.kernels == {}

    monkeypatch.delenv("KAGGLE_KEY")
    with FakeKaggle() as server:
        assert remote.main([*SAMPLE, "--exp", "no"]) == 2
        assert "kaggle: no credentials" in error_line(capsys)
        monkeypatch.delenv("KAGGLE_USERNAME")
        assert remote.main([*SAMPLE, "--exp", "no"]) == 2
        assert "kaggle: no username" in error_line(capsys)
    assert server.datasets == {} and server.auth == []

    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    with FakeKaggle() as server:
        assert remote.main([*SAMPLE, "--exp", "no", "--folds-path", "elsewhere/folds.csv"]) == 2
        assert "make the folds first" in error_line(capsys) and server.datasets == {}
        server.reject_push = "Maximum weekly GPU quota reached"
        assert remote.main([*SAMPLE, "--exp", "no"]) == 2
        assert error_line(capsys) == "error: kaggle: kernel alice/no-train refused: Maximum weekly GPU quota reached"
    assert not (project / "weights/no").exists() and not (project / "remote/no-train/state.json").exists()

    (project / "mine/code").mkdir(parents=True)  # a --remote-dir holding the user's own files: never removed
    (project / "mine/code/notes.txt").write_text("mine")
    with FakeKaggle() as server:
        assert remote.main([*SAMPLE, "--exp", "no", "--remote-dir", "mine"]) == 2
        assert "mine/code: holds notes.txt, which pipeline.remote did not write there" in error_line(capsys)
    assert (project / "mine/code/notes.txt").read_text() == "mine" and server.datasets == {}

    record = project / "remote/gone-train/state.json"  # a version Kaggle no longer has (deleted on kaggle.com)
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"kernel": "alice/gone-train", "version": 9, "exp": "gone", "folds": [0],
                                  "run_hash": "x", "train": {}}))
    with FakeKaggle():
        assert remote.main([*SAMPLE, "--exp", "gone", "--attach"]) == 2
        assert error_line(capsys) == ("error: kaggle: alice/gone-train/9 not found on Kaggle (deleted?); push a fresh "
                                      "run with: python -m pipeline.remote --data sample --epochs 1 --exp gone --poll 0.05")
        assert "not found on Kaggle" in json.loads(record.read_text())["refused"]
        record.write_text('{"kernel": "alice/gone-train"}')
        assert remote.main([*SAMPLE, "--exp", "gone", "--attach"]) == 2
        assert "remote/gone-train/state.json: damaged, --attach reads it; remove it (rm remote/gone-train/state.json)" \
            in error_line(capsys)


def test_a_failed_kernel_shows_its_log_and_the_command_to_retry(project, monkeypatch, capsys):
    built = build.code_dataset
    monkeypatch.setattr(build, "code_dataset", lambda folder, ref: ("f" * 64, built(folder, ref)[1]))  # a stale hash
    with FakeKaggle() as server:
        assert remote.main([*SAMPLE, "--exp", "bad"]) == 2
    err = capsys.readouterr().err
    assert server.runs[("bad-train", 1)]["status"] == "ERROR"
    assert "kaggle: the log of alice/bad-train/1 ends:" in err
    assert f"pipeline-code/code.json: holds {built(project / 'remote/code', '')[0][:12]}, the push made ffffffffffff" in err
    assert err.strip().splitlines()[-1] == ("error: kaggle: alice/bad-train/1 error: Kernel failed; retry with: "
                                            "python -m pipeline.remote --data sample --epochs 1 --exp bad --poll 0.05")
    assert not (project / "weights/bad").exists()


def test_ctrl_c_then_attach_installs_folds_beside_local_ones_and_damaged_outputs_are_refused(shared, project,
                                                                                           monkeypatch, capsys):
    assert train.main(["--data", "sample", "--epochs", "1", "--exp", "split", "--fold", "2,3,4"]) == 0
    args = [*SAMPLE, "--exp", "split", "--folds", "0,1"]  # the two other folds there
    with FakeKaggle() as server:  # refused before any upload: another recipe, a fold trained here
        assert remote.main([*args, "--lr", "0.001"]) == 2
        assert "weights/split: its folds were trained with lr=0.003, the kernel would train with 0.001" in error_line(capsys)
        assert remote.main([*SAMPLE, "--exp", "split", "--folds", "1,2"]) == 2
        assert "weights/split: fold(s) 2 trained (or begun) here already; add --overwrite" in error_line(capsys)
    assert server.datasets == {} and server.kernels == {}

    def ctrl_c(seconds):
        raise KeyboardInterrupt

    with FakeKaggle() as server:
        server.gate.clear()  # the kernel stays queued: the watch is interrupted before it ends
        with monkeypatch.context() as mp:
            mp.setattr(kernel, "time", types.SimpleNamespace(monotonic=kernel.time.monotonic, sleep=ctrl_c))
            with pytest.raises(SystemExit) as stopped:
                remote.main(args)
        assert stopped.value.code == 130
        attach = "python -m pipeline.remote --data sample --fold 0,1 --epochs 1 --exp split --attach --poll 0.05"
        assert f"alice/split-train/1 keeps running on Kaggle. Pick it up with: {attach}" in capsys.readouterr().err
        assert server.runs[("split-train", 1)]["status"] == "QUEUED"
        assert remote.main(args) == 2  # the same command again would spend GPU hours twice
        assert f"kaggle: alice/split-train/1 is still queued; pick it up with: {attach}" in error_line(capsys)
        server.gate.set()
        copies = []

        def killed_on_the_second_copy(*a):  # a kill -9 halfway through the install
            copies.append(a)
            if len(copies) == 2:
                raise KeyboardInterrupt
            return copy(*a)

        copy = install._copy
        with monkeypatch.context() as mp:
            mp.setattr(install, "_copy", killed_on_the_second_copy)
            assert remote.main([*args, "--attach"]) == 130
        assert json.loads((project / "remote/split-train/state.json").read_text())["installing"] is True
        assert (project / "weights/split/fold0.pth").is_file() and not (project / "weights/split/fold1.pth").exists()
        assert remote.main([*args, "--attach"]) == 0  # installs again over its own half copy
        assert remote.main([*args, "--attach"]) == 0
        assert "alice/split-train version 1 is installed already" in capsys.readouterr().out
        assert len(server.kernels["alice/split-train"]) == 1  # attached: nothing pushed again
        assert '"fold": "0,1"' in server.dataset_files("alice/split-train-run")["train.json"].decode()

        ours, ref = project / "weights/split", shared / "weights/ref"  # folds 0,1 there and 2,3,4 here: one run
        # equal to float32's precision: oof.csv holds the fold written last with more digits than the ones read back
        pd.testing.assert_frame_equal(pd.read_csv(ours / "oof.csv"), pd.read_csv(ref / "oof.csv"), rtol=1e-7)
        cv, cv_ref = (json.loads((d / "cv.json").read_text())["oof"] for d in (ours, ref))
        assert cv["accuracy"] == cv_ref["accuracy"] and cv["log_loss"] == pytest.approx(cv_ref["log_loss"], rel=1e-9)
        assert sorted(pd.read_csv(ours / "metrics.csv")["fold"].unique()) == [0, 1, 2, 3, 4]
        assert sorted(p.name for p in ours.glob("fold*.pth")) == [f"fold{k}.pth" for k in range(5)]

        working = server.runs[("split-train", 1)]["working"]
        manifest = json.loads((working / "remote.json").read_text())
        model, config = working / "weights/split/fold0.pth", working / "weights/split/config.json"
        kept = model.read_bytes(), config.read_text()
        attach = [*args, "--attach", "--weights-dir", "other", "--remote-dir", "remote2"]
        shutil.copytree(project / "remote/split-train", project / "remote2/split-train", ignore=shutil.ignore_patterns("output"))
        state = project / "remote2/split-train/state.json"
        state.write_text(json.dumps({k: v for k, v in json.loads(state.read_text()).items() if k != "installed"}))

        model.unlink()  # a file the kernel listed is not served; the plain command installs a finished version
        assert remote.main([*args, "--weights-dir", "other", "--remote-dir", "remote2"]) == 2
        said = capsys.readouterr()
        assert "alice/split-train/1 finished and was never installed: installing it (no new run)" in said.out
        assert "weights/split/fold0.pth: listed by the kernel (remote.json) but not among the downloaded outputs" \
            in error_line(capsys, said.err)
        assert "fold0.pth: listed" in json.loads(state.read_text())["refused"]  # the next plain command pushes anew
        assert len(server.kernels["alice/split-train"]) == 1
        model.write_bytes(kept[0][:-10] + b"0123456789")  # served damaged
        assert remote.main(attach) == 2
        assert "fold0.pth: sha256 differs from the kernel's" in error_line(capsys)
        model.write_bytes(kept[0])
        config.write_text(kept[1].replace('"lr": 0.003', '"lr": 0.5'))  # a config other than the one pushed
        files = dict(manifest["files"], **{"weights/split/config.json": hashlib.sha256(config.read_bytes()).hexdigest()})
        (working / "remote.json").write_text(json.dumps(manifest | {"files": files}))
        assert remote.main(attach) == 2
        assert "config.json: lr=0.5, the push had 0.003; the kernel did not train the config pushed" in error_line(capsys)
        config.write_text(kept[1])
        model.unlink()  # the fold's model gone from the outputs and from the kernel's list
        files = {k: v for k, v in manifest["files"].items() if not k.endswith("fold0.pth")}
        (working / "remote.json").write_text(json.dumps(manifest | {"files": files}))
        assert remote.main(attach) == 2
        assert "fold(s) 0 missing from the kernel's outputs (no model or no OOF rows); nothing installed" \
            in error_line(capsys)
    assert not (project / "other").exists()


def test_a_kernel_stopped_by_the_session_limit_resumes_from_its_snapshots_in_the_next(small_comp, project,
                                                                                      capsys):
    shutil.rmtree(project / "folds")
    assert make_folds.main(["--data", str(small_comp), "--n-splits", "3"]) == 0
    common = ["--data", str(small_comp), "--epochs", "2", "--seed", "3"]
    assert train.main([*common, "--exp", "straight"]) == 0
    args = [*common, "--exp", "long", "--poll", "0.05"]
    with FakeKaggle() as server:
        server.competitions["digit-recognizer"] = str(small_comp)  # mounted as /kaggle/input/digit-recognizer
        server.stop_when = "weights/long/fold1.last.pth"  # killed after fold 1's first epoch
        assert remote.main(args) == 2
        stopped = error_line(capsys)
        assert not (project / "weights/long").exists()  # nothing installed from a stopped kernel
        server.stop_when = ""
        assert remote.main([*args, "--resume"]) == 0
        out = capsys.readouterr().out
    assert "kaggle: alice/long-train/1 error: Session timed out; its outputs keep fold1.last.pth, oof of fold 0: " \
           f"continue from them with: python -m pipeline.remote --data {small_comp} --epochs 2 --exp long --seed 3 " \
           "--resume --poll 0.05" in stopped
    first, second = (server.runs[("long-train", v)] for v in (1, 2))
    assert first["status"] == "ERROR" and first["failure"] == "Session timed out"
    assert "DATA = ''" in server.kernels["alice/long-train"][0]["text"]  # the competition's data, not a sample
    assert server.kernels["alice/long-train"][1]["kernelDataSources"] == ["alice/long-train"]
    assert "resume: folds 0 already finished" in second["log"] and "resume: fold 1 continues after epoch 1" in second["log"]
    assert "dataset alice/pipeline-code holds this code already" in out and "alice/long-train-run holds this run" in out
    assert [len(v) for v in server.datasets.values()] == [1, 1]
    ours, straight = project / "weights/long", project / "weights/straight"
    pd.testing.assert_frame_equal(pd.read_csv(ours / "oof.csv"), pd.read_csv(straight / "oof.csv"))
    a, b = (pd.read_csv(d / "metrics.csv").drop(columns="seconds") for d in (ours, straight))
    pd.testing.assert_frame_equal(a, b)
    assert json.loads((ours / "cv.json").read_text())["oof"] == json.loads((straight / "cv.json").read_text())["oof"]
