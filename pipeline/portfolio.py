"""A portfolio of table learners on one competition, each its own experiment, then their blends and a stack, a
leaderboard, and the best submission: what a competitor on a tabular Kaggle competition runs first.

    python -m pipeline.make_folds --data sample-table
    python -m pipeline.portfolio --data sample-table --time-limit 300          # weights/portfolio_<learner>/ ...
    python -m pipeline.portfolio --learners linear lightgbm catboost --seeds 5 --exp pf

Each learner trains as `train --fold all --model <learner> --exp <prefix>_<learner>` would (so it can be inspected,
reported, resumed and retrained alone); a finished one is kept (--overwrite retrains). With --time-limit, each
learner gets an even share of the time left, each fold an even share of its learner's (one that overruns stops at
its best iteration or epoch so far), and a learner whose share is too short to train is skipped with a notice. Then
the mean, greedy and stack blends are scored honestly on the OOF rows (fitted on the other folds), and the best of
every experiment and blend writes the submission (submissions/<prefix>.csv) with infer.
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import data, infer, train, trainer
from pipeline.config import Config, parse_stage
from pipeline.ensemble import honest_predictions, honest_stack
from pipeline.errors import PipelineError, main_guard
from pipeline.experiment import experiment_dir, read_table
from pipeline.folds import read_description
from pipeline.inputs import input_kind
from pipeline.io import write_csv
from pipeline.learners import TABLE_LIBRARIES, learner_for
from pipeline.predict import read_oofs

FLAGS = ["data", "folds_path", "learners", "exp", "weights_dir", "device", "seed", "seeds", "time_limit", "overwrite",
         "cache_dir", "out", "stacker"]
LEARNERS = ("linear", "lightgbm", "xgboost", "catboost", "mlp")  # fast first: a tight budget is spent on them first
SEEDS = 3  # --seeds unless given: each table learner bagged over 3 seeds
MIN_FOLD_SECONDS = 1.0  # a learner whose share leaves less than this per fold is skipped
BLENDS = ("mean", "greedy", "stack")


def run(cfg: Config) -> pd.DataFrame:
    started = time.monotonic()
    deadline = started + cfg.time_limit if cfg.time_limit else None
    prefix = cfg.exp[0] if cfg.exp else "portfolio"
    if len(cfg.exp) > 1:
        raise PipelineError(f"--exp: the portfolio's one name prefix (experiments <prefix>_<learner>), got "
                            f"{len(cfg.exp)}: {' '.join(cfg.exp)}")
    desc = trainer.data_description(cfg, data.resolve(cfg.data))
    kind = input_kind(desc.kind)
    if "gbm" not in kind.forms:
        raise PipelineError(f"portfolio: runs the table learners; {cfg.data} is {desc.kind} data: train its models "
                            "with python -m pipeline.train --model ...")
    learners = cfg.learners or LEARNERS
    unknown = [n for n in learners if n not in TABLE_LIBRARIES and n != "mlp"]
    if unknown:
        raise PipelineError(f"--learners: {unknown[0]!r} is not a table learner; choose among {', '.join(LEARNERS)}")
    if len(set(learners)) < len(learners):
        raise PipelineError(f"--learners: {' '.join(learners)} names a learner twice; each is one experiment")
    if cfg.stacker == "lightgbm" and (desc.task.kind == "multilabel" or desc.task.several_targets):
        raise PipelineError("--stacker lightgbm: fits one target or one class column; this task has several labels or "
                            "targets: use --stacker linear")
    n_splits = int(read_description(cfg.folds_path, cfg.data).get("n_splits") or cfg.n_splits)
    reserve = 0.0 if deadline is None else min(30.0, 0.05 * cfg.time_limit)  # blends and the submission
    board, done = [], []
    for i, name in enumerate(learners):
        exp = f"{prefix}_{name}"
        share = None
        if deadline is not None:  # an even share of what is left; what a fast learner leaves goes to the next ones
            left = deadline - reserve - time.monotonic()
            share = left / (len(learners) - i)
            if left < MIN_FOLD_SECONDS * n_splits:
                print(f"notice: portfolio: {name} skipped: {max(left, 0):.1f}s of --time-limit {cfg.time_limit:g}s "
                      f"left, under {MIN_FOLD_SECONDS:g}s for each of its {n_splits} folds")
                continue
        problem = missing_library(name)
        if problem:
            print(f"notice: portfolio: {name} skipped: {problem}")
            continue
        print(f"== portfolio {i + 1}/{len(learners)}: {name} -> {Path(cfg.weights_dir) / exp}/"
              + (f" ({share:.0f}s of --time-limit)" if share is not None else ""), flush=True)
        seeded = name in TABLE_LIBRARIES and learner_for(name).library.SEEDED  # the linear model: one fit is all
        one = replace(cfg, model=name, exp=(exp,), fold="all", resume=not cfg.overwrite,
                      seeds=cfg.seeds if seeded else 1)
        fit_started = time.perf_counter()
        # a refusal (another recipe already in its folder, say) stops the portfolio: a submission made without that
        # learner could replace a better one
        cv = train.run(one, deadline=None if share is None else time.monotonic() + share)
        board.append({"experiment": exp, "learner": name, "cv": cv.score, "fold_std": cv.fold_std,
                      "fit_seconds": round(fit_seconds(experiment_dir(cfg.weights_dir, exp),
                                                       time.perf_counter() - fit_started), 1)})
        done.append(exp)
    if not done:
        raise PipelineError("portfolio: no learner was trained (see the notices above)")
    task = trainer.data_description(cfg, data.resolve(cfg.data)).task
    candidates = [((row["experiment"],), "mean", row["cv"]) for row in board]  # (experiments, blend, OOF score)
    if len(done) > 1:
        for method, (score, std) in blend_scores(Path(cfg.weights_dir), tuple(done), cfg.stacker).items():
            board.append({"experiment": f"{method} of {len(done)}", "learner": "blend" if method != "stack" else
                          f"stack ({cfg.stacker})", "cv": score, "fold_std": std, "fit_seconds": float("nan")})
            candidates.append((tuple(done), method, score))
    exps, method, score = candidates[0]
    for candidate in candidates[1:]:
        if better(task, candidate[2], score):
            exps, method, score = candidate
    out = cfg.out or f"submissions/{prefix}.csv"
    print(f"== portfolio: best {', '.join(exps)}{f' ({method})' if len(exps) > 1 else ''}: {task.metric} "
          f"{score:.5f}; writing {out}", flush=True)
    infer.run(replace(cfg, exp=exps, ensemble=method, out=out))
    table = pd.DataFrame(board).sort_values("cv", ascending=not task.higher_is_better, kind="stable")
    write_csv(table, Path(cfg.weights_dir) / f"{prefix}_leaderboard.csv")
    print(leaderboard(table, task.metric))
    print(f"wrote {Path(cfg.weights_dir) / f'{prefix}_leaderboard.csv'}; {time.monotonic() - started:.0f}s in all"
          + (f" of --time-limit {cfg.time_limit:g}s" if deadline else ""))
    return table


def missing_library(name: str) -> str:
    """Why a learner cannot run here (its package not installed), or ''."""
    if name not in TABLE_LIBRARIES:
        return ""
    try:
        learner_for(name).library
    except PipelineError as e:
        return str(e)
    return ""


def fit_seconds(exp_dir: Path, wall: float) -> float:
    """The experiment's fitting time: its folds' seconds in metrics.csv (as first trained, when kept), else `wall`."""
    metrics = read_table(exp_dir / "metrics.csv")
    if metrics is None or "seconds" not in metrics:
        return wall
    return float(np.nansum(metrics["seconds"].to_numpy(dtype=float)))


def better(task, new: float, old: float) -> bool:
    return new > old if task.higher_is_better else new < old


def blend_scores(weights_dir: Path, exps: tuple[str, ...], stacker: str) -> dict[str, tuple[float, float]]:
    """Each blend's honest OOF score in the competition metric (fitted on the other folds, scored on the held-out)
    and the standard deviation of its folds' scores."""
    probs, targets, folds, task = read_oofs(weights_dir, exps)
    scores = {}
    for method in BLENDS:
        preds = honest_stack(probs, targets, folds, task, stacker) if method == "stack" else \
            honest_predictions(probs, targets, folds, task, method)
        per_fold = [task.scores(preds[folds == k], targets[folds == k])[task.metric] for k in np.unique(folds)]
        scores[method] = task.scores(preds, targets)[task.metric], float(np.std(per_fold))
    return scores


def leaderboard(table: pd.DataFrame, metric: str) -> str:
    lines = [f"{'experiment':<28} {'learner':<16} {metric:>12} {'fold std':>10} {'fit s':>8}"]
    for row in table.itertuples(index=False):
        std = "" if np.isnan(row.fold_std) else f"{row.fold_std:.5f}"
        secs = "" if np.isnan(row.fit_seconds) else f"{row.fit_seconds:.1f}"
        lines.append(f"{row.experiment:<28} {row.learner:<16} {row.cv:>12.5f} {std:>10} {secs:>8}")
    return "\n".join(lines)


def main(argv=None) -> int:
    return main_guard(lambda a: run(parse_stage(a, "portfolio", FLAGS, __doc__, {"seeds": SEEDS})[0]), argv)


if __name__ == "__main__":
    sys.exit(main())
