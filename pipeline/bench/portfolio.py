"""The portfolio against AutoGluon on one table competition, same train rows, same time limit, same test truth.

    python -m pipeline.bench --portfolio ../shared/data/tables/computers.zip --time-limit 90
    python -m pipeline.bench --portfolio DATA --time-limit 90 --presets medium_quality --autogluon-python ~/ag/bin/python

DATA: a table competition folder or zip whose solution.csv holds the test truth (as Kaggle would keep it). The
competition is copied without solution.csv into a temporary folder; then, each in its own process (its own wall
time and peak resident memory, children included):
1. pipeline: make_folds, then `python -m pipeline.portfolio --time-limit S` (its learners, blends and stack; the best
   by honest OOF score writes the submission);
2. AutoGluon: `TabularPredictor(label, eval_metric=the competition's).fit(train, presets=P, time_limit=S)` for each
   preset, on the same train file and feature columns (pipeline.bench.autogluon_side, run by --autogluon-python:
   AutoGluon is an optional benchmark dependency, not the pipeline's: without it this says how to install it and
   runs the pipeline's side alone).
Both sides' test predictions are scored by the pipeline's own metric against solution.csv. Figures are printed,
never asserted.
"""
from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError

AG_METRICS = {"rmse": "root_mean_squared_error", "mse": "mean_squared_error", "mae": "mean_absolute_error",
              "accuracy": "accuracy", "roc_auc": "roc_auc", "log_loss": "log_loss", "macro_f1": "f1_macro",
              "qwk": "quadratic_kappa"}
INSTALL = "pip install 'autogluon.tabular[lightgbm,catboost,xgboost]' (in this environment, or in another one given as " \
          "--autogluon-python PATH)"


def run(cfg, source: str, presets: list[str], ag_python: str) -> dict:
    if not cfg.time_limit:
        raise PipelineError("bench --portfolio: give --time-limit SECONDS, the budget both sides get")
    with tempfile.TemporaryDirectory(prefix="bench-portfolio-") as tmp:
        work = Path(tmp)
        comp, solution = competition_copy(Path(source), work / "comp")
        print(f"bench --portfolio: {Path(source).name}, --time-limit {cfg.time_limit:g}s a side, {_cpus()} CPUs")
        settings = {"data": str(comp), "folds_path": str(work / "folds.csv"), "weights_dir": str(work / "weights"),
                    "time_limit": cfg.time_limit, "seed": cfg.seed, "seeds": cfg.seeds, "device": "cpu",
                    "cache_dir": str(work / "cache"), "out": str(work / "pipeline.csv"), "learners": list(cfg.learners)}
        ours = run_side([sys.executable, "-m", "pipeline.bench.portfolio", "side", json.dumps(settings)], "pipeline")
        task, desc = _task(work / "folds.csv", str(comp))
        truth = targets_of(task, solution, desc)
        rows = [{"side": "pipeline portfolio", "test": score(task, work / "pipeline.csv", truth, desc)} | ours]
        try:
            ready = subprocess.run([ag_python, "-c", "import autogluon.tabular"], capture_output=True).returncode == 0
        except OSError:  # no such Python
            ready = False
        if not ready:
            print(f"AutoGluon is not installed for {ag_python}: {INSTALL}; the pipeline's side alone follows")
        for preset in presets if ready else []:
            args = {"train": str(comp / desc["train_file"]), "test": str(comp / desc["table"]["test_file"]),
                    "label": desc["target_cols"][0], "id": desc["table"]["id_col"],
                    "features": desc["table"]["numeric"] + desc["table"]["categorical"],
                    "problem_type": "regression" if task.kind == "regression" else
                    "binary" if task.num_outputs == 2 else "multiclass",
                    "eval_metric": AG_METRICS[task.metric], "time_limit": cfg.time_limit, "presets": preset,
                    "out": str(work / f"ag_{preset}.csv"), "path": str(work / f"ag_{preset}")}
            side = run_side([ag_python, str(Path(__file__).with_name("autogluon_side.py")), json.dumps(args)],
                            f"AutoGluon {preset}")
            rows.append({"side": f"AutoGluon {preset}", "test": score(task, work / f"ag_{preset}.csv", truth, desc)}
                        | side)
    print(table(rows, task.metric))
    return {"rows": rows, "metric": task.metric}


