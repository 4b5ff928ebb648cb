"""Leakage audit: duplicates within train (across folds: leaks) and between train and test, label conflicts, near
duplicates, overlapping windows of repeated-column tables, adversarial validation (can a model tell train rows from
test rows?), and what to do about it. Writes <audit-dir>/audit.md, audit.json, figures and groups.csv, which
`make_folds --group-dups` reads to keep duplicated rows in one fold.

    python -m pipeline.audit                                   # data/digit-recognizer and folds/folds.csv
    python -m pipeline.audit --data ../shared/data/tables/wages-panel.zip --folds-path folds/wages.csv
    python -m pipeline.audit --data data/food-11 --img-size 64 --hamming 6
    python -m pipeline.make_folds --group-dups --overwrite     # then: folds that keep each duplicate cluster together

Every input kind gives its own fingerprints (pipeline.inputs: tables by their rows as the reader normalised them,
images by their decoded cache, sequences by their arrays, frames by their utterances); nothing here branches on it.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import data
from pipeline import fingerprints as fp
from pipeline.config import Config, parse_config
from pipeline.errors import PipelineError, main_guard
from pipeline.folds import description_path, read_description, read_folds
from pipeline.inputs import input_kind
from pipeline.intervals import cv_interval, describe
from pipeline.io import write_csv, write_json
from pipeline.tasks import Task
from pipeline.trainer import data_description

FLAGS = ["data", "folds_path", "img_size", "cache_dir", "audit_dir", "hamming", "weights_dir", "exp", "seed"]
SHOWN_PAIRS = 8
ADVERSARIAL_ROWS = 100_000  # rows per side the adversarial model learns from (a random subset above it)


@dataclass
class Pairs:
    """Pairs of units (indices into train units then test units) found alike, with how."""
    a: np.ndarray
    b: np.ndarray
    how: np.ndarray  # 'exact' | 'near' | 'window'

    @classmethod
    def join(cls, found: list[tuple[np.ndarray, str]]) -> Pairs:
        a = np.concatenate([p[:, 0] for p, _ in found]) if found else np.zeros(0, np.int64)
        b = np.concatenate([p[:, 1] for p, _ in found]) if found else np.zeros(0, np.int64)
        how = np.concatenate([np.full(len(p), h) for p, h in found]) if found else np.zeros(0, dtype="<U6")
        keys = pd.DataFrame({"a": np.minimum(a, b), "b": np.maximum(a, b), "how": how})
        keys = keys[keys["a"] != keys["b"]].drop_duplicates(["a", "b"])  # exact first, then near, then window
        return cls(keys["a"].to_numpy(np.int64), keys["b"].to_numpy(np.int64), keys["how"].to_numpy())


def find_pairs(train: fp.Units, test: fp.Units, hamming: int) -> Pairs:
    """Every pair of alike units over train and test together (test units numbered after the train ones)."""
    exact = np.concatenate([train.exact, test.exact])
    found = [(fp.equal_pairs(exact), "exact")]
    near = np.concatenate([train.near, test.near])
    if train.hamming:  # one image of each exact group searched: a thousand blank images are one candidate, not 500,000
        first = np.unique(exact, return_index=True)[1]
        close = first[fp.hamming_pairs(near[first], hamming)]
        if len(close):
            close = close[fp.correlations(np.concatenate([train.thumbs, test.thumbs]), close) >= fp.CORRELATION]
        found.append((close, "near"))
    else:
        found.append((fp.equal_pairs(near), "near"))
    if train.windows is not None and test.windows is not None:
        keys = np.concatenate([train.windows, test.windows])
        w = keys.shape[1]
        flat = keys.reshape(-1)
        values, counts = np.unique(flat, return_counts=True)
        common = values[counts > w]  # a window pair recurs in at most w rows (its shifts): more is a coincidence
        pairs = fp.equal_pairs(flat)
        pairs = pairs[~np.isin(flat[pairs[:, 0]], common)]
        found.append((pairs // w, "window"))
    return Pairs.join(found)


def run(cfg: Config) -> dict:
    started = time.perf_counter()
    src = data.resolve(cfg.data)
    desc = data_description(cfg, src)
    train = data.read_train_as(src, desc, cfg.data, str(description_path(cfg.folds_path)))
    folds = _folds(cfg, train)
    print(f"{desc.summary()}\nauditing {len(train.targets):,} train rows"
          f"{f' in {folds.n_splits} folds ({cfg.folds_path})' if folds else ' (no folds file: leaks across folds not named)'}")
    kind = input_kind(desc.kind)
    train_rows = data.train_rows(src, desc, train, cfg.img_size, cfg.cache_dir)
    test_rows, _ = data.read_test(src, desc, cfg.img_size, cfg.cache_dir)
    tic = time.perf_counter()
    tr, te = kind.audit_units(train_rows, desc.spec_features), kind.audit_units(test_rows, desc.spec_features)
    hashed = time.perf_counter() - tic
    pairs = find_pairs(tr, te, cfg.hamming)
    found = time.perf_counter() - tic - hashed
    out = Path(cfg.audit_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("groups.csv", "audit.json", "audit.md", "pairs.csv", "pairs.png", "adversarial.png"):
        (out / stale).unlink(missing_ok=True)  # an interrupted audit leaves no mix of two runs
    n_train = len(tr.exact)
    unit_rows = _unit_rows(tr, len(train.targets))
    unit_fold = None if folds is None else np.array([folds.fold[r[0]] if len(r) else -1 for r in unit_rows])
    table = pair_table(pairs, n_train, unit_fold, _unit_targets(tr, train.targets, unit_rows))
    cluster = fp.clusters(n_train, np.stack([pairs.a, pairs.b], 1)[(pairs.b < n_train)])
    row_group = cluster if tr.of_row is None else cluster[tr.of_row]
    write_csv(table, out / "pairs.csv")
    adversarial = adversarial_validation(tr, te, cfg.seed)
    leaked_rows = _leaked_rows(table, unit_rows)
    effects = effect_on_cv(cfg, train, leaked_rows)
    figures = draw(out, tr, te, table, adversarial, cfg.hamming)
    result = summarise(table, tr, te, adversarial, effects, row_group, folds, cfg) | {
        "seconds": {"fingerprints": round(hashed, 2), "pairs": round(found, 2),
                    "total": round(time.perf_counter() - started, 2)},
        "figures": figures, "train_hash": train.train_hash}
    write_json(result, out / "audit.json")
    (out / "audit.md").write_text(markdown(result, desc.summary(), tr, cfg), encoding="utf-8")
    # last: make_folds --group-dups reads it, so it exists only when the whole audit did
    write_csv(pd.DataFrame({"id": train.ids, "group": row_group, "train_hash": train.train_hash}), out / "groups.csv")
    print(headline(result))
    print(f"wrote {out / 'audit.md'} (pairs in {out / 'pairs.csv'}, duplicate groups in {out / 'groups.csv'})")
    return result


def _folds(cfg: Config, train):
    if not Path(cfg.folds_path).is_file():
        return None
    return read_folds(cfg.folds_path, train.train_hash, len(train.targets), cfg.data)


def _unit_rows(units: fp.Units, n_rows: int) -> list[np.ndarray]:
    """The train rows of each train unit (one each, or a sequence's frames)."""
    if units.of_row is None:
        return [np.array([i]) for i in range(n_rows)]
    order = np.argsort(units.of_row, kind="stable")
    bounds = np.searchsorted(units.of_row[order], np.arange(len(units.exact) + 1))
    return [order[bounds[u]:bounds[u + 1]] for u in range(len(units.exact))]


def _unit_targets(units: fp.Units, targets: np.ndarray, unit_rows: list[np.ndarray]) -> list[str]:
    """Each train unit's target as text, to find duplicates labelled otherwise (a sequence of frames: its labels)."""
    flat = targets.reshape(len(targets), -1)
    return [" ".join(map(str, flat[r].reshape(-1).tolist()[:64])) for r in unit_rows]


def pair_table(pairs: Pairs, n_train: int, unit_fold, unit_target: list[str]) -> pd.DataFrame:
    """One row per pair: the two units (test ones as test:<i>), how they match, where they are, label conflict."""
    a, b = pairs.a, pairs.b
    both_train = b < n_train
    fold = lambda u: -1 if unit_fold is None or u >= n_train else int(unit_fold[u])  # noqa: E731
    where = np.where(~both_train, "train-test",
                     np.where([fold(x) != fold(y) and unit_fold is not None for x, y in zip(a, b)],
                              "across folds", "same fold" if unit_fold is not None else "train"))
    same = pairs.how != "window"  # overlapping windows are other rows: their targets may differ
    conflict = [bool(t and s) and unit_target[x] != unit_target[y] for x, y, t, s in zip(a, b, both_train, same)]
    name = lambda u: f"train:{u}" if u < n_train else f"test:{u - n_train}"  # noqa: E731
    return pd.DataFrame({"a": [name(x) for x in a], "b": [name(y) for y in b], "how": pairs.how, "where": where,
                         "fold_a": [fold(x) for x in a], "fold_b": [fold(y) for y in b], "label_conflict": conflict})


def _leaked_rows(table: pd.DataFrame, unit_rows: list[np.ndarray]) -> np.ndarray:
    """Train rows with an alike unit in another fold (their OOF predictions may have seen their twin)."""
    leaks = table[table["where"] == "across folds"]
    units = {int(u.split(":")[1]) for u in pd.concat([leaks["a"], leaks["b"]])}
    return np.concatenate([unit_rows[u] for u in sorted(units)]) if units else np.zeros(0, np.int64)


def adversarial_validation(tr: fp.Units, te: fp.Units, seed: int) -> dict:
    """LightGBM told to find test rows among train and test summaries: 5-fold OOF AUC with its bootstrap interval,
    and the most telling columns by gain. AUC near 0.5: the test looks like train, the folds are a fair stand-in."""
    import lightgbm as lgb
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(seed)
    pick = lambda n: np.sort(rng.choice(n, ADVERSARIAL_ROWS, replace=False)) if n > ADVERSARIAL_ROWS else np.arange(n)  # noqa: E731
    a, b = tr.summary[pick(len(tr.summary))], te.summary[pick(len(te.summary))]
    if len(a) < 10 or len(b) < 10:
        return {"auc": float("nan"), "note": f"too few rows ({len(a)} train, {len(b)} test)"}
    x = np.concatenate([a, b]).astype(np.float32)
    y = np.r_[np.zeros(len(a), np.int64), np.ones(len(b), np.int64)]
    params = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 20,
              "n_estimators": 150, "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8, "verbose": -1,
              "random_state": seed, "n_jobs": 2}
    oof = np.zeros(len(y))
    for fit, held in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y):
        oof[held] = lgb.LGBMClassifier(**params).fit(x[fit], y[fit]).predict_proba(x[held])[:, 1]
    task = Task("multiclass", ("train", "test"), "roc_auc")
    probs = np.stack([1 - oof, oof], 1)
    interval = cv_interval(probs, y, task, seed=seed)
    auc = float(task.scores(probs, y)["roc_auc"])
    model = lgb.LGBMClassifier(**params).fit(x, y)
    gain = model.booster_.feature_importance("gain")
    top = np.argsort(gain)[::-1][:10]
    return {"auc": auc, "interval": interval, "rows": [int(len(a)), int(len(b))],
            "features": [{"name": tr.names[i], "gain": float(gain[i]), "share": float(gain[i] / max(gain.sum(), 1e-12))}
                         for i in top if gain[i] > 0]}


