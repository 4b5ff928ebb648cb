"""Side-by-side training benchmark: the seed-notebook loop vs the pipeline's own training path.

    python -m pipeline.bench --data data/digit-recognizer.zip --device cuda --model resnet18 --batch-size 256
    python -m pipeline.bench --data data/digit-recognizer.zip --device cpu --limit 4000
    python -m pipeline.bench --images 2000 --model resnet18 --img-size 64 --device cpu   # image files (pipeline.bench.images)
    python -m pipeline.bench --table 100000 --epochs 3 --device cpu                       # tables (pipeline.bench.tables)
    python -m pipeline.bench --frames 200000 --epochs 3 --device cpu                      # HW2 frames (pipeline.bench.sequences)
    python -m pipeline.bench --speakers 2000 --epochs 3 --device cpu                      # HW4 utterances (pipeline.bench.sequences)
    python -m pipeline.bench --portfolio tables/computers.zip --time-limit 90             # vs AutoGluon (pipeline.bench.portfolio)

Both train fold 0 with the same model, batch size, optimizer (timm AdamW), timm schedule, precision option
(--precision), label smoothing, augmentation law and ranges, input side (--img-size) and epochs, in one process,
one after the other; they differ only in the data path:
1. seed notebook: a Dataset reading one pandas row per item, albumentations Affine (and Resize) on CPU,
   DataLoader worker processes, torch.nn.DataParallel;
2. pipeline: `pipeline.trainer.train_fold`, the exact code `train` runs (device-resident data, GPU augmentation).
Each side builds its model outside the timer, and its first epoch is the warm-up (worker start, cuDNN autotuning,
allocator): throughput is timed over epochs 2.. (training and validation, checkpoint writes apart). With --epochs 1
the one epoch is timed and the line says so. Figures are printed, never asserted. The last line is the speedup.
"""
from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

from pipeline import data
from pipeline.augment import MEAN, STD, albumentations_affine
from pipeline.config import Config, ExperimentConfig, parse_stage
from pipeline.device import autocast, grad_scaler, resolve_device
from pipeline.inputs.spec import DataSpec
from pipeline.training.engine import auto_batch_size, backward_and_step, steps_per_epoch
from pipeline.errors import main_guard
from pipeline.tasks import assign_folds
from pipeline.metrics import accuracy
from pipeline.models import build_model
from pipeline.tasks import Task
from pipeline.training.loop import fit
from pipeline.training.recipe import Recipe, make_scheduler

DIGITS = Task("multiclass", tuple(str(i) for i in range(10)))

FLAGS = ["data", "device", "model", "batch_size", "epochs", "lr", "seed", "img_size", "cache_dir", "precision", "hidden",
         "gbm_params", "layers", "context", "crop_len", "time_limit", "seeds", "learners"]


class RowDataset(torch.utils.data.Dataset):
    """The notebooks' Dataset: one DataFrame row per item, augmented with albumentations."""

    def __init__(self, frame: pd.DataFrame, transform=None, img_size: int = 28):
        import albumentations as A

        self.frame, self.transform = frame, transform
        self.resize = A.Resize(img_size, img_size) if img_size != 28 else None

    def __len__(self):
        return len(self.frame)

    def __getitem__(self, i):
        label = int(self.frame.iloc[i, 0])
        image = self.frame.iloc[i, 1:].to_numpy(dtype=np.uint8).reshape(28, 28)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        if self.resize is not None:
            image = self.resize(image=image)["image"]
        x = (torch.from_numpy(image.astype(np.float32) / 255.0)[None] - MEAN) / STD
        return x, label


