"""Every experiment in weights/, one table per competition and metric, sorted by local CV; a paired test between two
(McNemar on rows classified right; for regression, Wilcoxon on each row's error).

    python -m pipeline.runs
    python -m pipeline.runs --compare digit_cnn r18
    python -m pipeline.runs --lb --competition digit-recognizer   # CV beside the leaderboard (pipeline.leaderboard)
"""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest, wilcoxon

from pipeline import data
from pipeline.config import Config, ExperimentConfig, parse_config
from pipeline.errors import PipelineError, main_guard
from pipeline.inputs.spec import DataSpec
from pipeline.experiment import CVSummary, experiment_dir
from pipeline.folds import folds_groups
from pipeline.intervals import paired_difference
from pipeline.leaderboard import LOG, scores
from pipeline.learners import learner_for
from pipeline.predict import experiment_config, read_oofs

UNREADABLE = "unreadable experiments"

FLAGS = ["weights_dir", "compare", "folds_path", "lb", "competition"]
NUMBERS = ["cv", "ci_low", "ci_high", "fold_std", "cv_tta", "loss", "train_s"]


def collect(weights_dir: Path, folds_path: str | None = None) -> pd.DataFrame:
    """One row per experiment, with its group (competition and metric); one whose files are damaged is listed as
    such, never stopping the table. Rows are sorted best first within each group."""
    rows = []
    for config_path in sorted(weights_dir.glob("*/config.json")):
        try:
            rows.append(summarise(config_path.parent))
        except PipelineError as e:
            print(f"warning: {e}", file=sys.stderr)
            rows.append({"exp": config_path.parent.name, "model": "(unreadable)", "higher": True, "group": UNREADABLE}
                        | dict.fromkeys(NUMBERS, np.nan))
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    rank = table["cv"].where(table["higher"].fillna(True).astype(bool), -table["cv"])  # best first, whatever the direction
    order = [g for g in dict.fromkeys(table["group"]) if g != UNREADABLE] + [UNREADABLE]
    position = table["group"].map({g: i for i, g in enumerate(order)})
    table = (table.assign(rank=rank, position=position).sort_values(["position", "rank"], ascending=[True, False],
                                                                    na_position="last")
             .drop(columns=["rank", "position"]).reset_index(drop=True))
    table["vs_best"] = ""
    for group in dict.fromkeys(table["group"]):
        if group != UNREADABLE:
            rows = table.index[table["group"] == group]
            table.loc[rows, "vs_best"] = against_best(weights_dir, table.loc[rows], folds_path)
    return table.drop(columns="higher")


def against_best(weights_dir: Path, rows: pd.DataFrame, folds_path: str | None) -> list[str]:
    """Each experiment against the group's best (the first row): the difference with its paired bootstrap interval
    (the same resampled rows, or groups, for both), 'within noise' when that interval holds 0. Experiments of other
    folds, or unfinished ones, are judged by whether their intervals overlap the best's score."""
    scored = rows[rows["cv"].notna()]
    if len(scored) < 2:
        return ["best" if c == c else "" for c in rows["cv"]]
    complete = scored[[str(f).split("/")[0] == str(f).split("/")[-1] for f in scored["folds"]]]
    best = (complete if len(complete) else scored)["exp"].iloc[0]  # an unfinished experiment is never the yardstick
    near = _overlap(rows, best, bool(scored["higher"].iloc[0]))
    out = []
    for (_, row), close in zip(rows.iterrows(), near):
        if row["exp"] == best:
            out.append("best")
        elif row["cv"] != row["cv"]:
            out.append("")
        else:
            out.append(_paired(weights_dir, best, row["exp"], folds_path)
                       or ("within noise (intervals overlap)" if close else "behind (intervals apart)"))
    return out


def _overlap(rows: pd.DataFrame, best: str, higher: bool) -> np.ndarray:
    """Whether each experiment's interval reaches the given best's score, or the best's interval reaches its."""
    b = rows[rows["exp"] == best].iloc[0]
    reach = (rows["ci_high"] >= b["cv"]) if higher else (rows["ci_low"] <= b["cv"])
    back = (b["ci_low"] <= rows["cv"]) if higher else (b["ci_high"] >= rows["cv"])
    return (rows["cv"].notna() & (reach | back)).to_numpy()


def _paired(weights_dir: Path, best: str, other: str, folds_path: str | None) -> str:
    """'-0.00210 [-0.00500, +0.00080] within noise', or '' when the two have no common OOF rows and folds."""
    try:
        preds, targets, _, task = read_oofs(weights_dir, (best, other))
    except PipelineError:
        return ""
    config = experiment_config(experiment_dir(weights_dir, best))
    groups = folds_groups(str(config.setting("folds_path") or folds_path), config.folds_hash, len(targets))
    d = paired_difference(preds[0], preds[1], targets, task, groups)
    verdict = "within noise" if d["low"] <= 0 <= d["high"] else ("ahead" if (d["difference"] > 0) == task.higher_is_better
                                                                   else "behind")
    return f"{d['difference']:+.5f} [{d['low']:+.5f}, {d['high']:+.5f}] {verdict}"