def effect_on_cv(cfg: Config, train, leaked: np.ndarray) -> list[dict]:
    """Each experiment of this data: its OOF score on every row and without the rows that have a twin in another fold
    (what the CV would be without the leak's help)."""
    from pipeline.experiment import oof_arrays, read_oof
    from pipeline.predict import experiment_config, experiment_data

    if not len(leaked):
        return []
    out = []
    weights = Path(cfg.weights_dir)
    for config_path in sorted(weights.glob("*/config.json")):
        exp_dir = config_path.parent
        if cfg.exp and exp_dir.name not in cfg.exp:
            continue
        try:
            config = experiment_config(exp_dir)
            if config.train_hash != train.train_hash:
                continue
            task = experiment_data(exp_dir)[1].task
            oof = read_oof(exp_dir)
            if oof is None:
                continue
            preds, targets = oof_arrays(oof, task, str(exp_dir))
        except PipelineError:
            continue
        clean = ~np.isin(oof["id"].to_numpy(), leaked)
        if clean.all() or not clean.any():
            continue
        out.append({"exp": exp_dir.name, "metric": task.metric, "all": task.scores(preds, targets)[task.metric],
                    "without": task.scores(preds[clean], targets[clean])[task.metric], "rows": int(len(oof)),
                    "left_out": int((~clean).sum()), "higher_is_better": task.higher_is_better})
    return out