def seed_notebook_fold(cfg: Config, frame: pd.DataFrame, folds: np.ndarray, device: torch.device,
                       workers: int) -> dict:
    """Train fold 0 the way the seed notebooks do; returns figures."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.NUM_CLASSES, 1, cfg.img_size).to(device)
    net = nn.DataParallel(model)
    optimizer = create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_rows, valid_rows = frame[folds != 0].reset_index(drop=True), frame[folds == 0].reset_index(drop=True)
    augment = albumentations_affine(cfg.rotate, cfg.scale, cfg.shift)
    train_loader = torch.utils.data.DataLoader(RowDataset(train_rows, augment, cfg.img_size), batch_size=cfg.batch_size,
                                               shuffle=True, drop_last=True, num_workers=workers)
    valid_loader = torch.utils.data.DataLoader(RowDataset(valid_rows, None, cfg.img_size),
                                               batch_size=2 * cfg.batch_size, num_workers=workers)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch(len(train_rows), cfg.batch_size))
    scaler = grad_scaler(cfg.precision, device)
    step, best, seconds = 0, 0.0, []
    for epoch in range(cfg.epochs):
        started = time.perf_counter()
        net.train()
        for x, y in train_loader:
            scheduler.step_update(step)
            x, y = x.to(device), y.to(device)
            with autocast(device, cfg.precision):
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            backward_and_step(loss, net, optimizer, scaler)
            step += 1
        net.eval()
        with torch.no_grad(), autocast(device, cfg.precision):
            probs = torch.cat([net(x.to(device)).float().softmax(1).cpu() for x, _ in valid_loader]).numpy()
        seconds.append(time.perf_counter() - started)
        best = max(best, accuracy(probs, valid_rows["label"].to_numpy()))
    return {"epoch_seconds": seconds, "rows": len(train_rows), "accuracy": best}


def pipeline_fold(cfg: Config, train: data.TrainSet, folds: np.ndarray, device: torch.device) -> dict:
    """Fold 0 through `training.loop.fit`, the function `python -m pipeline.train` calls; per-epoch seconds (training and
    validation, as train_fold times them) from the metrics it writes."""
    images = torch.from_numpy(train.rows).to(device)
    labels = torch.from_numpy(train.labels).to(device)
    spec = DataSpec(DIGITS, cfg.img_size, (MEAN,), (STD,), "digits")
    resolved = ExperimentConfig.resolve(cfg, n_splits=5, num_classes=data.NUM_CLASSES, data_spec=spec.to_dict())
    with tempfile.TemporaryDirectory() as tmp:
        probs = fit(Recipe(cfg, spec, resolved.in_chans, device), resolved, (images, labels), folds, 0, Path(tmp))
        seconds = pd.read_csv(Path(tmp) / "metrics.csv")["seconds"].tolist()
    return {"epoch_seconds": seconds, "rows": int((folds != 0).sum()), "accuracy": accuracy(probs, train.labels[folds == 0])}


def throughput(r: dict) -> tuple[float, float]:
    """(images/s, seconds per epoch) over the timed epochs: all but the first (warm-up) when there are several."""
    timed = r["epoch_seconds"][1:] or r["epoch_seconds"]
    per_epoch = sum(timed) / len(timed)
    return r["rows"] / per_epoch, per_epoch


def memory(device: torch.device) -> str:
    """Host RSS now and at peak (this process; DataLoader workers apart), and peak GPU memory since the last reset."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    rss_now = int(status.get("VmRSS", "0 kB").split()[0]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    gpu = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB" if device.type == "cuda" else ""
    return f"host RSS {rss_now:,.0f} MiB (process peak {peak:,.0f}, largest worker {workers:,.0f}){gpu}"


