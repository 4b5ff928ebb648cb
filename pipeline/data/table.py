"""The table layout: a train CSV and a test CSV of numeric and categorical columns (Titanic, the Playground Series,
house prices, the course's HW1 `covid_train.csv` / `covid_test.csv`).

    train: id?, features..., target(s)      test: id, features...      sample_submission.csv: id, target(s)

The target(s) are the train columns the test file lacks; the id is the sample's first column (or the test's `id`).
HW1 repeats its feature names once per day: pandas reads `tested_positive`, `tested_positive.1`,
`tested_positive.2`; the target is the last (absent from test), written back under the sample's header (or its
name without pandas' `.2` when no sample is shipped). Features become one float32 matrix: numbers as they are
(NaN = missing), categorical (string) columns as codes into the train file's sorted vocabulary (NaN = missing or
a value train never had). Empty, constant, nearly-all-distinct text and id-like columns are left out with a notice.
"""
from __future__ import annotations

import io
import re
import sys
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from pipeline.data.source import Source
from pipeline.errors import PipelineError, cut

ID_NAMES = ("id", "passengerid", "row_id")  # compared without regard to case or surrounding spaces
UNSEEN_NOTICE = 0.05  # a categorical test column with more than this share of values train never had is named
DISTINCT_TEXT = 0.5  # a text column with distinct values on more than half of its rows is a name, not a category
MANGLED = re.compile(r"^(.*)\.(\d+)$")  # pandas' name for a repeated header: wage, wage.1, wage.2


@dataclass(frozen=True)
class Columns:
    """What the table layout found; saved (as a dict) in the data description beside the folds."""
    test_file: str
    id_col: str  # in test and in the sample ('' = the test's row number)
    target_cols: tuple[str, ...]  # as pandas names them in the train file
    submission_cols: tuple[str, ...]  # as the submission writes them
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    categories: dict = field(default_factory=dict)  # categorical column -> its sorted train values
    dropped: dict = field(default_factory=dict)  # column -> why it was left out

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def spec_features(self) -> dict:
        """What the input kind needs: feature names, categorical indices and their cardinalities."""
        n = len(self.numeric)
        return {"names": self.features, "categorical": list(range(n, n + len(self.categorical))),
                "cardinalities": [len(self.categories[c]) for c in self.categorical]}

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> Columns:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def find_files(src: Source) -> tuple[str, str] | None:
    """(train CSV, test CSV): `train.csv`/`test.csv`, else the one `*train*.csv` / `*test*.csv` pair."""
    csvs = [f for f in src.files() if f.lower().endswith(".csv") and "sample" not in PurePosixPath(f).name.lower()]
    by_depth = sorted(csvs, key=lambda f: (f.count("/"), PurePosixPath(f).name.lower() not in ("train.csv", "test.csv"), f))
    train = [f for f in by_depth if "train" in PurePosixPath(f).name.lower()]
    test = [f for f in by_depth if "test" in PurePosixPath(f).name.lower()]
    return (train[0], test[0]) if train and test else None