def summarise(table: pd.DataFrame, tr: fp.Units, te: fp.Units, adversarial: dict, effects: list[dict],
              row_group: np.ndarray, folds, cfg: Config) -> dict:
    count = lambda how, where: int(((table["how"] == how) & (table["where"] == where)).sum())  # noqa: E731
    wheres = ["across folds", "same fold", "train", "train-test"]
    sizes = np.bincount(row_group)
    return {"unit": tr.unit, "train_units": int(len(tr.exact)), "test_units": int(len(te.exact)),
            "pairs": {how: {w: count(how, w) for w in wheres} for how in ("exact", "near", "window")},
            "label_conflicts": int(table["label_conflict"].sum()),
            "test_units_with_train_twin": int(len({b for b, w in zip(table["b"], table["where"]) if w == "train-test"})),
            "duplicate_groups": int((sizes > 1).sum()), "rows_in_duplicate_groups": int(sizes[sizes > 1].sum()),
            "hamming": cfg.hamming if tr.hamming else None, "round_digits": None if tr.hamming else fp.ROUND_DIGITS,
            "folds": cfg.folds_path if folds else None, "adversarial": adversarial, "effects": effects,
            "notes": tr.notes}


def headline(result: dict) -> str:
    p = result["pairs"]
    leaks = sum(p[h]["across folds"] for h in p)
    test = sum(p[h]["train-test"] for h in p)
    adv = result["adversarial"]
    auc = f"adversarial AUC {adv['auc']:.3f}" if adv.get("auc") == adv.get("auc") else "adversarial AUC -"
    return (f"audit: {leaks:,} alike pair(s) across folds (exact {p['exact']['across folds']:,}, near "
            f"{p['near']['across folds']:,}, windows {p['window']['across folds']:,}), {test:,} train-test, "
            f"{result['label_conflicts']:,} label conflict(s); {auc}")


