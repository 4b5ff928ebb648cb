"""Check a submission against sample_submission.csv, then send it with the kaggle client.

    python -m pipeline.submit submissions/digit_cnn.csv -m "digit_cnn 5 folds + tta" --dry-run
    python -m pipeline.submit submissions/digit_cnn.csv -m "digit_cnn 5 folds + tta"

Credentials: ~/.kaggle/kaggle.json, or KAGGLE_USERNAME and KAGGLE_KEY (kaggle.com -> Settings -> API).
"""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import data
from pipeline.config import Config, parse_config
from pipeline.errors import PipelineError, main_guard

FLAGS = ["submission", "message", "competition", "data", "dry_run"]
NO_CREDENTIALS = ("kaggle: no credentials; put kaggle.json (kaggle.com -> Settings -> API -> Create New Token) in "
                  "~/.kaggle/ with chmod 600, or set KAGGLE_USERNAME and KAGGLE_KEY")


def validate_submission(sub: pd.DataFrame, sample: pd.DataFrame, num_classes: int, where: str) -> None:
    """Same header, ids (in order) and row count as the sample; labels are integers 0..num_classes-1."""
    if list(sub.columns) != list(sample.columns):
        raise PipelineError(f"{where}: header must be {','.join(sample.columns)}, found {','.join(map(str, sub.columns))}")
    if len(sub) != len(sample):
        raise PipelineError(f"{where}: expected {len(sample):,} rows (as sample_submission.csv), found {len(sub):,}")
    id_col, label_col = sample.columns
    ids = sub[id_col].to_numpy()
    if not np.array_equal(ids.astype(str), sample[id_col].to_numpy().astype(str)):
        row = int(np.flatnonzero(ids.astype(str) != sample[id_col].to_numpy().astype(str))[0])
        raise PipelineError(f"{where}: row {row + 1}: {id_col} should be {sample[id_col].iloc[row]}, found {ids[row]}")
    labels = pd.to_numeric(sub[label_col], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(labels) | (labels != np.round(labels)) | (labels < 0) | (labels >= num_classes)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise PipelineError(f"{where}: row {row + 1}: {label_col} must be an integer 0..{num_classes - 1}, "
                            f"found {sub[label_col].iloc[row]}")


def run(cfg: Config) -> None:
    path = Path(cfg.submission)
    if not cfg.submission or not path.is_file():
        raise PipelineError(f"submission file {cfg.submission!r} not found (write one with: python -m pipeline.infer)")
    try:
        sub = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: not a readable CSV ({str(e).strip().splitlines()[0][:100]})") from None
    sample = data.read_sample_submission(data.resolve(cfg.data))
    validate_submission(sub, sample, data.NUM_CLASSES, str(path))
    print(f"{path}: valid ({len(sub):,} rows, header {','.join(sub.columns)}, labels "
          f"{int(sub[sample.columns[1]].min())}..{int(sub[sample.columns[1]].max())})")
    if cfg.dry_run:
        print("dry run: nothing sent")
        return
    if not cfg.message:
        raise PipelineError("-m/--message: a submission description is required (or use --dry-run)")
    print(send(path, cfg.message, cfg.competition))


def send(path: Path, message: str, competition: str) -> str:
    """Submit through the kaggle client (imported here only: it authenticates at import)."""
    import requests

    with contextlib.redirect_stdout(io.StringIO()):  # its import prints a page of auth help on failure
        from kaggle.api.kaggle_api_extended import KaggleApi
        api = KaggleApi()
        try:
            api.authenticate()
        except SystemExit:
            raise PipelineError(NO_CREDENTIALS) from None
    try:
        response = api.competition_submit(str(path), message, competition, quiet=True)
    except requests.exceptions.HTTPError as e:
        status = e.response.status_code if e.response is not None else None
        raise PipelineError(_explain(status, competition, str(e))) from None
    except requests.exceptions.ConnectionError as e:
        raise PipelineError("kaggle: cannot reach the Kaggle API (no network?); the file is valid, submit it later") from None
    text = getattr(response, "message", "") or "submitted"
    if text == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        raise PipelineError(f"kaggle: upload of {path} failed; try again")
    return f"kaggle: {text}"


def _explain(status: int | None, competition: str, detail: str) -> str:
    rules = f"https://www.kaggle.com/competitions/{competition}/rules"
    return {
        401: "kaggle: credentials refused (401); create a new token at kaggle.com -> Settings -> API",
        403: f"kaggle: submission refused (403): accept the competition rules first at {rules}",
        404: f"kaggle: competition {competition!r} not found (404); check --competition",
        429: "kaggle: daily submission limit reached (429); try again tomorrow",
    }.get(status, f"kaggle: submission failed ({status}: {detail.splitlines()[0][:120] if detail else 'no detail'})")


def main(argv=None) -> int:
    return main_guard(lambda a: run(parse_config(a, "submit", FLAGS, __doc__, positional=("submission",),
                                                 short={"message": "-m"})), argv)


if __name__ == "__main__":
    sys.exit(main())
