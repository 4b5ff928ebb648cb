"""The cases found when the pipeline was attacked (issue 8), each reproduced, each ending in one line and exit 2
or in a correct result: nothing destroyed, nothing mixed, no traceback."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import data, experiment, infer, make_folds, runs, sweep, train, tune
from pipeline.training import recipe
from pipeline.inputs.spec import DataSpec
from pipeline.errors import PipelineError, TrainingDiverged
from pipeline.tasks import Task

REPO = Path(__file__).resolve().parents[1]
EPOCH1 = ["--epochs", "1", "--batch-size", "32"]


def cli(*args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True)


def one_error_line(err: str) -> str:
    """The single `error: ...` line a user sees; fails on a traceback or on several lines."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory, sample_dir):
    """A tiny competition with folds and a 1-epoch experiment 'a', trained once for the whole module."""
    root = tmp_path_factory.mktemp("hostile")
    train_df = pd.read_csv(sample_dir / "train.csv").groupby("label", group_keys=False).head(20).reset_index(drop=True)
    comp = root / "comp"
    comp.mkdir()
    train_df.to_csv(comp / "train.csv", index=False)
    test_df = pd.read_csv(sample_dir / "test.csv").head(40)
    test_df.to_csv(comp / "test.csv", index=False)
    pd.DataFrame({"ImageId": np.arange(1, 41), "Label": 0}).to_csv(comp / "sample_submission.csv", index=False)
    work = root / "work"
    work.mkdir()
    cwd = os.getcwd()
    os.chdir(work)
    try:
        assert make_folds.main(["--data", str(comp)]) == 0
        assert train.main(["--data", str(comp), "--exp", "a", *EPOCH1]) == 0
    finally:
        os.chdir(cwd)
    return comp, work


@pytest.fixture
def project(trained_once, tmp_path, monkeypatch):
    """A fresh copy of the trained project, as the current folder; returns the competition folder."""
    comp, work = trained_once
    shutil.copytree(work, tmp_path / "project")
    monkeypatch.chdir(tmp_path / "project")
    return str(comp)


# 1. names that leave their folder; --overwrite removing what it did not write

@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", ".hidden", "-rf", "x" * 101, ""])
def test_experiment_names_cannot_leave_weights(project, name, capsys):
    assert train.main(["--data", project, f"--exp={name}", "--overwrite", *EPOCH1]) == 2
    assert "--exp: must be" in one_error_line(capsys.readouterr().err)
    assert Path("weights/a/fold0.pth").is_file() and Path("folds/folds.csv").is_file()


def test_exp_dotdot_overwrite_deletes_nothing_as_a_user_runs_it(project):
    """The reported disaster, in a real process: the project folder must survive."""
    before = sorted(str(p) for p in Path(".").rglob("*"))
    result = cli("pipeline.train", "--data", project, "--exp", "..", "--overwrite", "--fold", "all", cwd=".")
    assert result.returncode == 2 and "--exp: must be" in one_error_line(result.stderr)
    assert sorted(str(p) for p in Path(".").rglob("*")) == before


@pytest.mark.parametrize("stage, args", [(sweep, ["--name", "../../escape"]), (tune, ["--name", ".."])])
def test_sweep_and_tune_names_cannot_leave_their_folder(project, stage, args, capsys):
    assert stage.main(["--data", project, "--epochs", "1", *args]) == 2
    assert "--name: must be a folder name" in one_error_line(capsys.readouterr().err)
    assert not Path("escape").exists() and not Path("weights/escape").exists()


