"""idx: MNIST's own files (and Fashion-MNIST's, KMNIST's: the same format), as images of 28x28:

    train-images-idx3-ubyte[.gz]   train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]    t10k-labels-idx1-ubyte[.gz]   (the test's labels: optional)

Read with numpy from the IDX header (two zero bytes, the type code 0x08 for unsigned bytes, the number of
dimensions, then each dimension as a big-endian int32). Every image model and TTA applies, as for Digit
Recognizer's CSV. The submission is sample_submission.csv's, else `Id,Class` with Id 0..M-1 in t10k order; when the
test's labels ship, make_folds writes them as `solution.csv` (Id,Class) beside the data, to score a submission
against.

    --data sample-idx   scikit-learn's digits written as IDX files (28x28, gzip'd and plain)
"""
from __future__ import annotations

import gzip
import math
import re
import sys
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from pipeline.data.common import image_summary, read_sample_submission, row_positions, sample_label
from pipeline.data.layout import Description, Found, Layout, Options, TrainSet, register
from pipeline.data.pixels import MNIST_MEAN, MNIST_STD
from pipeline.data.source import Source
from pipeline.data.targets import encode, infer_task
from pipeline.errors import PipelineError
from pipeline.io import file_hash

SAMPLE_DIR = "data/sample-idx"
TARGET = "Class"
NAME = re.compile(r"^(train|t10k|test)[-_.](images|labels)[-_.]idx([13])[-_.]ubyte(\.gz)?$", re.I)


def _files(src: Source) -> dict[tuple[str, str], str]:
    """(train|test, images|labels) -> the shallowest file of that name."""
    found: dict[tuple[str, str], str] = {}
    for rel in sorted(src.files(), key=lambda r: (r.count("/"), r)):
        m = NAME.match(PurePosixPath(rel).name)
        if m:
            found.setdefault(("train" if m[1].lower() == "train" else "test", m[2].lower()), rel)
    return found


