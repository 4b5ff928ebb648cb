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
from pipeline.augment import albumentations_batches, is_albumentations


BARS = True  # progress bars (off in parallel fold workers, whose bars would overwrite each other)


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """Full batches only (a 1-image last batch would break BatchNorm); at least one step."""
    return max(1, n_rows // batch_size)


def auto_batch_size(n_rows: int) -> int:
    """Largest of 256/128/64/32 that still gives >= 16 optimizer steps per epoch (small data: more steps).

    >>> auto_batch_size(33_600), auto_batch_size(1_150)
    (256, 64)
    """
    return next((b for b in (256, 128, 64) if n_rows // b >= 16), 32)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg, steps: int, higher_is_better: bool = True):
    """timm's scheduler factory for cfg.sched over cfg.epochs of `steps` optimizer steps.

    cosine, step and constant are functions of the optimizer step (call `step_update(step)` before each step);
    plateau decays on the validation metric (call `step(epoch, metric)` after each epoch); each call is a no-op
    for the other kind, so the training loop calls both.
    """
    import warnings

    from timm.scheduler import create_scheduler_v2

    plateau = cfg.sched == "plateau"
    warmup_epochs = round(cfg.warmup_epochs) if plateau else cfg.warmup_epochs
    # step's default: a third of the epochs after warmup (the schedule's own length), so it decays twice however
    # few the epochs (a third of --epochs, at least 1, never decayed at all with --epochs 2)
    decay = cfg.decay_epochs or (2 if plateau else max((cfg.epochs - warmup_epochs) / 3, 1 / steps))
    # plateau warms up once an epoch: from lr/(w+1), so no whole epoch trains at a near-zero lr
    # (the step schedules: from lr / warmup steps, one step's worth, as a hand-written linear warmup starts)
    warmup_lr = cfg.warmup_lr or (cfg.lr / (warmup_epochs + 1) if plateau else cfg.lr / max(1, warmup_epochs * steps))
    with warnings.catch_warnings():  # timm deprecates plateau for not saving its state; train saves it (see snapshot)
        warnings.simplefilter("ignore", FutureWarning)
        scheduler, _ = create_scheduler_v2(  # warmup first, then the schedule over the epochs left (warmup_prefix)
            optimizer, cfg.sched, num_epochs=cfg.epochs if plateau else max(cfg.epochs - warmup_epochs, 1 / steps),
            warmup_prefix=not plateau, decay_epochs=decay, patience_epochs=round(decay),
            decay_rate=cfg.decay_rate, min_lr=cfg.min_lr, warmup_lr=warmup_lr, warmup_epochs=warmup_epochs,
            plateau_mode="max" if higher_is_better else "min", step_on_epochs=plateau, updates_per_epoch=steps)
    return scheduler


def scheduler_state(scheduler) -> dict:
    """What a resume needs: nothing for the step-driven schedules (a function of the step), plateau's counters."""
    inner = getattr(scheduler, "lr_scheduler", None)  # timm's plateau wraps torch's ReduceLROnPlateau
    return inner.state_dict() if inner is not None else {}


def load_scheduler_state(scheduler, state: dict) -> None:
    inner = getattr(scheduler, "lr_scheduler", None)
    if inner is not None and state:
        inner.load_state_dict(state)


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


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, images: torch.Tensor,
                    rows: torch.Tensor, targets: torch.Tensor, cfg, spec: DataSpec, step: int,
                    generator: torch.Generator, desc: str = "", scaler: torch.amp.GradScaler | None = None,
                    ema=None, mix=None, ranks: Ranks = SINGLE) -> EpochResult:
    """One pass over the training `rows` of (N, C, H, W) uint8 `images` (on the device, or in host memory to
    stream batches from); `targets` (N, ...) are on the device.

    `scheduler` (make_scheduler, or None for a fixed lr) sets the lr before each optimizer step; label smoothing
    applies to this loss only. Under torchrun every rank draws the same global order and trains on its share of
    each global batch of cfg.batch_size rows (DistributedDataParallel averages the gradients).
    """
    device, n = targets.device, len(rows)
    batch = min(cfg.batch_size, n)
    n_steps = steps_per_epoch(n, cfg.batch_size)
    channels_last = device.type == "cuda"
    order = rows[torch.randperm(n, device=device, generator=generator).to(rows.device)]
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    lrs = []
    model.train()
    scale = spec.task.loss_scale(model)  # several regression targets: each weighed in its own units
    bar = tqdm(range(n_steps), desc=desc, leave=False, unit="step", dynamic_ncols=True,
               disable=None if BARS and ranks.main else True)
    workers = albumentations_batches(images, order, batch, spec.augment, generator) \
        if is_albumentations(spec.augment) else None
    for i in bar:
        if scheduler is not None:
            scheduler.step_update(step)
        lr = optimizer.param_groups[0]["lr"]
        lrs.append(lr)
        idx = shard(order[i * batch:(i + 1) * batch], ranks)
        if workers is not None:  # augmented on the CPU by albumentations, in DataLoader workers
            x = spec.inputs(shard(next(workers), ranks).to(device, non_blocking=True), channels_last)
        else:  # taken from the device-resident rows and augmented there, in one batch, the input kind's way
            x = spec.input_kind.train_inputs(images, idx, device, spec, cfg, generator)
        y = targets[idx.to(device)]
        if mix is not None:  # timm's Mixup: mixed images, soft targets that already carry the label smoothing
            x, soft = mix(x, y)
        with autocast(device, cfg.precision):
            logits = model(*x) if isinstance(x, tuple) else model(x)  # sequences: (x, lengths)
        if mix is not None:
            loss = spec.task.loss(logits.float(), soft, 0.0)
        else:
            loss = spec.task.loss(logits.float(), y, cfg.label_smoothing, scale)
        backward_and_step(loss, model, optimizer, scaler, cfg.clip_grad)
        if ema is not None:  # the exponential moving average of the weights, after every optimizer step
            ema.update(model, step=step)
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
                        leave=False, unit="batch", disable=None if BARS and desc and n_batches > 1 else True):
        with autocast(device, precision):
            logits = model(*x) if isinstance(x, tuple) else model(x)  # sequences: (x, lengths)
        out[rows.to(device)] = spec.task.activate(logits.float())  # batches may come in another order (by length)
    return out.cpu().numpy()
