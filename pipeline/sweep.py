"""Learning-rate x batch-size grid on one fold: a CSV, a heatmap of the validation metric, the best pair.

    python -m pipeline.sweep --lr 1e-3 5e-4 2e-4 --batch-size 64 128 256 --fold 0 --epochs 10

Each cell is a normal `train` run into weights/sweeps/<sweep>/lr<lr>_bs<bs>/ on the shared folds file.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import train
from pipeline.io import write_csv
from pipeline.config import TRAIN_FLAGS, Config, check_name, parse_stage, with_lr
from pipeline.errors import PipelineError, main_guard

FLAGS = [f for f in TRAIN_FLAGS if f not in ("lr", "batch_size", "exp", "resume", "report", "oof_tta", "overwrite")]


def grid_table(rows: list[dict]) -> pd.DataFrame:
    """The validation metric as a (lr x batch size) table (pure)."""
    return pd.DataFrame(rows).pivot(index="lr", columns="batch_size", values="valid_score").sort_index(ascending=False)


def plot_heatmap(grid: pd.DataFrame, path: Path, metric: str = "accuracy") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.reporting import save

    fig, ax = plt.subplots(figsize=(1.4 * len(grid.columns) + 2, 1.0 * len(grid.index) + 1.5))
    image = ax.imshow(grid.to_numpy(), cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(grid.to_numpy()):
        ax.text(j, i, f"{v:.4f}", ha="center", va="center", color="white" if v < np.nanmax(grid.to_numpy()) else "black")
    ax.set(xticks=range(len(grid.columns)), xticklabels=grid.columns, yticks=range(len(grid.index)),
           yticklabels=[f"{v:g}" for v in grid.index], xlabel="batch size", ylabel="peak learning rate",
           title=f"validation {metric}")
    fig.colorbar(image, ax=ax)
    save(fig, path)


def run(cfg: Config, extra: dict) -> pd.DataFrame:
    from pipeline.learners import learner_for

    if not learner_for(cfg.model).curves():
        raise PipelineError(f"sweep: grids learning rate x batch size, which --model {cfg.model} does not have "
                            f"(no batches, no epochs); search its parameters with: python -m pipeline.tune --model "
                            f"{cfg.model} --data {shlex.quote(cfg.data)} --trials 30")
    out_dir = Path(cfg.weights_dir) / "sweeps" / check_name(extra["name"], "--name")
    cells = {f"lr{lr:g}_bs{bs}": replace(with_lr(cfg, lr), batch_size=bs, exp=(f"lr{lr:g}_bs{bs}",), weights_dir=str(out_dir),
                                         overwrite=True)
             for lr in extra["lr"] for bs in extra["batch_size"]}  # every cell validated before the first trains
    rows = []
    for name, cell in cells.items():
        print(f"== sweep {name}")
        cv = train.run(cell)
        metric, higher = cv.metric, cv.higher_is_better
        rows.append({"lr": cell.lr, "batch_size": cell.batch_size, "metric": metric, "valid_score": cv.score,
                     "valid_loss": cv.oof["loss"], "train_seconds": cv.train_seconds})
        write_csv(pd.DataFrame(rows), out_dir / "sweep.csv")  # kept up to date: an interrupted sweep keeps its cells
    table = pd.DataFrame(rows)
    grid = grid_table(rows)
    plot_heatmap(grid, out_dir / "sweep.png", metric)
    best = table.sort_values(["valid_score", "valid_loss"], ascending=[not higher, True]).iloc[0]
    print(grid.to_string(float_format=lambda v: f"{v:.5f}"))
    print(f"wrote {out_dir / 'sweep.csv'} and {out_dir / 'sweep.png'}")
    print(f"best: lr {best['lr']:g}, batch size {int(best['batch_size'])} -> valid {metric} "
          f"{best['valid_score']:.5f} (loss {best['valid_loss']:.4f})")
    from pipeline.reporting import report_command  # matplotlib only once a sweep has run

    best_cell = list(cells)[int(best.name)]  # rows follow the cells' order
    print(f"figures of the best cell: {report_command(best_cell, str(out_dir), cfg.data)}")
    return table


def main(argv=None) -> int:
    extra = {"lr": {"type": float, "nargs": "+", "default": [3e-3, 1e-3, 3e-4], "help": "peak learning rates to try"},
             "batch_size": {"type": int, "nargs": "+", "default": [64, 128, 256], "help": "batch sizes to try"},
             "name": {"default": "lr_bs", "help": "sweep folder under weights/sweeps/"}}
    return main_guard(lambda a: run(*parse_stage(a, "sweep", FLAGS, __doc__, {"fold": "0"}, extra)), argv)


if __name__ == "__main__":
    sys.exit(main())
