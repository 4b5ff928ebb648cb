"""The arrays (HW2-2021's windowed .npy files) and idx (MNIST's own files) layouts: detected with no flags, through
make_folds -> train --fold all -> infer -> submit --dry-run, and their bad inputs refused in one line naming the
file before any training."""
from __future__ import annotations

import gzip
import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline import data, infer, make_folds, submit, train
from pipeline.errors import PipelineError
from pipeline.data.layouts import arrays, idx


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def arrays_sample(tmp_path_factory):
    return arrays.write_sample(str(tmp_path_factory.mktemp("arr") / "sample-arrays"))


@pytest.fixture(scope="module")
def idx_sample(tmp_path_factory):
    return idx.write_sample(str(tmp_path_factory.mktemp("idx") / "sample-idx"))


def copy_of(sample, tmp_path):
    root = tmp_path / "comp"
    shutil.copytree(sample, root)
    return root


def accuracy(submission, solution) -> float:
    pred, truth = pd.read_csv(submission), pd.read_csv(solution)
    assert list(pred["Id"]) == list(truth["Id"])
    return float((pred["Class"].astype(str) == truth["Class"].astype(str)).mean())


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "lightgbm"])
def test_arrays_end_to_end(arrays_sample, workdir, capsys, model):
    assert make_folds.main(["--data", str(arrays_sample)]) == 0
    assert "arrays: timit_11/train_11.npy (1,437 rows x 308 features), multiclass" in capsys.readouterr().out
    params = workdir / "small.json"  # a quick booster: this checks the layout's path, not LightGBM's best score
    params.write_text('{"num_iterations": 60, "num_leaves": 7, "learning_rate": 0.2}')
    epochs = ["--epochs", "3"] if model == "mlp" else ["--gbm-params", str(params)]
    assert train.main(["--data", str(arrays_sample), "--fold", "all", "--model", model, *epochs]) == 0
    assert infer.main(["--data", str(arrays_sample), "--exp", model]) == 0
    sub = workdir / f"submissions/{model}.csv"
    frame = pd.read_csv(sub)
    assert list(frame.columns) == ["Id", "Class"] and list(frame["Id"]) == list(range(360))
    assert accuracy(sub, arrays_sample / "solution.csv") > 0.85  # 0.967 (mlp), 0.978 (this booster) on this machine
    assert submit.main([str(sub), "--data", str(arrays_sample), "--dry-run"]) == 0


@pytest.mark.slow
def test_idx_end_to_end_with_the_test_labels_as_truth(idx_sample, workdir, capsys):
    root = copy_of(idx_sample, workdir)
    assert make_folds.main(["--data", str(root)]) == 0
    out = capsys.readouterr()
    assert "idx: target Class, multiclass, 10 classes" in out.out and "1,437 images of 28x28" in out.out
    truth = pd.read_csv(root / "solution.csv")
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz") as f:
        assert list(truth["Class"]) == list(np.frombuffer(f.read(), np.uint8, offset=8))
    assert train.main(["--data", str(root), "--fold", "all", "--epochs", "2"]) == 0
    assert infer.main(["--data", str(root), "--tta"]) == 0
    sub = workdir / "submissions/digit_cnn.csv"
    assert accuracy(sub, root / "solution.csv") > 0.6  # chance is 0.1; 0.91 after 2 epochs on this machine
    assert submit.main([str(sub), "--data", str(root), "--dry-run"]) == 0


def test_arrays_are_memory_mapped_float32(arrays_sample):
    _, train = data.describe(data.Source(arrays_sample))
    assert isinstance(train.rows, np.memmap) and train.rows.dtype == np.float32


def test_arrays_in_an_npz_are_found_by_name(arrays_sample, tmp_path):
    folder = arrays_sample / "timit_11"
    named = {n: np.load(folder / f"{n}.npy") for n in ("train_11", "train_label_11", "test_11")}
    (tmp_path / "comp").mkdir()
    np.savez(tmp_path / "comp/timit.npz", **named)
    desc, train = data.describe(data.Source(tmp_path / "comp"))
    assert desc.layout == "arrays" and desc.train_file == "timit.npz#train_11" and train.rows.shape == (1437, 308)


def header_of(shape) -> bytes:
    """An .npy header declaring float32 rows of `shape`."""
    import io

    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return out.getvalue()  # numpy's magic string, then the header


def write_arrays(root, train_rows, labels, test_rows):
    root.mkdir()
    for name, array in (("train_11", train_rows), ("train_label_11", labels), ("test_11", test_rows)):
        np.save(root / f"{name}.npy", array)
    return root