def test_overwrite_removes_only_pipeline_files_and_never_follows_links(project, tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    exp = Path("weights/a")
    (exp / "notes.md").write_text("my notes")
    (exp / "fold9.pth").symlink_to(outside)  # named like an artifact, pointing out of the experiment
    (exp / "report").mkdir()
    (exp / "report" / "mine.txt").write_text("mine")
    (exp / "report" / "curves.png").write_bytes(b"png")
    assert train.main(["--data", project, "--exp", "a", "--overwrite", *EPOCH1]) == 0
    assert (exp / "notes.md").read_text() == "my notes" and (exp / "report" / "mine.txt").read_text() == "mine"
    assert outside.read_text() == "keep me" and not (exp / "fold9.pth").exists()  # the link went, not its target
    assert not (exp / "report" / "curves.png").exists()
    assert sorted(p.name for p in exp.glob("fold*.pth")) == [f"fold{k}.pth" for k in range(5)]


def test_overwrite_refuses_a_symlinked_experiment(project, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree("weights/a", elsewhere)
    os.symlink(elsewhere, "weights/linked")
    assert train.main(["--data", project, "--exp", "linked", "--overwrite", *EPOCH1]) == 2
    assert "weights/linked is a symbolic link; refusing to delete through it" in one_error_line(capsys.readouterr().err)
    assert (elsewhere / "fold0.pth").is_file() and (elsewhere / "oof.csv").is_file()


# 2. fold assignments mixed after remaking the folds file

def remade_folds(project: str) -> None:
    assert make_folds.main(["--data", project, "--seed", "7", "--overwrite"]) == 0


def test_resume_after_remaking_folds_is_refused(project, capsys):
    assert train.main(["--data", project, "--exp", "b", "--fold", "0", *EPOCH1]) == 0
    oof_before = Path("weights/b/oof.csv").read_bytes()
    remade_folds(project)
    capsys.readouterr()
    assert train.main(["--data", project, "--exp", "b", "--fold", "all", "--resume", *EPOCH1]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "trained with folds file hash=" in line and "the folds file was remade" in line and "--overwrite --fold all" in line
    assert Path("weights/b/oof.csv").read_bytes() == oof_before


def test_overwriting_one_fold_on_remade_folds_is_refused(project, capsys):
    remade_folds(project)
    capsys.readouterr()
    assert train.main(["--data", project, "--exp", "a", "--fold", "2", "--overwrite", *EPOCH1]) == 2
    assert "one experiment holds one recipe and one folds file" in one_error_line(capsys.readouterr().err)


def test_blending_experiments_on_different_folds_is_refused(project, capsys):
    remade_folds(project)
    assert train.main(["--data", project, "--exp", "b", *EPOCH1]) == 0
    capsys.readouterr()
    assert infer.main(["--data", project, "--exp", "a", "b", "--ensemble", "learned"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: --exp: b was trained on folds file") and "leaks" in line
    assert not Path("submissions/a+b_learned.csv").exists()


def test_infer_refuses_a_fold_checkpoint_from_other_folds(project, capsys):
    path = Path("weights/a/fold3.pth")
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["folds_hash"] = "0123456789abcdef"
    torch.save(ckpt, path)
    assert infer.main(["--data", project, "--exp", "a"]) == 2
    assert "fold3.pth: trained on folds file '0123456789abcdef'" in one_error_line(capsys.readouterr().err)


def test_cv_refuses_duplicated_oof_ids():
    oof = pd.DataFrame({"id": [0, 1, 1], "fold": [0, 0, 1], "label": [0, 1, 1], "p0": [1.0, 0, 0], "p1": [0, 1.0, 1]})
    with pytest.raises(PipelineError, match="id 1 appears in more than one fold"):
        experiment.cv_summary(oof, 2, Task("multiclass", ("0", "1")))


# 3. NaN and inf

@pytest.mark.parametrize("args", [["--weight-decay", "inf"], ["--lr", "nan"], ["--warmup-epochs", "inf"],
                                  ["--label-smoothing", "nan"]])
def test_non_finite_flags_refused(project, args, capsys):
    assert train.main(["--data", project, "--exp", "new", *args]) == 2
    assert "must be a finite number" in one_error_line(capsys.readouterr().err)
    assert not Path("weights/new").exists()


def huge_weights(tmp_path: Path) -> Path:
    """A finite pretrained file whose classifier overflows: the first forward pass gives inf logits."""
    state = {k: v.clone() for k, v in torch.load("weights/a/fold0.pth", weights_only=True)["state_dict"].items()}
    state["fc.weight"].fill_(3e38)
    path = tmp_path / "huge.pth"
    torch.save(state, path)
    return path


def test_diverging_fold_stops_and_saves_nothing_as_best(project, tmp_path, capsys):
    path = huge_weights(tmp_path)
    assert train.main(["--data", project, "--exp", "nan", "--fold", "0", "--pretrained-path", str(path), *EPOCH1]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "fold 0 epoch 1:" in line and "became NaN or infinite (training diverged)" in line
    assert not Path("weights/nan/fold0.pth").exists() and not Path("weights/nan/oof.csv").exists()


def test_divergence_message_keeps_the_last_good_epoch():
    model = torch.nn.Linear(2, 2)
    ok = np.full((4, 2), 0.5)
    recipe.check_finite(0.3, ok, model, 1, 2, 2)  # finite: no error
    with pytest.raises(TrainingDiverged, match=r"fold 1 epoch 3: the training loss .*fold1.last.pth \(epoch 2"):
        recipe.check_finite(float("nan"), ok, model, 1, 2, 2)
    with pytest.raises(TrainingDiverged, match="the validation probabilities"):
        recipe.check_finite(0.3, np.full((4, 2), np.nan), model, 1, 0, 0)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match="weights weight became"):
        recipe.check_finite(0.3, ok, model, 1, 0, 0)


def test_infer_refuses_non_finite_probabilities(project, tmp_path, capsys):
    path = Path("weights/a/fold1.pth")
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["fc.weight"].fill_(3e38)
    torch.save(ckpt, path)
    assert infer.main(["--data", project, "--exp", "a"]) == 2
    assert "fold1.pth: the model predicts NaN or infinite probabilities" in one_error_line(capsys.readouterr().err)
    assert not Path("submissions/a.csv").exists()


# 4. grouped folds

def test_grouped_folds_train_and_infer(trained_once, tmp_path, monkeypatch, capsys):
    comp, _ = trained_once
    grouped = tmp_path / "grouped"
    shutil.copytree(comp, grouped)
    train_df = pd.read_csv(grouped / "train.csv")
    groups = pd.Series([f"g{i // 4}" for i in range(len(train_df))], name="grp")  # 50 groups of 4 rows
    train_df = pd.concat([train_df, groups], axis=1)
    train_df.to_csv(grouped / "train.csv", index=False)
    monkeypatch.chdir(tmp_path)
    assert make_folds.main(["--data", str(grouped), "--group-col", "grp"]) == 0
    assert json.loads(Path("folds/folds.json").read_text())["group_col"] == "grp"
    folds = pd.read_csv("folds/folds.csv")
    assert (folds.groupby(train_df["grp"])["fold"].nunique() == 1).all()  # no group split across folds
    assert train.main(["--data", str(grouped), *EPOCH1]) == 0
    assert json.loads(Path("weights/digit_cnn/config.json").read_text())["group_col"] == "grp"
    assert infer.main(["--data", str(grouped)]) == 0
    assert len(pd.read_csv("submissions/digit_cnn.csv")) == 40


def test_extra_column_without_group_col_is_named(trained_once, tmp_path, capsys):
    comp, _ = trained_once
    grouped = tmp_path / "grouped"
    shutil.copytree(comp, grouped)
    train_df = pd.read_csv(grouped / "train.csv")
    train_df = pd.concat([train_df, pd.Series(1, index=train_df.index, name="grp")], axis=1)
    train_df.to_csv(grouped / "train.csv", index=False)
    assert make_folds.main(["--data", str(grouped), "--folds-path", str(tmp_path / "f.csv")]) == 2
    assert "unexpected column(s) grp" in one_error_line(capsys.readouterr().err)


# 5. one damaged experiment must not break the tools for the others

@pytest.mark.parametrize("damaged", ["config.json", "cv.json"])
def test_one_truncated_experiment_leaves_the_others_usable(project, damaged, capsys):
    shutil.copytree("weights/a", "weights/broken")
    path = Path("weights/broken") / damaged
    path.write_text(path.read_text()[:25])
    capsys.readouterr()
    assert runs.main([]) == 0
    out, err = capsys.readouterr()
    assert "a " in out and "broken" in out and f"weights/broken/{damaged}: unreadable" in err
    assert infer.main(["--data", project, "--exp", "a"]) == 0
    if damaged == "config.json":
        assert infer.main(["--data", project, "--exp", "broken"]) == 2
        assert "weights/broken/config.json: unreadable experiment config" in one_error_line(capsys.readouterr().err)


def test_damaged_oof_is_one_line(project, capsys):
    Path("weights/a/oof.csv").write_text('id,fold\n"1,2\n')
    shutil.copytree("weights/a", "weights/b")
    assert infer.main(["--data", project, "--exp", "a", "b"]) == 2
    assert "weights/a/oof.csv: " in one_error_line(capsys.readouterr().err)


# 6. untrusted checkpoints and pretrained files

@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(state_dict=[1, 2]), "'state_dict' must be a non-empty mapping of names to tensors"),
    (lambda c: c["state_dict"].update({"fc.weight": "text"}), "'state_dict' entry 'fc.weight' is str"),
    (lambda c: c["config"].pop("img_size"), "config img_size must be int, found None"),
    (lambda c: c["config"].update(num_classes="10"), "config num_classes must be int, found '10'"),
    (lambda c: c["config"].update(img_size=10**9), "out of range"),
    (lambda c: c.update(config=[]), "no 'config' mapping"),
    (lambda c: c["state_dict"]["fc.bias"].fill_(float("nan")), "weights fc.bias hold NaN"),
])
def test_malformed_fold_checkpoints_are_refused(project, mutate, message, capsys):
    path = Path("weights/a/fold2.pth")
    ckpt = torch.load(path, weights_only=True)
    mutate(ckpt)
    torch.save(ckpt, path)
    assert infer.main(["--data", project, "--exp", "a"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "fold2.pth" in line and message in line


def test_garbage_safetensors_pretrained_file(project, tmp_path, capsys):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}garbage")
    assert train.main(["--data", project, "--exp", "p", "--pretrained-path", str(bad), *EPOCH1]) == 2
    assert "w.safetensors: truncated or corrupted checkpoint" in one_error_line(capsys.readouterr().err)


def test_pretrained_stem_with_another_channel_count(project, tmp_path, capsys):
    state = torch.load("weights/a/fold0.pth", weights_only=True)["state_dict"]
    stem = next(k for k, v in state.items() if v.ndim == 4)
    state[stem] = torch.randn(state[stem].shape[0], 4, *state[stem].shape[2:])  # a 4-channel (RGBA) stem
    path = tmp_path / "rgba.pth"
    torch.save(state, path)
    assert train.main(["--data", project, "--exp", "p", "--fold", "0", "--pretrained-path", str(path), *EPOCH1]) == 0
    assert f"could not adapt {stem} (4 input channels) to 1 channel(s): started fresh" in capsys.readouterr().out


def test_damaged_resume_snapshot_is_one_line(project, capsys):
    assert train.main(["--data", project, "--exp", "r", "--fold", "0", "--epochs", "2", "--batch-size", "32"]) == 0
    ckpt = torch.load("weights/a/fold0.pth", weights_only=True)
    torch.save({"state_dict": ckpt["state_dict"], "epoch": 1}, "weights/r/fold1.last.pth")  # no optimizer, rng
    capsys.readouterr()
    assert train.main(["--data", project, "--exp", "r", "--fold", "all", "--resume", "--epochs", "2",
                       "--batch-size", "32"]) == 2
    assert "fold1.last.pth: not a usable resume snapshot (KeyError" in one_error_line(capsys.readouterr().err)


# 7. two trainings into one experiment

def test_second_training_into_a_locked_experiment_is_refused(project, capsys):
    with experiment.locked(Path("weights/a")):
        assert train.main(["--data", project, "--exp", "a", "--overwrite", *EPOCH1]) == 2
        line = one_error_line(capsys.readouterr().err)
    assert "another training is writing to this experiment (pid " in line and f"pid {os.getpid()} on" in line
    assert Path("weights/a/fold0.pth").is_file()
    assert train.main(["--data", project, "--exp", "a", "--overwrite", *EPOCH1]) == 0  # released


def test_litter_of_a_killed_write_is_cleared(project):
    litter = Path("weights/a/.oof.csv.abc123.tmp")
    litter.write_text("half")
    assert train.main(["--data", project, "--exp", "a", "--resume", *EPOCH1]) == 0
    assert not litter.exists()


# 8. zips

def zipped(tmp_path: Path, members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> Path:
    path = tmp_path / "comp.zip"
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    return path


def test_zip_bomb_refused_before_reading(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("train.csv", "w", force_zip64=True) as f:
        chunk = b"0" * (1 << 20)
        for _ in range(200):  # 200 MiB of one byte: ~200 KiB compressed
            f.write(chunk)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(PipelineError, match=r"bomb.zip:train.csv: expands to 209,715,200 bytes .* refused"):
        data.Source(path).read_bytes("train.csv")


def patch_zip(path: Path, local_offset: int, central_offset: int, value: int) -> None:
    raw = bytearray(path.read_bytes())
    for sig, offset in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        at = raw.find(sig) + offset
        raw[at:at + 2] = value.to_bytes(2, "little")
    path.write_bytes(bytes(raw))


def test_encrypted_unsupported_and_corrupt_members(trained_once, tmp_path):
    comp, _ = trained_once
    raw = (comp / "train.csv").read_bytes()
    path = zipped(tmp_path, {"train.csv": raw})
    patch_zip(path, 6, 8, 0x1)  # general-purpose flag bit 0: encrypted
    with pytest.raises(PipelineError, match="comp.zip:train.csv: encrypted"):
        data.Source(path).read_bytes("train.csv")
    path = zipped(tmp_path, {"train.csv": raw})
    patch_zip(path, 8, 10, 99)  # compression method 99 (AES)
    with pytest.raises(PipelineError, match="compression method 99 is not supported"):
        data.Source(path).read_bytes("train.csv")
    path = zipped(tmp_path, {"train.csv": raw})
    corrupt = bytearray(path.read_bytes())
    corrupt[200:400] = bytes(200)
    path.write_bytes(bytes(corrupt))
    with pytest.raises(PipelineError, match="comp.zip: not a readable zip file"):
        data.Source(path).read_bytes("train.csv")


def test_real_kaggle_sized_zip_still_reads(trained_once, tmp_path):
    comp, _ = trained_once
    path = zipped(tmp_path, {f"digit-recognizer/{n}": (comp / n).read_bytes()
                             for n in ("train.csv", "test.csv", "sample_submission.csv")})
    assert len(data.read_train(data.Source(path)).labels) == 200


# 9. file-system and parsing errors

def test_file_system_errors_are_one_line(project, tmp_path, capsys):
    Path("submissions").mkdir(exist_ok=True)
    Path("submissions/out.csv").mkdir()
    assert infer.main(["--data", project, "--exp", "a", "--out", "submissions/out.csv"]) == 2
    assert "--out: submissions/out.csv is a directory" in one_error_line(capsys.readouterr().err)
    assert infer.main(["--data", project, "--exp", "a", "--out", "submissions/" + "x" * 300 + ".csv"]) == 2
    assert "file name too long" in one_error_line(capsys.readouterr().err)
    Path("blocker").write_text("a file where a folder belongs")
    assert train.main(["--data", project, "--exp", "a", "--weights-dir", "blocker", *EPOCH1]) == 2
    assert "blocker" in one_error_line(capsys.readouterr().err)
    assert train.main(["--data", project, "--exp", "a", "--folds-path", "weights", *EPOCH1]) == 2
    assert "weights: is a directory" in one_error_line(capsys.readouterr().err)
    assert make_folds.main(["--data", project, "--config", "weights"]) == 2
    assert "--config: weights is a directory" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("text, message", [
    ('{"n_splits": 1e400}', "n_splits must be an integer, got inf"),
    ('{"epochs": 2.7}', "epochs must be an integer, got 2.7"),
    ('{"epochs": true}', "epochs must be an integer, got True"),
    ('{"lr": "fast"}', "lr must be a number, got 'fast'"),
    ('{"lr": 1e400}', "--lr: must be a finite number, got inf"),
    ('{"overwrite": "yes"}', "overwrite must be true or false"),
    ('{"exp": [1, 2]}', "exp must be a list of names"),
    ('{"seed": -1}', "--seed: must be 0..2147483647"),
    ('{"n_splits": 100000000000000000000}', "--n-splits: must be 2..20"),
    ("[1, 2]", "expected a mapping"),
])
def test_config_file_values_are_strict(tmp_path, text, message, capsys):
    path = tmp_path / "c.json"
    path.write_text(text)
    assert make_folds.main(["--config", str(path)]) == 2
    assert message in one_error_line(capsys.readouterr().err)


def test_config_file_quirks(tmp_path, capsys):
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("lr: 1e-3\nepochs: 3\nfold: 0\n")  # YAML 1.1 reads 1e-3 as a string: still a number
    from pipeline.config import parse_config
    cfg = parse_config(["--config", str(yaml_path)], "train", train.FLAGS)
    assert (cfg.lr, cfg.epochs, cfg.fold) == (1e-3, 3, "0")
    big = tmp_path / "big.json"
    big.write_text('{"lr": 0.001' + " " * (2 << 20) + "}")
    assert make_folds.main(["--config", str(big)]) == 2
    assert "a settings file is at most 1,048,576" in one_error_line(capsys.readouterr().err)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe{")
    assert make_folds.main(["--config", str(binary)]) == 2
    assert "is not UTF-8 text" in one_error_line(capsys.readouterr().err)


def test_unwritable_place_is_reported_before_work(project, capsys):
    """/proc/1 refuses writes even to root, as a read-only or foreign folder does to a user."""
    assert infer.main(["--data", project, "--exp", "a", "--out", "/proc/1/s.csv"]) == 2
    assert "--out: cannot write into /proc/1/ (permission denied)" in one_error_line(capsys.readouterr().err)
    assert not Path("weights/a/test_probs.npy").exists()  # refused before any inference
    assert train.main(["--data", project, "--exp", "a", "--weights-dir", "/proc/1/w", *EPOCH1]) == 2
    assert one_error_line(capsys.readouterr().err).startswith("error: /proc/1/w: ")


# Second attack (a hostile review of the fixes above): the same classes, other instances

def test_out_never_replaces_a_special_file_or_link(project, tmp_path, capsys):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    target = tmp_path / "real.csv"
    target.write_text("ImageId,Label\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    loop = tmp_path / "loop.csv"
    loop.symlink_to(loop)
    for out, kind in ((fifo, "not a regular file"), (link, "a symbolic link"), (loop, "a symbolic link")):
        assert infer.main(["--data", project, "--exp", "a", "--out", str(out)]) == 2
        assert f"{out}: is {kind}; refusing to replace it" in one_error_line(capsys.readouterr().err)
    assert fifo.exists() and not fifo.is_file() and link.is_symlink() and target.read_text() == "ImageId,Label\n"


def test_out_never_replaces_a_file_that_is_not_a_submission(project, capsys):
    Path("notes.csv").write_text("a,b\n1,2\n")
    assert infer.main(["--data", project, "--exp", "a", "--out", "notes.csv"]) == 2
    assert "notes.csv exists and is not a submission of this competition" in one_error_line(capsys.readouterr().err)
    assert Path("notes.csv").read_text() == "a,b\n1,2\n"
    assert infer.main(["--data", project, "--exp", "a", "--out", "sub.csv"]) == 0
    assert infer.main(["--data", project, "--exp", "a", "--out", "sub.csv"]) == 0  # an earlier submission: replaced


def test_make_folds_never_replaces_files_it_did_not_write(project, capsys):
    Path("notes.json").write_text('{"mine": 1}')
    assert make_folds.main(["--data", project, "--folds-path", "notes.csv"]) == 2
    assert "notes.json exists and is not a folds description" in one_error_line(capsys.readouterr().err)
    assert Path("notes.json").read_text() == '{"mine": 1}' and not Path("notes.csv").exists()
    shutil.copy(Path(project) / "train.csv", "mine.csv")
    assert make_folds.main(["--data", project, "--folds-path", "mine.csv", "--overwrite"]) == 2
    assert "mine.csv exists and is not a folds file" in one_error_line(capsys.readouterr().err)
    assert Path("mine.csv").read_bytes() == (Path(project) / "train.csv").read_bytes()


def test_overwrite_keeps_a_users_backup_named_like_a_checkpoint(project):
    shutil.copy("weights/a/fold0.pth", "weights/a/fold0_backup.pth")
    Path("weights/a/.my.tmp").write_text("mine")
    assert train.main(["--data", project, "--exp", "a", "--overwrite", *EPOCH1]) == 0
    assert Path("weights/a/fold0_backup.pth").is_file() and Path("weights/a/.my.tmp").is_file()


def test_partial_overwrite_without_config_json_is_refused(project, capsys):
    Path("weights/a/config.json").unlink()
    oof = Path("weights/a/oof.csv").read_bytes()
    assert train.main(["--data", project, "--exp", "a", "--overwrite", "--fold", "1", *EPOCH1]) == 2
    assert "has no config.json, so which folds file and recipe its folds used is unknown" in \
        one_error_line(capsys.readouterr().err)
    assert Path("weights/a/oof.csv").read_bytes() == oof


def test_partial_overwrite_checks_the_kept_checkpoints_too(project, capsys):
    """config.json rewritten by hand to the new folds; the kept fold checkpoints still say the old ones."""
    config = json.loads(Path("weights/a/config.json").read_text())
    remade_folds(project)
    new_hash = __import__("pipeline.folds", fromlist=["x"]).file_hash(Path("folds/folds.csv").read_bytes())
    Path("weights/a/config.json").write_text(json.dumps(config | {"folds_hash": new_hash}))
    capsys.readouterr()
    assert train.main(["--data", project, "--exp", "a", "--overwrite", "--fold", "1", *EPOCH1]) == 2
    assert "trained with folds file hash=" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(best_preds=torch.full_like(s["best_preds"], float("nan"))), "NaN or infinite"),
    (lambda s: s.update(best_preds=torch.zeros(3, 10)), "best predictions of shape (3, 10)"),
    (lambda s: s.update(epoch=10**6), "epoch 1000000 outside 1..2"),
])
def test_damaged_resume_snapshot_values_are_refused(project, edit, message, capsys):
    args = ["--data", project, "--exp", "r", "--fold", "0", "--epochs", "2", "--batch-size", "32"]
    assert train.main(args) == 0
    from pipeline.training.recipe import FoldProgress, Recipe  # a real snapshot of fold 0 after its first epoch
    snap = torch.load("weights/r/fold0.pth", weights_only=True)
    model_state = snap["state_dict"]
    oof = pd.read_csv("weights/r/oof.csv")
    preds = torch.tensor(oof[[f"p{c}" for c in range(10)]].to_numpy(), dtype=torch.float32)
    cfg = train.Config(epochs=2, batch_size=32)
    spec = DataSpec(Task("multiclass", tuple(str(i) for i in range(10))), 28, (0.1,), (0.3,))
    fold = Recipe(cfg, spec, 1, torch.device("cpu")).fold(0, "fold 0", {}, np.zeros(4, np.int64), 1000)
    fold.model.load_state_dict(model_state)
    fold.progress = FoldProgress(1, 5, {"accuracy": 0.5, "loss": 1.0, "log_loss": 1.0}, preds.numpy(), 1)
    state = fold.state_dict()
    edit(state)
    Path("weights/r/oof.csv").unlink()  # fold 0 unfinished again
    torch.save(state, "weights/r/fold0.last.pth")
    capsys.readouterr()
    assert train.main([*args, "--resume"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "fold0.last.pth: not a usable resume snapshot" in line and message in line


def test_nan_oof_is_never_blended(project, capsys):
    shutil.copytree("weights/a", "weights/d")
    oof = pd.read_csv("weights/d/oof.csv")
    oof[[f"p{c}" for c in range(10)]] = np.nan
    oof.to_csv("weights/d/oof.csv", index=False)
    assert infer.main(["--data", project, "--exp", "a", "d", "--ensemble", "learned"]) == 2
    assert "weights/d/oof.csv: row 1: predictions or targets are missing, NaN or out of range" in \
        one_error_line(capsys.readouterr().err)
    assert not Path("submissions/a+d_learned.csv").exists()


@pytest.mark.parametrize("damage, report_code", [
    (lambda: Path("weights/a/cv.json").write_text('{"folds_present": 5, "per_fold": 1}'), 0),
    (lambda: Path("weights/a/config.json").write_text(
        json.dumps({k: v for k, v in json.loads(Path("weights/a/config.json").read_text()).items() if k != "n_splits"})),
     2),
])
def test_hand_edited_summaries_break_neither_runs_nor_report(project, damage, report_code, capsys):
    damage()
    assert runs.main([]) == 0
    capsys.readouterr()
    from pipeline import report
    assert report.main(["--data", project, "--exp", "a"]) == report_code  # cv.json: the CV is recomputed from oof.csv
    if report_code:
        assert "config.json: n_splits must be 2..20, found None" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("damage, message", [
    (lambda: Path("weights/a/metrics.csv").unlink(), "metrics.csv: missing or damaged"),
    (lambda: pd.read_csv("weights/a/oof.csv").drop(columns="p4").to_csv("weights/a/oof.csv", index=False),
     "no column 'p4'"),
    (lambda: pd.read_csv("weights/a/oof.csv").astype({"id": object}).pipe(lambda f: f.assign(id=["abc", *f["id"][1:]]))
     .to_csv("weights/a/oof.csv", index=False),
     "ids must be the train rows' numbers"),
])
def test_report_on_damaged_files_is_one_line_and_writes_nothing(project, damage, message, capsys):
    from pipeline import report
    damage()
    assert report.main(["--data", project, "--exp", "a"]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not Path("weights/a/report").exists()


def test_fewer_groups_than_folds(trained_once, tmp_path, capsys):
    comp, _ = trained_once
    grouped = tmp_path / "g"
    shutil.copytree(comp, grouped)
    df = pd.read_csv(grouped / "train.csv")
    pd.concat([df, pd.Series(np.arange(len(df)) % 3, name="patient")], axis=1).to_csv(grouped / "train.csv", index=False)
    assert make_folds.main(["--data", str(grouped), "--group-col", "patient", "--folds-path", str(tmp_path / "f.csv")]) == 2
    assert "--group-col: 3 groups cannot fill 5 folds" in one_error_line(capsys.readouterr().err)
    assert make_folds.main(["--data", str(grouped), "--group-col", "label", "--folds-path", str(tmp_path / "f.csv")]) == 2
    assert "--group-col: label is the target column" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("method", [zipfile.ZIP_LZMA, zipfile.ZIP_BZIP2, zipfile.ZIP_DEFLATED])
def test_corrupt_member_of_any_method(trained_once, tmp_path, method):
    comp, _ = trained_once
    path = zipped(tmp_path, {"train.csv": (comp / "train.csv").read_bytes()}, method)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = bytes((b ^ 0x5A) for b in raw[middle:middle + 64])
    path.write_bytes(bytes(raw))
    with pytest.raises(PipelineError, match="comp.zip: not a readable zip file"):
        data.Source(path).read_bytes("train.csv")


def test_ambiguous_zip_and_csv_headers(trained_once, tmp_path):
    comp, _ = trained_once
    raw = (comp / "train.csv").read_bytes()
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/train.csv", raw)
        zf.writestr("b/train.csv", raw)
    with pytest.raises(PipelineError, match="2 files called train.csv"):
        data.read_train(data.Source(path))
    with pytest.raises(PipelineError, match="column 'ImageId' appears twice in the header"):
        data.parse_csv(b"ImageId,ImageId\n1,2\n", "sample_submission.csv")


def test_odd_values_are_one_line(project, tmp_path, capsys):
    assert train.main(["--data", project, "--fold", "\u00b2"]) == 2  # a superscript two is a digit to str.isdigit
    assert "--fold: must be 'all', 'full' or a fold index" in one_error_line(capsys.readouterr().err)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"weights_dir": "w\u0000"}))
    assert train.main(["--config", str(path), "--data", project]) == 2
    assert "--weights-dir: must not contain control characters" in one_error_line(capsys.readouterr().err)
    df = pd.read_csv(Path(project) / "train.csv").astype(object)
    df.iloc[0, 5] = "9" * 401
    bad = tmp_path / "bad"
    bad.mkdir()
    df.to_csv(bad / "train.csv", index=False)
    assert make_folds.main(["--data", str(bad), "--folds-path", str(tmp_path / "f.csv")]) == 2
    assert "row 1, column pixel4: pixel outside 0-255, found 999" in one_error_line(capsys.readouterr().err)
