"""Image-file benchmark: the notebook's per-item loader against the pipeline's decode-once cache, side by side.

    python -m pipeline.bench --images 2000                       # 384 px JPEGs (quality 90) written once, then:
    python -m pipeline.bench --images 2000 --model resnet18 --img-size 64 --device cpu

1. delivery: images per second handed to the model, no model. Notebook: PIL open + resize + albumentations
   (flip, affine, brightness/contrast) per item in DataLoader workers, every epoch. Pipeline: the uint8 cache
   (decoded once, timed apart), batches gathered and augmented on the device with the same law.
2. one training epoch of the same model, precision (--precision), fixed lr and optimizer through each path, the
   model build and one warm-up step outside the timer on both sides.
Figures are printed, never asserted; the last line is the speedup.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

from pipeline import data
from pipeline.augment import random_natural, to_model_input
from pipeline.config import Config
from pipeline.data import images as img
from pipeline.device import autocast, grad_scaler, take
from pipeline.inputs.spec import DataSpec
from pipeline.training.engine import Rows, Steps, Trainee, backward_and_step, train_one_epoch
from pipeline.models import build_model
from pipeline.tasks import Task

from pipeline.data.layouts.csv_images import IMAGENET_MEAN as MEAN, IMAGENET_STD as STD  # noqa: E402


def write_jpegs(root: Path, n: int, side: int = 384, quality: int = 90) -> Path:
    """n JPEGs of side px from the bundled digits: upscaled, coloured, with texture so JPEG has real work to do."""
    from PIL import Image

    from pipeline.data.sample import NAMES, _digits_28

    if (root / "train.csv").is_file() and len(pd.read_csv(root / "train.csv")) == n:
        return root
    images, target, _, _ = _digits_28()
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(images), n)
    (root / "train_images").mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(rows):
        digit = np.asarray(Image.fromarray(images[r]).resize((side, side), Image.BICUBIC), dtype=np.float32)
        noise = rng.normal(0, 18, (side, side, 3))
        colour = rng.uniform(0.3, 1.0, 3) * digit[..., None] + rng.uniform(20, 90, 3)
        Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8)).save(root / "train_images" / f"{i}.jpg",
                                                                              quality=quality)
    pd.DataFrame({"image_id": np.arange(n), "label": [NAMES[target[r]] for r in rows]}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"image_id": [0], "label": [NAMES[0]]}).to_csv(root / "sample_submission.csv", index=False)
    return root


class NotebookFiles(torch.utils.data.Dataset):
    """timm's and the seed notebooks' loader: open, decode, resize and augment one file per item, every epoch."""

    def __init__(self, files: list[str], labels: np.ndarray, img_size: int):
        import albumentations as A

        self.files, self.labels, self.img_size = files, labels, img_size
        self.transform = A.Compose([A.RandomResizedCrop((img_size, img_size), scale=(0.35, 1.0)), A.HorizontalFlip(),
                                    A.Affine(rotate=(-10, 10), p=1.0), A.RandomBrightnessContrast(0.2, 0.2)])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            image = np.asarray(im.convert("RGB").resize((self.img_size, self.img_size), Image.BILINEAR))
        image = self.transform(image=image)["image"]
        x = torch.from_numpy(image.transpose(2, 0, 1).copy()).float()
        return (x / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None], int(self.labels[i])


def notebook_loader(files, labels, img_size: int, batch: int, workers: int):
    return torch.utils.data.DataLoader(NotebookFiles(files, labels, img_size), batch_size=batch, shuffle=True,
                                       drop_last=True, num_workers=workers, persistent_workers=workers > 0)


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def delivery(files, labels, cache: np.ndarray, img_size: int, batch: int, workers: int, device) -> dict:
    """Images per second handed over ready for the model (normalised, augmented, on the device)."""
    loader = notebook_loader(files, labels, img_size, batch, workers)
    next(iter(loader))  # warm-up: workers started, files in the page cache for both sides alike
    notebook_s, n = timed(lambda: sum(len(x.to(device)) for x, _ in loader))
    images = torch.from_numpy(cache).to(device)
    generator = torch.Generator(device=device).manual_seed(0)

    def pipeline_pass() -> int:
        order = torch.randperm(len(images), device=device, generator=generator)
        count = 0
        for start in range(0, len(order) - batch + 1, batch):
            x = random_natural(take(images, order[start:start + batch], device), generator)
            count += len(to_model_input(x, img_size, device.type == "cuda", MEAN, STD))
        return count
    pipeline_pass()  # warm-up
    pipeline_s, m = timed(pipeline_pass)
    return {"notebook": n / notebook_s, "pipeline": m / pipeline_s}


def epoch_notebook(cfg: Config, files, labels, workers: int, device) -> float:
    """One epoch of the notebook way; returns seconds (the model build and a warm-up step outside the timer)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, 10, 3, cfg.img_size).to(device)
    optimizer = create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = grad_scaler(cfg.precision, device)
    loader = notebook_loader(files, labels, cfg.img_size, cfg.batch_size, workers)

    def train_step(x, y):
        with autocast(device, cfg.precision):
            logits = model(x.to(device))
        loss = F.cross_entropy(logits.float(), y.to(device), label_smoothing=cfg.label_smoothing)
        backward_and_step(loss, model, optimizer, scaler)

    def one_epoch():
        model.train()
        for x, y in loader:
            train_step(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
    model.train()
    train_step(*next(iter(loader)))  # warm-up: workers started, kernels chosen
    return timed(one_epoch)[0]


def epoch_pipeline(cfg: Config, cache: np.ndarray, labels: np.ndarray, device) -> float:
    """One epoch of `train_one_epoch` on the cache, the code `python -m pipeline.train` runs (the same fixed lr,
    precision and warm-up step as the notebook side)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, 10, 3, cfg.img_size).to(device)
    optimizer = create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    spec = DataSpec(Task("multiclass", tuple(str(i) for i in range(10))), cfg.img_size, MEAN, STD, "natural")
    images, targets = torch.from_numpy(cache).to(device), torch.from_numpy(labels).to(device)
    rows = torch.arange(len(images), device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    scaler = grad_scaler(cfg.precision, device)

    def one_epoch(rows):
        train_one_epoch(Trainee(model, optimizer, generator, scaler=scaler), Rows(images, rows, targets), spec,
                        Steps.of(cfg), 0)
        if device.type == "cuda":
            torch.cuda.synchronize()
    one_epoch(rows[:cfg.batch_size])  # warm-up: one step
    return timed(lambda: one_epoch(rows))[0]


def model_step_alone(cfg: Config, device: torch.device, steps: int = 20) -> float:
    """Images/s of the training step with no data path at all: one normalised batch already on the device, trained
    on `steps` times (the bound any data path can reach with this model, batch and precision)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, 10, 3, cfg.img_size).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = grad_scaler(cfg.precision, device)
    x = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x
    y = torch.randint(0, 10, (cfg.batch_size,), device=device)

    def step():
        with autocast(device, cfg.precision):
            loss = F.cross_entropy(model(x).float(), y)
        backward_and_step(loss, model, optimizer, scaler)

    model.train()
    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()

    def many():
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return steps * cfg.batch_size / timed(many)[0]