def report(name: str, r: dict, cfg: Config, device: torch.device) -> float:
    rate, per_epoch = throughput(r)
    print(f"{name:<14} {rate:>10,.0f} img/s  {per_epoch:7.2f} s/epoch  "
          f"valid acc {r['accuracy']:.5f}  {memory(device)}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return rate


def run(cfg: Config, extra: dict) -> float:
    limit, workers = extra["limit"], extra["workers"]
    device = resolve_device(cfg.device)
    if extra["images"]:
        from pipeline.bench.images import run as run_images
        return run_images(cfg, extra["images"], workers, device)
    if extra["table"]:
        from pipeline.bench.tables import run as run_table
        return run_table(cfg, extra["table"], device)
    if extra["portfolio"]:
        from pipeline.bench.portfolio import run as run_portfolio
        return run_portfolio(cfg, extra["portfolio"], extra["presets"].split(","), extra["autogluon_python"])
    if extra["frames"] or extra["speakers"]:
        from pipeline.bench.sequences import run as run_sequences
        mode = "frames" if extra["frames"] else "speakers"
        return run_sequences(cfg, mode, extra[mode], workers, device)
    src = data.resolve(cfg.data)
    train = data.read_train(src)
    if limit:
        train = data.TrainSet(train.targets[:limit], train.ids[:limit], None, train.train_hash, rows=train.rows[:limit])
    frame = pd.DataFrame(train.rows.reshape(len(train.labels), -1), columns=data.PIXELS)
    frame.insert(0, "label", train.labels)
    folds = assign_folds(train.labels, 5, cfg.seed)
    cfg = replace(cfg, batch_size=cfg.batch_size or auto_batch_size(int((folds != 0).sum())))
    print(f"bench: {cfg.model}, fold 0 of {len(folds):,} rows, batch {cfg.batch_size}, {cfg.epochs} epochs, "
          f"device {device}{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}, "
          f"{os.cpu_count()} CPUs, seed-notebook workers {workers}, precision {cfg.precision}, {cfg.img_size}px; "
          + ("epoch 1 is the warm-up, epochs 2.. timed" if cfg.epochs > 1 else "one epoch, timed with no warm-up"))
    seed = report("seed-notebook", seed_notebook_fold(cfg, frame, folds, device, workers), cfg, device)
    fast = report("pipeline", pipeline_fold(cfg, train, folds, device), cfg, device)
    print(f"speedup: {fast / seed:.2f}x (pipeline {fast:,.0f} img/s vs seed-notebook {seed:,.0f} img/s)")
    return fast / seed


def main(argv=None) -> int:
    extra = {"limit": {"type": int, "default": 0, "help": "use the first N train rows (0 = all)"},
             "workers": {"type": int, "default": min(4, os.cpu_count() or 1),
                         "help": "seed-notebook DataLoader worker processes"},
             "images": {"type": int, "default": 0,
                        "help": "image-file mode: write N 384px JPEGs once and compare the notebook's per-item loader "
                                "with the decode-once cache (see pipeline/bench/images.py)"},
             "table": {"type": int, "default": 0,
                       "help": "table mode: a table of N rows x 100 features; the MLP's DataLoader loop vs the "
                               "device-resident path, and plain 5-fold LightGBM vs the pipeline's (pipeline/bench/tables.py)"},
             "frames": {"type": int, "default": 0,
                        "help": "HW2 mode: N frames; the notebook's concatenated windows in a DataLoader vs windows "
                                "gathered from the packed frames (pipeline/bench/sequences.py)"},
             "portfolio": {"default": "", "help": "a table competition folder or zip with its solution.csv: the "
                           "portfolio vs AutoGluon, same rows and --time-limit, scored on the test truth "
                           "(pipeline/bench/portfolio.py)"},
             "presets": {"default": "medium_quality,best_quality", "help": "--portfolio: AutoGluon's presets to run"},
             "autogluon_python": {"default": sys.executable,
                                  "help": "--portfolio: the Python that has autogluon.tabular (default: this one)"},
             "speakers": {"type": int, "default": 0,
                          "help": "HW4 mode: N utterances; a per-item .pt Dataset with a padding collate vs the packed "
                                  "path (pipeline/bench/sequences.py)"}}
    return main_guard(lambda a: run(*parse_stage(a, "bench", FLAGS, __doc__, {"epochs": 3, "seeds": 3}, extra)), argv)


if __name__ == "__main__":
    sys.exit(main())
