"""Table benchmarks, side by side in one process (`python -m pipeline.bench --table ROWS`):

1. MLP: the seed notebook's way (a TensorDataset and a DataLoader of --batch-size, shuffled, a Python loop per
   epoch) against the pipeline's `train_fold` (the table on the device, batches gathered by index), on fold 0 of
   the same preprocessed table: same network (pipeline.nets.MLP), optimizer (timm AdamW), schedule, batch size
   and epochs; each validates once an epoch. Rows/s over epochs 2.. (the first is the warm-up).
2. LightGBM: a plain 5-fold `lgb.train` loop over the same folds and parameters against the pipeline's gbm learner
   (`learners.boosted.train_fold`: per-fold preprocessing, early stopping on the competition metric, the model
   and OOF files written); wall seconds of all 5 folds each.

The table is scikit-learn's make_regression (ROWS x 100 features, 20 informative, noise): a speed benchmark, so
the figures are throughput and wall time; the RMSE is printed to show both sides learn the same thing.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

from pipeline.config import Config, ExperimentConfig, to_dict
from pipeline.inputs.spec import DataSpec
from pipeline.training.engine import backward_and_step, steps_per_epoch
from pipeline.training.recipe import make_scheduler
from pipeline.tasks import assign_folds
from pipeline.nets import MLP, parse_hidden
from pipeline.tasks import Task, target_bins

TASK = Task("regression", ("target",))
FEATURES = 100


def make_table(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x (rows, 100) float32, y (rows,) float32, folds (rows,)): a regression table and its 5 folds."""
    from sklearn.datasets import make_regression

    x, y = make_regression(rows, FEATURES, n_informative=20, noise=10.0, random_state=seed)
    y = ((y - y.mean()) / y.std()).astype(np.float32)
    return x.astype(np.float32), y, assign_folds(target_bins(y, 5), 5, seed)


def notebook_mlp(cfg: Config, x: np.ndarray, y: np.ndarray, folds: np.ndarray, device: torch.device) -> dict:
    """Fold 0 the seed notebook's way: standardised on the training rows, TensorDataset + DataLoader."""
    train, valid = folds != 0, folds == 0
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    z = (x - mean) / std
    torch.manual_seed(cfg.seed)
    model = MLP(FEATURES, 1, parse_hidden(cfg.hidden), 0.1).to(device)
    optimizer = create_optimizer_v2(model, cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch(int(train.sum()), cfg.batch_size), False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(z[train]),
                                                                        torch.from_numpy(y[train])),
                                         batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    x_valid = torch.from_numpy(z[valid]).to(device)
    seconds, step, rmse = [], 0, float("nan")
    for _ in range(cfg.epochs):
        started = time.perf_counter()
        model.train()
        for xb, yb in loader:
            scheduler.step_update(step)
            loss = F.mse_loss(model(xb.to(device)).reshape(-1), yb.to(device))
            backward_and_step(loss, model, optimizer)
            step += 1
        model.eval()
        with torch.no_grad():
            preds = torch.cat([model(x_valid[i:i + 2 * cfg.batch_size]) for i in range(0, len(x_valid), 2 * cfg.batch_size)])
        rmse = float(torch.sqrt(((preds.reshape(-1).cpu() - torch.from_numpy(y[valid])) ** 2).mean()))
        seconds.append(time.perf_counter() - started)
    return {"epoch_seconds": seconds, "rows": int(train.sum()), "rmse": rmse}