def group_of(config: ExperimentConfig, where: str) -> str:
    """What makes two experiments' CVs comparable: the same train data (its hash) judged by the same metric."""
    spec = DataSpec.from_config(config, where)
    what = (data.Description.from_dict(config.data, where).summary() if config.data is not None
            else spec.task.describe())
    direction = "higher" if spec.task.higher_is_better else "lower"
    return f"{what}; train hash {config.train_hash or '?'} ({direction} is better)"


def summarise(exp_dir: Path) -> dict:
    """One row of the table; a hand-edited file of the wrong shape makes the row unreadable, not the table."""
    try:
        return _summary(exp_dir)
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        raise PipelineError(f"{exp_dir}: damaged config.json or cv.json ({type(e).__name__}: {str(e)[:60]})") from None


def _summary(exp_dir: Path) -> dict:
    config = experiment_config(exp_dir)
    cv_path = exp_dir / "cv.json"
    cv = CVSummary.read(cv_path) if cv_path.exists() else None  # None: no fold finished yet
    return {
        "group": group_of(config, str(exp_dir / "config.json")),
        "exp": exp_dir.name, "model": config.model,
        **learner_for(config.model).runs_columns(config),
        "folds": f"{len(cv.folds_present) if cv else 0}/{config.n_splits}",
        "metric": cv.metric if cv else "-", "cv": _number(cv.score if cv else None),
        "fold_std": _number(cv.fold_std if cv else None),
        "ci_low": _number((cv.interval or {}).get("low") if cv else None),
        "ci_high": _number((cv.interval or {}).get("high") if cv else None),
        "cv_tta": _number((cv.oof_tta or {}).get(cv.metric) if cv else None),
        "loss": _number(cv.oof.get("loss") if cv else None),
        "higher": cv.higher_is_better if cv else True,
        "train_s": _number(cv.train_seconds if cv else None),
        "date": dt.datetime.fromtimestamp((cv_path if cv_path.is_file() else exp_dir / "config.json").stat().st_mtime)
                  .strftime("%Y-%m-%d %H:%M"),
    }


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else np.nan


def format_groups(table: pd.DataFrame) -> str:
    """One table per competition and metric (a header line above each when there are several): an accuracy and an
    RMSE, or two competitions' accuracies, are never ranked against each other."""
    groups = list(dict.fromkeys(table["group"]))
    if len(groups) == 1 or (len(groups) == 2 and UNREADABLE in groups):
        return format_table(table.drop(columns="group"))
    return "\n\n".join(f"== {g}\n{format_table(table[table['group'] == g].drop(columns='group'))}" for g in groups)


def format_table(table: pd.DataFrame) -> str:
    shown = table.assign(
        cv=[f"{c:.5f}" if c == c else "-" for c in table["cv"]],
        ci95=[f"[{lo:.5f}, {hi:.5f}]" if lo == lo else "-" for lo, hi in zip(table["ci_low"], table["ci_high"])],
        fold_sd=[f"{s:.5f}" if s == s else "-" for s in table["fold_std"]],
        cv_tta=[f"{v:.5f}" if v == v else "-" for v in table["cv_tta"]],
        loss=[f"{v:.4f}" if v == v else "-" for v in table["loss"]],
        train_s=[f"{v:.0f}" if v == v else "-" for v in table["train_s"]],
    ).drop(columns=["fold_std", "ci_low", "ci_high"])
    rest = [c for c in shown.columns if c not in ("ci95", "fold_sd", "vs_best")]
    order = rest[:rest.index("cv") + 1] + ["ci95", "fold_sd"] + rest[rest.index("cv") + 1:] + ["vs_best"]
    return shown[order].to_string(index=False)


