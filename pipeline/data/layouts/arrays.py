"""arrays: numpy files of windowed features, as the course's 2021 phoneme homework (HW2-2021) ships them:

    train_11.npy        (N, F) float (11 frames x 39 MFCC = 429 columns, already windowed)
    train_label_11.npy  (N,) integer or string labels
    test_11.npy         (M, F)

Files are matched by name: *label* holds the labels, *train* the train rows, *test* the test rows (.npy, or the
named arrays of an .npz, matched by the file's and the array's name). The rows train as a table of float columns
(`--model mlp` or `lightgbm`). A folder's .npy files are memory-mapped and never copied to float64; the submission is
sample_submission.csv's, else `Id,Class` with Id 0..M-1 in test order.

    --data sample-arrays   scikit-learn's digits, each a window of 11 columns of 28 pixels (308 features)
"""
from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from pipeline.data import table as tab
from pipeline.data.common import read_sample_submission, row_positions, sample_label
from pipeline.data.layout import Description, Found, Layout, Options, TrainSet, register
from pipeline.data.source import Source
from pipeline.data.targets import encode, infer_task
from pipeline.errors import PipelineError

SAMPLE_DIR = "data/sample-arrays"
TARGET = "Class"
WINDOW = 11  # frames per row, as HW2-2021 concatenates them
ROLES = (("test labels", re.compile(r"(?=.*label)(?=.*test)", re.I)), ("labels", re.compile(r"label", re.I)),
         ("test", re.compile(r"test", re.I)), ("train", re.compile(r"train", re.I)))  # the first that matches


def _candidates(src: Source) -> dict[str, list[str]]:
    """role -> the .npy files (and 'file.npz#array' names) whose names say it, shallowest first."""
    found: dict[str, list[str]] = {role: [] for role, _ in ROLES}
    for rel in src.files():
        name = PurePosixPath(rel).name
        if name.endswith(".npy"):
            names = [(name, rel)]
        elif name.endswith(".npz"):
            names = [(f"{name}#{key}", f"{rel}#{key}") for key in _npz_keys(src, rel)]
        else:
            continue
        for label, ref in names:
            role = next((r for r, pattern in ROLES if pattern.search(label)), None)
            if role is not None:
                found[role].append(ref)
    return {role: sorted(refs, key=lambda r: (r.count("/"), r)) for role, refs in found.items()}


def _npz_keys(src: Source, rel: str) -> list[str]:
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(src.read_file(rel))) as zf:
            return [n.removesuffix(".npy") for n in zf.namelist() if n.endswith(".npy")]
    except zipfile.BadZipFile:
        raise PipelineError(f"{src.label(rel)}: not a readable .npz (numpy's zip of arrays)") from None


def _files(src: Source) -> tuple[str, str, str]:
    """(train, labels, test) array references, one each."""
    found = _candidates(src)
    missing = [role for role in ("train", "labels", "test") if not found[role]]
    if missing:
        raise PipelineError(f"--layout arrays: {src.path} has no {' and no '.join(missing)} array (expected "
                            "*train*.npy, *label*.npy and *test*.npy, or an .npz holding them)")
    return found["train"][0], found["labels"][0], found["test"][0]


def load(src: Source, ref: str) -> np.ndarray:
    """One array: memory-mapped from a folder's .npy, else read (a zip's member, an .npz's array); no pickles."""
    rel, _, key = ref.partition("#")
    where = src.label(ref)
    try:
        if key:
            with np.load(io.BytesIO(src.read_file(rel)), allow_pickle=False) as npz:
                return npz[key]
        if not src.is_zip:
            return np.load(Path(src.path) / rel, mmap_mode="r", allow_pickle=False)
        return np.load(io.BytesIO(src.read_file(rel)), allow_pickle=False)
    except MemoryError:  # a header declaring more than memory holds (numpy allocates before it reads a stream)
        raise PipelineError(f"{where}: its header declares an array larger than memory; not a usable numpy "
                            "array") from None
    except (ValueError, OSError, EOFError) as e:
        objects = "pickled" in str(e) or "Python objects" in str(e)
        why = "it holds Python objects (a pickle), not numbers" if objects else str(e).splitlines()[0][:200]
        raise PipelineError(f"{where}: not a readable numpy array ({why})") from None


def _features(src: Source, ref: str, width: int = 0, like: str = "") -> np.ndarray:
    """(N, F) float32 rows, as stored when they are float32 (a memory map stays one)."""
    array = load(src, ref)
    where = src.label(ref)
    if array.dtype.kind not in "fiub":
        raise PipelineError(f"{where}: {array.dtype} values; expected numbers (float or integer features)")
    if array.ndim != 2 or not array.shape[0] or not array.shape[1]:
        raise PipelineError(f"{where}: shape {array.shape}; expected (rows, features)")
    if width and array.shape[1] != width:
        raise PipelineError(f"{where}: {array.shape[1]} features per row, but {like} has {width}; the test rows must "
                            "be windowed as the train rows are")
    return array if array.dtype == np.float32 else array.astype(np.float32)


def _labels(src: Source, ref: str, rows: int, train_ref: str) -> pd.DataFrame:
    array = load(src, ref)
    where = src.label(ref)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or array.dtype.kind not in "iuUSf":
        raise PipelineError(f"{where}: {array.dtype} array of shape {array.shape}; expected one label per row "
                            "(integers or strings)")
    if len(array) != rows:
        raise PipelineError(f"{where}: {len(array):,} labels, but {src.label(train_ref)} has {rows:,} rows")
    values = array.astype(str) if array.dtype.kind in "US" else np.asarray(array)
    return pd.DataFrame({TARGET: values})


