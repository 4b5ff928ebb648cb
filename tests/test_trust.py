"""Trusting the local CV: bootstrap intervals (rows and groups), runs' within-noise column, the leakage audit with
duplicates hidden in each input kind, make_folds --group-dups, CV against the leaderboard through the stand-in
Kaggle server, and MLflow tracking (a real SQLite store) including a run killed and resumed."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import audit, data, infer, intervals, make_folds, metrics, runs, submit, train
from pipeline.data import sequences
from pipeline.tasks import Task

from fake_kaggle import FakeKaggle

REPO = Path(__file__).resolve().parents[1]
QUICK = '{"n_estimators": 40, "num_threads": 1}'


# -- intervals (pure) ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric,kind", [("accuracy", "multiclass"), ("log_loss", "multiclass"), ("rmse", "regression"),
                                         ("mse", "regression"), ("mae", "regression"), ("mcrmse", "regression"),
                                         ("accuracy", "multilabel"), ("log_loss", "multilabel")])
def test_row_terms_give_the_metric(metric, kind):
    """The vectorised statistic on every row is the metric itself (a wrong per-row term would shift every interval)."""
    rng = np.random.default_rng(0)
    if kind == "regression":
        targets = rng.normal(size=(200, 2))
        preds = targets + rng.normal(size=(200, 2))
    else:
        preds = rng.dirichlet(np.ones(3), 200) if kind == "multiclass" else rng.random((200, 3))
        targets = rng.integers(0, 3, 200) if kind == "multiclass" else (rng.random((200, 3)) < 0.5).astype(int)
    terms, finish = intervals.row_terms(metric, preds, targets, kind)
    assert finish(terms.mean(0)) == pytest.approx(metrics.compute(metric, preds, targets, kind), rel=1e-9)


def test_interval_holds_the_score_and_groups_widen_it():
    """Rows copied ten times each: resampled by row the interval is ~sqrt(10) too narrow; by group it is not."""
    rng = np.random.default_rng(1)
    task = Task("multiclass", ("a", "b"), "accuracy")
    base = rng.dirichlet(np.ones(2), 300)
    labels = rng.integers(0, 2, 300)
    preds, targets, groups = np.repeat(base, 10, 0), np.repeat(labels, 10), np.repeat(np.arange(300), 10)
    by_rows = intervals.cv_interval(preds, targets, task)
    by_groups = intervals.cv_interval(preds, targets, task, groups=groups, test_rows=500)
    score = metrics.compute("accuracy", preds, targets, "multiclass")
    for iv in (by_rows, by_groups):
        assert iv["low"] < score < iv["high"]
    assert by_groups["unit"] == "groups" and by_groups["units"] == 300
    assert (by_groups["high"] - by_groups["low"]) > 2.5 * (by_rows["high"] - by_rows["low"])
    assert by_groups["test"]["rows"] == 500 and by_groups["test"]["low"] < score < by_groups["test"]["high"]


def test_recomputed_metric_interval(monkeypatch):
    """AUC is not a mean over rows: recomputed per resample, fewer resamples, still around the score."""
    monkeypatch.setattr(intervals, "GENERIC_SECONDS", 0.2)
    rng = np.random.default_rng(2)
    task = Task("multilabel", ("a", "b"), "roc_auc")
    targets = (rng.random((400, 2)) < 0.5).astype(int)
    preds = np.clip(targets * 0.3 + rng.random((400, 2)) * 0.7, 0, 1)
    iv = intervals.cv_interval(preds, targets, task)
    score = metrics.compute("roc_auc", preds, targets, "multilabel")
    assert iv["method"] == "percentile" and 100 <= iv["resamples"] < 1000 and iv["low"] < score < iv["high"]


def test_paired_difference_separates_noise_from_a_gap():
    rng = np.random.default_rng(3)
    task = Task("regression", ("y",), "rmse")
    y = rng.normal(size=1000)
    a = (y + rng.normal(size=1000) * 0.5)[:, None]
    same = intervals.paired_difference(a, (y + rng.normal(size=1000) * 0.5)[:, None], y, task)  # as good, other errors
    worse = intervals.paired_difference(a, a + rng.normal(size=(1000, 1)) * 0.5, y, task)
    assert same["low"] <= 0 <= same["high"]
    assert worse["low"] > 0  # b's rmse is clearly higher


# -- a table competition trained once for this module ------------------------------------------------------------
@pytest.fixture(scope="module")
def table_project(tmp_path_factory):
    """sample-table with three experiments: lightgbm, a copy of it (identical OOF), and a 1-tree model (behind)."""
    root = tmp_path_factory.mktemp("trust")
    old = Path.cwd()
    import os
    os.chdir(root)
    try:
        (root / "quick.json").write_text(QUICK)
        (root / "stump.json").write_text('{"n_estimators": 1, "learning_rate": 0.01, "num_threads": 1}')
        assert make_folds.main(["--data", "sample-table"]) == 0
        assert train.main(["--data", "sample-table", "--model", "lightgbm", "--exp", "gbm", "--gbm-params",
                           "quick.json"]) == 0
        shutil.copytree(root / "weights/gbm", root / "weights/gbm_copy")
        assert train.main(["--data", "sample-table", "--model", "lightgbm", "--exp", "stump", "--gbm-params",
                           "stump.json"]) == 0
        for exp in ("gbm", "stump", "gbm_copy"):
            assert infer.main(["--data", "sample-table", "--exp", exp]) == 0
    finally:
        os.chdir(old)
    return root


def test_cv_line_cv_json_and_runs_carry_the_interval(table_project, monkeypatch, capsys):
    monkeypatch.chdir(table_project)
    cv = json.loads((table_project / "weights/gbm/cv.json").read_text())
    iv = cv["interval"]
    assert iv["low"] < cv["oof"]["rmse"] < iv["high"] and iv["unit"] == "rows" and iv["units"] == 353
    assert iv["test"]["rows"] == 89  # the sample submission's rows, recorded by make_folds
    assert runs.main([]) == 0
    out = capsys.readouterr().out
    line = {row.split()[0]: row for row in out.splitlines()[1:]}
    assert f"[{iv['low']:.5f}, {iv['high']:.5f}]" in line["gbm"]
    assert line["gbm"].rstrip().endswith("best")
    assert line["gbm_copy"].rstrip().endswith("within noise") and "+0.00000 [+0.00000, +0.00000]" in line["gbm_copy"]
    assert line["stump"].rstrip().endswith("behind")


# -- the audit: duplicates hidden in each input kind ------------------------------------------------------------
def _pairs(audit_dir: Path) -> pd.DataFrame:
    return pd.read_csv(audit_dir / "pairs.csv")


def _has(pairs: pd.DataFrame, a: str, b: str, how: str) -> pd.Series:
    hit = pairs[((pairs["a"] == a) & (pairs["b"] == b)) | ((pairs["a"] == b) & (pairs["b"] == a))]
    assert len(hit) == 1 and hit["how"].iloc[0] == how, (a, b, how, hit)
    return hit.iloc[0]


def _fold_where(folds_csv: Path, i: int, j: int) -> str:
    fold = pd.read_csv(folds_csv)["fold"]
    return "across folds" if fold[i] != fold[j] else "same fold"


def test_audit_finds_rows_hidden_in_a_table_and_group_dups_keeps_them_together(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    src = Path(data.write_sample_table(str(tmp_path / "clean")))
    assert make_folds.main(["--data", str(src), "--folds-path", "folds/clean.csv"]) == 0
    result = audit.main(["--data", str(src), "--folds-path", "folds/clean.csv", "--audit-dir", "a0"])
    assert result == 0 and json.loads(Path("a0/audit.json").read_text())["pairs"] == {
        h: {"across folds": 0, "same fold": 0, "train": 0, "train-test": 0} for h in ("exact", "near", "window")}

    dirty = tmp_path / "dirty"
    shutil.copytree(src, dirty)
    train_csv, test_csv = dirty / "diabetes_train.csv", dirty / "diabetes_test.csv"
    tr, te = pd.read_csv(train_csv), pd.read_csv(test_csv)
    n = len(tr)
    copy = tr.iloc[[5]].assign(id=tr["id"].max() + 1)  # exact copy: row n
    conflict = tr.iloc[[9]].assign(id=tr["id"].max() + 2, target=tr["target"].iloc[9] + 100)  # row n + 1, relabelled
    near = tr.iloc[[20]].assign(id=tr["id"].max() + 3)  # row n + 2, one value moved below 3 significant digits
    feature = [c for c in tr.columns if c not in ("id", "target")][0]
    near[feature] = near[feature] * (1 + 1e-5)
    pd.concat([tr, copy, conflict, near]).to_csv(train_csv, index=False)
    leaked = tr.iloc[[30]].drop(columns="target").assign(id=te["id"].iloc[0])  # train row 30 as test row 0
    pd.concat([leaked, te.iloc[1:]]).to_csv(test_csv, index=False)
    assert make_folds.main(["--data", str(dirty), "--folds-path", "folds/dirty.csv"]) == 0
    assert audit.main(["--data", str(dirty), "--folds-path", "folds/dirty.csv", "--audit-dir", "a1"]) == 0
    pairs = _pairs(Path("a1"))
    hit = _has(pairs, "train:5", f"train:{n}", "exact")
    assert hit["where"] == _fold_where(Path("folds/dirty.csv"), 5, n) and not hit["label_conflict"]
    assert _has(pairs, "train:9", f"train:{n + 1}", "exact")["label_conflict"]
    _has(pairs, "train:20", f"train:{n + 2}", "near")
    assert _has(pairs, "train:30", "test:0", "exact")["where"] == "train-test"
    assert len(pairs) == 4
    assert "audit: " in capsys.readouterr().out

    assert make_folds.main(["--data", str(dirty), "--folds-path", "folds/dirty.csv", "--group-dups", "--audit-dir", "a1",
                            "--overwrite"]) == 0
    folds = pd.read_csv("folds/dirty.csv")
    for i, j in ((5, n), (9, n + 1), (20, n + 2)):
        assert folds["fold"][i] == folds["fold"][j] and folds["group"][i] == folds["group"][j]
    assert folds["group"].nunique() == n  # n + 3 rows, three of them twins


def test_group_dups_refuses_another_datas_groups(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert make_folds.main(["--data", "sample-table", "--group-dups"]) == 2
    assert "--group-dups: audit/groups.csv not found; run the audit first" in capsys.readouterr().err
    Path("audit").mkdir()
    pd.DataFrame({"id": [0, 1], "group": [0, 0], "train_hash": "abc"}).to_csv("audit/groups.csv", index=False)
    assert make_folds.main(["--data", "sample-table", "--group-dups"]) == 2
    assert "was written for other data" in capsys.readouterr().err


def test_audit_finds_overlapping_windows_of_a_panel(tmp_path, monkeypatch):
    """HW1's shape: the same columns for 3 consecutive years per row; rows one year apart share two blocks. The same
    values with the years' order broken share nothing."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    people, years = 30, 6
    life = rng.normal(size=(people, years, 2)).round(3)
    rows = [np.concatenate([life[p, t + j] for j in range(3)]) for p in range(people) for t in range(years - 2)]
    cols = ["x", "y", "x.1", "y.1", "x.2", "y.2"]
    frame = pd.DataFrame(np.array(rows), columns=cols)
    frame["target"] = rng.normal(size=len(frame))
    for name, table in (("panel", frame), ("scrambled", frame.assign(**{"x.1": rng.permutation(frame["x.1"].to_numpy())}))):
        comp = tmp_path / name
        comp.mkdir()
        table.iloc[:100].rename_axis("id").reset_index().to_csv(comp / "train.csv", index=False)
        test = table.iloc[100:].drop(columns="target").rename_axis("id").reset_index()
        test.to_csv(comp / "test.csv", index=False)
        test[["id"]].assign(target=0.0).to_csv(comp / "sample_submission.csv", index=False)
        assert make_folds.main(["--data", str(comp), "--folds-path", f"folds/{name}.csv", "--target-col", "target"]) == 0
        assert audit.main(["--data", str(comp), "--folds-path", f"folds/{name}.csv", "--audit-dir", name]) == 0
    windows = _pairs(Path("panel"))
    windows = windows[windows["how"] == "window"]
    _has(windows, "train:0", "train:1", "window")  # person 0, years 0-2 and 1-3
    assert ((windows["where"] == "train-test").sum()) > 0
    assert "columns repeat in 3 blocks of 2" in Path("panel/audit.md").read_text()
    scrambled = _pairs(Path("scrambled"))
    assert (scrambled["how"] == "window").sum() < len(windows) / 5


