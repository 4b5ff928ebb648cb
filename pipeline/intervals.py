"""How far a local CV may be from the truth (pure): a bootstrap interval over the OOF rows (whole groups when the folds
were grouped: a speaker's or an utterance's rows move together), and the spread a test of the competition's size would
show (what one leaderboard's noise looks like). The standard deviation over folds is not an interval (the folds share
their training rows): it is kept, and labelled as what it is.

Metrics that are a function of a mean over rows (accuracy, log loss, rmse, mse, mae, mcrmse) are resampled from
per-row terms, vectorised; the others (AUC, F1, QWK) are recomputed on each resample, with fewer resamples.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
from pipeline import metrics

LEVEL = 0.95
RESAMPLES = 1000
BCA_UNITS = 5000  # BCa's jackknife costs units^2: above this many units the percentile interval is used
FEW = 20  # units below which the interval is printed as unreliable
GENERIC_SECONDS = 5.0  # a metric recomputed per resample: about this long in all, 100..RESAMPLES resamples


def row_terms(name: str, preds: np.ndarray, targets: np.ndarray, kind: str, threshold: float = 0.5):
    """(terms (N, d), finish): the metric is finish(mean of the terms over rows), finish vectorised over leading
    axes; None for a metric that is not a function of a mean over rows."""
    first = lambda s: s[..., 0]  # noqa: E731
    if name == "accuracy" and kind == "multiclass":
        return (preds.argmax(1) == targets).astype(np.float64)[:, None], first
    if name == "accuracy" and kind == "multilabel":
        return ((preds >= threshold) == targets.astype(bool)).all(1).astype(np.float64)[:, None], first
    if name == "log_loss" and kind == "multiclass":
        picked = preds[np.arange(len(targets)), targets]
        return -np.log(np.clip(picked.astype(np.float64), metrics.EPS, 1.0))[:, None], first
    if name == "log_loss":
        p = np.clip(preds.astype(np.float64), metrics.EPS, 1 - metrics.EPS)
        return -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean(1)[:, None], first
    if kind != "regression" or name not in ("rmse", "mse", "mae", "mcrmse"):
        return None
    diff = preds.reshape(len(preds), -1).astype(np.float64) - targets.reshape(len(preds), -1)
    if name == "mae":
        return np.abs(diff).mean(1)[:, None], first
    if name == "mcrmse":
        return diff ** 2, lambda s: np.sqrt(s).mean(-1)
    return (diff ** 2).mean(1)[:, None], (lambda s: np.sqrt(s[..., 0])) if name == "rmse" else first


def cv_interval(preds: np.ndarray, targets: np.ndarray, task, groups: np.ndarray | None = None,
                test_rows: int | None = None, seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """{'low', 'high', 'level', 'method', 'resamples', 'unit' (rows | groups), 'units'} and, with test_rows, 'test':
    {'rows', 'low', 'high'}: the metric's 2.5-97.5% range over test-sized draws of OOF rows."""
    n = len(targets)
    codes = np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    units = int(codes.max()) + 1 if n else 0
    out = {"level": LEVEL, "unit": "rows" if groups is None else "groups", "units": units}
    if units < 2:
        return out | {"low": float("nan"), "high": float("nan"), "method": "none", "resamples": 0}
    from scipy.stats import bootstrap  # scipy.stats takes a second to import: only when a CV is written

    rng = np.random.default_rng(seed)
    terms = row_terms(task.metric, preds, targets, task.kind, task.threshold)
    if terms is not None:
        statistic, count = _mean_statistic(*terms, codes, units), resamples
    else:
        statistic, count = _recomputed_statistic(task, preds, targets, codes, units)
    method = "BCa" if units <= BCA_UNITS and terms is not None else "percentile"
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a degenerate BCa (every row right) falls back to percentiles below
        res = bootstrap((np.arange(units),), statistic, n_resamples=count, confidence_level=LEVEL, method=method,
                        vectorized=True, batch=max(1, min(count, 2_000_000 // units)), rng=rng)
    low, high = (float(v) for v in (res.confidence_interval.low, res.confidence_interval.high))
    if not (np.isfinite(low) and np.isfinite(high)) and method == "BCa":  # degenerate (every row right): percentiles
        method = "percentile"
        low, high = (float(v) for v in np.percentile(res.bootstrap_distribution, [2.5, 97.5]))
    out |= {"low": low, "high": high, "method": method, "resamples": count}
    if test_rows:
        out["test"] = sized_spread(task, preds, targets, int(test_rows), terms, rng, min(count, RESAMPLES))
    return out


def _mean_statistic(terms: np.ndarray, finish, codes: np.ndarray, units: int):
    """The metric of a resample of units (..., G) from each unit's sum of terms and its row count."""
    sums = np.stack([np.bincount(codes, weights=terms[:, j], minlength=units) for j in range(terms.shape[1])], 1)
    sizes = np.bincount(codes, minlength=units).astype(np.float64)

    def statistic(idx, axis=-1):
        idx = np.asarray(idx, dtype=np.int64)
        return finish(sums[idx].sum(-2) / sizes[idx].sum(-1)[..., None])
    return statistic


def _recomputed_statistic(task, preds, targets, codes, units):
    """(statistic, resamples) for a metric recomputed on each resample's rows: about GENERIC_SECONDS in all."""
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=units)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])

    def one(idx):
        lens = sizes[idx]
        rows = order[np.repeat(starts[idx] - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(lens.sum())]
        return metrics.compute(task.metric, preds[rows], targets[rows], task.kind, task.threshold)

    def statistic(idx, axis=-1):
        idx = np.asarray(idx, dtype=np.int64)
        return np.array([one(i) for i in idx.reshape(-1, idx.shape[-1])]).reshape(idx.shape[:-1])
    started = time.perf_counter()
    one(np.arange(units))
    took = max(time.perf_counter() - started, 1e-6)
    return statistic, int(np.clip(GENERIC_SECONDS / took, 100, RESAMPLES))


def sized_spread(task, preds, targets, m: int, terms, rng, count: int) -> dict:
    """The metric over `count` draws of m OOF rows with replacement: its 2.5-97.5% range (a test of m rows)."""
    values = []
    for start in range(0, count, max(1, 2_000_000 // m)):
        idx = rng.integers(0, len(targets), size=(min(count - start, max(1, 2_000_000 // m)), m))
        if terms is not None:
            values.append(terms[1](terms[0][idx].mean(1)))
        else:
            values.append([metrics.compute(task.metric, preds[i], targets[i], task.kind, task.threshold) for i in idx])
    low, high = np.nanpercentile(np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in values]),
                                 [2.5, 97.5])
    return {"rows": m, "low": float(low), "high": float(high)}


def describe(interval: dict | None, digits: int = 5) -> str:
    """'95% CI [0.97210, 0.98110] (bootstrap over 1,437 rows, BCa)', or '' without one."""
    if not interval or interval.get("method", "none") == "none":
        return ""
    f = f"{{:.{digits}f}}"
    over = f"{interval['units']:,} {'groups' if interval['unit'] == 'groups' else 'rows'}"
    if interval["units"] < FEW:
        over += f": too few for a reliable interval"
    return (f"{interval['level']:.0%} CI [{f.format(interval['low'])}, {f.format(interval['high'])}] "
            f"(bootstrap over {over}, {interval['method']})")


def describe_test(interval: dict | None, digits: int = 5) -> str:
    test = (interval or {}).get("test")
    if not test:
        return ""
    f = f"{{:.{digits}f}}"
    return (f"a test of {test['rows']:,} rows would score in [{f.format(test['low'])}, {f.format(test['high'])}] "
            f"({interval['level']:.0%}; a public leaderboard on part of it: wider)")


def overlaps_best(scores: np.ndarray, lows: np.ndarray, highs: np.ndarray, higher: bool) -> np.ndarray:
    """Which experiments are within noise of the best: their interval reaches the best's score (or the best's
    interval reaches theirs). NaN scores are never within noise."""
    scores, lows, highs = (np.asarray(a, dtype=np.float64) for a in (scores, lows, highs))
    if not np.isfinite(scores).any():
        return np.zeros(len(scores), dtype=bool)
    best = int(np.nanargmax(scores) if higher else np.nanargmin(scores))
    reach = (highs >= scores[best]) if higher else (lows <= scores[best])
    back = (lows[best] <= scores) if higher else (highs[best] >= scores)
    return np.isfinite(scores) & (reach | back)


def paired_difference(preds_a: np.ndarray, preds_b: np.ndarray, targets: np.ndarray, task,
                      groups: np.ndarray | None = None, seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """The bootstrap interval of metric(b) - metric(a) over the same resampled rows (or groups): {'difference', 'low',
    'high', 'level', 'resamples'}; the difference is within noise when the interval holds 0."""
    n = len(targets)
    codes = np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    units = int(codes.max()) + 1
    both = [row_terms(task.metric, p, targets, task.kind, task.threshold) for p in (preds_a, preds_b)]
    if both[0] is not None:
        stats = [_mean_statistic(*t, codes, units) for t in both]
        count = resamples
    else:
        stats = [_recomputed_statistic(task, p, targets, codes, units) for p in (preds_a, preds_b)]
        count, stats = min(s[1] for s in stats), [s[0] for s in stats]
    rng = np.random.default_rng(seed)
    values, batch = [], max(1, min(count, 2_000_000 // units))
    for start in range(0, count, batch):
        idx = rng.integers(0, units, size=(min(batch, count - start), units))
        values.append(stats[1](idx) - stats[0](idx))
    every = np.arange(units)[None]
    low, high = np.nanpercentile(np.concatenate(values), [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return {"difference": float((stats[1](every) - stats[0](every))[0]), "low": float(low), "high": float(high),
            "level": LEVEL, "resamples": count}
