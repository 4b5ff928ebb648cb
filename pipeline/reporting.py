"""Figures and a one-page report of an experiment, from the files training left in weights/<exp>/: the library
behind `python -m pipeline.report` and `train --report` (write_report), and sweep's heatmap (save).
"""
from __future__ import annotations

import shlex
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support  # noqa: E402

from pipeline import intervals  # noqa: E402
from pipeline.io import atomic_path, write_csv  # noqa: E402
from pipeline.config import Config, ExperimentConfig  # noqa: E402
from pipeline.inputs.spec import DataSpec  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.experiment import CVSummary, cv_summary, oof_arrays, oof_where, read_oof, read_table  # noqa: E402
from pipeline.learners import learner_for  # noqa: E402


def per_class_scores(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, then the macro average (pure)."""
    p, r, f, n = precision_recall_fscore_support(labels, preds, labels=np.arange(num_classes), zero_division=0)
    table = pd.DataFrame({"class": [str(c) for c in range(num_classes)], "precision": p, "recall": r, "f1": f,
                          "support": n})
    macro = {"class": "macro avg", "precision": p.mean(), "recall": r.mean(), "f1": f.mean(), "support": n.sum()}
    return pd.concat([table, pd.DataFrame([macro])], ignore_index=True)


def most_confident_wrong(probs: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Row indices of the n wrong predictions with the highest predicted probability (pure)."""
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    return wrong[np.argsort(-probs[wrong].max(1), kind="stable")][:n]


def save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(metrics: pd.DataFrame, path: Path, metric: str = "accuracy") -> None:
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    column = f"valid_{metric}" if f"valid_{metric}" in metrics else "valid_accuracy"
    for k, m in metrics.groupby("fold"):
        line, = loss_ax.plot(m["epoch"], m["train_loss"], label=f"fold {k} train")
        loss_ax.plot(m["epoch"], m["valid_loss"], "--", color=line.get_color(), label=f"fold {k} valid")
        if metric == "accuracy" and "train_accuracy" in m and m["train_accuracy"].notna().any():
            acc_ax.plot(m["epoch"], m["train_accuracy"], color=line.get_color(), alpha=0.5)
        acc_ax.plot(m["epoch"], m[column], "--", color=line.get_color(), label=f"fold {k} valid")
    loss_ax.set(title="loss (train: label-smoothed, augmented; valid: hard labels)", xlabel="epoch", yscale="log")
    acc_ax.set(title=f"{metric} (solid: train batches, dashed: valid)", xlabel="epoch")
    loss_ax.legend(fontsize=7, ncol=2)
    acc_ax.legend(fontsize=7)
    save(fig, path)


def plot_schedule(schedule: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3))
    for k, s in schedule.groupby("fold"):
        ax.plot(s["step"], s["lr"], lw=2 if k == schedule["fold"].min() else 0.8, label=f"fold {k}")
    ax.set(title="learning rate per optimizer step, as applied", xlabel="step", ylabel="lr")
    ax.legend(fontsize=7)
    save(fig, path)


def plot_confusion(matrix: np.ndarray, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 5.4))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if i == j else "black")
    ax.set(title="OOF confusion matrix (rows: true, columns: predicted)", xlabel="predicted", ylabel="true",
           xticks=range(len(matrix)), yticks=range(len(matrix)))
    save(fig, path)


