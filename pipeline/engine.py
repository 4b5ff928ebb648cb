"""One training step loop and one predict, shared by training, validation, OOF and test inference."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipeline.augment import random_affine, to_model_input
from pipeline.errors import PipelineError
from pipeline.schedule import lr_at


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"--device: {name} requested but no CUDA GPU is visible; use --device cpu or auto")
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    return device


def autocast(device: torch.device):
    """bf16 autocast on CUDA; fp32 on CPU (bf16 autocast is slow on most CPUs)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """Full batches only (a 1-image last batch would break BatchNorm); at least one step."""
    return max(1, n_rows // batch_size)


def auto_batch_size(n_rows: int) -> int:
    """Largest of 256/128/64/32 that still gives >= 16 optimizer steps per epoch (small data: more steps).

    >>> auto_batch_size(33_600), auto_batch_size(1_150)
    (256, 64)
    """
    return next((b for b in (256, 128, 64) if n_rows // b >= 16), 32)


@dataclass
class EpochResult:
    loss: float  # mean label-smoothed training loss
    accuracy: float  # on the augmented training batches
    step: int  # the next optimizer step
    lrs: list[float]  # learning rate of each optimizer step, as applied


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                    labels: torch.Tensor, cfg, step: int, total_steps: int,
                    generator: torch.Generator, desc: str = "") -> EpochResult:
    """One pass over (N, C, H, W) uint8 `images` resident on the device.

    lr follows lr_at(step) per optimizer step; label smoothing applies to this loss only.
    """
    device, n = images.device, len(images)
    batch = min(cfg.batch_size, n)
    n_steps = steps_per_epoch(n, cfg.batch_size)
    warmup = round(cfg.warmup_epochs * n_steps)
    channels_last = device.type == "cuda"
    order = torch.randperm(n, device=device, generator=generator)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    lrs = []
    model.train()
    bar = tqdm(range(n_steps), desc=desc, leave=False, unit="step", dynamic_ncols=True, disable=None)
    for i in bar:
        lr = lr_at(step, total_steps, warmup, cfg.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        lrs.append(lr)
        idx = order[i * batch:(i + 1) * batch]
        x = random_affine(images[idx], cfg.rotate, cfg.scale, cfg.shift, generator)
        x = to_model_input(x, cfg.img_size, channels_last)
        with autocast(device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels[idx], label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach()
        correct += (logits.detach().argmax(1) == labels[idx]).sum()
        step += 1
        if i % 25 == 0 or i == n_steps - 1:  # reading the loss syncs the GPU: not every step
            bar.set_postfix(loss=f"{total_loss.item() / (i + 1):.4f}", lr=f"{lr:.2e}")
    return EpochResult(total_loss.item() / n_steps, correct.item() / (n_steps * batch), step, lrs)


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int, img_size: int,
            device: torch.device, desc: str = "") -> np.ndarray:
    """Class probabilities (N, num_classes) float32 for (N, C, H, W) uint8 images on any device.

    The one forward path for validation, OOF and test (a ttach wrapper is just another model).
    """
    model.eval()
    channels_last = device.type == "cuda"
    out = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, leave=False, unit="batch", disable=None if desc and len(starts) > 1 else True):
        x = to_model_input(images[start:start + batch_size].to(device, non_blocking=True), img_size, channels_last)
        with autocast(device):
            logits = model(x)
        out.append(logits.float().softmax(1))
    return torch.cat(out).cpu().numpy()
