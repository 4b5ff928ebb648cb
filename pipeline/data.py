"""Read and validate Digit Recognizer files (folder or zip); the bundled offline sample.

Format: train.csv = label,pixel0..pixel783 (0-255); test.csv = pixel0..pixel783;
sample_submission.csv = ImageId,Label with ImageId from 1.
"""
from __future__ import annotations

import hashlib
import io
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import DEFAULT_DATA
from pipeline.errors import PipelineError

SIDE = 28  # Digit Recognizer images are 28x28 gray
PIXELS = [f"pixel{i}" for i in range(SIDE * SIDE)]
LABEL = "label"
NUM_CLASSES = 10  # digits 0..9
SAMPLE_DIR = "data/sample-digits"
DOWNLOAD = "kaggle competitions download -c digit-recognizer -p data/"


@dataclass(frozen=True)
class Source:
    """A competition folder or the zip Kaggle downloads; files are found by their base name."""
    path: Path

    def label(self, name: str) -> str:
        return f"{self.path}:{name}" if self.path.suffix == ".zip" else str(self.path / name)

    def read_bytes(self, name: str) -> bytes:
        if self.path.suffix == ".zip":
            return read_zip_member(self.path, name)
        file = self.path / name
        if not file.is_file():
            raise PipelineError(f"{file}: {'is a directory' if file.is_dir() else 'not found'} (the competition "
                                "folder should hold train.csv, test.csv, sample_submission.csv)")
        if file.stat().st_size > MAX_MEMBER_BYTES:
            raise PipelineError(f"{file}: {file.stat().st_size:,} bytes, over the {MAX_MEMBER_BYTES:,} a CSV may have here")
        return file.read_bytes()


MAX_MEMBER_BYTES = 4 << 30  # a CSV read into memory: Digit Recognizer's train.csv is 77 MB
MAX_RATIO = 100  # Kaggle's CSV zips expand about 9x; deflate bombs reach 1000x
RATIO_FROM_BYTES = 64 << 20  # small members may compress far better than that without harm


