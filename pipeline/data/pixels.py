"""The pixels layout: Digit Recognizer and its kin (Kannada-MNIST, Fashion-MNIST, FER-2013 as CSV).

train.csv = label, pixel0..pixel{N-1} (N a square, values 0-255) [, a group column];
test.csv = [id,] pixel0..pixel{N-1}; sample_submission.csv = id, label.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError

LABEL = "label"
SIDE = 28  # Digit Recognizer
PIXELS = [f"pixel{i}" for i in range(SIDE * SIDE)]
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)  # digits, on the 0..1 scale


def pixel_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if isinstance(c, str) and c.startswith("pixel")]


def is_pixels(df: pd.DataFrame) -> bool:
    """Any pixel<N> column makes it the pixels layout (a damaged one then gets a precise message)."""
    return any(isinstance(c, str) and c.startswith("pixel") and c[5:].isdigit() for c in df.columns)


def side_of(df: pd.DataFrame) -> int:
    """The image side: sqrt of the pixel column count when that is a square of at least 8x8; otherwise the
    side the columns fall short of (28 below 784), so the column check names what is missing."""
    n = len(pixel_columns(df))
    side = math.isqrt(n)
    if side * side == n and side >= 8:
        return side
    return SIDE if n < SIDE * SIDE else side + 1


def images(df: pd.DataFrame, where: str, side: int, extra: list[str]) -> np.ndarray:
    """(N, 1, side, side) uint8 from the pixel columns, after checking the columns, types and range."""
    expected = [f"pixel{i}" for i in range(side * side)]
    if len(df.columns) != len(expected) + len(extra):
        what = " + ".join([*extra, f"{len(expected)} pixels"])
        unknown = [str(c) for c in df.columns if c not in extra and not str(c).startswith("pixel")][:3]
        hint = (f"; unexpected column(s) {', '.join(unknown)} (a column that groups rows is named with "
                "make_folds --group-col)" if unknown and LABEL in extra else "")
        raise PipelineError(f"{where}: expected {len(expected) + len(extra)} columns ({what}), found {len(df.columns)}{hint}")
    names = [c for c in df.columns if c not in extra]
    if names != expected:
        i = next(i for i, (a, b) in enumerate(zip(names, expected)) if a != b)
        raise PipelineError(f"{where}: pixel column {i} should be named {expected[i]!r}, found {names[i]!r}")
    values = df[expected]
    array = numeric_cells(values)
    check_cells(array, values, where, lo=0, hi=255, what="pixel")
    return array.astype(np.uint8).reshape(-1, 1, side, side)


def numeric_cells(values: pd.DataFrame) -> np.ndarray:
    """Cells as float64; text and numbers too large for a float (a 400-digit integer) become NaN or inf."""
    if all(pd.api.types.is_numeric_dtype(t) for t in values.dtypes):
        return values.to_numpy(dtype=np.float64)

    def number(v) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            return float("nan")
        except OverflowError:
            return float("inf")
    return np.vectorize(number, otypes=[np.float64])(values.to_numpy(dtype=object))


def check_cells(array: np.ndarray, original: pd.DataFrame, where: str, lo: float, hi: float, what: str) -> None:
    """Name the first missing, non-numeric, fractional or out-of-range cell."""
    checks = [
        (np.isnan(array), "missing or non-numeric {what}", lambda v: f"{v!r}"),
        (~np.isnan(array) & ((array < lo) | (array > hi)), f"{{what}} outside {lo:g}-{hi:g}", str),
        (~np.isnan(array) & (array != np.round(array)), "non-integer {what}", str),
    ]
    for bad, text, show in checks:
        if bad.any():
            row, col = np.argwhere(bad.reshape(len(original), -1))[0]
            found = original.iat[row, col]
            raise PipelineError(f"{where}: row {row + 1}, column {original.columns[col]}: "
                                f"{text.format(what=what)}, found {show(found)}")


def check_labels(labels: pd.Series, where: str) -> None:
    """Pixel competitions label with class indices (0, 1, ...) or names; never fractions or negatives."""
    if pd.api.types.is_numeric_dtype(labels):
        values = labels.to_numpy(dtype=np.float64)[:, None]
        check_cells(values, labels.to_frame(), where, lo=0, hi=100_000, what="label")


def test_images(df: pd.DataFrame, where: str, side: int, sample: pd.DataFrame, id_col: str) -> np.ndarray:
    """test.csv's images in the order of sample_submission.csv's ids (by id when test.csv has an id column)."""
    extra = [id_col] if id_col else []
    if id_col == "" and len(df.columns) == side * side + 1 and not str(df.columns[0]).startswith("pixel"):
        extra = [df.columns[0]]  # Kannada-MNIST: id, pixel0..
    array = images(df, where, side, extra)
    if not extra:
        if len(sample) != len(array):
            raise PipelineError(f"sample_submission.csv: {len(sample)} rows, but test.csv has {len(array)}")
        return array
    position = pd.Series(np.arange(len(df)), index=df[extra[0]].astype(str))
    if position.index.duplicated().any():
        raise PipelineError(f"{where}: id {position.index[position.index.duplicated()][0]!r} appears twice")
    wanted = sample.iloc[:, 0].astype(str)
    missing = ~wanted.isin(position.index)
    if missing.any():
        raise PipelineError(f"sample_submission.csv: id {wanted[missing].iloc[0]!r} is not in {where}'s {extra[0]} column")
    return array[position[wanted].to_numpy()]