@pytest.mark.parametrize("case, expected", [
    ("huge", "train_11.npy: its header declares an array larger than memory"),
    ("ids", "sample_submission.csv: id '7' is not a row number of {root}/test_11.npy (0..3)"),
    ("labels", "train_label_11.npy: 9 labels, but {root}/train_11.npy has 10 rows"),
    ("width", "test_11.npy: 6 features per row, but {root}/train_11.npy has 5"),
    ("dtype", "train_11.npy: <U1 values; expected numbers"),
])
def test_bad_arrays_are_one_line_naming_the_file(tmp_path, workdir, capsys, case, expected):
    rows = np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32)
    labels, test = np.arange(10) % 2, rows[:4]
    if case == "labels":
        labels = labels[:9]
    if case == "width":
        test = np.zeros((4, 6), np.float32)
    if case == "dtype":
        rows = np.full((10, 5), "a")
    root = write_arrays(tmp_path / "comp", rows, labels, test)
    if case == "huge":  # a zip's member is read, not memory-mapped: numpy allocates what its header declares
        (root / "train_11.npy").write_bytes(header_of((10**7, 10**6)) + b"\0" * 64)
        shutil.make_archive(str(root), "zip", root)
        shutil.rmtree(root)
        root = tmp_path / "comp.zip"
    if case == "ids":
        pd.DataFrame({"Id": [0, 1, 2, 7], "Class": 0}).to_csv(root / "sample_submission.csv", index=False)
    assert make_folds.main(["--data", str(root)]) == 2
    assert expected.format(root=root) in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("case, expected", [
    ("size", "train-images-idx3-ubyte: the header says 1437 x 28 x 28 = 1,126,608 bytes of data, the file holds "
             "1,126,607"),
    ("gz", "train-labels-idx1-ubyte.gz: not a complete gzip file"),
    ("magic", "train-images-idx3-ubyte: not an IDX file of unsigned bytes with 3 dimension(s)"),
    ("count", "train-labels-idx1-ubyte.gz: 1,436 labels, but"),
    ("negative", "train-images-idx3-ubyte: the header declares a negative dimension -5 x 28 x 28"),
    ("empty", "train-images-idx3-ubyte: holds no images (the header says 0)"),
])
def test_bad_idx_files_are_one_line_naming_the_file(idx_sample, tmp_path, workdir, capsys, case, expected):
    root = copy_of(idx_sample, tmp_path)
    images, labels = root / "train-images-idx3-ubyte", root / "train-labels-idx1-ubyte.gz"
    if case == "size":
        images.write_bytes(images.read_bytes()[:-1])
    if case == "gz":
        labels.write_bytes(labels.read_bytes()[:-20])
    if case == "magic":
        images.write_bytes(b"\x00\x00\x0d\x03" + images.read_bytes()[4:])
    if case in ("negative", "empty"):
        dims = (-5, 28, 28) if case == "negative" else (0, 28, 28)
        images.write_bytes(b"\x00\x00\x08\x03" + np.array(dims, ">i4").tobytes())
    if case == "count":
        raw = gzip.decompress(labels.read_bytes())
        labels.write_bytes(gzip.compress(raw[:4] + np.array([1436], ">i4").tobytes() + raw[8:-1]))
    assert make_folds.main(["--data", str(root)]) == 2
    assert expected in one_line(capsys.readouterr().err)


def test_a_sample_submission_orders_the_test_rows_by_position(arrays_sample, idx_sample, tmp_path):
    for sample, name in ((arrays_sample, "arrays"), (idx_sample, "idx")):
        root = shutil.copytree(sample, tmp_path / name)
        desc, _ = data.describe(data.Source(root))
        plain, _ = data.read_test(data.Source(root), desc, 28, str(tmp_path / "cache"))
        pd.DataFrame({"Id": [2, 0], "Class": 0}).to_csv(root / "sample_submission.csv", index=False)
        rows, sample_read = data.read_test(data.Source(root), desc, 28, str(tmp_path / "cache"))
        assert np.array_equal(np.asarray(rows), np.asarray(plain)[[2, 0]]) and list(sample_read["Id"]) == ["2", "0"]
        pd.DataFrame({"Id": [0, 7.5], "Class": 0}).to_csv(root / "sample_submission.csv", index=False)
        with pytest.raises(PipelineError, match=r"sample_submission.csv: id '7.5' is not (a row number of .*test_11.npy"
                                                r"|the position of a test image) \(0\.\.359\)"):
            data.read_test(data.Source(root), desc, 28, str(tmp_path / "cache"))


def test_a_folder_of_idx_files_beside_its_zip_is_read_as_the_folder(idx_sample, tmp_path):
    """An extracted folder holds no train.csv; it is still the data, not the zip of the same name beside it."""
    root = shutil.copytree(idx_sample, tmp_path / "mnist")
    shutil.make_archive(str(tmp_path / "mnist"), "zip", root)
    assert (tmp_path / "mnist.zip").is_file() and data.resolve(str(root)).path == root