def read_zip_member(path: Path, name: str) -> bytes:
    """The member called `name` (any folder), after checking its size, ratio, encryption and method."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if Path(m.filename).name == name and not m.is_dir()]
            if not members:
                found = ", ".join(zf.namelist()[:5]) or "nothing"
                raise PipelineError(f"{path}: no {name} inside the zip (found {found})")
            info = members[0]
            where = f"{path}:{info.filename}"
            if info.flag_bits & 0x1:
                raise PipelineError(f"{where}: encrypted; unzip it with its password and pass the folder to --data")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
                raise PipelineError(f"{where}: compression method {info.compress_type} is not supported; "
                                    "unzip it with another tool and pass the folder to --data")
            ratio = info.file_size / max(1, info.compress_size)
            if info.file_size > MAX_MEMBER_BYTES or (info.file_size > RATIO_FROM_BYTES and ratio > MAX_RATIO):
                raise PipelineError(f"{where}: expands to {info.file_size:,} bytes ({ratio:,.0f}x its compressed size); "
                                    f"refused (limits: {MAX_MEMBER_BYTES:,} bytes, {MAX_RATIO}x)")
            with zf.open(info) as member:  # the header may lie: never read more than it declares
                raw = member.read(info.file_size + 1)
            if len(raw) > info.file_size:
                raise PipelineError(f"{where}: holds more bytes than its header declares; refused")
            return raw
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
        raise PipelineError(f"{path}: not a readable zip file ({str(e).splitlines()[0][:100] if str(e) else type(e).__name__})") from None


@dataclass(frozen=True)
class TrainSet:
    images: np.ndarray  # (N, 1, 28, 28) uint8
    labels: np.ndarray  # (N,) int64 in 0..NUM_CLASSES-1
    ids: np.ndarray  # (N,) int64: row number in train.csv, from 0
    groups: np.ndarray | None  # (N,) values of --group-col, or None
    train_hash: str  # first 16 hex digits of sha256(train.csv bytes)


def resolve(data: str) -> Source:
    """--data as given; the default path falls back to the bundled sample with a one-line notice."""
    if data == "sample":
        return Source(write_sample())
    path = Path(data)
    if path.exists():
        if path.is_dir() and not (path / "train.csv").exists() and path.with_suffix(".zip").is_file():
            return Source(path.with_suffix(".zip"))
        return Source(path)
    if path.with_suffix(".zip").is_file():
        return Source(path.with_suffix(".zip"))
    if data.rstrip("/") != DEFAULT_DATA:
        raise PipelineError(f"--data: {data} not found; download the competition with: {DOWNLOAD}")
    print(f"notice: no competition data at {DEFAULT_DATA}/ -- using the bundled sample "
          f"(scikit-learn's 1,797 digits). For the real data: {DOWNLOAD}", file=sys.stderr)
    return Source(write_sample())


def read_csv(src: Source, name: str) -> pd.DataFrame:
    return parse_csv(src.read_bytes(name), src.label(name))


def parse_csv(raw: bytes, where: str) -> pd.DataFrame:
    if not raw.strip():
        raise PipelineError(f"{where}: empty file")
    try:
        df = pd.read_csv(io.BytesIO(raw), low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise PipelineError(f"{where}: not a readable CSV ({str(e).strip().splitlines()[0][:120]})") from None
    if len(df) == 0:
        raise PipelineError(f"{where}: header only, no rows")
    return df


def pixels(df: pd.DataFrame, where: str, extra: list[str]) -> np.ndarray:
    """(N, 1, 28, 28) uint8 from the pixel columns, after checking names, types and range."""
    if len(df.columns) != len(PIXELS) + len(extra):
        what = " + ".join([*extra, f"{len(PIXELS)} pixels"])
        unknown = [str(c) for c in df.columns if c not in extra and not str(c).startswith("pixel")][:3]
        hint = (f"; unexpected column(s) {', '.join(unknown)} (a column that groups rows is named with "
                "make_folds --group-col)" if unknown and LABEL in extra else "")
        raise PipelineError(f"{where}: expected {len(PIXELS) + len(extra)} columns ({what}), found {len(df.columns)}{hint}")
    names = [c for c in df.columns if c not in extra]
    if names != PIXELS:
        i = next(i for i, (a, b) in enumerate(zip(names, PIXELS)) if a != b)
        raise PipelineError(f"{where}: pixel column {i} should be named {PIXELS[i]!r}, found {names[i]!r}")
    values = df[PIXELS]
    all_numeric = all(pd.api.types.is_numeric_dtype(t) for t in values.dtypes)
    numeric = values if all_numeric else values.apply(pd.to_numeric, errors="coerce")
    array = numeric.to_numpy(dtype=np.float64)
    _check_cells(array, values, where, lo=0, hi=255, what="pixel")
    return array.astype(np.uint8).reshape(-1, 1, SIDE, SIDE)


def _check_cells(array: np.ndarray, original: pd.DataFrame, where: str, lo: int, hi: int, what: str) -> None:
    """Name the first missing, non-numeric, fractional or out-of-range cell."""
    checks = [
        (np.isnan(array), "missing or non-numeric {what}", lambda v: f"{v!r}"),
        (~np.isnan(array) & ((array < lo) | (array > hi)), f"{{what}} outside {lo}-{hi}", str),
        (~np.isnan(array) & (array != np.round(array)), "non-integer {what}", str),
    ]
    for bad, text, show in checks:
        if bad.any():
            row, col = np.argwhere(bad.reshape(len(original), -1))[0]
            found = original.iat[row, col]
            raise PipelineError(f"{where}: row {row + 1}, column {original.columns[col]}: "
                                f"{text.format(what=what)}, found {show(found)}")


def read_train(src: Source, group_col: str = "") -> TrainSet:
    where, raw = src.label("train.csv"), src.read_bytes("train.csv")
    df = parse_csv(raw, where)
    if LABEL not in df.columns:
        raise PipelineError(f"{where}: no {LABEL!r} column (expected label,pixel0..pixel783; found {', '.join(map(str, df.columns[:3]))}, ...)")
    if group_col and group_col not in df.columns:
        raise PipelineError(f"--group-col: {where} has no column {group_col!r}")
    extra = [LABEL] + ([group_col] if group_col else [])
    images = pixels(df, where, extra)
    labels = pd.to_numeric(df[LABEL], errors="coerce").to_numpy(dtype=np.float64)
    _check_cells(labels[:, None], df[[LABEL]], where, lo=0, hi=NUM_CLASSES - 1, what="label")
    digest = hashlib.sha256(raw).hexdigest()[:16]
    if group_col and df[group_col].isna().any():
        row = int(np.flatnonzero(df[group_col].isna().to_numpy())[0])
        raise PipelineError(f"{where}: row {row + 1}, column {group_col}: missing group value")
    groups = df[group_col].astype(str).to_numpy() if group_col else None
    return TrainSet(images, labels.astype(np.int64), np.arange(len(df), dtype=np.int64), groups, digest)


def read_test(src: Source) -> np.ndarray:
    """(N, 1, 28, 28) uint8 test images; columns must be train's pixel columns."""
    where = src.label("test.csv")
    df = read_csv(src, "test.csv")
    if list(df.columns) != PIXELS:
        extra = [c for c in df.columns if c not in PIXELS][:3]
        raise PipelineError(f"{where}: columns differ from train.csv's pixel columns: expected pixel0..pixel783 "
                            f"({len(PIXELS)}), found {len(df.columns)} columns" + (f" incl. {extra}" if extra else ""))
    return pixels(df, where, extra=[])


