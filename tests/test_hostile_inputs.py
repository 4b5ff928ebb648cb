"""Hostile inputs to the table and sequence layouts: each is one line naming the file and what was expected (or a
bounded cost), never a traceback, a hang, a crash or a read outside the competition data."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import infer, make_folds, submit, train
from pipeline.data.sequences import write_sample_frames, write_sample_speakers


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def speakers_sample(tmp_path_factory):
    return write_sample_speakers(str(tmp_path_factory.mktemp("sp") / "sample-speakers"))


@pytest.fixture(scope="module")
def frames_sample(tmp_path_factory):
    return write_sample_frames(str(tmp_path_factory.mktemp("fr") / "sample-frames"))


def copy_of(sample, tmp_path):
    root = tmp_path / "comp"
    shutil.copytree(sample, root)
    return root


@pytest.mark.parametrize("which", ["metadata", "testdata"])
@pytest.mark.parametrize("path", ["../../secret/outside.pt", "/etc/shadow"])
def test_a_feature_path_outside_the_data_is_refused(speakers_sample, tmp_path, workdir, capsys, which, path):
    root = copy_of(speakers_sample, tmp_path)
    (tmp_path / "secret").mkdir()
    torch.save(torch.zeros(12, 28), tmp_path / "secret/outside.pt")
    name = root / "Dataset" / f"{which}.json"
    meta = json.loads(name.read_text())
    utterances = meta["utterances"] if which == "testdata" else next(iter(meta["speakers"].values()))
    utterances[0]["feature_path"] = path
    name.write_text(json.dumps(meta))
    assert make_folds.main(["--data", str(root)]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{which}.json: feature path {path!r} leads outside the competition data" in line


def test_a_test_split_line_outside_the_data_is_refused(frames_sample, tmp_path, workdir, capsys):
    root = copy_of(frames_sample, tmp_path)
    split = root / "libriphone/test_split.txt"
    split.write_text("../../../../secret\n" + split.read_text())
    assert make_folds.main(["--data", str(root)]) == 2
    assert "test_split.txt: feature path 'feat/test/../../../../secret.pt' leads outside" in \
        one_line(capsys.readouterr().err)


@pytest.mark.parametrize("spelling", ["{}", "./{}"])
def test_a_test_utterance_listed_twice_is_refused_at_make_folds(speakers_sample, tmp_path, workdir, capsys, spelling):
    root = copy_of(speakers_sample, tmp_path)
    name = root / "Dataset/testdata.json"
    meta = json.loads(name.read_text())
    first = meta["utterances"][0]["feature_path"]
    meta["utterances"].append(dict(meta["utterances"][0]) | {"feature_path": spelling.format(first)})
    name.write_text(json.dumps(meta))
    assert make_folds.main(["--data", str(root)]) == 2
    assert f"testdata.json: feature path {spelling.format(first)!r} is listed twice" in \
        one_line(capsys.readouterr().err)


def test_a_nul_in_a_test_split_line_is_refused_at_make_folds(frames_sample, tmp_path, workdir, capsys):
    root = copy_of(frames_sample, tmp_path)
    split = root / "libriphone/test_split.txt"
    split.write_text("10\x00\n" + split.read_text())
    assert make_folds.main(["--data", str(root)]) == 2
    assert "test_split.txt: feature path 'feat/test/10\\x00.pt' holds a NUL character" in one_line(capsys.readouterr().err)


def test_a_json_nested_too_deeply_is_one_line(speakers_sample, tmp_path, workdir, capsys):
    root = copy_of(speakers_sample, tmp_path)
    (root / "Dataset/testdata.json").write_text("[" * 200_000 + "]" * 200_000)
    assert make_folds.main(["--data", str(root)]) == 2
    assert "testdata.json: not valid JSON (nested too deeply to read)" in one_line(capsys.readouterr().err)


def test_submit_refuses_a_file_with_an_id_twice(workdir, capsys):
    assert make_folds.main(["--data", "sample-table"]) == 0
    sample = pd.read_csv("data/sample-diabetes/sample_submission.csv", dtype={"id": str})
    sub = sample.copy()
    sub.loc[1, "id"] = sub.loc[0, "id"]  # as many rows as the sample: only the ids tell
    sub.to_csv("twice.csv", index=False)
    capsys.readouterr()
    assert submit.main(["twice.csv", "--data", "sample-table", "--dry-run"]) == 2
    assert f"twice.csv: id {sample.loc[0, 'id']!r} appears 2 times" in one_line(capsys.readouterr().err)


def test_submit_reads_the_experiment_infer_recorded_beside_any_file_name(workdir, capsys):
    """`infer --out mine.csv` records its experiment in mine.csv.json; submit checks against that experiment's task,
    not against whatever folds/folds.json holds (here: none, so the Digit Recognizer default)."""
    folds = ["--folds-path", "f/folds.csv"]
    assert make_folds.main(["--data", "sample-table", *folds]) == 0
    assert train.main(["--data", "sample-table", "--model", "lightgbm", "--exp", "g", *folds]) == 0
    assert infer.main(["--data", "sample-table", "--exp", "g", "--out", "mine.csv"]) == 0
    capsys.readouterr()
    assert submit.main(["mine.csv", "--data", "sample-table", "--dry-run"]) == 0
    assert "mine.csv: valid (89 rows, header id,target, regression on target" in capsys.readouterr().out


def test_a_bool_column_with_a_missing_test_value_reads_as_a_number(tmp_path, workdir, capsys):
    rng = np.random.default_rng(0)
    flag = rng.random(60) > 0.5
    root = tmp_path / "c"
    root.mkdir()
    pd.DataFrame({"id": range(60), "flag": flag, "y": flag * 2.0}).to_csv(root / "train.csv", index=False)
    test = pd.DataFrame({"id": range(60, 70), "flag": pd.array([True, False, None] * 3 + [True], dtype="boolean")})
    test.to_csv(root / "test.csv", index=False)
    assert make_folds.main(["--data", str(root), "--n-splits", "3"]) == 0
    assert "1 numeric + 0 categorical" in capsys.readouterr().out


def test_many_constant_columns_are_one_notice_with_a_count(tmp_path, workdir, capsys):
    rng = np.random.default_rng(0)
    wide = pd.DataFrame(np.ones((40, 2000)), columns=[f"c{j}" for j in range(2000)])
    train = pd.concat([pd.DataFrame({"id": range(40), "x": rng.normal(size=40), "y": rng.normal(size=40)}), wide], axis=1)
    root = tmp_path / "c"
    root.mkdir()
    train.to_csv(root / "train.csv", index=False)
    train.drop(columns="y").head(5).to_csv(root / "test.csv", index=False)
    assert make_folds.main(["--data", str(root), "--n-splits", "2"]) == 0
    notices = [line for line in capsys.readouterr().err.splitlines() if "left out" in line]
    assert len(notices) == 1 and "2,000 columns left out (constant): c0, c1, c2, c3, c4, ...; keep them with --features" \
        in notices[0]


@pytest.mark.parametrize("edit, problem", [
    (lambda s: s | {"kept": [False, True, 2]}, "column indices that are not integers"),
    (lambda s: s | {"categorical": s["categorical"] | {"categories": [list(range(3_000_000))]}},
     "category codes outside their column's vocabulary"),
    (lambda s: s | {"categorical": s["categorical"] | {"categories": [[True]]}}, "not one sorted list of integer"),
])
def test_a_hand_edited_preprocessing_state_is_one_line(tmp_path, edit, problem):
    from pipeline import preprocess
    from pipeline.errors import PipelineError

    x = np.array([[1.0, 0], [3.0, 1], [1.0, 1], [3.0, 0]], dtype=np.float32)
    state = preprocess.fit(x, [1], [3], ["age", "city"])
    path = tmp_path / "fold0.prep.json"
    path.write_text(json.dumps(edit(state)))
    with pytest.raises(PipelineError, match=problem):
        preprocess.load(path)


def test_a_preprocessing_state_of_other_columns_is_refused(tmp_path):
    from pipeline import preprocess
    from pipeline.errors import PipelineError

    x = np.array([[1.0, 0], [3.0, 1], [1.0, 1], [3.0, 0]], dtype=np.float32)
    path = tmp_path / "fold0.prep.json"
    preprocess.save(preprocess.fit(x, [1], [3], ["age", "city"]), path)
    assert preprocess.load(path, {"names": ["age", "city"], "categorical": [1], "cardinalities": [3]})
    for features in ({"names": ["age", "town"], "categorical": [1], "cardinalities": [3]},
                     {"names": ["age", "city"], "categorical": [1], "cardinalities": [3_000_000]}):
        with pytest.raises(PipelineError, match="not the experiment's"):
            preprocess.load(path, features)


def test_a_wide_one_hot_becomes_embeddings_with_a_notice(tmp_path, workdir, capsys):
    rng = np.random.default_rng(0)
    codes = [f"k{i}" for i in rng.integers(0, 600, 1500)]  # ~600 values: one-hot past 512 columns
    root = tmp_path / "c"
    root.mkdir()
    pd.DataFrame({"id": range(1500), "k": codes, "x": rng.normal(size=1500), "y": rng.normal(size=1500)}).to_csv(
        root / "train.csv", index=False)
    pd.DataFrame({"id": range(1500, 1510), "k": codes[:10], "x": rng.normal(size=10)}).to_csv(root / "test.csv", index=False)
    assert make_folds.main(["--data", str(root), "--n-splits", "2", "--drop-cols", "id"]) == 0
    assert train.main(["--data", str(root), "--model", "mlp", "--epochs", "1", "--exp", "m", "--fold", "0"]) == 0
    err = capsys.readouterr().out  # train's notices go with its other lines
    assert "notice: one-hot blocks of 1 categorical column(s) would be" in err and "the largest, k," in err
    epoch = next(line for line in err.splitlines() if line.startswith("fold 0 epoch"))
    assert "train mse " in epoch and "valid rmse " in epoch and " row/s" in epoch  # each loss named, rows counted
    assert json.loads((workdir / "weights/m/config.json").read_text())["cat_encoding"] == "embed"


def test_arrays_of_two_widths_name_both_files(tmp_path):
    from pipeline.data.sequences import load_all
    from pipeline.data.source import Source
    from pipeline.errors import PipelineError

    torch.save(torch.zeros(5, 3), tmp_path / "odd.pt")  # the first file is the odd one
    torch.save(torch.zeros(5, 4), tmp_path / "b.pt")
    with pytest.raises(PipelineError) as e:
        load_all(Source(tmp_path), ["odd.pt", "b.pt"])
    assert str(e.value) == f"{tmp_path / 'b.pt'}: 4 features per frame, but {tmp_path / 'odd.pt'} has 3"


def test_folds_of_other_data_are_said_before_any_notice_on_that_data(workdir, capsys):
    assert make_folds.main(["--data", "sample-table"]) == 0
    capsys.readouterr()
    assert train.main(["--data", "sample-speakers", "--epochs", "1"]) == 2
    captured = capsys.readouterr()
    assert "this data is a table" not in captured.out + captured.err
    assert "--data sample-speakers does not fit folds/folds.json" in one_line(captured.err)


def _printed(text: str, stage: str) -> list[str]:
    from test_hints import printed_command

    return printed_command(text, stage)


def test_the_hint_to_make_missing_folds_runs_as_printed(workdir, capsys):
    flags = ["--data", "sample-table", "--folds-path", "f/table.csv"]
    assert train.main([*flags, "--model", "lightgbm"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "make the folds file first with: python -m pipeline.make_folds --data sample-table --folds-path f/table.csv" \
        in err
    assert make_folds.main(_printed(err, "make_folds")) == 0
    assert train.main([*flags, "--model", "lightgbm", "--fold", "0"]) == 0


def test_the_hint_to_remake_folds_of_a_changed_train_file_runs_as_printed(tmp_path, workdir, capsys):
    root = tmp_path / "c"
    root.mkdir()
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": range(60), "x": rng.normal(size=60), "y": rng.normal(size=60)})
    frame.to_csv(root / "train.csv", index=False)
    frame.drop(columns="y").head(5).to_csv(root / "test.csv", index=False)
    flags = ["--data", str(root), "--folds-path", "f/c.csv"]
    assert make_folds.main([*flags, "--n-splits", "2"]) == 0
    frame.head(50).to_csv(root / "train.csv", index=False)
    capsys.readouterr()
    assert train.main([*flags, "--model", "lightgbm"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "made from a different train.csv" in err and "remake it with: python -m pipeline.make_folds" in err
    assert make_folds.main(_printed(err, "make_folds") + ["--n-splits", "2"]) == 0
    assert train.main([*flags, "--model", "lightgbm"]) == 0


def test_the_hint_to_finish_a_lightgbm_experiment_names_only_its_recipe_and_runs(workdir, capsys):
    assert make_folds.main(["--data", "sample-table", "--n-splits", "3"]) == 0
    assert train.main(["--data", "sample-table", "--model", "lightgbm", "--exp", "g", "--fold", "0"]) == 0
    capsys.readouterr()
    assert infer.main(["--data", "sample-table", "--exp", "g"]) == 2
    err = one_line(capsys.readouterr().err)
    hint = _printed(err, "train")
    assert "--batch-size" not in hint and "--label-smoothing" not in hint and "--resume" in hint
    assert train.main(hint) == 0
    assert infer.main(["--data", "sample-table", "--exp", "g"]) == 0


def test_missing_folds_of_an_experiment_in_training_say_so_not_to_train_them(workdir, capsys):
    from pipeline import experiment

    assert make_folds.main(["--data", "sample-table", "--n-splits", "3"]) == 0
    assert train.main(["--data", "sample-table", "--model", "lightgbm", "--exp", "g", "--fold", "0"]) == 0
    capsys.readouterr()
    with experiment.locked(workdir / "weights/g"):
        assert infer.main(["--data", "sample-table", "--exp", "g"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "a training is writing them now (pid" in err and "python -m pipeline.train" not in err


def test_extra_target_like_columns_suggest_the_target_the_sample_names(tmp_path, workdir, capsys):
    """Bike sharing: train has casual, registered and count; test has none; the sample predicts count."""
    rng = np.random.default_rng(0)
    casual, registered = rng.integers(0, 50, 80), rng.integers(0, 200, 80)
    root = tmp_path / "bikes"
    root.mkdir()
    pd.DataFrame({"datetime": range(80), "temp": rng.normal(size=80), "casual": casual, "registered": registered,
                  "count": casual + registered}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"datetime": range(80, 90), "temp": rng.normal(size=10)}).to_csv(root / "test.csv", index=False)
    pd.DataFrame({"datetime": range(80, 90), "count": 0}).to_csv(root / "sampleSubmission.csv", index=False)
    (root / "sampleSubmission.csv").rename(root / "sample_submission.csv")
    assert make_folds.main(["--data", str(root), "--n-splits", "2"]) == 2
    err = one_line(capsys.readouterr().err)
    assert f"{root / 'sample_submission.csv'} predicts 1 (count); name the target with --target-col count" in err
    assert make_folds.main(["--data", str(root), "--n-splits", "2", *err.rsplit(" ", 2)[-2:]]) == 0


def test_no_blend_mixes_experiments_trained_on_other_data(tmp_path, workdir, capsys):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": range(90), "x": rng.normal(size=90)})
    for name, sign in (("a", 1), ("b", -1)):  # same ids and test, opposite targets
        root = tmp_path / name
        root.mkdir()
        frame.assign(y=sign * frame["x"]).to_csv(root / "train.csv", index=False)
        frame.head(10).to_csv(root / "test.csv", index=False)
        folds = ["--folds-path", f"f/{name}.csv"]
        assert make_folds.main(["--data", str(root), "--n-splits", "3", *folds]) == 0
        assert train.main(["--data", str(root), "--model", "lightgbm", "--exp", name, *folds]) == 0
    capsys.readouterr()
    assert infer.main(["--data", str(tmp_path / "a"), "--exp", "a", "b", "--ensemble", "mean"]) == 2
    assert "--exp: b was trained on other data than a" in one_line(capsys.readouterr().err)


def test_a_mean_of_experiments_on_other_folds_is_allowed_a_fitted_blend_is_not(workdir, capsys):
    for name, seed in (("a", "1"), ("b", "2")):
        folds = ["--folds-path", f"f/{name}.csv"]
        assert make_folds.main(["--data", "sample-table", "--n-splits", "3", "--seed", seed, *folds]) == 0
        assert train.main(["--data", "sample-table", "--model", "lightgbm", "--exp", name, *folds]) == 0
    capsys.readouterr()
    assert infer.main(["--data", "sample-table", "--exp", "a", "b", "--ensemble", "learned"]) == 2
    assert "a blend fitted on OOF rows from two fold assignments leaks" in one_line(capsys.readouterr().err)
    assert infer.main(["--data", "sample-table", "--exp", "a", "b", "--ensemble", "mean"]) == 0
    assert "OOF mean blend (nothing fitted)" in capsys.readouterr().out


def test_a_first_iteration_kept_on_a_tiny_table_is_said_and_an_empty_test_column_too(tmp_path, workdir, capsys):
    rng = np.random.default_rng(0)
    root = tmp_path / "tiny"
    root.mkdir()
    x = rng.normal(size=40)
    pd.DataFrame({"id": range(40), "x": x, "z": rng.normal(size=40), "y": x}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id": range(40, 45), "x": x[:5], "z": np.nan}).to_csv(root / "test.csv", index=False)
    assert make_folds.main(["--data", str(root), "--n-splits", "2"]) == 0
    assert "test.csv: 1 feature column(s) empty in every row (z)" in capsys.readouterr().err
    assert train.main(["--data", str(root), "--model", "lightgbm", "--exp", "g"]) == 0
    out = capsys.readouterr().out
    assert "notice: fold 0: lightgbm kept its first iteration only; 20 training rows with min_data_in_leaf 20" in out
    assert "does not apply to regression" not in out  # --label-smoothing was never asked for


def test_integer_class_names_are_shown_in_numeric_order():
    from pipeline.tasks import Task

    task = Task("multiclass", tuple(sorted(str(i) for i in range(12))))  # text order: 0, 1, 10, 11, 2, ...
    assert "12 classes (0, 1, 2, 3, 4, 5, ...)" in task.describe()


def test_submit_refuses_to_check_a_file_against_folds_of_other_data(tmp_path, workdir, capsys):
    assert make_folds.main(["--data", "sample-table"]) == 0  # folds/folds.json: the diabetes table, regression
    sample = pd.read_csv("data/sample-diabetes/sample_submission.csv")
    sample.to_csv("orphan.csv", index=False)  # no experiment and no record beside it
    capsys.readouterr()
    assert submit.main(["orphan.csv", "--data", "sample-speakers", "--dry-run"]) == 2
    assert "--data sample-speakers does not fit folds/folds.json" in one_line(capsys.readouterr().err)
    assert submit.main(["orphan.csv", "--data", "sample-table", "--dry-run"]) == 0
