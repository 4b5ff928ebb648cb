import zipfile

import numpy as np
import pandas as pd
import pytest

from pipeline import data
from pipeline.errors import PipelineError

from conftest import write_comp
from pipeline.tasks import Task

DIGITS = data.Description("pixels", Task("multiclass", tuple(str(i) for i in range(10))), side=28)


def read_test_images(src, desc=DIGITS):
    return data.read_test(src, desc, 28, ".cache")[0]


def test_sample_is_digit_recognizer_format(sample_dir):
    train = pd.read_csv(sample_dir / "train.csv")
    test = pd.read_csv(sample_dir / "test.csv")
    sub = pd.read_csv(sample_dir / "sample_submission.csv")
    assert list(train.columns) == ["label"] + data.PIXELS and list(test.columns) == data.PIXELS
    assert len(train) + len(test) == 1797 and list(sub.columns) == ["ImageId", "Label"]
    assert sub["ImageId"].tolist() == list(range(1, len(test) + 1))
    pixels = train[data.PIXELS].to_numpy().reshape(-1, 28, 28)
    assert pixels.max() == 255 and pixels.min() == 0
    assert pixels[:, :4].max() == 0 and pixels[:, :, -4:].max() == 0  # 20x20 digit centred in 28x28


def test_read_train_folder_and_zip(sample_dir, tmp_path):
    folder = data.read_train(data.Source(sample_dir))
    archive = tmp_path / "digit-recognizer.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("train.csv", "test.csv", "sample_submission.csv"):
            zf.write(sample_dir / name, name)
    zipped = data.read_train(data.resolve(str(archive)))
    assert folder.rows.shape == (1437, 1, 28, 28) and folder.rows.dtype == np.uint8
    assert (folder.rows == zipped.rows).all() and folder.train_hash == zipped.train_hash
    assert read_test_images(data.resolve(str(archive))).shape == (360, 1, 28, 28)


def test_missing_default_uses_sample(workdir, capsys):
    src = data.resolve(data.DEFAULT_DATA)
    assert "kaggle competitions download -c digit-recognizer" in capsys.readouterr().err
    assert (src.path / "train.csv").is_file()


def test_missing_explicit_path():
    with pytest.raises(PipelineError, match="--data: nowhere not found; download.*kaggle competitions download"):
        data.resolve("nowhere")


def broken(tmp_path, sample_dir, edit):
    train = pd.read_csv(sample_dir / "train.csv").head(30)
    test = pd.read_csv(sample_dir / "test.csv").head(5)
    train, test = edit(train, test)
    return data.Source(write_comp(tmp_path / "bad", train, test))


@pytest.mark.parametrize("edit, message", [
    (lambda tr, te: (tr.drop(columns="label"), te), "no 'label' column"),
    (lambda tr, te: (tr.drop(columns=["pixel3", "pixel9"]), te), r"expected 785 columns \(label \+ 784 pixels\), found 783"),
    (lambda tr, te: (tr.rename(columns={"pixel5": "px5"}), te), "pixel column 5 should be named 'pixel5', found 'px5'"),
    (lambda tr, te: (tr.assign(pixel7=["x"] + [0] * 29), te), "row 1, column pixel7: missing or non-numeric pixel, found 'x'"),
    (lambda tr, te: (tr.assign(pixel7=[0] * 29 + [None]), te), "row 30, column pixel7: missing"),
    (lambda tr, te: (tr.assign(pixel7=[0, 300] + [0] * 28), te), "row 2, column pixel7: pixel outside 0-255, found 300"),
    (lambda tr, te: (tr.assign(label=[-1] + [1] * 29), te), "row 1, column label: label outside 0-100000, found -1"),
    (lambda tr, te: (tr.assign(label=[1.5] + [1] * 29), te), "row 1, column label: non-integer label, found 1.5"),
])
def test_bad_train(tmp_path, sample_dir, edit, message):
    with pytest.raises(PipelineError, match=message):
        data.read_train(broken(tmp_path, sample_dir, edit))


def test_bad_test_columns(tmp_path, sample_dir):
    src = broken(tmp_path, sample_dir, lambda tr, te: (tr, te.drop(columns="pixel0")))
    with pytest.raises(PipelineError, match=r"test.csv: expected 784 columns \(784 pixels\), found 783"):
        read_test_images(src)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "train.csv").write_text("")
    with pytest.raises(PipelineError, match="train.csv: empty file"):
        data.read_train(data.Source(tmp_path))
    with pytest.raises(PipelineError, match="test.csv: not found"):
        read_test_images(data.Source(tmp_path))


def test_zip_without_train(tmp_path):
    archive = tmp_path / "c.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("test.csv", "a\n1\n")
    with pytest.raises(PipelineError, match="c.zip: no known layout .* found test.csv"):
        data.read_train(data.resolve(str(archive)))
