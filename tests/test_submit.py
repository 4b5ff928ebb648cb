import pandas as pd
import pytest

from pipeline import submit
from pipeline.errors import PipelineError
from pipeline.submit import validate_submission
from pipeline.tasks import Task

from fake_kaggle import FakeKaggle

DIGITS = Task("multiclass", tuple(str(i) for i in range(10)))

SAMPLE = pd.DataFrame({"ImageId": [1, 2, 3], "Label": [0, 0, 0]})


def test_valid_submission_passes():
    validate_submission(pd.DataFrame({"ImageId": [1, 2, 3], "Label": [3, 9, 0]}), SAMPLE, DIGITS, "s.csv")


@pytest.mark.parametrize("sub, message", [
    (pd.DataFrame({"id": [1, 2, 3], "Label": [1, 2, 3]}), "header must be ImageId,Label, found id,Label"),
    (pd.DataFrame({"ImageId": [1, 2], "Label": [1, 2]}), "expected 3 rows .* found 2"),
    (pd.DataFrame({"ImageId": [1, 3, 2], "Label": [1, 2, 3]}), "row 2: ImageId should be '2', found '3'"),
    (pd.DataFrame({"ImageId": [1, 2, 3], "Label": [1, 10, 3]}), "row 2: Label must be one of the classes 0, 1, 2, .* found 10"),
    (pd.DataFrame({"ImageId": [1, 2, 3], "Label": [1, 2.5, 3]}), "row 2: Label must be one of the classes .* found 2.5"),
])
def test_invalid_submission(sub, message):
    with pytest.raises(PipelineError, match=message):
        validate_submission(sub, SAMPLE, DIGITS, "s.csv")


@pytest.fixture
def submission(tiny_comp, workdir):
    sample = pd.read_csv(tiny_comp / "sample_submission.csv")
    sample.assign(Label=7).to_csv("sub.csv", index=False)
    return "sub.csv"


def test_submit_through_real_client(tiny_comp, submission, kaggle_env, capsys):
    with FakeKaggle() as server:
        assert submit.main([submission, "-m", "first try", "--data", str(tiny_comp)]) == 0
    assert server.uploads == [open(submission, "rb").read()]
    sent = [{k: v for k, v in s.items() if k not in ("fileName", "date")} for s in server.submissions]
    assert sent == [{"competitionName": "digit-recognizer", "blobFileTokens": "blob-token",
                     "submissionDescription": "first try"}]
    assert server.upload_names == ["sub.csv"]
    assert "Successfully submitted" in capsys.readouterr().out


def test_rules_not_accepted(tiny_comp, submission, kaggle_env, capsys):
    with FakeKaggle(accept_rules=False):
        assert submit.main([submission, "-m", "x", "--data", str(tiny_comp)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: kaggle: submission refused (403): accept the competition rules")


def test_missing_credentials(tiny_comp, submission, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert submit.main([submission, "-m", "x", "--data", str(tiny_comp)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: kaggle: no credentials")


def test_invalid_file_is_not_sent(tiny_comp, workdir, kaggle_env, capsys):
    pd.DataFrame({"ImageId": [1], "Label": [1]}).to_csv("short.csv", index=False)
    with FakeKaggle() as server:
        assert submit.main(["short.csv", "-m", "x", "--data", str(tiny_comp)]) == 2
    assert server.uploads == [] and "expected 40 rows" in capsys.readouterr().err


def test_submit_finds_the_experiment_from_the_file_name(tmp_path, monkeypatch):
    """submissions/digit_cnn.csv is experiment digit_cnn (not 'digit'); a blend's suffix is the method's."""
    from pipeline.config import Config

    for name in ("digit_cnn", "lr0.001_bs64"):
        (tmp_path / "weights" / name).mkdir(parents=True)
        (tmp_path / "weights" / name / "config.json").write_text(
            '{"n_splits": 5, "num_classes": 3, "data_spec": {"task": {"kind": "multiclass", "classes": ["x", "y", "z"]},'
            ' "img_size": 28, "mean": [0.5], "std": [0.5]}}')
    cfg = Config(weights_dir=str(tmp_path / "weights"), folds_path=str(tmp_path / "none.csv"))
    for file in ("digit_cnn.csv", "lr0.001_bs64.csv", "digit_cnn+other_greedy.csv"):
        task, _ = submit.experiment_task(tmp_path / file, cfg)
        assert task.classes == ("x", "y", "z"), file


def test_an_id_with_a_leading_space_is_shown_quoted():
    """' 2' and '2' print alike unquoted: the message must show which one the file holds."""
    sub = pd.DataFrame({"ImageId": ["1", " 2", "3"], "Label": [1, 2, 3]})
    with pytest.raises(PipelineError) as e:
        validate_submission(sub, SAMPLE, DIGITS, "s.csv")
    assert str(e.value) == "s.csv: row 2: ImageId should be '2', found ' 2'"
