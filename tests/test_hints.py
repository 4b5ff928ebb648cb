"""Issue 16, items 7-10: a notice or an earlier refusal instead of silence or a late failure, and every command the
pipeline prints as advice runs as printed (each test captures the printed command and runs it through main(argv))."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import data, infer, make_folds, report, runs, sweep, train
from pipeline.errors import PipelineError

pytestmark = pytest.mark.slow
EPOCH1 = ["--epochs", "1", "--batch-size", "32"]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def printed_command(text: str, stage: str, after: str = "") -> list[str]:
    """The argv of the last `python -m pipeline.<stage> ...` printed in `text` (after `after`; a command ends its
    line), as a shell splits it."""
    line = [ln for ln in text.splitlines() if f"python -m pipeline.{stage}" in ln][-1]
    tail = line.split(after, 1)[1] if after else line
    words = shlex.split(tail[tail.rindex(f"python -m pipeline.{stage}"):])
    assert words[:3] == ["python", "-m", f"pipeline.{stage}"], words
    return words[3:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_dir):
    """A tiny competition in 2 folds; experiments a and b (accuracy, both folds), auc (roc_auc) and reg (regression,
    rmse) on fold 0 of their own folds files; trained once for the module."""
    root = tmp_path_factory.mktemp("hints")
    comp = root / "comp"
    comp.mkdir()
    train_df = pd.read_csv(sample_dir / "train.csv").groupby("label", group_keys=False).head(20)
    train_df.to_csv(comp / "train.csv", index=False)
    pd.read_csv(sample_dir / "test.csv").head(40).to_csv(comp / "test.csv", index=False)
    pd.DataFrame({"ImageId": np.arange(1, 41), "Label": 0}).to_csv(comp / "sample_submission.csv", index=False)
    work = root / "work"
    work.mkdir()
    cwd, c = os.getcwd(), str(comp)
    os.chdir(work)
    try:
        assert make_folds.main(["--data", c, "--n-splits", "2"]) == 0
        assert train.main(["--data", c, "--exp", "a", *EPOCH1]) == 0
        assert train.main(["--data", c, "--exp", "b", "--lr", "1e-3", *EPOCH1]) == 0
        for exp, flags in (("auc", ["--metric", "roc_auc"]), ("reg", ["--task", "regression"])):
            assert make_folds.main(["--data", c, "--n-splits", "2", *flags, "--folds-path", f"folds/{exp}.csv"]) == 0
            folds = ["--folds-path", f"folds/{exp}.csv"]
            assert train.main(["--data", c, *folds, "--exp", exp, "--fold", "0", *EPOCH1]) == 0
    finally:
        os.chdir(cwd)
    return comp, work


@pytest.fixture
def project(trained, tmp_path, monkeypatch, capsys):
    """A fresh copy of the trained project as the current folder; returns the competition folder."""
    comp, work = trained
    shutil.copytree(work, tmp_path / "project")
    monkeypatch.chdir(tmp_path / "project")
    capsys.readouterr()
    return str(comp)


# 7. class folders: a missing sample_submission.csv at make_folds, an empty class folder named

def class_folders(root: Path, sample: bool = True) -> Path:
    """train/<class>/*.png (3 classes of 5), test/*.png and, unless told otherwise, sample_submission.csv."""
    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "fox"):
        for i in range(5):
            path = root / "train" / name / f"{name}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), "L").save(path)
    (root / "test").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), "L").save(root / "test" / f"t{i}.png")
    if sample:
        pd.DataFrame({"id": [f"t{i}.png" for i in range(3)], "label": "cat"}).to_csv(root / "sample_submission.csv",
                                                                                     index=False)
    return root


def test_class_folders_without_sample_submission_are_refused_by_make_folds(tmp_path, workdir, capsys):
    comp = class_folders(tmp_path / "food", sample=False)
    assert make_folds.main(["--data", str(comp)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "sample_submission.csv: not found; infer needs it: it fixes the submission's ids" in line
    assert not Path("folds/folds.csv").exists()


def test_an_empty_class_folder_is_named(tmp_path, workdir, capsys):
    comp = class_folders(tmp_path / "food")
    (comp / "train" / "owl").mkdir()
    (comp / "train" / "yak").mkdir()
    (comp / "train" / "yak" / "notes.txt").write_text("no pictures yet")
    assert make_folds.main(["--data", str(comp)]) == 0
    notices = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("notice:")]
    named = [n.split(" holds no images")[0] for n in notices]
    assert named == [f"notice: {comp}/train/owl/", f"notice: {comp}/train/yak/"]
    assert "the classes are the 3 folders with images" in notices[0]
    assert json.loads(Path("folds/folds.json").read_text())["data"]["task"]["classes"] == ["cat", "dog", "fox"]


def test_an_empty_class_folder_in_a_zip_is_named(tmp_path, workdir, capsys):
    """Kaggle's zips store a folder as a member ending in '/': an empty class folder is one of those."""
    folder = class_folders(tmp_path / "food")
    with zipfile.ZipFile(tmp_path / "food.zip", "w") as zf:
        for f in sorted(folder.rglob("*")):
            zf.write(f, str(f.relative_to(folder)) + ("/" if f.is_dir() else ""))
        zf.writestr("train/owl/", "")
    assert make_folds.main(["--data", str(tmp_path / "food.zip")]) == 0
    notices = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("notice:")]
    assert [n.split(" holds no images")[0] for n in notices] == [f"notice: {tmp_path / 'food.zip'}:train/owl/"]


# 8. infer: --ensemble with one experiment, rank refused before inference, a replaced submission's settings

def test_an_ensemble_method_with_one_experiment_is_said_to_be_ignored(project, capsys):
    assert infer.main(["--data", project, "--exp", "a", "--ensemble", "learned"]) == 0
    err = capsys.readouterr().err
    assert "notice: --ensemble learned: one experiment (a) has nothing to blend; the flag is ignored" in err
    assert infer.main(["--data", project, "--exp", "a"]) == 0  # the default mean: nothing to say
    assert "--ensemble" not in capsys.readouterr().err


def test_rank_without_auc_is_refused_before_any_inference(project, capsys):
    assert infer.main(["--data", project, "--exp", "a", "b", "--ensemble", "rank"]) == 2
    assert "--ensemble rank: rank averaging keeps only the order" in one_line(capsys.readouterr().err)
    assert not Path("weights/a/test_probs.npy").exists() and not Path("weights/b/test_probs.npy").exists()
    assert not Path("submissions").exists() or not list(Path("submissions").glob("*.csv"))


def test_replacing_a_submission_made_with_other_settings_says_so(project, capsys):
    assert infer.main(["--data", project, "--exp", "a", "--tta"]) == 0
    assert "notice" not in capsys.readouterr().err  # nothing replaced yet
    assert infer.main(["--data", project, "--exp", "a"]) == 0
    err = capsys.readouterr().err
    assert ("notice: replaced submissions/a.csv, made with exp a, TTA digits, by one made with exp a, no TTA"
            in err), err
    assert infer.main(["--data", project, "--exp", "a"]) == 0  # the same settings again: nothing to say
    assert "notice" not in capsys.readouterr().err
    Path("submissions/b.csv.json").write_text("my own notes")  # a file infer did not write is never replaced
    assert infer.main(["--data", project, "--exp", "b"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "submissions/b.csv.json exists and is not the settings record infer writes" in line
    assert Path("submissions/b.csv.json").read_text() == "my own notes" and not Path("submissions/b.csv").exists()


# 9. runs: one table per competition and metric; --compare across tasks says why

def tables(out: str) -> dict[str, list[str]]:
    """'== header' -> the experiment names of the table under it."""
    found, header = {}, None
    for line in out.splitlines():
        if line.startswith("== "):
            header, found[line[3:]] = line[3:], []
        elif header and line.strip() and not line.lstrip().startswith("exp "):
            found[header].append(line.split()[0])
    return found


def test_runs_ranks_each_competition_and_metric_apart(project, capsys):
    other = json.loads(Path("weights/a/config.json").read_text()) | {"train_hash": "0123456789abcdef"}
    shutil.copytree("weights/a", "weights/a_other_data")  # the same recipe on another competition's data
    Path("weights/a_other_data/config.json").write_text(json.dumps(other))
    assert runs.main([]) == 0
    groups = tables(capsys.readouterr().out)
    assert sorted(map(sorted, groups.values())) == [["a", "b"], ["a_other_data"], ["auc"], ["reg"]]
    by_exp = {e: g for g, exps in groups.items() for e in exps}
    assert "metric accuracy" in by_exp["a"] and "(higher is better)" in by_exp["a"]
    assert "metric roc_auc" in by_exp["auc"] and "metric rmse" in by_exp["reg"] and "(lower is better)" in by_exp["reg"]
    assert by_exp["a"] != by_exp["a_other_data"] and "train hash 0123456789abcdef" in by_exp["a_other_data"]


@pytest.mark.parametrize("b, reason", [
    ("reg", "--compare: a is multiclass, 10 classes (0, 1, 2, 3, 4, 5, ...), metric accuracy, reg is regression on "
            "label, metric rmse; the paired test compares experiments of one task judged by one metric"),
    ("auc", "metric accuracy, auc is multiclass, 10 classes (0, 1, 2, 3, 4, 5, ...), metric roc_auc; the paired test"),
    ("a_other_data", "--compare: a and a_other_data were trained on different data (train hash"),
], ids=["regression", "roc_auc", "other_data"])
def test_compare_across_tasks_gives_the_real_reason(project, b, reason, capsys):
    other = json.loads(Path("weights/a/config.json").read_text()) | {"train_hash": "0123456789abcdef"}
    shutil.copytree("weights/a", "weights/a_other_data")
    Path("weights/a_other_data/config.json").write_text(json.dumps(other))
    assert runs.main(["--compare", "a", b]) == 2
    line = one_line(capsys.readouterr().err)
    assert reason in line and "blend" not in line, line


# 10. printed commands run as printed

def test_the_sweeps_closing_report_command_runs(project, capsys):
    assert sweep.main(["--data", project, "--lr", "3e-3", "--batch-size", "32", "--epochs", "1"]) == 0
    argv = printed_command(capsys.readouterr().out, "report")
    assert report.main(argv) == 0, capsys.readouterr().err
    assert Path("weights/sweeps/lr_bs/lr0.003_bs32/report/report.md").is_file()


def test_the_with_full_hint_runs(project, capsys):
    assert infer.main(["--data", project, "--exp", "a", "--with-full"]) == 2
    argv = printed_command(one_line(capsys.readouterr().err), "train", after="train it with: ")
    assert "full" in argv and "--epochs" in argv  # the experiment's recipe, not today's defaults
    assert train.main(argv) == 0, capsys.readouterr().err
    assert infer.main(["--data", project, "--exp", "a", "--with-full"]) == 0


@pytest.mark.parametrize("interrupted", [True, False])
def test_the_missing_folds_hint_runs(project, interrupted, capsys):
    """A fold whose training was interrupted (no OOF rows yet), or a finished fold whose weights were removed."""
    Path("weights/b/fold1.pth").unlink()
    if interrupted:
        oof = pd.read_csv("weights/b/oof.csv")
        oof[oof["fold"] != 1].to_csv("weights/b/oof.csv", index=False)
    assert infer.main(["--data", project, "--exp", "b"]) == 2
    argv = printed_command(one_line(capsys.readouterr().err), "train", after="train them with: ")
    assert ("--resume" in argv) == interrupted
    assert train.main(argv) == 0, capsys.readouterr().err
    assert infer.main(["--data", project, "--exp", "b"]) == 0


def test_other_data_against_the_folds_says_how_to_train_on_it(workdir, capsys):
    assert make_folds.main(["--data", "sample"]) == 0
    args = ["--data", "sample-images", "--fold", "0", "--aug", "digits", *EPOCH1]
    assert train.main(args) == 2
    line = one_line(capsys.readouterr().err)
    desc = data.Description.from_dict(json.loads(Path("folds/folds.json").read_text())["data"], "folds.json")
    with pytest.raises(PipelineError) as why:
        data.read_train(data.resolve("sample-images"), desc)
    assert f"({why.value})" in line  # the whole reason, not cut mid-word
    folds_path = line.split("add --folds-path ", 1)[1].split(" ", 1)[0]
    assert make_folds.main(printed_command(line, "make_folds")) == 0
    assert train.main([*args, "--folds-path", folds_path]) == 0, capsys.readouterr().err