def paired_test(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's exact test on per-row correctness of two models over the same rows (pure).

    Only rows where exactly one model is right carry evidence; under 'no difference' each such
    row favours A or B with probability 1/2.
    """
    a_only, b_only = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
    p = binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"a_only": a_only, "b_only": b_only, "p_value": float(p)}


def paired_errors(errors_a: np.ndarray, errors_b: np.ndarray) -> dict:
    """Wilcoxon's signed-rank test on per-row errors of two regressors over the same rows (pure): under 'no
    difference' the row-wise differences are symmetric around 0."""
    diff = errors_b - errors_a
    b_better, a_better = int((diff < 0).sum()), int((diff > 0).sum())
    p = float(wilcoxon(errors_a, errors_b).pvalue) if (diff != 0).any() else 1.0
    return {"a_only": a_better, "b_only": b_better, "p_value": p}


def check_comparable(weights_dir: Path, a: str, b: str) -> None:
    """The paired test needs both experiments' OOF predictions of the same rows, split the same way, judged alike;
    refuse with whichever of those fails first."""
    configs = {e: experiment_config(experiment_dir(weights_dir, e)) for e in (a, b)}
    specs = {e: DataSpec.from_config(c, str(weights_dir / e / "config.json")) for e, c in configs.items()}
    if configs[a].train_hash != configs[b].train_hash:
        raise PipelineError(f"--compare: {a} and {b} were trained on different data (train hash "
                            f"{configs[a].train_hash!r} vs {configs[b].train_hash!r}); the paired test "
                            "compares two experiments' predictions of the same rows: compare within one competition")
    if specs[a].task != specs[b].task:
        raise PipelineError(f"--compare: {a} is {specs[a].task.describe()}, {b} is {specs[b].task.describe()}; the "
                            "paired test compares experiments of one task judged by one metric")
    if configs[a].folds_hash != configs[b].folds_hash:
        raise PipelineError(f"--compare: {a} and {b} were trained on different folds files (hash "
                            f"{configs[a].folds_hash!r} vs {configs[b].folds_hash!r}); the per-fold "
                            "differences need the same folds: retrain one on the other's folds file")


def compare(weights_dir: Path, a: str, b: str) -> dict:
    check_comparable(weights_dir, a, b)
    probs, labels, folds, task = read_oofs(weights_dir, (a, b))
    if not task.outputs_probabilities:
        return compare_errors(a, b, probs, labels.reshape(len(labels), -1), folds, task)
    if not task.has_classes:
        raise PipelineError(f"--compare: the paired test compares rows each model gets right; {a} and {b} are "
                            f"{task.kind}: compare their CV with python -m pipeline.runs")
    correct = probs.argmax(2) == labels  # (2, N)
    test = paired_test(correct[0], correct[1])
    per_fold = np.array([correct[1][folds == k].mean() - correct[0][folds == k].mean() for k in np.unique(folds)])
    diff = correct[1].mean() - correct[0].mean()
    verdict = ("larger than the noise" if test["p_value"] < 0.05 else "within the noise")
    print(f"{b} - {a}: OOF accuracy {diff:+.5f} over {len(labels):,} rows; per fold {per_fold.mean():+.5f} "
          f"+- {per_fold.std():.5f} ({', '.join(f'{d:+.4f}' for d in per_fold)})")
    print(f"rows only {a} gets right: {test['a_only']}, only {b}: {test['b_only']}; McNemar exact p = "
          f"{test['p_value']:.4f} -> the difference is {verdict} (threshold p < 0.05)")
    return test | {"difference": float(diff)}


def compare_errors(a: str, b: str, preds: np.ndarray, targets: np.ndarray, folds: np.ndarray, task) -> dict:
    """Regression: the metric's difference overall and per fold, and Wilcoxon's test on each row's error (absolute
    for mae, squared otherwise; several targets: the mean over them). preds (2, N, T), targets (N, T)."""
    power = 1 if task.metric == "mae" else 2
    errors = (np.abs(preds - targets) ** power).mean(2)  # (2, N)
    test = paired_errors(errors[0], errors[1])
    m = task.metric
    score = lambda p, rows: task.scores(p[rows], targets[rows])[m]  # noqa: E731
    every = np.ones(len(targets), dtype=bool)
    diff = score(preds[1], every) - score(preds[0], every)
    per_fold = np.array([score(preds[1], folds == k) - score(preds[0], folds == k) for k in np.unique(folds)])
    verdict = "larger than the noise" if test["p_value"] < 0.05 else "within the noise"
    print(f"{b} - {a}: OOF {m} {diff:+.5f} over {len(targets):,} rows ({'higher' if task.higher_is_better else 'lower'}"
          f" is better); per fold {per_fold.mean():+.5f} +- {per_fold.std():.5f} "
          f"({', '.join(f'{d:+.4f}' for d in per_fold)})")
    print(f"rows {a} predicts closer: {test['a_only']}, {b}: {test['b_only']}; Wilcoxon signed-rank p = "
          f"{test['p_value']:.4f} on the rows' {'absolute' if power == 1 else 'squared'} errors -> the difference is "
          f"{verdict} (threshold p < 0.05)")
    return test | {"difference": float(diff)}


def run(cfg: Config):
    weights_dir = Path(cfg.weights_dir)
    if cfg.compare:
        return compare(weights_dir, *cfg.compare)
    if cfg.lb:
        return scores(cfg.competition, LOG)
    table = collect(weights_dir, cfg.folds_path)
    if table.empty:
        raise PipelineError(f"{weights_dir}/: no experiments yet; train one with: python -m pipeline.train --fold all")
    print(format_groups(table))
    return table


def main(argv=None) -> int:
    return main_guard(lambda a: run(parse_config(a, "runs", FLAGS, __doc__)), argv)


if __name__ == "__main__":
    sys.exit(main())
