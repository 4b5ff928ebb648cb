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


def nested_aliases(depth: int) -> str:
    """A YAML value of 10**depth strings built from aliases: a few hundred bytes that print as megabytes."""
    text = "&a0 [" + ", ".join(["xxxxxxxxxx"] * 10) + "]"
    for level in range(1, depth):
        text = f"&a{level} [{text}, " + ", ".join([f"*a{level - 1}"] * 9) + "]"
    return text


def test_a_value_that_prints_as_megabytes_is_quoted_short(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(f"model: {nested_aliases(5)}\n")  # str(value) is 1.4 MB
    assert main_guard(lambda a: parse_config(a, "train", FLAGS), ["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "model must be a string, got [[" in err and len(err) < 400


def test_yaml_errors_are_one_line_without_escaped_breaks(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("model: resnet18\nlr: [0.1,\nepochs: 3\n  bad: indent\n")
    assert main_guard(lambda a: parse_config(a, "train", FLAGS), ["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and "line" in err
    assert err.count("\n") == 1 and "\\n" not in err


def test_every_message_is_bounded_and_says_how_long_it_was():
    long = PipelineError("data/" + "d" * 1_000_000 + ": not found; check --data")
    assert len(str(long)) < 1100
    assert str(long).endswith("(message cut: 1,000,030 characters in all)")
    assert "check --data" in str(long)  # the advice at the end survives the cut
    assert str(PipelineError("short")) == "short"
