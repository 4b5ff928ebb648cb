"""Train flags that were ignored without a word, and the commands train prints: each runs as printed."""
from __future__ import annotations

import shlex

import pytest

from pipeline import make_folds, report, train


@pytest.fixture
def folds_made(tiny_comp, workdir):
    assert make_folds.main(["--data", str(tiny_comp)]) == 0
    return str(tiny_comp)


def printed_command(out: str, prefix: str) -> list[str]:
    """The arguments of the `python -m pipeline.<stage> ...` command printed after `prefix`."""
    line = next(line for line in out.splitlines() if prefix in line)
    words = shlex.split(line.split(prefix, 1)[1])
    assert words[:2] == ["python", "-m"], line
    return words[3:]


def test_full_with_gpus_says_it_uses_one_device_and_full_resume_is_refused(folds_made, capsys):
    common = ["--data", folds_made, "--epochs", "1", "--batch-size", "32", "--fold", "full", "--exp", "f"]
    assert train.main([*common, "--gpus", "cpu,cpu"]) == 0
    assert "notice: --gpus cpu,cpu: --fold full trains one model in one process; on cpu only" in capsys.readouterr().out
    assert train.main([*common, "--resume"]) == 2
    assert "--resume: --fold full keeps no per-epoch snapshot" in capsys.readouterr().err


def test_more_fold_processes_than_folds_left_start_no_idle_process(folds_made, capsys):
    common = ["--data", folds_made, "--epochs", "1", "--batch-size", "32", "--exp", "g", "--resume"]
    for k in range(4):
        assert train.main([*common, "--fold", str(k)]) == 0
    capsys.readouterr()
    assert train.main([*common, "--fold", "all", "--gpus", "cpu,cpu,cpu"]) == 0
    out = capsys.readouterr().out
    assert "notice: --gpus cpu,cpu,cpu: 3 processes for 1 fold(s) to train; starting 1" in out
    assert "started on cpu" not in out  # the one fold left trained here, no fold process was spawned


def test_the_printed_report_command_runs_as_printed(folds_made, workdir, capsys):
    assert train.main(["--data", folds_made, "--epochs", "1", "--batch-size", "32", "--exp", "r",
                       "--weights-dir", "elsewhere"]) == 0
    args = printed_command(capsys.readouterr().out, "figures: ")
    assert args[args.index("--weights-dir") + 1] == "elsewhere"
    assert report.main(args) == 0
    assert (workdir / "elsewhere/r/report/report.md").is_file()
