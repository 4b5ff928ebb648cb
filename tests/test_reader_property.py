"""Random malformed CSVs: the reader gives a clean PipelineError or valid data, never another exception."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import data
from pipeline.errors import PipelineError

HEADER = ["label"] + data.PIXELS
cells = st.one_of(st.integers(-300, 300).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                  st.text(max_size=6), st.sampled_from(["", "nan", "1e400", "0x10", '"', "1,2", "\n", "255.0"]))
edits = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 784), cells), max_size=6)


def to_csv(rows: list[list[str]]) -> str:
    return "\n".join(",".join(r) for r in rows) + "\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=edits, drop=st.sets(st.integers(0, 784), max_size=2), truncate=st.one_of(st.none(), st.integers(0, 5000)),
       n_rows=st.integers(0, 3), extra=st.booleans())
def test_reader_never_crashes(edits, drop, truncate, n_rows, extra):
    rows = [HEADER] + [[str(r % 10)] + ["0"] * 784 for r in range(n_rows)]
    for r, c, value in edits:  # row 0 is the header
        if r < len(rows):
            rows[r][c] = value
    rows = [[v for i, v in enumerate(row) if i not in drop] for row in rows]
    if extra:
        rows = [row + ["x" if i == 0 else "1"] for i, row in enumerate(rows)]
    text = to_csv(rows)
    if truncate is not None:
        text = text[:truncate]
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "train.csv").write_text(text)
        try:
            train = data.read_train(data.Source(Path(tmp)))
        except PipelineError as e:
            assert "\n" not in str(e).strip() and "train.csv" in str(e)
            return
    assert train.rows.dtype == np.uint8 and train.rows.shape[1:] == (1, 28, 28)
    assert len(train.labels) == len(train.rows) > 0
    assert ((train.labels >= 0) & (train.labels < 10)).all()


def test_carriage_return_in_the_header_is_one_line(tmp_path):
    """A bare CR inside the header (hypothesis found it) is a one-line error, not csv's traceback."""
    header = ["\r", "\r"] + data.PIXELS[1:]
    tmp_path.joinpath("train.csv").write_text(",".join(header) + "\r\n" + ",".join(["1"] + ["0"] * 784) + "\n")
    try:
        data.read_train(data.Source(tmp_path))
    except PipelineError as e:
        assert "\n" not in str(e).strip() and "train.csv" in str(e)