def read_csv(src: Source, rel: str, text: tuple[str, ...] = ()) -> pd.DataFrame:
    """A table as pandas reads it (repeated headers renamed .1, .2), the columns named in `text` as the text written
    (ids keep their leading zeros, a category written 1 stays '1'); empty or header-only is one line."""
    where = src.label(rel)
    try:
        frame = pd.read_csv(io.BytesIO(src.read_file(rel)), low_memory=False,
                            dtype={c: str for c in text if c} or None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PipelineError(f"{where}: not a readable CSV ({cut(str(e).strip(), 100)})") from None
    if frame.empty:
        raise PipelineError(f"{where}: no rows (a header only); expected one row per {'test' if 'test' in rel else 'train'} item")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def detect(src: Source, files: tuple[str, str], frames: tuple, opts) -> Columns:
    """The id, target(s) and features of a table competition; each guess overridden by its flag.

    files: (train file, test file); frames: (train, test, sample or None) as read; opts: data.layout.Options."""
    (train_file, test_file), (train, test, sample) = files, frames
    id_col, target_cols, features = opts.id_col, opts.target_cols, opts.features
    drop_cols, group_col = opts.drop_cols, opts.group_col
    where, test_where = src.label(train_file), src.label(test_file)
    named = id_col
    id_col = _named_in(test, id_col) if id_col else _guess_id(test, sample)
    if named and not id_col:
        raise PipelineError(f"--id-col: {test_where} has no column {named!r} (found {cut(', '.join(test.columns[:6]))})")
    if not id_col and sample is not None:
        _check_row_numbers(sample, test, src.label(src.find("sample_submission.csv") or "sample_submission.csv"),
                           test_where)
    targets = list(target_cols) or [c for c in train.columns if c not in test.columns and c not in (group_col,)
                                    and not same_name(c, id_col)]
    if sample is not None and not target_cols and len(targets) > len(sample.columns) - 1:
        named = [t for t in targets if any(same_name(MANGLED.sub(r"\1", t), c) for c in sample.columns[1:])]
        sample_where = src.label(src.find("sample_submission.csv") or "sample_submission.csv")
        raise PipelineError(f"{where}: {len(targets)} columns that {test_where} lacks ({cut(', '.join(targets))}) but "
                            f"{sample_where} predicts {len(sample.columns) - 1} ({cut(', '.join(map(str, sample.columns[1:])))})"
                            f"; name the target{'s' if len(named) > 1 else ''} with --target-col "
                            f"{' '.join(named) if named else 'NAME'}")
    missing = [c for c in targets if c not in train.columns]
    if missing or not targets:
        raise PipelineError(f"--target-col: {where} has {'no column ' + repr(missing[0]) if missing else 'no column that ' + test_where + ' lacks'}"
                            f"; name the target with --target-col (columns: {cut(', '.join(train.columns[:8]))})")
    if train[targets].isna().any().any():
        col = next(c for c in targets if train[c].isna().any())
        raise PipelineError(f"{where}: row {int(np.flatnonzero(train[col].isna())[0]) + 1}, column {col}: missing "
                            "target value (drop such rows, or fill them)")
    names = _submission_names(targets, sample)
    chosen = list(features) or [c for c in train.columns if c not in (*targets, group_col, *drop_cols)
                                and not same_name(c, id_col)]
    numeric, categorical, categories, dropped = [], [], {}, {}
    for col in chosen:
        if col not in train.columns or col not in test.columns:
            if not features and col not in test.columns:  # --target-col named others: a column test lacks is no feature
                dropped[col] = f"not in {test_where}"
                continue
            raise PipelineError(f"--features: column {col!r} is not in both {where} and {test_where}")
        why = "" if col in features else _leave_out(train[col], col)  # a column named by --features is kept
        if why:
            dropped[col] = why
        elif _is_numeric(train[col]):
            check_test_type(test[col], col, test_where)
            numeric.append(col)
        else:
            categorical.append(col)
            categories[col] = sorted(train[col].dropna().astype(str).unique().tolist())
    if not numeric and not categorical:
        raise PipelineError(f"{where}: no usable feature column (left out: {cut(', '.join(dropped))}); name them with --features")
    _notice_dropped(dropped, where)
    return Columns(test_file, id_col, tuple(targets), names, tuple(numeric), tuple(categorical), categories, dropped)


def same_name(a, b) -> bool:
    """Do two column names name one column? Case and surrounding spaces aside (a sample's `key` is test's `Key `).

    >>> same_name(" Key", "key"), same_name("key", "keys"), same_name("", "")
    (True, False, False)
    """
    return bool(str(a).strip()) and str(a).strip().lower() == str(b).strip().lower()


def _named_in(frame: pd.DataFrame, name: str) -> str:
    """The frame's column `name` (exactly, else the one it names without regard to case), '' when none."""
    if name in frame.columns:
        return name
    return next((str(c) for c in frame.columns if same_name(c, name)), "")


def _notice_dropped(dropped: dict, where: str, each: int = 5) -> None:
    """One notice per left-out column, or for many (20,000 constant columns) one per reason with a count and the
    first few names."""
    by_reason: dict[str, list[str]] = {}
    for col, why in dropped.items():
        by_reason.setdefault(why, []).append(col)
    for why, cols in by_reason.items():
        hint = "" if why.startswith("not in") else f"; keep {'it' if len(cols) == 1 else 'them'} with --features"
        if len(cols) <= each:
            for col in cols:
                print(f"notice: {where}: column {cut(col)} left out ({why}){hint}", file=sys.stderr)
        else:
            print(f"notice: {where}: {len(cols):,} columns left out ({why}): {cut(', '.join(cols[:each]))}, ...{hint}",
                  file=sys.stderr)


def _guess_id(test: pd.DataFrame, sample: pd.DataFrame | None) -> str:
    """The test column the sample's first column names, else a usual id name, else '' (the test's row number)."""
    if sample is not None and (found := _named_in(test, str(sample.columns[0]))):
        return found
    return next((found for name in ID_NAMES if (found := _named_in(test, name))), "")


def _check_row_numbers(sample: pd.DataFrame, test: pd.DataFrame, sample_where: str, test_where: str) -> None:
    """With no id column in test, the sample's ids must be the test's row numbers (0.. or 1.., in order): any other
    ids paired with the rows by position would be a shuffled submission."""
    ids = sample.iloc[:, 0].astype(str).str.strip().to_numpy()
    if len(ids) == len(test) and any((ids == np.arange(s, s + len(ids)).astype(str)).all() for s in (0, 1)):
        return
    holder = next((str(c) for c in test.columns if test[c].astype(str).str.strip().isin(ids).sum() == len(ids)), "")
    hint = f"; column {holder!r} holds them: --id-col {holder}" if holder else "; name it with --id-col"
    raise PipelineError(f"{sample_where}: its id column {cut(str(sample.columns[0]))!r} names no column of {test_where} "
                        f"(found {cut(', '.join(test.columns[:6]))}) and its ids are not the test rows' numbers{hint}")


def _submission_names(targets: list[str], sample: pd.DataFrame | None) -> tuple[str, ...]:
    """The sample's target header; without a sample, the train name without pandas' .1/.2 for a repeated header."""
    if sample is not None and len(sample.columns) - 1 == len(targets):
        return tuple(str(c) for c in sample.columns[1:])
    return tuple(MANGLED.sub(r"\1", t) for t in targets)


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)


