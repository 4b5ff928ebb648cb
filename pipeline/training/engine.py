"""One training step loop and one predict, shared by training, validation, OOF and test inference."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from pipeline.device import autocast
from pipeline.distributed import SINGLE, Ranks, shard
from pipeline.inputs.spec import DataSpec


@dataclass(frozen=True)
class Steps:
    """What an epoch and a predict read of the recipe: never the whole Config."""
    batch_size: int
    precision: str = "auto"
    label_smoothing: float = 0.0  # on the training loss only
    clip_grad: float = 0.0
    rotate: float = 0.0  # image augmentation strengths (the image kind's train_batch reads them)
    scale: float = 0.0
    shift: float = 0.0
    bars: bool = True  # progress bars (off in parallel fold workers, whose bars would overwrite each other)

    @classmethod
    def of(cls, cfg, bars: bool = True) -> Steps:
        return cls(cfg.batch_size, cfg.precision, cfg.label_smoothing, cfg.clip_grad, cfg.rotate, cfg.scale, cfg.shift,
                   bars)


@dataclass
class Trainee:
    """What one epoch updates: the (wrapped) network and its optimizer, and what steps with them."""
    net: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # batch order and augmentation
    scheduler: object = None  # make_scheduler's (sets the lr before each step), or None for a fixed lr
    scaler: torch.amp.GradScaler | None = None  # fp16's
    ema: object = None  # timm's ModelEmaV3, updated after every step
    mix: object = None  # timm's Mixup


@dataclass(frozen=True)
class Rows:
    """The rows an epoch trains on: `data` (on the device, or in host memory to stream from), the positions of
    the training rows in it, and the targets of every row (on the device)."""
    data: object
    rows: torch.Tensor
    targets: torch.Tensor


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """Full batches only (a 1-image last batch would break BatchNorm); at least one step."""
    return max(1, n_rows // batch_size)


def auto_batch_size(n_rows: int) -> int:
    """Largest of 256/128/64/32 that still gives >= 16 optimizer steps per epoch (small data: more steps).

    >>> auto_batch_size(33_600), auto_batch_size(1_150)
    (256, 64)
    """
    return next((b for b in (256, 128, 64) if n_rows // b >= 16), 32)


def backward_and_step(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler | None = None, clip_grad: float = 0.0) -> None:
    """One optimizer step from `loss`: fp16 scales the loss so small gradients survive and unscales before
    clipping and stepping; bf16 and fp32 step directly."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()


@dataclass
class EpochResult:
    loss: float  # mean label-smoothed training loss
    accuracy: float  # on the augmented training batches
    step: int  # the next optimizer step
    lrs: list[float]  # learning rate of each optimizer step, as applied


def train_one_epoch(fold: Trainee, rows: Rows, spec: DataSpec, steps: Steps, step: int, desc: str = "",
                    ranks: Ranks = SINGLE) -> EpochResult:
    """One pass over the training rows; `step`: the optimizer steps taken so far (the schedule's position).

    The scheduler sets the lr before each optimizer step; label smoothing applies to this loss only. Under torchrun
    every rank draws the same global order and trains on its share of each global batch of steps.batch_size rows
    (DistributedDataParallel averages the gradients).
    """
    model, optimizer, scheduler, generator = fold.net, fold.optimizer, fold.scheduler, fold.generator
    images, targets, rows = rows.data, rows.targets, rows.rows
    device, n = targets.device, len(rows)
    batch = min(steps.batch_size, n)
    n_steps = steps_per_epoch(n, steps.batch_size)
    channels_last = device.type == "cuda"
    order = rows[torch.randperm(n, device=device, generator=generator).to(rows.device)]
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    lrs = []
    model.train()
    scale = spec.task.loss_scale(model)  # several regression targets: each weighed in its own units
    bar = tqdm(range(n_steps), desc=desc, leave=False, unit="step", dynamic_ncols=True,
               disable=None if steps.bars and ranks.main else True)
    workers = spec.input_kind.worker_batches(images, order, batch, spec, generator)
    for i in bar:
        if scheduler is not None:
            scheduler.step_update(step)
        lr = optimizer.param_groups[0]["lr"]
        lrs.append(lr)
        idx = shard(order[i * batch:(i + 1) * batch], ranks)
        if workers is not None:  # augmented on the CPU, in DataLoader workers
            x = spec.inputs(shard(next(workers), ranks).to(device, non_blocking=True), channels_last)
        else:  # taken from the device-resident rows and augmented there, in one batch, the input kind's way
            x = spec.input_kind.train_inputs(images, idx, device, spec, steps, generator)
        y = targets[idx.to(device)]
        if fold.mix is not None:  # timm's Mixup: mixed images, soft targets that already carry the label smoothing
            x, soft = fold.mix(x, y)
        with autocast(device, steps.precision):
            logits = spec.input_kind.forward(model, x)
        if fold.mix is not None:
            loss = spec.task.loss(logits.float(), soft, 0.0)
        else:
            loss = spec.task.loss(logits.float(), y, steps.label_smoothing, scale)
        backward_and_step(loss, model, optimizer, fold.scaler, steps.clip_grad)
        if fold.ema is not None:  # the exponential moving average of the weights, after every optimizer step
            fold.ema.update(model, step=step)
        total_loss += loss.detach()
        correct += spec.task.correct(logits.detach(), y)
        step += 1
        if i % 25 == 0 or i == n_steps - 1:  # reading the loss syncs the GPU: not every step
            bar.set_postfix(loss=f"{total_loss.item() / (i + 1):.4f}", lr=f"{lr:.2e}")
    if ranks.distributed and torch.distributed.is_initialized():  # the whole batch's loss on every rank:
        # a divergence stops all ranks together, not one while the others wait in a collective
        torch.distributed.all_reduce(total_loss)
        torch.distributed.all_reduce(correct)
        total_loss /= ranks.world
    accuracy = correct.item() / (n_steps * batch) if spec.task.has_classes else float("nan")
    return EpochResult(total_loss.item() / n_steps, accuracy, step, lrs)


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int, spec: DataSpec,
            device: torch.device, desc: str = "", precision: str = "auto") -> np.ndarray:
    """The task's predictions (N, outputs) float32 (probabilities, or values) for (N, C, H, W) uint8 images
    on any device.

    The one forward path for validation, OOF and test (a ttach wrapper is just another model).
    """
    model.eval()
    out = torch.empty((len(images), spec.task.num_outputs), dtype=torch.float32, device=device)
    n_batches = -(-len(images) // max(1, batch_size))
    for rows, x in tqdm(spec.input_kind.eval_inputs(images, batch_size, device, spec), total=n_batches, desc=desc,
                        leave=False, unit="batch", disable=None if desc and n_batches > 1 else True):
        with autocast(device, precision):
            logits = spec.input_kind.forward(model, x)
        out[rows.to(device)] = spec.task.activate(logits.float())  # batches may come in another order (by length)
    return out.cpu().numpy()