def draw(out: Path, tr: fp.Units, te: fp.Units, table: pd.DataFrame, adversarial: dict, hamming: int) -> list[str]:
    """pairs.png (images: alike pairs side by side) and adversarial.png (the most telling columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    shown = table[table["how"] != "exact"].head(SHOWN_PAIRS) if tr.pixels is not None else table.iloc[:0]
    if tr.pixels is not None and len(shown) == 0:
        shown = table.head(SHOWN_PAIRS)
    if len(shown):
        fig, axes = plt.subplots(len(shown), 2, figsize=(4, 2 * len(shown)), squeeze=False)
        for row, (_, pair) in zip(axes, shown.iterrows()):
            for ax, name in zip(row, (pair["a"], pair["b"])):
                side, i = name.split(":")
                img = (tr.pixels if side == "train" else te.pixels)[int(i)]
                ax.imshow(np.moveaxis(img, 0, -1).squeeze(), cmap="gray" if img.shape[0] == 1 else None)
                ax.set_title(f"{name} ({pair['how']}, {pair['where']})", fontsize=7)
                ax.axis("off")
        fig.suptitle(f"alike images (pHash within {hamming} bits, pixel correlation >= {fp.CORRELATION})", fontsize=8)
        written.append(_save(fig, out / "pairs.png"))
    features = adversarial.get("features") or []
    if features:
        fig, ax = plt.subplots(figsize=(6, 0.35 * len(features) + 1.2))
        ax.barh([f["name"] for f in features][::-1], [f["share"] for f in features][::-1])
        ax.set_xlabel("share of the adversarial model's gain")
        ax.set_title(f"train vs test: AUC {adversarial['auc']:.3f} ({describe(adversarial['interval'], 3)})", fontsize=8)
        written.append(_save(fig, out / "adversarial.png"))
    return written


def _save(fig, path: Path) -> str:
    """The figure as a PNG at `path`, closed; its file name."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def markdown(result: dict, summary: str, tr: fp.Units, cfg: Config) -> str:
    p, unit = result["pairs"], result["unit"]
    near = (f"pHash (64 bits) within {result['hamming']} bits and thumbnails' pixel correlation >= {fp.CORRELATION}"
            if result["hamming"] is not None else f"equal when rounded to {result['round_digits']} significant digits")
    lines = [f"# Leakage audit\n\n{summary}\n\n{result['train_units']:,} train {unit}s, {result['test_units']:,} test "
             f"{unit}s; folds: {result['folds'] or 'none (make_folds first to name leaks across folds)'}.\n",
             "## Duplicates\n", "| match | across folds (leak) | same fold | train-test |", "| --- | --- | --- | --- |"]
    for how, label in (("exact", "exact"), ("near", f"near ({near})"), ("window", "overlapping windows")):
        lines.append(f"| {label} | {p[how]['across folds'] + p[how]['train']:,} | {p[how]['same fold']:,} | "
                     f"{p[how]['train-test']:,} |")
    lines += ["", f"- label conflicts (alike train {unit}s with different targets): {result['label_conflicts']:,}",
              f"- test {unit}s with an alike train {unit}: {result['test_units_with_train_twin']:,}",
              *[f"- {n}" for n in result["notes"]], "- every pair: `pairs.csv`", ""]
    if "pairs.png" in result["figures"]:
        lines += ["![alike images](pairs.png)", ""]
    adv = result["adversarial"]
    lines += ["## Adversarial validation\n"]
    if adv.get("auc") == adv.get("auc"):
        lines += [f"LightGBM telling test {unit}s from train ones (5-fold, {adv['rows'][0]:,} + {adv['rows'][1]:,}): "
                  f"AUC {adv['auc']:.3f}, {describe(adv['interval'], 3)}. Near 0.5: the test looks like train, and "
                  "the folds are a fair stand-in for it; well above: the test differs, and a local CV may not "
                  "predict the leaderboard.", "", "| column | share of gain |", "| --- | --- |",
                  *[f"| {f['name']} | {f['share']:.3f} |" for f in adv["features"]], ""]
        if "adversarial.png" in result["figures"]:
            lines += ["![adversarial](adversarial.png)", ""]
    else:
        lines += [f"not run: {adv.get('note', '')}", ""]
    lines += ["## What to do\n",
              f"- {result['duplicate_groups']:,} duplicate group(s) covering {result['rows_in_duplicate_groups']:,} "
              "train rows are in `groups.csv`; folds that keep each group together: "
              f"`python -m pipeline.make_folds --group-dups --overwrite{_flags(cfg)}` (then retrain: experiments "
              "on the old folds refuse to resume or blend)."]
    for e in result["effects"]:
        lines.append(f"- {e['exp']}: OOF {e['metric']} {e['all']:.5f} on all {e['rows']:,} rows, {e['without']:.5f} "
                     f"without the {e['left_out']:,} rows that have a twin in another fold")
    if not result["effects"]:
        lines.append("- no experiment of this data with rows leaked across folds to score with and without them")
    t = result["seconds"]
    lines += ["", f"Timing: fingerprints {t['fingerprints']:.1f} s, pairs {t['pairs']:.1f} s, whole audit "
                  f"{t['total']:.1f} s.", ""]
    return "\n".join(lines)