def _leave_out(values: pd.Series, col: str) -> str:
    """Why a column is no feature ('' = keep it)."""
    present = values.dropna()
    if present.empty:
        return "entirely empty"
    if present.nunique() == 1 and not values.isna().any():
        return "constant"
    if not _is_numeric(values) and present.nunique() > DISTINCT_TEXT * len(values) and present.nunique() > 20:
        return f"text with {present.nunique():,} distinct values in {len(values):,} rows: a name or a code, not a category"
    integral = _is_numeric(values) and np.allclose(present, np.round(present))
    if integral and col.lower().endswith("id") and present.is_unique and len(present) > 20:
        return "an id: every row has its own value"
    return ""


def check_test_type(values: pd.Series, col: str, where: str) -> None:
    """A numeric train column's test values are numbers (True/False among missing cells count: pandas reads such a
    column as objects)."""
    if not _is_numeric(values) and values.notna().any():
        bad = values[pd.to_numeric(values, errors="coerce").isna() & values.notna()]
        if bad.empty:
            return
        bad = bad.iloc[0]
        raise PipelineError(f"{where}: column {cut(col)} holds text ({cut(str(bad))!r}) where the train file has numbers")


def matrix(frame: pd.DataFrame, cols: Columns, where: str = "") -> np.ndarray:
    """(N, F) float32: numeric columns as they are, categorical as codes into the train vocabulary (NaN unseen).
    `where` (the test file): name each categorical column with more than UNSEEN_NOTICE of its values unseen."""
    out = np.empty((len(frame), len(cols.features)), dtype=np.float32)
    empty = [col for col in cols.features if where and len(frame) and frame[col].isna().all()]
    if empty:
        print(f"notice: {where}: {len(empty)} feature column(s) empty in every row ({cut(', '.join(empty))}): the "
              "models learned them from the train file and see them missing here", file=sys.stderr)
    for j, col in enumerate(cols.numeric):
        out[:, j] = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
    for j, col in enumerate(cols.categorical, start=len(cols.numeric)):
        out[:, j] = category_codes(frame[col], cols.categories[col])
        present = frame[col].notna().to_numpy()
        unseen = int((present & np.isnan(out[:, j])).sum())
        if where and unseen > UNSEEN_NOTICE * max(1, present.sum()):
            print(f"notice: {where}: column {cut(col)}: {unseen:,} of {int(present.sum()):,} values were never seen in "
                  "the train file (read as missing)", file=sys.stderr)
    return out


