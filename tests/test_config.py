import json

import pytest

from pipeline.config import Config, parse_config
from pipeline.errors import PipelineError, main_guard
from pipeline.train import FLAGS


def test_flags_come_from_fields_with_types():
    cfg = parse_config(["--lr", "1e-3", "--epochs", "3", "--tta", "--exp", "a", "b"], "x",
                       FLAGS + ["tta"])
    assert cfg.lr == 1e-3 and cfg.epochs == 3 and cfg.tta is True and cfg.exp == ("a", "b")


@pytest.mark.parametrize("argv, message", [
    (["--n-splits", "1"], "--n-splits: must be 2..20, got 1"),
    (["--lr", "-1"], "--lr: must be > 0"),
    (["--label-smoothing", "1.5"], "--label-smoothing"),
    (["--bogus", "1"], "unrecognized arguments: --bogus"),
    (["--epochs", "two"], "invalid int value"),
])
def test_invalid_values_refused(argv, message):
    with pytest.raises(PipelineError, match=message):
        parse_config(argv, "train", FLAGS + ["n_splits"])


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"lr": 0.01, "epochs": 7}))
    cfg = parse_config(["--config", str(path), "--epochs", "2"], "train", FLAGS)
    assert cfg.lr == 0.01 and cfg.epochs == 2
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("model: resnet18\nlabel_smoothing: 0.0\n")
    assert parse_config(["--config", str(yaml_path)], "train", FLAGS).model == "resnet18"


def test_config_file_unknown_field(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"learning_rate": 0.01}))
    with pytest.raises(PipelineError, match="unknown field.*learning_rate"):
        parse_config(["--config", str(path)], "train", FLAGS)


def test_fold_out_of_range():
    with pytest.raises(PipelineError, match="--fold: must be 'all' or 0..4"):
        Config(fold="7").fold_ids(5)
    assert Config(fold="3").fold_ids(5) == [3] and Config().fold_ids(5) == [0, 1, 2, 3, 4]


def test_main_guard_one_line(capsys):
    def boom(argv):
        raise PipelineError("train.csv: bad")
    assert main_guard(boom) == 2
    assert capsys.readouterr().err == "error: train.csv: bad\n"


def test_frozen():
    with pytest.raises(Exception):
        Config().lr = 1.0
