"""Check a submission against sample_submission.csv, then send it with the kaggle client.

    python -m pipeline.submit submissions/digit_cnn.csv -m "digit_cnn 5 folds + tta" --dry-run
    python -m pipeline.submit submissions/digit_cnn.csv -m "digit_cnn 5 folds + tta"
    python -m pipeline.submit --kernel alice/cassava-inference --version 3 --competition cassava-leaf-disease-classification -m "5 folds"

Credentials: ~/.kaggle/kaggle.json, or KAGGLE_USERNAME and KAGGLE_KEY (kaggle.com -> Settings -> API).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import data
from pipeline.config import Config, parse_config
from pipeline.errors import PipelineError, main_guard
from pipeline.folds import description_path, make_folds_command, read_description, read_folds
from pipeline.kaggle_client import authenticated, call
from pipeline.leaderboard import COLUMNS, LOG, check_log, scores
from pipeline.tasks import Task

FLAGS = ["submission", "message", "competition", "data", "dry_run", "exp", "weights_dir", "folds_path", "kernel",
         "version", "scores"]
LOG_COLUMNS = COLUMNS


def validate_submission(sub: pd.DataFrame, sample: pd.DataFrame, task: Task, where: str) -> None:
    """Same header, ids (in order) and row count as the sample; values of the kind its columns ask for."""
    if list(sub.columns) != list(sample.columns):
        raise PipelineError(f"{where}: header must be {','.join(map(str, sample.columns))}, "
                            f"found {','.join(map(str, sub.columns))}")
    if len(sub) != len(sample):
        raise PipelineError(f"{where}: expected {len(sample):,} rows (as sample_submission.csv), found {len(sub):,}")
    id_col = sample.columns[0]
    ids, want = sub[id_col].astype(str).to_numpy(), sample[id_col].astype(str).to_numpy()
    twice = pd.Series(ids).duplicated()
    if twice.any():
        dup = ids[int(np.flatnonzero(twice)[0])]
        raise PipelineError(f"{where}: id {dup!r} appears {int((ids == dup).sum())} times; Kaggle scores one row per "
                            "id (a test list naming one item twice?)")
    if not np.array_equal(ids, want):
        row = int(np.flatnonzero(ids != want)[0])
        # quoted: an id differing by a space or a leading zero ('00042' vs '42') must show the difference
        raise PipelineError(f"{where}: row {row + 1}: {id_col} should be {str(want[row])!r}, found {str(ids[row])!r}")
    mode, columns = task.submission_mode(sample)
    for col in columns:
        bad, rule = task.bad_cells(sub[col], mode)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise PipelineError(f"{where}: row {row + 1}: {col} must be {rule}, found {_show(sub[col].iloc[row])}")


def _recorded_experiments(submission: Path) -> tuple[list[str], str]:
    """The experiments infer recorded beside a submission (X.csv.json) and the weights folder they were in
    (([], '') when there is no readable record)."""
    try:
        record = json.loads(submission.with_name(submission.name + ".json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return [], ""
    if not isinstance(record, dict) or record.get("written_by") != "pipeline.infer":
        return [], ""
    exps, where = record.get("exp"), record.get("weights_dir")
    return [e for e in exps if isinstance(e, str) and e] if isinstance(exps, list) else [], \
        where if isinstance(where, str) else ""


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def experiment_task(submission: Path, cfg: Config) -> tuple[Task, data.Description | None]:
    """The task a submission answers: --exp's, or its experiment's (submissions/<exp>.csv), else the folds'."""
    from pipeline.predict import experiment_data

    guess = experiment_guess(submission)
    recorded, recorded_dir = _recorded_experiments(submission)  # what infer wrote beside it: a --out of any name
    weights_dir = Path(recorded_dir) if recorded_dir and not cfg.exp and cfg.weights_dir == Config().weights_dir \
        and Path(recorded_dir).is_dir() else Path(cfg.weights_dir)  # --weights-dir, else where infer found them
    for name in cfg.exp[:1] or recorded[:1] or (guess,):
        exp_dir = weights_dir / name
        if (exp_dir / "config.json").is_file():
            desc, spec = experiment_data(exp_dir)
            return spec.task, desc
    info = read_description(cfg.folds_path, cfg.data).get("data")
    if info is not None:
        desc = data.Description.from_dict(info, str(description_path(cfg.folds_path)),
                                          f"remake it with: {make_folds_command(cfg.data, cfg.folds_path)}")
        # no experiment named the task: the folds' description does, if it was made from this --data
        train = data.read_train_as(data.resolve(cfg.data), desc, cfg.data, str(description_path(cfg.folds_path)),
                                   new_folds=False)
        read_folds(cfg.folds_path, train.train_hash, len(train.targets), cfg.data)
        return desc.task, desc
    return Task("multiclass", tuple(str(i) for i in range(10))), None  # Digit Recognizer