def pipeline_mlp(cfg: Config, x: np.ndarray, y: np.ndarray, folds: np.ndarray, device: torch.device) -> dict:
    """Fold 0 through `training.loop.fit` on the table kind (per-fold preprocessing fitted in it)."""
    from pipeline.training.loop import fit
    from pipeline.training.recipe import Recipe

    spec = DataSpec(TASK, 0, (0.0,), (1.0,), "none", "table",
                    {"names": [f"f{j}" for j in range(FEATURES)], "categorical": [], "cardinalities": []})
    resolved = ExperimentConfig.resolve(cfg, n_splits=5, num_classes=1, data_spec=spec.to_dict())
    with tempfile.TemporaryDirectory() as tmp:
        rows = (torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
        preds = fit(Recipe(cfg, spec, resolved.in_chans, device), resolved, rows, folds, 0, Path(tmp))
        import pandas as pd

        seconds = pd.read_csv(Path(tmp) / "metrics.csv")["seconds"].tolist()
    rmse = float(np.sqrt(np.mean((preds.reshape(-1) - y[folds == 0]) ** 2)))
    return {"epoch_seconds": seconds, "rows": int((folds != 0).sum()), "rmse": rmse}


def rate(r: dict) -> float:
    timed = r["epoch_seconds"][1:] or r["epoch_seconds"]
    return r["rows"] / (sum(timed) / len(timed))


def plain_lightgbm(x: np.ndarray, y: np.ndarray, folds: np.ndarray, seed: int, gbm_params: str = "") -> tuple[float, float]:
    """(wall seconds, OOF rmse): the 5-fold loop a notebook writes, with the pipeline's parameters (its defaults and
    --gbm-params; fold k's seed is seed + k, as the pipeline's)."""
    import lightgbm as lgb

    from pipeline.learners import gbm

    user = gbm.load_params(gbm_params) if gbm_params else {}
    oof = np.zeros(len(y))
    started = time.perf_counter()
    for k in range(5):
        params, rounds, stopping = gbm.resolve_params(user, TASK, seed + k)
        params = params | {"metric": "rmse", "num_threads": torch.get_num_threads()}  # the pipeline side's threads
        tr, va = folds != k, folds == k
        train = lgb.Dataset(x[tr], label=y[tr])
        booster = lgb.train(params, train, rounds, valid_sets=[train.create_valid(x[va], label=y[va])],
                            callbacks=[lgb.early_stopping(stopping, verbose=False)])
        oof[va] = booster.predict(x[va], num_iteration=booster.best_iteration)
    return time.perf_counter() - started, float(np.sqrt(np.mean((oof - y) ** 2)))


def pipeline_lightgbm(cfg: Config, x: np.ndarray, y: np.ndarray, folds: np.ndarray) -> tuple[float, float]:
    """(wall seconds, OOF rmse): the pipeline's gbm learner, every fold's files written as train writes them."""
    from pipeline.learners import boosted, gbm

    spec = DataSpec(TASK, 0, (0.0,), (1.0,), "none", "table",
                    {"names": [f"f{j}" for j in range(FEATURES)], "categorical": [], "cardinalities": []})
    oof = np.zeros(len(y))
    data, targets = torch.from_numpy(x), torch.from_numpy(y)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        for k in range(5):
            params = gbm.load_params(cfg.gbm_params) if cfg.gbm_params else {}
            oof[folds == k] = boosted.train_fold(cfg, params, spec, k, (data, targets), folds, Path(tmp)).reshape(-1)
        seconds = time.perf_counter() - started
    return seconds, float(np.sqrt(np.mean((oof - y) ** 2)))


def run(cfg: Config, rows: int, device: torch.device) -> float:
    x, y, folds = make_table(rows, cfg.seed)
    cfg = Config(**{**to_dict(cfg), "model": "mlp", "batch_size": cfg.batch_size or 256, "label_smoothing": 0.0,
                    "exp": ()})
    print(f"bench --table: {rows:,} rows x {FEATURES} features (make_regression), MLP {cfg.hidden or '256,128'}, "
          f"batch {cfg.batch_size}, {cfg.epochs} epochs, device {device}; epoch 1 is the warm-up")
    slow = notebook_mlp(cfg, x, y, folds, device)
    fast = pipeline_mlp(cfg, x, y, folds, device)
    for name, r in (("seed-notebook", slow), ("pipeline", fast)):
        print(f"mlp {name:<14} {rate(r):>10,.0f} rows/s  valid rmse {r['rmse']:.4f}")
    speedup = rate(fast) / rate(slow)
    plain_s, plain_rmse = plain_lightgbm(x, y, folds, cfg.seed, cfg.gbm_params)
    ours_s, ours_rmse = pipeline_lightgbm(replace_model(cfg, "lightgbm"), x, y, folds)
    print(f"lightgbm plain 5-fold loop {plain_s:8.2f} s  OOF rmse {plain_rmse:.4f}")
    print(f"lightgbm pipeline          {ours_s:8.2f} s  OOF rmse {ours_rmse:.4f}")
    print(f"speedup: mlp {speedup:.2f}x (rows/s, pipeline vs seed-notebook); lightgbm wall {ours_s / plain_s:.2f}x "
          "of the plain loop")
    return speedup


def replace_model(cfg: Config, model: str) -> Config:
    import dataclasses

    return dataclasses.replace(cfg, model=model)