def category_codes(values: pd.Series, vocabulary: list[str]) -> np.ndarray:
    """(N,) float64 codes into the train vocabulary, NaN for missing and unseen values. Values are compared as the
    text written; a number the train file wrote otherwise (1.0 for a train '1') takes that entry.

    >>> category_codes(pd.Series([1.0, 2.5, None, "A"]), ["1", "2.50", "A", "B"]).tolist()
    [0.0, 1.0, nan, 2.0]
    """
    index = {v: i for i, v in enumerate(vocabulary)}
    text = values.map(lambda v: v if isinstance(v, str) else _number_text(v), na_action="ignore")
    codes = np.array(text.map(index).to_numpy(dtype=np.float64, na_value=np.nan))  # writable (pandas may share it)
    numeric = pd.to_numeric(pd.Series(vocabulary, dtype=object), errors="coerce").to_numpy(dtype=np.float64)
    by_value = {float(x): i for i, x in enumerate(numeric) if x == x}
    if by_value and np.isnan(codes).any():
        as_numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        fill = np.isnan(codes) & ~np.isnan(as_numbers)
        codes[fill] = [by_value.get(float(x), np.nan) for x in as_numbers[fill]]
    return codes


def _number_text(value) -> str:
    """A number pandas read from a cell, as the cell most likely wrote it: 1.0 -> '1'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def default_sample(test: pd.DataFrame, cols: Columns) -> pd.DataFrame:
    """Where a class competition ships no sample submission: the test ids and the target's name (HW1's
    `id,tested_positive`)."""
    ids = test[cols.id_col] if cols.id_col else pd.Series(np.arange(len(test)), name="id")
    return pd.DataFrame({ids.name: ids.to_numpy(), **{c: 0 for c in cols.submission_cols}})


def test_rows(test: pd.DataFrame, sample: pd.DataFrame, cols: Columns, where: str, test_where: str) -> np.ndarray:
    """The test row of every sample id, in the sample's order (`where`: the sample's file; `test_where`: test's).
    Read the test with its id column as text (read_csv's `text`): '00100' is not 100."""
    if not cols.id_col:
        if len(sample) != len(test):
            raise PipelineError(f"{where}: {len(sample):,} ids but {test_where} has {len(test):,} rows and no id column")
        _check_row_numbers(sample, test, where, test_where)
        return np.arange(len(test))
    if test[cols.id_col].duplicated().any():
        dup = test[cols.id_col][test[cols.id_col].duplicated()].iloc[0]
        raise PipelineError(f"{test_where}: id {cut(str(dup))!r} in column "
                            f"{cols.id_col} appears twice; one row per id")
    position = pd.Series(np.arange(len(test)), index=test[cols.id_col].astype(str).to_numpy())
    ids = sample.iloc[:, 0].astype(str)
    unknown = ~ids.isin(position.index)
    if unknown.any():
        raise PipelineError(f"{where}: id {cut(ids[unknown].iloc[0])!r} is not in the test file's {cols.id_col} column")
    return position.loc[ids.to_numpy()].to_numpy()