def competition_copy(source: Path, dest: Path) -> tuple[Path, pd.DataFrame]:
    """The competition without its solution.csv in `dest`, and the solution."""
    dest.mkdir(parents=True)
    if source.suffix == ".zip":
        with zipfile.ZipFile(source) as z:
            z.extractall(dest)
    elif source.is_dir():
        for path in source.iterdir():
            if path.is_file():
                shutil.copy2(path, dest / path.name)
    else:
        raise PipelineError(f"bench --portfolio: {source}: not a competition folder or zip")
    found = sorted(dest.rglob("solution.csv"))
    if not found:
        raise PipelineError(f"bench --portfolio: {source} has no solution.csv (the test truth) to score both sides on")
    solution = pd.read_csv(found[0])
    found[0].unlink()
    inner = [p for p in dest.iterdir() if not p.name.startswith(".")]
    return (inner[0] if len(inner) == 1 and inner[0].is_dir() else dest), solution


def side(settings: dict) -> dict:
    """The pipeline's side in this process: make_folds, then the portfolio; its CV, fold std, wall and peak memory."""
    from pipeline import make_folds, portfolio
    from pipeline.config import Config

    settings["learners"] = tuple(settings["learners"])
    started = time.perf_counter()
    make_folds.main(["--data", settings["data"], "--folds-path", settings["folds_path"], "--seed",
                     str(settings["seed"])])
    board = portfolio.run(Config(**settings))
    best = board.iloc[0]
    return {"wall_seconds": time.perf_counter() - started, "cv": float(best["cv"]), "fold_std": float(best["fold_std"]),
            "best_model": str(best["experiment"]), "models": int((board["learner"] != "blend").sum()),
            "peak_rss_mb": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024}


def run_side(command: list[str], name: str) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"bench --portfolio: the {name} side failed (exit {proc.returncode})")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.setdefault("wall_seconds", time.perf_counter() - started)
    return out


def _task(folds_path: Path, data: str):
    from pipeline.folds import read_description
    from pipeline.tasks import Task

    desc = read_description(str(folds_path), data)["data"]
    return Task.from_dict(desc["task"]), desc


def targets_of(task, solution: pd.DataFrame, desc: dict) -> pd.Series:
    """The truth by id: class indices, or values."""
    ids = solution[desc["table"]["id_col"]].astype(str)
    column = solution.columns[1] if len(solution.columns) == 2 else desc["table"]["submission_cols"][0]
    values = solution[column]
    if task.kind == "regression":
        return pd.Series(values.to_numpy(dtype=np.float64), index=ids)
    return pd.Series([task.classes.index(str(v)) for v in values], index=ids)


def score(task, path: Path, truth: pd.Series, desc: dict) -> float:
    """A side's test score: its predictions (a submission of labels, values or probabilities, or AutoGluon's
    probability columns named by class) against the truth, in the competition's metric."""
    frame = pd.read_csv(path)
    frame.index = frame.iloc[:, 0].astype(str)
    frame = frame.loc[truth.index]
    values = frame.iloc[:, 1:]
    if task.kind == "regression":
        preds = values.to_numpy(dtype=np.float64)[:, :1]
    elif len(values.columns) == 1 and not pd.api.types.is_numeric_dtype(values.iloc[:, 0]):  # labels
        preds = np.eye(task.num_outputs)[[task.classes.index(str(v)) for v in values.iloc[:, 0]]]
    elif len(values.columns) == 1:  # P(positive class)
        p = values.to_numpy(dtype=np.float64)[:, 0]
        preds = np.stack([1 - p, p], axis=1)
    else:
        preds = values[[str(c) for c in task.classes]].to_numpy(dtype=np.float64)
    return float(task.scores(preds, truth.to_numpy())[task.metric])


def table(rows: list[dict], metric: str) -> str:
    lines = [f"{'side':<28} {'test ' + metric:>14} {'local CV':>10} {'fold std':>9} {'wall s':>8} {'peak MB':>8}  best"]
    for r in rows:
        cv = f"{r['cv']:.5f}" if "cv" in r else ""
        std = f"{r['fold_std']:.5f}" if "fold_std" in r else ""
        lines.append(f"{r['side']:<28} {r['test']:>14.5f} {cv:>10} {std:>9} {r['wall_seconds']:>8.1f} "
                     f"{r['peak_rss_mb']:>8.0f}  {r.get('best_model', '')}")
    return "\n".join(lines)


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    if sys.argv[1] != "side":
        raise SystemExit("usage: python -m pipeline.bench.portfolio side SETTINGS_JSON")
    print(json.dumps(side(json.loads(sys.argv[2]))))