def read_sample_submission(src: Source, n_test: int | None = None) -> pd.DataFrame:
    where = src.label("sample_submission.csv")
    df = read_csv(src, "sample_submission.csv")
    if len(df.columns) != 2:
        raise PipelineError(f"{where}: expected 2 columns (id, label), found {len(df.columns)}")
    if n_test is not None and len(df) != n_test:
        raise PipelineError(f"{where}: {len(df)} rows, but test.csv has {n_test}")
    return df


def write_sample(root: str = SAMPLE_DIR) -> Path:
    """scikit-learn's load_digits (8x8, 0..16) as a Digit Recognizer competition at 28x28, 0..255.

    Digits are upscaled to 20x20 and centred in 28x28 as in MNIST; 20% is held out as test.csv
    (labels in solution.csv, which Kaggle would not give you).
    """
    root_path = Path(root)
    if all((root_path / f).is_file() for f in ("train.csv", "test.csv", "sample_submission.csv", "solution.csv")):
        return root_path
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from pipeline.checkpoint import write_csv

    digits = load_digits()
    small = torch.tensor(digits.images, dtype=torch.float32)[:, None] * (255.0 / 16.0)  # (1797, 1, 8, 8)
    big = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    big = F.pad(big, (4, 4, 4, 4)).clamp(0, 255).round().to(torch.uint8).reshape(len(small), -1).numpy()
    train_idx, test_idx = train_test_split(np.arange(len(big)), test_size=0.2, random_state=0, stratify=digits.target)
    frame = lambda idx: pd.DataFrame(big[idx], columns=PIXELS)  # noqa: E731
    train = frame(train_idx)
    train.insert(0, LABEL, digits.target[train_idx])
    ids = np.arange(1, len(test_idx) + 1)
    write_csv(train, root_path / "train.csv")
    write_csv(frame(test_idx), root_path / "test.csv")
    write_csv(pd.DataFrame({"ImageId": ids, "Label": 0}), root_path / "sample_submission.csv")
    write_csv(pd.DataFrame({"ImageId": ids, "Label": digits.target[test_idx]}), root_path / "solution.csv")
    return root_path