def _flags(cfg: Config) -> str:
    words = [] if cfg.data == Config().data else [f"--data {cfg.data}"]
    words += [] if cfg.folds_path == Config().folds_path else [f"--folds-path {cfg.folds_path}"]
    words += [] if cfg.audit_dir == Config().audit_dir else [f"--audit-dir {cfg.audit_dir}"]
    return "".join(" " + w for w in words)


def read_groups(audit_dir: str, train_hash: str, n_rows: int) -> np.ndarray:
    """make_folds --group-dups: each train row's duplicate group from the audit's groups.csv, checked to be this
    data's."""
    path = Path(audit_dir) / "groups.csv"
    if not path.is_file():
        raise PipelineError(f"--group-dups: {path} not found; run the audit first: python -m pipeline.audit "
                            f"(same --data{', --audit-dir ' + audit_dir if audit_dir != Config().audit_dir else ''})")
    try:
        frame = pd.read_csv(path)
        ok = {"id", "group", "train_hash"} <= set(frame.columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise PipelineError(f"--group-dups: {path} is not the audit's groups file (id, group, train_hash); rerun "
                            "python -m pipeline.audit")
    if len(frame) != n_rows or set(frame["train_hash"].astype(str)) != {train_hash} or \
            not frame["id"].equals(pd.Series(np.arange(n_rows), name="id")):
        raise PipelineError(f"--group-dups: {path} was written for other data (train hash "
                            f"{frame['train_hash'].iloc[0] if len(frame) else '?'}, {len(frame):,} rows; now {train_hash}, "
                            f"{n_rows:,}); rerun python -m pipeline.audit on this --data")
    groups = pd.to_numeric(frame["group"], errors="coerce")
    if groups.isna().any():
        raise PipelineError(f"--group-dups: {path}: row {int(np.flatnonzero(groups.isna())[0]) + 2}: group must be a "
                            "number; rerun python -m pipeline.audit")
    return groups.to_numpy(np.int64)


def main(argv=None) -> int:
    return main_guard(lambda a: run(parse_config(a, "audit", FLAGS, __doc__)), argv)


if __name__ == "__main__":
    sys.exit(main())