def plot_wrong(images, labels: np.ndarray, probs: np.ndarray, rows: np.ndarray, names: tuple[str, ...], path: Path) -> None:
    cols = 8
    fig, axes = plt.subplots(max(1, -(-len(rows) // cols)), cols, figsize=(cols * 1.3, 1.5 * max(1, -(-len(rows) // cols))))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, r in zip(np.atleast_1d(axes).ravel(), rows):
        image = np.asarray(images[r])  # (C, H, W) uint8
        ax.imshow(image[0] if len(image) == 1 else image.transpose(1, 2, 0), cmap="gray")
        ax.set_title(f"true {names[labels[r]]} pred {names[probs[r].argmax()]}\np={probs[r].max():.2f}", fontsize=7)
    save(fig, path)


def plot_importance(table: pd.DataFrame, path: Path, top: int = 30) -> None:
    shown = table.head(top).iloc[::-1]
    folds = len([c for c in table.columns if c.startswith("fold ")])
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(shown) + 1.2))
    ax.barh(shown["feature"].astype(str), shown["mean"])
    measure = table.attrs.get("measure", "total split gain")
    ax.set(title=f"{measure}, mean over {folds} folds (top {len(shown)} of {len(table)})", xlabel=measure)
    ax.tick_params(axis="y", labelsize=7)
    save(fig, path)


def plot_residuals(preds: np.ndarray, targets: np.ndarray, name: str, path: Path) -> None:
    """OOF prediction against truth (the diagonal is perfect) and the residuals' histogram, for one target."""
    fig, (fit_ax, res_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    fit_ax.scatter(targets, preds, s=4, alpha=0.4)
    lo, hi = float(min(targets.min(), preds.min())), float(max(targets.max(), preds.max()))
    fit_ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    fit_ax.set(title=f"{name}: OOF prediction against truth", xlabel="true", ylabel="predicted")
    res_ax.hist(preds - targets, bins=50)
    res_ax.set(title=f"{name}: residuals (predicted - true)", xlabel="residual", ylabel="rows")
    save(fig, path)


def largest_residuals(ids: np.ndarray, preds: np.ndarray, targets: np.ndarray, n: int) -> pd.DataFrame:
    """The n OOF rows predicted furthest from their truth (pure)."""
    worst = np.argsort(-np.abs(preds - targets), kind="stable")[:n]
    return pd.DataFrame({"train row": ids[worst], "true": targets[worst].astype(float),
                         "predicted": preds[worst].astype(float)})


def write_report(exp_dir: Path, images=None, n_wrong: int = 24) -> Path:
    """Write exp_dir/report/ (PNGs, CSVs, report.md); `images` are the train images by id (array or tensor), or
    None where the input is not images (no wrong.png).

    Everything is read and checked before the first figure is written; the CV is recomputed from the OOF rows.
    Curves where there are epochs (neural learners), feature importance where the learner has it (gbm),
    confusions and per-class scores for classes, predicted-against-true and residuals for regression.
    """
    config = ExperimentConfig.read(exp_dir / "config.json")
    task = DataSpec.from_config(config, str(exp_dir / "config.json")).task
    metrics, oof, where = read_table(exp_dir / "metrics.csv"), read_oof(exp_dir), oof_where(exp_dir)
    for name, table, columns in ((str(exp_dir / "metrics.csv"), metrics, ["epoch", "train_loss", "valid_loss"]),
                                 (where, oof, ["id"])):
        if table is None or any(c not in table.columns for c in columns):
            raise PipelineError(f"{name}: missing or damaged (needs {', '.join(columns)}); "
                                f"retrain with: python -m pipeline.train --exp {exp_dir.name} --overwrite")
    n_splits = config.n_splits
    cv = cv_summary(oof, n_splits, task, where)  # validates oof.csv; cv.json may be stale or hand-edited
    try:  # its TTA scores, when a sound cv.json of this metric has them
        saved = CVSummary.read(exp_dir / "cv.json") if (exp_dir / "cv.json").exists() else None
    except PipelineError:
        saved = None
    if saved is not None and saved.oof_tta and task.metric in saved.oof_tta and "loss" in saved.oof_tta:
        cv.oof_tta = saved.oof_tta
    if saved is not None and saved.metric == cv.metric and saved.score == cv.score:  # the interval of these OOF rows
        cv.interval = saved.interval
    ids = oof["id"].to_numpy()
    if images is not None and ids.max() >= len(images):
        raise PipelineError(f"{where}: id {ids.max()} is beyond the {len(images):,} train rows; "
                            "pass the --data it was trained on")
    learner = learner_for(config.model)
    importance = learner.importance(exp_dir)
    out = exp_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    if learner.curves():  # a boosted fold is one row (its best iteration): no curve to draw
        plot_curves(metrics, out / "curves.png", task.metric)
        sections.append("## Training curves\n![curves](curves.png)\n")
        if (exp_dir / "schedule.csv").is_file():
            plot_schedule(read_table(exp_dir / "schedule.csv"), out / "lr.png")
            sections.append("## Learning-rate schedule\n![lr](lr.png)\n")
    else:
        sections.append(learner.fold_summary(exp_dir, metrics))
    if importance is not None:
        write_csv(importance, out / "importance.csv")
        plot_importance(importance, out / "importance.png")
        sections.append(f"## Feature importance ({importance.attrs.get('measure', 'total split gain')}; all features "
                        "in importance.csv)\n"
                        f"![importance](importance.png)\n\n{markdown_table(importance.head(15), '.1f')}\n")
    if task.has_classes:  # confusions and per-class scores mean something for classes only
        probs, labels = oof_arrays(oof, task, where)
        preds = probs.argmax(1)
        matrix = confusion_matrix(labels, preds, labels=np.arange(task.num_outputs))
        plot_confusion(matrix, out / "confusion.png")
        write_csv(pd.DataFrame(matrix, index=pd.Index(task.classes, name="true"), columns=task.classes).reset_index(),
                  out / "confusion.csv")  # rows: the true class (first column), columns: the predicted one
        classes = per_class_scores(labels, preds, task.num_outputs).assign(
            **{"class": [*task.classes, "macro avg"]})
        write_csv(classes, out / "per_class.csv")
        sections.append(f"## OOF confusion matrix\n![confusion](confusion.png)\n\n## Per-class scores (OOF)\n"
                        f"{markdown_table(classes, '.4f')}\n")
        if images is not None:
            wrong = most_confident_wrong(probs, labels, n_wrong)
            shown = {r: (images[int(ids[r])].cpu() if hasattr(images, "cpu") else images[int(ids[r])]) for r in wrong}
            plot_wrong(shown, labels, probs, wrong, task.classes, out / "wrong.png")
            sections.append(f"## Most confidently wrong OOF images ({len(wrong)})\n![wrong](wrong.png)\n")
    if not task.outputs_probabilities:  # values: residuals of each target
        preds, targets = oof_arrays(oof, task, where)
        targets = targets.reshape(len(preds), -1)
        for j, target in enumerate(task.classes):
            png = "residuals.png" if j == 0 else f"residuals_{j}.png"
            plot_residuals(preds[:, j], targets[:, j], target, out / png)
            worst = largest_residuals(ids, preds[:, j], targets[:, j], 10)
            sections.append(f"## Residuals of {target} (OOF)\n![residuals]({png})\n\nThe rows predicted furthest "
                            f"from their {target}:\n\n{markdown_table(worst, '.6g')}\n")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(report_markdown(exp_dir.name, config, cv, sections))
    return out / "report.md"


def markdown_table(df: pd.DataFrame, floatfmt: str) -> str:
    cell = lambda v: format(v, floatfmt) if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def report_markdown(name: str, config: ExperimentConfig, cv: CVSummary, sections: list[str]) -> str:
    metric = cv.metric
    folds = pd.DataFrame([{"fold": k, **s} for k, s in cv.per_fold.items()])
    tta = (f"\nOOF with TTA ({cv.oof_tta['preset']}): {metric} {cv.oof_tta[metric]:.5f}, "
           f"loss {cv.oof_tta['loss']:.4f}\n" if cv.oof_tta else "")
    interval = "; ".join(filter(None, [intervals.describe(cv.interval), intervals.describe_test(cv.interval)]))
    interval = f"{interval}.\n" if interval else ""
    keys = learner_for(config.model).report_keys
    recipe = ", ".join(f"{k} {config.setting(k)}" for k in keys)
    body = "\n".join(sections)
    return f"""# Experiment {name}

{recipe}

## Local CV
OOF {metric} {cv.score:.5f}, loss {cv.oof['loss']:.4f} over {cv.rows:,} rows
({'all folds' if cv.complete else 'folds ' + ', '.join(map(str, cv.folds_present)) + ' only'});
fold {metric} {cv.fold_mean:.5f} +- {cv.fold_std:.5f} (mean +- std over folds: not an interval).
{interval}
{tta}
{markdown_table(folds, '.5f')}

{body}"""


def report_command(exp: str, weights_dir: str, data_flag: str) -> str:
    """The report command for an experiment trained with these --weights-dir and --data, as it must be typed."""
    defaults = Config()
    words = ["python -m pipeline.report --exp", shlex.quote(exp)]
    if weights_dir != defaults.weights_dir:
        words += ["--weights-dir", shlex.quote(weights_dir)]
    if data_flag != defaults.data:
        words += ["--data", shlex.quote(data_flag)]
    return " ".join(words)