def run(cfg: Config, n: int, workers: int, device: torch.device) -> float:
    root = write_jpegs(Path(cfg.cache_dir) / "bench-jpegs", n)
    src = data.Source(root)
    desc, train = data.describe(src)
    files = [str(root / f) for f in train.files]
    labels = train.targets.astype(np.int64)
    cfg = replace(cfg, batch_size=cfg.batch_size or 64, warmup_epochs=0)
    build_s, cache = timed(lambda: img.cached_images(src, list(train.files), cfg.img_size, 3, cfg.cache_dir, "bench"))
    print(f"bench (image files): {n:,} JPEGs of 384x384 (quality 90) -> {cfg.img_size}px, {cfg.model}, batch "
          f"{cfg.batch_size}, device {device}, {os.cpu_count()} CPUs, notebook workers {workers}; "
          f"cache decode {build_s:.1f}s ({n / build_s:,.0f} img/s, once; 0 if it existed)")
    rates = delivery(files, labels, np.asarray(cache), cfg.img_size, cfg.batch_size, workers, device)
    print(f"delivery       notebook {rates['notebook']:>9,.0f} img/s   pipeline {rates['pipeline']:>9,.0f} img/s   "
          f"{rates['pipeline'] / rates['notebook']:.2f}x")
    notebook_s = epoch_notebook(cfg, files, labels, workers, device)
    pipeline_s = epoch_pipeline(cfg, np.asarray(cache), labels, device)
    print(f"epoch          notebook {notebook_s:>8.3f} s ({n / notebook_s:,.0f} img/s)   pipeline {pipeline_s:>8.3f} s "
          f"({n / pipeline_s:,.0f} img/s)")
    alone = model_step_alone(cfg, device)
    reached = n / pipeline_s / alone
    print(f"model step alone {alone:,.0f} img/s (one batch on the device, no data path); the pipeline's epoch reaches "
          f"{reached:.0%} of it: the bound is {'the model (the device)' if reached >= 0.8 else 'the data path'}")
    speedup = notebook_s / pipeline_s
    print(f"speedup: delivery {rates['pipeline'] / rates['notebook']:.2f}x, epoch {speedup:.2f}x "
          f"({cfg.model} at {cfg.img_size}px)")
    return speedup
