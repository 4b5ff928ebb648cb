"""OOF rows of a large experiment: one .npz per fold instead of a CSV rewritten after every fold."""
import numpy as np
import pandas as pd
import pytest

from pipeline import experiment
from pipeline.errors import PipelineError
from pipeline.experiment import done_folds, forget_fold, read_oof, remove_artifacts, write_oof
from pipeline.tasks import Task

TASK = Task("multiclass", tuple("abc"))


def fold_rows(k: int, n: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed + k)
    ids = np.arange(k, 3 * n, 3)  # folds interleave: read_oof must sort the rows by id
    probs = rng.dirichlet(np.ones(3), len(ids))
    return ids, rng.integers(0, 3, len(ids)), probs


@pytest.mark.parametrize("cells", [10**9, 0])  # a CSV, then the per-fold files
def test_both_stores_give_the_same_rows_sorted_by_id(tmp_path, monkeypatch, cells):
    monkeypatch.setattr(experiment, "OOF_CSV_CELLS", cells)
    for k in (1, 0, 2):
        ids, labels, probs = fold_rows(k)
        write_oof(tmp_path, ids, k, labels, probs, TASK, total_rows=15)
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == (["oof.csv"] if cells else ["oof.fold0.npz", "oof.fold1.npz", "oof.fold2.npz"])
    table = read_oof(tmp_path)
    assert table["id"].tolist() == list(range(15))
    assert table["fold"].tolist() == [i % 3 for i in range(15)]
    ids, labels, probs = fold_rows(1)
    rows = table[table["fold"] == 1]
    assert rows["label"].tolist() == labels.tolist()
    np.testing.assert_allclose(rows[["p0", "p1", "p2"]].to_numpy(), probs, rtol=1e-6)
    assert done_folds(tmp_path) == [0, 1, 2]
    cv = experiment.cv_summary(table, 3, TASK)
    assert cv.rows == 15 and sorted(cv.per_fold) == [0, 1, 2]


def test_a_retrained_fold_replaces_its_file_and_forget_and_overwrite_remove_them(tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "OOF_CSV_CELLS", 0)
    for k in (0, 1):
        write_oof(tmp_path, *fold_rows(k)[:1], k, *fold_rows(k)[1:], TASK, total_rows=15)
    ids, labels, probs = fold_rows(0, seed=7)
    write_oof(tmp_path, ids, 0, labels, probs, TASK, total_rows=15)
    np.testing.assert_allclose(read_oof(tmp_path).query("fold == 0")[["p0", "p1", "p2"]].to_numpy(), probs, rtol=1e-6)
    forget_fold(tmp_path, 1)
    assert done_folds(tmp_path) == [0]
    (tmp_path / "mine.npz").write_bytes(b"x")
    remove_artifacts(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["mine.npz"]  # the user's file stays


def test_the_store_stays_per_fold_once_chosen(tmp_path, monkeypatch):
    """An experiment whose first fold went to .npz keeps its other folds there, whatever their size."""
    monkeypatch.setattr(experiment, "OOF_CSV_CELLS", 0)
    write_oof(tmp_path, *fold_rows(0)[:1], 0, *fold_rows(0)[1:], TASK, total_rows=15)
    monkeypatch.setattr(experiment, "OOF_CSV_CELLS", 10**9)
    write_oof(tmp_path, *fold_rows(1)[:1], 1, *fold_rows(1)[1:], TASK, total_rows=15)
    assert not (tmp_path / "oof.csv").exists() and done_folds(tmp_path) == [0, 1]


def _with_header(npz: bytes, member: str, shape: tuple) -> bytes:
    """The archive with one member's .npy header declaring `shape` (its data left as it was)."""
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(npz)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            raw = src.read(info)
            if info.filename == member:
                body = io.BytesIO(raw)
                version = np.lib.format.read_magic(body)
                _, fortran, dtype = np.lib.format.read_array_header_1_0(body) if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0(body)
                head = io.BytesIO()
                np.lib.format.write_array_header_1_0(head, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                            "fortran_order": fortran, "shape": shape})
                raw = head.getvalue() + raw[body.tell():]
            dst.writestr(info.filename, raw)
    return out.getvalue()