def _hash(src: Source, refs: tuple[str, ...]) -> str:
    """What identifies the train side: the train and label files' bytes (read in chunks: a 2 GB file never whole)."""
    digest = hashlib.sha256()
    for ref in refs:
        rel = ref.partition("#")[0]
        if src.is_zip:
            digest.update(src.read_file(rel))
            continue
        with open(Path(src.path) / rel, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


class Arrays(Layout):
    name = "arrays"
    kind = "table"
    tta_preset = ""
    augment = "none"
    hint = "*train*.npy, *label*.npy and *test*.npy arrays"

    def detect(self, src: Source, found: Found) -> bool:
        if found.frame is not None or not any(f.endswith((".npy", ".npz")) for f in src.files()):
            return False
        roles = _candidates(src)
        return all(roles[r] for r in ("train", "labels", "test"))

    def describe(self, src: Source, found: Found, opts: Options, known: Description | None):
        if opts.group_col:
            raise PipelineError("--group-col: the arrays layout has no columns to group by")
        train_ref, label_ref, test_ref = _files(src)
        rows = _features(src, train_ref)
        labels = _labels(src, label_ref, len(rows), train_ref)
        where = src.label(label_ref)
        if known is None:
            _features(src, test_ref, rows.shape[1], src.label(train_ref))  # another width is refused before training
        kind = opts.task or ("multiclass" if labels[TARGET].dtype.kind in "iuUO" else "")
        the_task = known.task if known is not None else infer_task(labels, where, kind, opts.metric, opts.threshold)
        names = tuple(f"f{i}" for i in range(rows.shape[1]))
        cols = tab.Columns(test_ref, "", (TARGET,), (TARGET,), numeric=names)
        root = str(PurePosixPath(train_ref.partition("#")[0]).parent) + "/" if "/" in train_ref else ""
        desc = Description("arrays", the_task, root=root,
                           train_file=train_ref, target_cols=(TARGET,), test_dir=test_ref, n_images=len(rows),
                           table=cols.to_dict())
        if known is None:
            sample = self.submission_sample(src, desc)
            the_task.submission_mode(sample)
            n_test = len(load(src, test_ref))
            row_positions(sample, n_test, sample_label(src, desc.root), f"a row number of {src.label(test_ref)}")
        return desc, TrainSet(encode(labels, the_task, where), np.arange(len(rows), dtype=np.int64), None,
                              _hash(src, (train_ref, label_ref)), rows=rows)

    def summary(self, desc: Description) -> str:
        width = len(desc.columns.numeric)
        return (f"arrays: {desc.train_file} ({desc.n_images:,} rows x {width} features), {desc.task.describe()}, "
                f"test {desc.test_dir}")

    def submission_sample(self, src: Source, desc: Description) -> pd.DataFrame:
        sample = read_sample_submission(src, desc.root, required=False)
        if sample is not None:
            return sample
        n_test = len(load(src, desc.test_dir))
        return pd.DataFrame({"Id": np.arange(n_test), TARGET: desc.task.classes[0] if desc.task.classes else 0})

    def read_test(self, src: Source, desc: Description, img_size: int, cache_dir: str):
        """The test rows in the sample's order: its ids are row numbers of the test array."""
        rows = _features(src, desc.test_dir, len(desc.columns.numeric), desc.train_file)
        sample = self.submission_sample(src, desc)
        order = row_positions(sample, len(rows), sample_label(src, desc.root), f"a row number of {src.label(desc.test_dir)}")
        return (rows if np.array_equal(order, np.arange(len(rows))) else rows[order]), sample


def write_sample(root: str = SAMPLE_DIR) -> Path:
    """HW2-2021's files from scikit-learn's digits: each digit's 28 columns of 28 pixels are its frames, and a row is
    the window of 11 frames around the ink's centre (308 features); labels as strings, as HW2-2021's are."""
    from pipeline.data.sample import _digits_28
    from pipeline.io import atomic_path, write_csv

    folder = Path(root) / "timit_11"
    names = ("train_11.npy", "train_label_11.npy", "test_11.npy")
    if all((folder / n).is_file() for n in names) and (Path(root) / "solution.csv").is_file():
        return Path(root)
    big, target, train_idx, test_idx = _digits_28()
    frames = big.astype(np.float32).transpose(0, 2, 1) / 255.0  # (n, 28 frames, 28 features)
    rows = []
    for image in frames:
        ink = np.flatnonzero(image.sum(1) > 0)
        centre = int(np.clip((ink[0] + ink[-1]) // 2, WINDOW // 2, len(image) - WINDOW // 2 - 1))
        rows.append(image[centre - WINDOW // 2:centre + WINDOW // 2 + 1].reshape(-1))
    rows = np.stack(rows).astype(np.float32)
    for name, array in zip(names, (rows[train_idx], target[train_idx].astype(str), rows[test_idx])):
        with atomic_path(folder / name) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, array)
    write_csv(pd.DataFrame({"Id": np.arange(len(test_idx)), TARGET: target[test_idx]}), Path(root) / "solution.csv")
    return Path(root)


Arrays.samples = {"sample-arrays": write_sample}
register(Arrays())