def _digits_comp(root: Path, sample_dir: Path, n_train: int = 300, n_test: int = 60) -> tuple[pd.DataFrame, pd.DataFrame]:
    train = pd.read_csv(sample_dir / "train.csv").head(n_train)
    test = pd.read_csv(sample_dir / "test.csv").head(n_test)
    return train, test


def _write_digits(root: Path, train: pd.DataFrame, test: pd.DataFrame) -> Path:
    root.mkdir(parents=True)
    train.to_csv(root / "train.csv", index=False)
    test.to_csv(root / "test.csv", index=False)
    pd.DataFrame({"ImageId": np.arange(1, len(test) + 1), "Label": 0}).to_csv(root / "sample_submission.csv", index=False)
    return root


def test_audit_finds_images_copied_across_folds_and_into_test(tmp_path, monkeypatch, sample_dir):
    monkeypatch.chdir(tmp_path)
    train, test = _digits_comp(tmp_path, sample_dir)
    pixels = [c for c in train.columns if c != "label"]
    exact = train.iloc[[3]]
    near = train.iloc[[7]].copy()
    rng = np.random.default_rng(0)
    near[pixels] = np.clip(near[pixels].to_numpy() * 0.9 + rng.normal(0, 2, (1, len(pixels))), 0, 255).round().astype(int)
    relabelled = train.iloc[[12]].assign(label=(train["label"].iloc[12] + 1) % 10)
    leaked = train.iloc[[11]][pixels]
    dirty = _write_digits(tmp_path / "dirty", pd.concat([train, exact, near, relabelled]),
                          pd.concat([leaked, test.iloc[1:]]))
    assert make_folds.main(["--data", str(dirty), "--folds-path", "folds/dirty.csv"]) == 0
    assert audit.main(["--data", str(dirty), "--folds-path", "folds/dirty.csv", "--audit-dir", "a1"]) == 0
    pairs = _pairs(Path("a1"))
    assert _has(pairs, "train:3", "train:300", "exact")["where"] == _fold_where(Path("folds/dirty.csv"), 3, 300)
    _has(pairs, "train:7", "train:301", "near")
    assert _has(pairs, "train:12", "train:302", "exact")["label_conflict"]
    assert _has(pairs, "train:11", "test:0", "exact")["where"] == "train-test"
    assert len(pairs) == 4 and (Path("a1") / "pairs.png").is_file()