def run(cfg: Config):
    if cfg.scores:
        return scores(cfg.competition, LOG)
    if cfg.kernel:  # a code competition: Kaggle runs the pushed notebook; there is no file here to check
        if cfg.submission:
            raise PipelineError("--kernel: submits a pushed notebook, not a file; give one or the other")
        if cfg.dry_run:
            print(f"dry run: would submit notebook {cfg.kernel} to {cfg.competition}; nothing sent")
            return
        if not cfg.message:
            raise PipelineError("-m/--message: a submission description is required (or use --dry-run)")
        check_log(LOG)
        print(send_kernel(cfg.kernel, cfg.version, cfg.message, cfg.competition))
        record(LOG, cfg, None, [], "")
        return
    path = Path(cfg.submission)
    if not cfg.submission or not path.is_file():
        raise PipelineError(f"submission file {cfg.submission!r} not found (write one with: python -m pipeline.infer)")
    sub = data.parse_csv(path.read_bytes(), str(path), text_first=True)  # ids as written: '00042' is not 42
    task, desc = experiment_task(path, cfg)
    sample = data.submission_sample(data.resolve(cfg.data), desc)
    validate_submission(sub, sample, task, str(path))
    print(f"{path}: valid ({len(sub):,} rows, header {','.join(map(str, sub.columns))}, {task.describe()})")
    if cfg.dry_run:
        print("dry run: nothing sent")
        return
    if not cfg.message:
        raise PipelineError("-m/--message: a submission description is required (or use --dry-run)")
    check_log(LOG)
    print(send(path, cfg.message, cfg.competition))
    exps, weights_dir = _recorded_experiments(path)
    record(LOG, cfg, path, list(cfg.exp) or exps or [experiment_guess(path)], weights_dir or cfg.weights_dir)


def experiment_guess(path: Path) -> str:
    """submissions/<exp>[_<method>].csv -> <exp> (a blend's first experiment)."""
    return re.sub(r"_(mean|learned|greedy|rank|stack)$", "", path.stem).split("+")[0]


def record(log: Path, cfg: Config, path: Path | None, exps: list[str], weights_dir: str) -> None:
    """One row appended to the submissions table: the file's hash, its experiments and, for one experiment, its CV
    with its interval (a blend's experiments are listed; its CV is theirs to compare)."""
    import datetime as dt
    import hashlib

    from pipeline.experiment import CVSummary

    cv = None
    if len(exps) == 1 and weights_dir and (Path(weights_dir) / exps[0] / "cv.json").is_file():
        try:
            cv = CVSummary.read(Path(weights_dir) / exps[0] / "cv.json")
        except PipelineError:
            cv = None
    interval = (cv.interval or {}) if cv else {}
    row = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "competition": cfg.competition,
           "file": path.name if path else "", "sha256": hashlib.sha256(path.read_bytes()).hexdigest() if path else "",
           "message": cfg.message, "exp": "+".join(exps), "metric": cv.metric if cv else "",
           "cv": cv.score if cv else "", "ci_low": interval.get("low", ""), "ci_high": interval.get("high", ""),
           "kernel": cfg.kernel}
    log.parent.mkdir(parents=True, exist_ok=True)
    new = not log.is_file()
    with log.open("a", encoding="utf-8", newline="") as f:  # appended: a row per submission, never rewritten
        pd.DataFrame([row], columns=LOG_COLUMNS).to_csv(f, header=new, index=False)
    print(f"recorded in {log} (python -m pipeline.submit --scores: CV beside the leaderboard)")


def send(path: Path, message: str, competition: str) -> str:
    """Submit a file through the kaggle client."""
    api = authenticated()
    response = call("submission", competition, api.competition_submit, str(path), message, competition, quiet=True)
    text = getattr(response, "message", "") or "submitted"
    if text == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        raise PipelineError(f"kaggle: upload of {path} failed; try again")
    return f"kaggle: {text}"


def send_kernel(kernel: str, version: int, message: str, competition: str) -> str:
    """A code competition's submission: a pushed notebook's version, run by Kaggle on the hidden test set."""
    if kernel.count("/") != 1:
        raise PipelineError(f"--kernel: must be USER/SLUG (the notebook export pushed), got {kernel!r}")
    api = authenticated()
    response = call("code submission", competition, api.competition_submit_code, "submission.csv", message,
                    competition, kernel, version or None, quiet=True)
    text = getattr(response, "message", "") or "submitted"
    return f"kaggle: {text} ({kernel}{' version ' + str(version) if version else ', latest version'})"


def main(argv=None) -> int:
    return main_guard(lambda a: run(parse_config(a, "submit", FLAGS, __doc__, positional=("submission",),
                                                 short={"message": "-m"})), argv)


if __name__ == "__main__":
    sys.exit(main())
