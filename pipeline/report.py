"""Figures and a one-page report of an experiment, from the files training left in weights/<exp>/.

    python -m pipeline.report --exp digit_cnn        # weights/digit_cnn/report/report.md + PNGs
    python -m pipeline.train --fold all --report     # the same, at the end of training
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support  # noqa: E402

from pipeline import data  # noqa: E402
from pipeline.checkpoint import atomic_path, read_json, write_csv  # noqa: E402
from pipeline.config import Config, parse_config  # noqa: E402
from pipeline.errors import PipelineError, main_guard  # noqa: E402
from pipeline.experiment import experiment_dir, prob_columns, read_table  # noqa: E402

FLAGS = ["exp", "data", "weights_dir", "model"]


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


def plot_curves(metrics: pd.DataFrame, path: Path) -> None:
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    for k, m in metrics.groupby("fold"):
        line, = loss_ax.plot(m["epoch"], m["train_loss"], label=f"fold {k} train")
        loss_ax.plot(m["epoch"], m["valid_loss"], "--", color=line.get_color(), label=f"fold {k} valid")
        if "train_accuracy" in m:
            acc_ax.plot(m["epoch"], m["train_accuracy"], color=line.get_color(), alpha=0.5)
        acc_ax.plot(m["epoch"], m["valid_accuracy"], "--", color=line.get_color(), label=f"fold {k} valid")
    loss_ax.set(title="loss (train: label-smoothed, augmented; valid: hard labels)", xlabel="epoch", yscale="log")
    acc_ax.set(title="accuracy (solid: train batches, dashed: valid)", xlabel="epoch",
               ylim=(max(0.0, metrics["valid_accuracy"].quantile(0.2) - 0.02), 1.0))
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


def plot_wrong(images: np.ndarray, labels: np.ndarray, probs: np.ndarray, rows: np.ndarray, path: Path) -> None:
    cols = 8
    fig, axes = plt.subplots(max(1, -(-len(rows) // cols)), cols, figsize=(cols * 1.3, 1.5 * max(1, -(-len(rows) // cols))))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, r in zip(np.atleast_1d(axes).ravel(), rows):
        ax.imshow(images[r, 0], cmap="gray")
        ax.set_title(f"true {labels[r]} pred {probs[r].argmax()}\np={probs[r].max():.2f}", fontsize=7)
    save(fig, path)


def write_report(exp_dir: Path, images: np.ndarray, n_wrong: int = 24) -> Path:
    """Write exp_dir/report/ (PNGs, per_class.csv, report.md); `images` are the train images by id."""
    out = exp_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    metrics, oof = read_table(exp_dir / "metrics.csv"), read_table(exp_dir / "oof.csv")
    cv, config = read_json(exp_dir / "cv.json", "CV summary"), read_json(exp_dir / "config.json", "experiment config")
    probs = oof[prob_columns(config["num_classes"])].to_numpy()
    labels, preds = oof["label"].to_numpy(), probs.argmax(1)
    plot_curves(metrics, out / "curves.png")
    if (exp_dir / "schedule.csv").is_file():
        plot_schedule(read_table(exp_dir / "schedule.csv"), out / "lr.png")
    matrix = confusion_matrix(labels, preds, labels=np.arange(config["num_classes"]))
    plot_confusion(matrix, out / "confusion.png")
    write_csv(pd.DataFrame(matrix), out / "confusion.csv")
    classes = per_class_scores(labels, preds, config["num_classes"])
    write_csv(classes, out / "per_class.csv")
    wrong = most_confident_wrong(probs, labels, n_wrong)
    plot_wrong(images[oof["id"].to_numpy()], labels, probs, wrong, out / "wrong.png")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(report_markdown(exp_dir.name, config, cv, classes, len(wrong), (out / "lr.png").is_file()))
    return out / "report.md"


def markdown_table(df: pd.DataFrame, floatfmt: str) -> str:
    cell = lambda v: format(v, floatfmt) if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def report_markdown(name: str, config: dict, cv: dict, classes: pd.DataFrame, n_wrong: int, lr_plot: bool) -> str:
    folds = pd.DataFrame([{"fold": k, **s} for k, s in cv["per_fold"].items()])
    accs = folds["accuracy"]
    tta = (f"\nOOF with TTA ({cv['oof_tta']['preset']}): accuracy {cv['oof_tta']['accuracy']:.5f}, "
           f"log loss {cv['oof_tta']['log_loss']:.4f}\n" if "oof_tta" in cv else "")
    recipe = ", ".join(f"{k} {config[k]}" for k in ("model", "epochs", "batch_size", "lr", "label_smoothing", "img_size"))
    return f"""# Experiment {name}

{recipe}

## Local CV
OOF accuracy {cv['oof']['accuracy']:.5f}, log loss {cv['oof']['log_loss']:.4f} over {cv['rows']:,} rows
({'all folds' if cv['complete'] else 'folds ' + ', '.join(map(str, cv['folds_present'])) + ' only'});
fold accuracy {accs.mean():.5f} +- {accs.std(ddof=0):.5f} (mean +- std over folds).
{tta}
{markdown_table(folds, '.5f')}

## Training curves
![curves](curves.png)

{"## Learning-rate schedule" + chr(10) + "![lr](lr.png)" + chr(10) if lr_plot else ""}
## OOF confusion matrix
![confusion](confusion.png)

## Per-class scores (OOF)
{markdown_table(classes, '.4f')}

## Most confidently wrong OOF images ({n_wrong})
![wrong](wrong.png)
"""


def run(cfg: Config) -> Path:
    exp_dir = experiment_dir(cfg.weights_dir, cfg.exp[0] if cfg.exp else cfg.model)
    if not (exp_dir / "oof.csv").is_file():
        raise PipelineError(f"{exp_dir}: no oof.csv to report on; train it with: python -m pipeline.train --exp {exp_dir.name}")
    config = read_json(exp_dir / "config.json", "experiment config")
    train = data.read_train(data.resolve(cfg.data), str(config.get("group_col") or ""))
    trained_on = config.get("train_hash")
    if trained_on != train.train_hash:
        raise PipelineError(f"--data: train.csv (hash {train.train_hash}) is not the one {exp_dir.name} was trained on "
                            f"({trained_on}); pass the same --data")
    path = write_report(exp_dir, train.images)
    print(f"wrote {path} and its figures in {path.parent}/")
    return path


def main(argv=None) -> int:
    return main_guard(lambda a: run(parse_config(a, "report", FLAGS, __doc__)), argv)


if __name__ == "__main__":
    sys.exit(main())