def read_idx(src: Source, rel: str, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes as a numpy array of its header's shape; a header and a size that disagree, or a
    truncated .gz, are one line naming the file."""
    where = src.label(rel)
    raw = src.read_file(rel)
    if rel.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise PipelineError(f"{where}: not a complete gzip file ({e}); download it again") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] != ndim:
        raise PipelineError(f"{where}: not an IDX file of unsigned bytes with {ndim} dimension(s) (header "
                            f"{raw[:4].hex() or 'empty'}, expected 000008{ndim:02x})")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise PipelineError(f"{where}: the header is cut short ({len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:head], dtype=">i4"))
    if min(shape) < 0:
        raise PipelineError(f"{where}: the header declares a negative dimension {' x '.join(map(str, shape))}; "
                            "download it again")
    size = math.prod(shape)
    if len(raw) - head != size:
        raise PipelineError(f"{where}: the header says {' x '.join(map(str, shape))} = {size:,} bytes of data, the file "
                            f"holds {len(raw) - head:,}; download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(shape)


def _images(src: Source, rel: str) -> np.ndarray:
    images = read_idx(src, rel, 3)
    if not images.shape[0]:
        raise PipelineError(f"{src.label(rel)}: holds no images (the header says 0)")
    if images.shape[1] != images.shape[2] or not images.shape[1]:
        raise PipelineError(f"{src.label(rel)}: images of {images.shape[1]}x{images.shape[2]}; expected square ones")
    return images[:, None]  # (N, 1, side, side)


class Idx(Layout):
    name = "idx"
    tta_preset = "digits"
    augment = "digits"
    hint = "MNIST's train-images-idx3-ubyte files"

    def detect(self, src: Source, found: Found) -> bool:
        return ("train", "images") in _files(src)

    def describe(self, src: Source, found: Found, opts: Options, known: Description | None):
        if opts.group_col:
            raise PipelineError("--group-col: the idx layout has no columns to group by")
        files = _files(src)
        missing = [f"{s}-{w}" for s, w in (("train", "images"), ("train", "labels"), ("test", "images"))
                   if (s, w) not in files]
        if missing:
            raise PipelineError(f"--layout idx: {src.path} has no {' and no '.join(missing)} IDX file (expected "
                                "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte)")
        images = _images(src, files["train", "images"])
        labels = read_idx(src, files["train", "labels"], 1)
        where = src.label(files["train", "labels"])
        if len(labels) != len(images):
            raise PipelineError(f"{where}: {len(labels):,} labels, but {src.label(files['train', 'images'])} holds "
                                f"{len(images):,} images")
        frame = pd.DataFrame({TARGET: labels.astype(np.int64)})
        the_task = known.task if known is not None else infer_task(frame, where, opts.task or "multiclass",
                                                                    opts.metric, opts.threshold)
        side = images.shape[-1]
        desc = Description("idx", the_task, root=str(PurePosixPath(files["train", "images"]).parent) + "/"
                           if "/" in files["train", "images"] else "", train_file=files["train", "images"],
                           target_cols=(TARGET,), test_dir=files["test", "images"], channels=1, side=side,
                           n_images=len(images))
        if known is None:
            test = _images(src, files["test", "images"])
            if test.shape[-1] != side:
                raise PipelineError(f"{src.label(files['test', 'images'])}: images of {test.shape[-1]}x{test.shape[-1]}"
                                    f", but the train images are {side}x{side}")
            sample = self.submission_sample(src, desc)
            the_task.submission_mode(sample)
            row_positions(sample, len(test), sample_label(src, desc.root), "the position of a test image")
            if ("test", "labels") in files:
                _write_truth(src, files["test", "labels"], len(test))
        raw = src.read_file(files["train", "images"]) + src.read_file(files["train", "labels"])
        return desc, TrainSet(encode(frame, the_task, where), np.arange(len(images), dtype=np.int64), None,
                              file_hash(raw), rows=np.ascontiguousarray(images))

    def summary(self, desc: Description) -> str:
        return image_summary(desc)

    def normalize(self, desc: Description):
        return MNIST_MEAN, MNIST_STD

    def submission_sample(self, src: Source, desc: Description) -> pd.DataFrame:
        sample = read_sample_submission(src, desc.root, required=False)
        if sample is not None:
            return sample
        n_test = len(_images(src, desc.test_dir))
        return pd.DataFrame({"Id": np.arange(n_test), TARGET: desc.task.classes[0]})

    def read_test(self, src: Source, desc: Description, img_size: int, cache_dir: str):
        """The t10k images in the sample's order: its ids are their positions (0..M-1)."""
        images = _images(src, desc.test_dir)
        sample = self.submission_sample(src, desc)
        wanted = row_positions(sample, len(images), sample_label(src, desc.root), "the position of a test image")
        return np.ascontiguousarray(images[wanted]), sample


def _write_truth(src: Source, rel: str, n_test: int) -> None:
    """The test's labels as solution.csv (Id,Class) beside the data (beside the zip for a zip), once."""
    from pipeline.io import write_csv

    labels = read_idx(src, rel, 1)
    if len(labels) != n_test:
        raise PipelineError(f"{src.label(rel)}: {len(labels):,} labels for {n_test:,} test images")
    path = Path(str(src.path.with_suffix("")) + "-solution.csv") if src.is_zip else src.path / "solution.csv"
    truth = pd.DataFrame({"Id": np.arange(n_test), TARGET: labels})
    if path.is_file():
        try:
            if pd.read_csv(path).equals(truth):
                return
        except (ValueError, OSError):
            pass
    try:
        write_csv(truth, path)
    except (OSError, PipelineError) as e:  # a read-only data folder: the truth is a convenience, not the job
        print(f"notice: {src.label(rel)} holds the test's labels; could not write them to {path} ({e})",
              file=sys.stderr)
        return
    print(f"notice: {src.label(rel)} holds the test's labels; wrote them to {path} (Id,{TARGET}) to score a submission "
          "against (Kaggle would not give you these)", file=sys.stderr)


def write_sample(root: str = SAMPLE_DIR) -> Path:
    """scikit-learn's digits (28x28) as MNIST's four IDX files: the train images plain, the rest gzip'd."""
    from pipeline.data.sample import _digits_28
    from pipeline.io import atomic_path

    folder = Path(root)
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")
    if all((folder / n).is_file() for n in names):
        return folder
    big, target, train_idx, test_idx = _digits_28()
    arrays = (big[train_idx], target[train_idx], big[test_idx], target[test_idx])
    for name, array in zip(names, arrays):
        array = np.asarray(array, dtype=np.uint8)
        raw = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes() + array.tobytes()
        with atomic_path(folder / name) as tmp:
            tmp.write_bytes(gzip.compress(raw, mtime=0) if name.endswith(".gz") else raw)
    return folder


Idx.samples = {"sample-idx": write_sample}
register(Idx())
