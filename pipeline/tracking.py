"""Experiment tracking in MLflow (`train --track mlflow`): one parent run per experiment (the resolved config as
params, the CV with its interval, the report's figures as artifacts) and one child run per fold (every epoch's
metrics and lr as the fold's metrics.csv has them).

The experiment's files stay the truth; MLflow mirrors them. weights/<exp>/tracking.json names the store and the runs,
so a resumed run, a fold trained in another process (--gpus) or on another rank-0 (torchrun) logs into the same parent
and child runs; what a child already holds (its last logged epoch, asked of MLflow) is never logged twice.

    python -m pipeline.train --fold all --track mlflow                       # sqlite:///mlflow.db in this folder
    mlflow ui --backend-store-uri sqlite:///mlflow.db                         # then browse http://127.0.0.1:5000
    python -m pipeline.train --fold all --track mlflow --track-uri http://mlflow.example:5000
"""
from __future__ import annotations

import logging
import os
import math
import sys
import time
from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.io import read_json, write_json

STATE = "tracking.json"
DEFAULT_URI = "sqlite:///mlflow.db"
PARAM_CHARS = 6000  # MLflow's limit on a parameter's value


def check(backend: str) -> None:
    """--track: the backend's package is installed (one line when not), before any training."""
    if backend != "mlflow":
        return
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise PipelineError("--track mlflow: MLflow is not installed; pip install 'pipeline[track]' (or pip install "
                            "mlflow), or train without --track") from None


def _client(uri: str):
    check("mlflow")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a server that refuses: said at once, not in 4 min
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    for name in ("alembic", "mlflow", "sqlalchemy"):  # the store's migrations log a page on first use
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def start(exp_dir: Path, backend: str, uri: str, name: str, group: str, params: dict) -> None:
    """The experiment's parent run: continued when tracking.json names one in the same store, else created (its
    config as params). `group`: the MLflow experiment holding it (the competition's data)."""
    if not backend:
        return
    uri = uri or DEFAULT_URI
    state = _state(exp_dir)
    client = _client(uri)
    try:
        if state and state.get("uri") == uri and _exists(client, state.get("parent", "")):
            client.update_run(state["parent"], status="RUNNING")
            return
        found = client.get_experiment_by_name(group)
        experiment = found.experiment_id if found else client.create_experiment(group)
        run = client.create_run(experiment, run_name=name, tags={"pipeline.exp_dir": str(exp_dir.resolve())})
        _log_params(client, run.info.run_id, params)
    except Exception as e:  # noqa: BLE001 - any store failure: one line, the training not started
        raise PipelineError(f"--track mlflow: cannot use the store {uri} ({type(e).__name__}: {_short(e)})") from None
    write_json({"backend": backend, "uri": uri, "experiment": experiment, "parent": run.info.run_id, "folds": {}},
               exp_dir / STATE)