def _copy_utterance_speakers(root: Path) -> tuple[int, str]:
    """sample-speakers with one train utterance copied as a new train utterance and as the first test one."""
    ds = root / "Dataset"
    meta = json.loads((ds / "metadata.json").read_text())
    speakers = list(meta["speakers"])
    first = meta["speakers"][speakers[0]][0]
    shutil.copy(ds / first["feature_path"], ds / "uttr-copy-train.pt")
    shutil.copy(ds / first["feature_path"], ds / "uttr-copy-test.pt")
    meta["speakers"][speakers[1]].append({"feature_path": "uttr-copy-train.pt", "mel_len": first["mel_len"]})
    (ds / "metadata.json").write_text(json.dumps(meta))
    testdata = json.loads((ds / "testdata.json").read_text())
    testdata["utterances"][0] = {"feature_path": "uttr-copy-test.pt", "mel_len": first["mel_len"]}
    (ds / "testdata.json").write_text(json.dumps(testdata))
    return 0, first["feature_path"]


def _train_index(src: Path, name: str) -> int:
    desc, train = data.describe(data.resolve(str(src)))
    return [i for i, f in enumerate(train.files) if f.endswith(name)][0]


def test_audit_finds_utterances_copied_across_speakers_and_into_test(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dirty = sequences.write_sample_speakers(str(tmp_path / "dirty"))  # the sample is clean: only the copies pair
    _, original = _copy_utterance_speakers(dirty)
    assert make_folds.main(["--data", str(dirty), "--folds-path", "folds/dirty.csv"]) == 0
    assert audit.main(["--data", str(dirty), "--folds-path", "folds/dirty.csv", "--audit-dir", "a1"]) == 0
    a, b = _train_index(dirty, original), _train_index(dirty, "uttr-copy-train.pt")
    pairs = _pairs(Path("a1"))
    assert _has(pairs, f"train:{min(a, b)}", f"train:{max(a, b)}", "exact")["label_conflict"]  # two speakers
    linked = pairs[pairs["b"] == "test:0"]  # pairs chain each copy to the first of its kind
    assert len(linked) == 1 and linked["a"].iloc[0] == f"train:{min(a, b)}" and linked["where"].iloc[0] == "train-test"
    assert len(pairs) == 2


def test_audit_finds_frames_utterances_copied(tmp_path, monkeypatch):
    """Frames are audited per utterance: a copied utterance (its frames and labels) is found, and its duplicate
    group covers every frame of both."""
    monkeypatch.chdir(tmp_path)
    dirty = Path(sequences.write_sample_frames(str(tmp_path / "dirty")))  # the sample is clean: only the copies pair
    lib = dirty / "libriphone"
    split = (lib / "train_split.txt").read_text().split()
    first = split[0]
    shutil.copy(lib / "feat/train" / f"{first}.pt", lib / "feat/train" / "copy-train.pt")
    (lib / "train_split.txt").write_text("\n".join(split + ["copy-train"]) + "\n")
    labels = (lib / "train_labels.txt").read_text().splitlines()
    line = next(l for l in labels if l.split()[0] == first)
    (lib / "train_labels.txt").write_text("\n".join(labels + ["copy-train " + line.split(" ", 1)[1]]) + "\n")
    test_first = (lib / "test_split.txt").read_text().split()[0]
    shutil.copy(lib / "feat/train" / f"{first}.pt", lib / "feat/test" / f"{test_first}.pt")
    assert make_folds.main(["--data", str(dirty), "--folds-path", "folds/dirty.csv"]) == 0
    assert audit.main(["--data", str(dirty), "--folds-path", "folds/dirty.csv", "--audit-dir", "a1"]) == 0
    pairs = _pairs(Path("a1"))
    last = len(split)  # the copy is the last train utterance
    hit = _has(pairs, "train:0", f"train:{last}", "exact")
    assert not hit["label_conflict"]
    _has(pairs, "train:0", "test:0", "exact")
    assert len(pairs) == 2
    groups = pd.read_csv("a1/groups.csv")["group"].to_numpy()
    frames = torch.load(lib / "feat/train" / f"{first}.pt").shape[0]
    assert (groups == groups[0]).sum() == 2 * frames


# -- CV against the leaderboard ---------------------------------------------------------------------------------
def test_submit_records_and_scores_show_cv_beside_lb(table_project, kaggle_env, monkeypatch, capsys):
    monkeypatch.chdir(table_project)
    log = Path("submissions/submissions.csv")
    log.unlink(missing_ok=True)
    with FakeKaggle() as server:
        for exp in ("gbm", "stump", "gbm_copy"):
            assert submit.main([f"submissions/{exp}.csv", "-m", f"try {exp}", "--data", "sample-table",
                                "--competition", "diabetes-hw"]) == 0
        recorded = pd.read_csv(log)
        cvs = {e: json.loads(Path(f"weights/{e}/cv.json").read_text()) for e in ("gbm", "stump", "gbm_copy")}
        assert list(recorded["exp"]) == ["gbm", "stump", "gbm_copy"]
        assert recorded["cv"].tolist() == pytest.approx([cvs[e]["oof"]["rmse"] for e in recorded["exp"]])
        assert recorded["ci_low"].tolist() == pytest.approx([cvs[e]["interval"]["low"] for e in recorded["exp"]])
        import hashlib
        assert recorded["sha256"][0] == hashlib.sha256(Path("submissions/gbm.csv").read_bytes()).hexdigest()
        server.public_scores = [60.0, 80.0, 55.0]  # gbm, stump, gbm_copy
        capsys.readouterr()
        assert submit.main(["--scores", "--competition", "diabetes-hw"]) == 0
        out = capsys.readouterr().out
        assert runs.main(["--lb", "--competition", "diabetes-hw"]) == 0
        assert capsys.readouterr().out == out  # the same table from runs --lb
    rows = {line.split()[2]: line for line in out.splitlines() if ".csv" in line}
    assert f"{cvs['stump']['oof']['rmse']:.5f}" in rows["stump.csv"] and "80.00000" in rows["stump.csv"]
    assert f"{cvs['gbm']['oof']['rmse']:.5f}" in rows["gbm.csv"] and "60.00000" in rows["gbm.csv"]
    from scipy.stats import spearmanr
    rho = spearmanr([cvs[e]["oof"]["rmse"] for e in ("gbm", "stump", "gbm_copy")], [60.0, 80.0, 55.0]).statistic
    assert f"Spearman rank correlation {rho:+.3f}" in out
    assert Path("submissions/cv_vs_lb.png").is_file()


# -- MLflow ------------------------------------------------------------------------------------------------------
mlflow = pytest.importorskip("mlflow")


def _runs(uri: str):
    client = mlflow.tracking.MlflowClient(uri)
    found = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    return client, found


@pytest.mark.slow
def test_mlflow_run_killed_and_resumed_continues_the_same_runs(small_comp, tmp_path):
    from test_robustness import run_until_killed

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    common = ["--data", str(small_comp), "--epochs", "2", "--seed", "3", "--track", "mlflow", "--track-uri", uri]
    env = dict(__import__("os").environ, PYTHONPATH=str(REPO))
    import os
    here = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert make_folds.main(["--data", str(small_comp), "--n-splits", "2"]) == 0
    finally:
        os.chdir(here)
    exp_dir = tmp_path / "weights" / "digit_cnn"
    run_until_killed(common, tmp_path, exp_dir, fold=1, rows=1)
    state = json.loads((exp_dir / "tracking.json").read_text())
    resumed = subprocess.run([sys.executable, "-m", "pipeline.train", *common, "--resume"], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((exp_dir / "tracking.json").read_text())["parent"] == state["parent"]
    client, found = _runs(uri)
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == state["parent"]]
    assert [p.info.run_id for p in parents] == [state["parent"]] and len(children) == 2
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "valid_loss")]
        assert sorted(steps) == [1, 2]  # every epoch once, the killed run's and the resumed one's
        assert child.info.status == "FINISHED"
    cv = json.loads((exp_dir / "cv.json").read_text())
    parent = client.get_run(state["parent"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["cv"] == pytest.approx(cv["oof"]["accuracy"])
    assert parent.data.metrics["ci_low"] == pytest.approx(cv["interval"]["low"])
    assert parent.data.params["epochs"] == "2"
    assert {a.path for a in client.list_artifacts(state["parent"])} >= {"cv.json", "config.json"}


def test_sync_logs_each_epoch_once_even_when_rewritten(tmp_path):
    """A resumed epoch rewrites its metrics.csv row: the child run keeps the epoch it has (one value per step), and
    gets the epochs it lacks."""
    from pipeline import tracking

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    exp_dir = tmp_path / "exp"
    exp_dir.mkdir()
    tracking.start(exp_dir, "mlflow", uri, "exp", "comp", {"epochs": 3, "model": "mlp"})
    rows = pd.DataFrame({"fold": [0, 0], "epoch": [1, 2], "valid_loss": [0.9, 0.8], "lr": [1e-3, 5e-4]})
    rows.to_csv(exp_dir / "metrics.csv", index=False)
    tracking.sync(exp_dir)
    pd.concat([rows.assign(valid_loss=[0.9, 0.7]), pd.DataFrame({"fold": [0], "epoch": [3], "valid_loss": [0.6],
                                                                   "lr": [1e-4]})]).to_csv(exp_dir / "metrics.csv",
                                                                                           index=False)
    tracking.sync(exp_dir)
    tracking.sync(exp_dir)
    client, found = _runs(uri)
    child = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert len(child) == 1 and len(found) == 2
    history = client.get_metric_history(child[0].info.run_id, "valid_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.9), (2, 0.8), (3, 0.6)]
    assert [m.step for m in client.get_metric_history(child[0].info.run_id, "lr")] == [1, 2, 3]


def test_overwrite_starts_new_runs(tmp_path, monkeypatch):
    """--overwrite replaces the experiment: a new parent run; --overwrite --fold 1: a new child for fold 1 only."""
    monkeypatch.chdir(tmp_path)
    Path("quick.json").write_text(QUICK)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    flags = ["--data", "sample-table", "--model", "lightgbm", "--gbm-params", "quick.json", "--track", "mlflow",
             "--track-uri", uri]
    assert make_folds.main(["--data", "sample-table", "--n-splits", "3"]) == 0
    assert train.main(flags) == 0
    first = json.loads(Path("weights/lightgbm/tracking.json").read_text())
    assert train.main([*flags, "--overwrite", "--fold", "1"]) == 0
    second = json.loads(Path("weights/lightgbm/tracking.json").read_text())
    assert second["parent"] == first["parent"] and second["folds"]["0"] == first["folds"]["0"]
    assert second["folds"]["1"] != first["folds"]["1"]
    assert train.main([*flags, "--overwrite"]) == 0
    third = json.loads(Path("weights/lightgbm/tracking.json").read_text())
    assert third["parent"] != first["parent"]
    client, found = _runs(uri)
    assert len([r for r in found if "mlflow.parentRunId" not in r.data.tags]) == 2


def test_a_damaged_tracking_record_warns_and_training_finishes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("quick.json").write_text(QUICK)
    flags = ["--data", "sample-table", "--model", "lightgbm", "--gbm-params", "quick.json"]
    assert make_folds.main(["--data", "sample-table", "--n-splits", "3"]) == 0
    assert train.main([*flags, "--fold", "0", "--track", "mlflow", "--track-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 0
    Path("weights/lightgbm/tracking.json").write_text('{"parent": "abc", "folds": {}}')
    capsys.readouterr()
    assert train.main([*flags, "--fold", "1", "--resume"]) == 0
    assert "warning: --track mlflow: weights/lightgbm/tracking.json" in capsys.readouterr().err
    assert sorted(pd.read_csv("weights/lightgbm/oof.csv")["fold"].unique()) == [0, 1]  # fold 1 kept


def test_submit_refuses_a_foreign_submissions_table_before_sending(table_project, kaggle_env, monkeypatch, capsys):
    monkeypatch.chdir(table_project)
    log = Path("submissions/submissions.csv")
    kept = log.read_bytes() if log.is_file() else None
    log.write_text("my,own,notes\n1,2,3\n")
    try:
        with FakeKaggle() as server:
            assert submit.main(["submissions/gbm.csv", "-m", "x", "--data", "sample-table", "--competition", "diabetes-hw"]) == 2
        assert server.uploads == [] and "not the submissions table submit writes" in capsys.readouterr().err
    finally:
        log.write_bytes(kept) if kept is not None else log.unlink()


def test_track_without_mlflow_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    assert make_folds.main(["--data", "sample-table"]) == 0
    assert train.main(["--data", "sample-table", "--model", "lightgbm", "--track", "mlflow"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --track mlflow: MLflow is not installed; pip install 'pipeline[track]' (or pip install mlflow), or "
        "train without --track")
    assert not Path("weights/lightgbm").exists() or not any(Path("weights/lightgbm").glob("fold*"))
