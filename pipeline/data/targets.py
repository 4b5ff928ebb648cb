"""Target columns of a train CSV -> a Task (kind, class names) and the target array it trains on."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.tasks import Task

MAX_CLASS_INDEX = 100_000  # integer labels 0..K are classes 0..K; beyond this they are not class indices


def infer_task(frame: pd.DataFrame, where: str, kind: str = "", metric: str = "", threshold: float = 0.5,
               sample: pd.DataFrame | None = None) -> Task:
    """The task these target columns describe; `kind` overrides the guess.

    One column: numbers with more than 30 distinct values, or written as floats (6.0), or whose column in the sample
    submission holds a value that is neither an integer nor a probability (4.5) -> regression; strings with
    space-separated names -> multilabel; otherwise multiclass. Several 0/1 columns -> multilabel; several numeric
    columns holding any other value (or `kind` regression) -> regression on all of them at once.
    """
    _no_missing(frame, where)
    cols = [str(c) for c in frame.columns]
    if len(cols) > 1:
        if kind == "multiclass":
            raise PipelineError(f"--task {kind}: takes one target column, got {len(cols)} ({', '.join(cols[:4])})")
        numbers = frame.apply(pd.to_numeric, errors="coerce")  # text -> NaN; booleans -> 0/1
        valued = (numbers.notna() & ~numbers.isin([0, 1])).to_numpy()  # cells that are neither 0 nor 1 nor text
        if kind == "regression" or (not kind and valued.any()):
            for col in cols:  # every column must then hold numbers: name the first one holding text
                _numeric_values(frame[col], where)
            if not kind and valued.mean() < 0.01:  # mostly 0/1: say which cell made it a regression
                row, col = np.argwhere(valued)[0]
                print(f"notice: {where}: target columns {', '.join(cols[:4])} are mostly 0/1, but row {row + 1}, column "
                      f"{cols[col]} holds {frame.iat[row, col]}: regression on all of them (labels? fix that cell, "
                      "or name the task with --task multilabel)", file=sys.stderr)
            return Task("regression", tuple(cols), metric, threshold)
        bad = ~frame.isin([0, 1, 0.0, 1.0]).to_numpy()
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise PipelineError(f"{where}: row {row + 1}, column {cols[col]}: one-hot label columns hold 0 or 1, "
                                f"found {frame.iat[row, col]}")
        return Task("multilabel", tuple(cols), metric, threshold)
    values = frame.iloc[:, 0]
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if not kind:  # numbers written as floats (6.0) are values to regress on, however few distinct ones there are
        fractional = numeric and (pd.api.types.is_float_dtype(values) or not np.allclose(values, np.round(values))
                                  or sample_is_continuous(sample, cols[0]))
        kind = ("regression" if numeric and (fractional or values.nunique() > 30) else
                "multilabel" if not numeric and _label_sets(values) else "multiclass")
    if kind == "regression":
        if not numeric:
            _numeric_values(values, where)
        return Task("regression", (cols[0],), metric, threshold)
    classes = tuple(_tokens(values)) if kind == "multilabel" else class_names(values)
    if len(classes) < 2:
        noun = ("label" if kind == "multilabel" else "class") + ("" if len(classes) == 1 else
                                                                "s" if kind == "multilabel" else "es")
        raise PipelineError(f"{where}: column {cols[0]} holds {len(classes)} {noun} ({', '.join(map(str, classes))}); "
                            f"a {kind or 'multiclass'} task needs at least 2 (or name the task with --task regression)")
    return Task(kind or "multiclass", classes, metric, threshold)


def sample_is_continuous(sample: pd.DataFrame | None, column: str) -> bool:
    """The sample submission's `column` holds a number that is neither an integer nor a probability (4.5, -0.3):
    the submission wants values, so the target is regressed on even if train.csv has few distinct integers.

    >>> sample_is_continuous(pd.DataFrame({"value": [4.5, 4.5]}), "value"), sample_is_continuous(
    ...     pd.DataFrame({"value": [0.5]}), "value"), sample_is_continuous(pd.DataFrame({"value": [3]}), "value")
    (True, False, False)
    """
    if sample is None or column not in sample.columns:
        return False
    values = pd.to_numeric(sample[column], errors="coerce").to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    return bool(((values != np.round(values)) & ((values < 0) | (values > 1))).any())


def label_text(values: pd.Series) -> pd.Series:
    """Labels as the names written back: integral numbers without a fraction (2.0 -> '2'), the rest as text."""
    if pd.api.types.is_numeric_dtype(values) and np.allclose(values, np.round(values)):
        return values.round().astype(np.int64).astype(str)
    return values.astype(str)


def class_names(values: pd.Series) -> tuple[str, ...]:
    """Class names in output order: numeric labels in numeric order (0, 1, 2, ..., 10), names sorted.

    >>> class_names(pd.Series([2, 0, 2, 1])), class_names(pd.Series([2, 1])), class_names(pd.Series(["rust", "healthy"]))
    (('0', '1', '2'), ('1', '2'), ('healthy', 'rust'))
    """
    names = label_text(values).unique()
    if pd.api.types.is_numeric_dtype(values) and np.allclose(values, np.round(values)):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def encode(frame: pd.DataFrame, task: Task, where: str) -> np.ndarray:
    """Targets as the task trains on them: class indices (N,), 0/1 (N, C) float32, or values (N,) float32."""
    _no_missing(frame, where)
    if task.kind == "regression":
        if len(frame.columns) != task.num_outputs:
            raise PipelineError(f"{where}: {len(frame.columns)} target column(s) for a regression on "
                                f"{task.num_outputs} ({', '.join(task.classes[:5])})")
        values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            row, col = np.argwhere(~np.isfinite(values))[0]
            raise PipelineError(f"{where}: row {row + 1}, column {frame.columns[col]}: target must be a finite number, "
                                f"found {frame.iat[row, col]!r}")
        return values[:, 0].astype(np.float32) if task.num_outputs == 1 else values.astype(np.float32)
    if task.kind == "multilabel" and len(frame.columns) > 1:
        return frame[list(task.classes)].to_numpy(dtype=np.float32)
    names = label_text(frame.iloc[:, 0]).to_numpy()
    if task.kind == "multilabel":
        index = {c: i for i, c in enumerate(task.classes)}
        out = np.zeros((len(names), len(task.classes)), dtype=np.float32)
        for row, text in enumerate(names):
            for token in text.split():
                if token not in index:
                    raise PipelineError(f"{where}: row {row + 1}: label {token!r} is not one of the task's classes")
                out[row, index[token]] = 1
        return out
    index = {c: i for i, c in enumerate(task.classes)}
    codes = np.array([index.get(n, -1) for n in names], dtype=np.int64)
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise PipelineError(f"{where}: row {row + 1}, column {frame.columns[0]}: label {names[row]!r} is not one of "
                            f"the {len(task.classes)} classes ({', '.join(task.classes[:5])}, ...)")
    return codes


def _numeric_values(values: pd.Series, where: str) -> None:
    """Refuse a regression target holding text, naming the first such value."""
    bad = values[pd.to_numeric(values, errors="coerce").isna()]
    if len(bad):
        raise PipelineError(f"{where}: column {values.name}: a regression target must be numeric, found {bad.iloc[0]!r}")


def _label_sets(values: pd.Series) -> bool:
    """Space-separated label sets ('scab', 'scab rust') rather than class names with spaces ('big cat'): some
    name stands alone in one row and with others in another."""
    rows = [v.split() for v in values.astype(str).unique()]
    alone = {r[0] for r in rows if len(r) == 1}
    return any(len(r) > 1 and alone & set(r) for r in rows)


def _tokens(values: pd.Series) -> np.ndarray:
    return np.array(sorted({t for v in values.astype(str) for t in v.split()}))


def _no_missing(frame: pd.DataFrame, where: str) -> None:
    missing = frame.isna().to_numpy()
    if missing.any():
        row, col = np.argwhere(missing)[0]
        raise PipelineError(f"{where}: row {row + 1}, column {frame.columns[col]}: missing target value")