def _short(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return text if len(text) <= 160 else text[:157] + "..."


def _mirrored(step):
    """sync and finish never stop a training: a store gone or a damaged record is a warning, the files stay whole."""
    def guarded(exp_dir: Path, *args):
        try:
            return step(exp_dir, *args)
        except Exception as e:  # noqa: BLE001 - the mirror, not the training, fails
            print(f"warning: --track mlflow: {exp_dir / STATE}: {type(e).__name__}: {_short(e)}; the run goes on "
                  "untracked (its files are complete; delete tracking.json to start new MLflow runs)", file=sys.stderr)
    guarded.__doc__, guarded.__name__ = step.__doc__, step.__name__
    return guarded


def _exists(client, run_id: str) -> bool:
    try:
        return bool(run_id) and client.get_run(run_id).info.lifecycle_stage == "active"
    except Exception:  # noqa: BLE001 - deleted, or another store's id
        return False


def _log_params(client, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    flat = {k: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in params.items()
            if not isinstance(v, dict)}
    items = [Param(str(k)[:250], str(v)[:PARAM_CHARS]) for k, v in sorted(flat.items())]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
        client.log_batch(run_id, params=items[i:i + 100])


def _state(exp_dir: Path) -> dict | None:
    path = exp_dir / STATE
    if not path.is_file():
        return None
    state = read_json(path, "tracking record")
    if not isinstance(state, dict) or not isinstance(state.get("folds", {}), dict) or \
            not all(isinstance(state.get(k), str) and state[k] for k in ("uri", "experiment", "parent")):
        raise PipelineError(f"{path}: damaged tracking record; delete it (a new MLflow run is then started)")
    return state


@_mirrored
def sync(exp_dir: Path) -> None:
    """Log every metrics.csv row the fold's child run lacks (call holding the experiment's tables lock); nothing
    without tracking.json."""
    state = _state(exp_dir)
    if not state or not (exp_dir / "metrics.csv").is_file():
        return
    from mlflow.entities import Metric

    client = _client(state["uri"])
    table = pd.read_csv(exp_dir / "metrics.csv")
    changed = False
    for fold, rows in table.groupby("fold"):
        run_id = state["folds"].get(str(int(fold)))
        if not run_id or not _exists(client, run_id):
            run_id = client.create_run(state["experiment"], run_name=f"fold {int(fold)}",
                                       tags={"mlflow.parentRunId": state["parent"], "pipeline.fold": str(int(fold))}
                                       ).info.run_id
            state["folds"][str(int(fold))] = run_id
            changed = True
        logged = client.get_metric_history(run_id, "epoch")
        last = max((int(m.step) for m in logged), default=0)
        now = int(time.time() * 1000)
        metrics = [Metric(str(key), float(value), now, int(row["epoch"]))
                   for _, row in rows[rows["epoch"] > last].iterrows()
                   for key, value in row.items() if key != "fold" and _finite(value)]
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
    if changed:
        write_json(state, exp_dir / STATE)


@_mirrored
def forget_fold(exp_dir: Path, k: int) -> None:
    """Fold k is trained again (--overwrite --fold k): its next epochs go to a new child run, the old one is left as
    it is in the store."""
    state = _state(exp_dir)
    if state and state["folds"].pop(str(k), None) is not None:
        write_json(state, exp_dir / STATE)


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


@_mirrored
def finish(exp_dir: Path, cv, complete_folds: list[int]) -> None:
    """The CV and its interval on the parent run, the report's figures and cv.json as its artifacts; the finished
    folds' child runs marked finished, the parent too when every fold is."""
    state = _state(exp_dir)
    if not state:
        return
    sync(exp_dir)
    from mlflow.entities import Metric

    client = _client(state["uri"])
    parent = state["parent"]
    interval = cv.interval or {}
    values = {"cv": cv.score, "fold_mean": cv.fold_mean, "fold_std": cv.fold_std, "ci_low": interval.get("low"),
              "ci_high": interval.get("high"), **{f"test_{k}": v for k, v in (interval.get("test") or {}).items()
                                                 if k in ("low", "high")},
              **{f"oof_{k}": v for k, v in cv.oof.items()}}
    now = int(time.time() * 1000)
    client.log_batch(parent, metrics=[Metric(k, float(v), now, 0) for k, v in values.items() if _finite(v)])
    client.set_tag(parent, "pipeline.metric", cv.metric)
    for name in ("cv.json", "config.json"):
        if (exp_dir / name).is_file():
            client.log_artifact(parent, str(exp_dir / name))
    for figure in sorted((exp_dir / "report").glob("*.png")) + sorted((exp_dir / "report").glob("*.md")):
        client.log_artifact(parent, str(figure), "report")
    for k in complete_folds:
        run_id = state["folds"].get(str(k))
        if run_id:
            client.set_terminated(run_id, "FINISHED")
    if cv.complete:
        client.set_terminated(parent, "FINISHED")
    print(f"tracked in MLflow: {state['uri']} (run {parent}); browse with: mlflow ui --backend-store-uri {state['uri']}")