@pytest.mark.parametrize("damage", ["garbage", "no_p", "short_id", "both", "huge_header"])
def test_a_damaged_fold_file_is_one_line_naming_it(tmp_path, monkeypatch, damage):
    monkeypatch.setattr(experiment, "OOF_CSV_CELLS", 0)
    write_oof(tmp_path, *fold_rows(0)[:1], 0, *fold_rows(0)[1:], TASK, total_rows=15)
    path = tmp_path / "oof.fold0.npz"
    if damage == "garbage":
        path.write_bytes(b"not a zip")
    elif damage in ("no_p", "short_id"):
        np.savez(path, id=np.arange(2 if damage == "short_id" else 5), **({"p": np.zeros((5, 3))} if damage == "short_id" else {}))
    elif damage == "huge_header":  # a header declaring 4 TB over a few bytes: refused before numpy allocates it
        np.savez(path, id=np.arange(5), p=np.zeros((5, 3), np.float32))
        path.write_bytes(_with_header(path.read_bytes(), "p.npy", (10**6, 10**6)))
    else:
        pd.DataFrame({"id": [0], "fold": [0]}).to_csv(tmp_path / "oof.csv", index=False)
    with pytest.raises(PipelineError) as e:
        read_oof(tmp_path)
    assert str(tmp_path) in str(e.value) and "--overwrite" in str(e.value)
    assert ("oof.fold0.npz" in str(e.value))


def test_a_read_of_hw2_sized_oof_stays_bounded(tmp_path, monkeypatch):
    """Not a timing: 200k rows x 41 classes round-trip through the per-fold files with float32 predictions."""
    monkeypatch.setattr(experiment, "OOF_CSV_CELLS", 0)
    task = Task("multiclass", tuple(str(c) for c in range(41)))
    rng = np.random.default_rng(0)
    n = 200_000
    for k in range(2):
        ids = np.arange(k, n, 2)
        probs = rng.random((len(ids), 41)).astype(np.float32)
        write_oof(tmp_path, ids, k, rng.integers(0, 41, len(ids)), probs / probs.sum(1, keepdims=True), task, n)
    size = sum(p.stat().st_size for p in tmp_path.glob("oof.fold*.npz"))
    assert size < n * (41 * 4 + 8 + 8) * 1.01  # float32 predictions, int64 id and label: no text
    table = read_oof(tmp_path)
    assert len(table) == n and table["p0"].dtype == np.float32


def test_stray_or_foreign_fold_files_are_refused_in_one_line(tmp_path, monkeypatch):
    """A .npy renamed .npz, a fold numbered past the experiment's folds, and a non-canonical name (fold01)."""
    monkeypatch.setattr(experiment, "OOF_CSV_CELLS", 0)
    for k in (0, 1):
        write_oof(tmp_path, *fold_rows(k)[:1], k, *fold_rows(k)[1:], TASK, total_rows=15)
    (tmp_path / "oof.fold01.npz").write_bytes((tmp_path / "oof.fold1.npz").read_bytes())
    assert done_folds(tmp_path) == [0, 1]  # oof.fold01.npz is not a fold file (nor removed by --overwrite)
    good = (tmp_path / "oof.fold1.npz").read_bytes()
    np.save(tmp_path / "x.npy", np.zeros(3))
    (tmp_path / "oof.fold1.npz").write_bytes((tmp_path / "x.npy").read_bytes())
    with pytest.raises(PipelineError, match=r"oof\.fold1\.npz: unreadable \(not an \.npz archive\)"):
        read_oof(tmp_path)
    (tmp_path / "oof.fold1.npz").write_bytes(good)
    ids, labels, probs = fold_rows(2)
    write_oof(tmp_path, ids + 100, 9, labels, probs, TASK, total_rows=15)
    with pytest.raises(PipelineError, match=r"oof\.fold\*\.npz: rows of fold 9, but the experiment has folds 0\.\.2"):
        experiment.cv_summary(read_oof(tmp_path), 3, TASK, experiment.oof_where(tmp_path))
