"""One training step loop and one predict, shared by training, validation, OOF and test inference."""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from pipeline.distributed import SINGLE, Ranks, shard
from pipeline.augment import albumentations_batches, is_albumentations
from pipeline.errors import PipelineError
from pipeline.tasks import Task


BARS = True  # progress bars (off in parallel fold workers, whose bars would overwrite each other)


@dataclass(frozen=True)
class DataSpec:
    """How a model sees the data: the task, the input kind and its settings, the training augmentation law."""
    task: Task
    img_size: int  # image: side the model sees (0 for other kinds)
    mean: tuple[float, ...]  # image: per-channel normalisation on the 0..1 scale
    std: tuple[float, ...]
    augment: str = "digits"  # image: digits | natural | none | an albumentations file
    kind: str = "image"  # input kind (pipeline.inputs): image | table
    features: dict = field(default_factory=dict, hash=False)  # table: names, categorical indices, cardinalities

    @property
    def input_kind(self):
        from pipeline.inputs import input_kind

        return input_kind(self.kind)

    def inputs(self, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
        """A batch of rows as the model consumes it (normalised images, preprocessed features)."""
        return self.input_kind.model_input(x, self, channels_last)

    def train_batch(self, x: torch.Tensor, cfg, generator: torch.Generator) -> torch.Tensor:
        """A batch of training rows, augmented the kind's way (before `inputs`)."""
        return self.input_kind.train_batch(x, self, cfg, generator)

    def to_dict(self) -> dict:
        return {"task": self.task.to_dict(), "img_size": self.img_size, "mean": list(self.mean),
                "std": list(self.std), "augment": self.augment, "kind": self.kind, "features": self.features}

    @classmethod
    def from_config(cls, config, where: str) -> DataSpec:
        """From a resolved config (config.ExperimentConfig: config.json's or a checkpoint's); Digit Recognizer's before
        specs were saved."""
        spec = config.data_spec
        if spec is None:  # trained before task kinds existed: 10 digits, MNIST statistics
            from pipeline.augment import MEAN, STD
            return cls(Task("multiclass", tuple(str(i) for i in range(config.num_classes))), config.img_size,
                       (MEAN,), (STD,))
        try:
            if not isinstance(spec, dict) or not isinstance(spec.get("task"), dict):
                raise TypeError(f"expected a mapping with a task, found {type(spec).__name__}")
            features = spec.get("features", {})
            if not isinstance(features, dict):
                raise TypeError(f"features: expected a mapping, found {type(features).__name__}")
            return cls(Task.from_dict(spec["task"], where), int(spec["img_size"]), tuple(map(float, spec["mean"])),
                       tuple(map(float, spec["std"])), str(spec.get("augment", "digits")),
                       str(spec.get("kind", "image")), features)
        except (KeyError, TypeError, ValueError) as e:
            raise PipelineError(f"{where}: damaged data_spec ({type(e).__name__}: {e}); retrain with --overwrite") from None


def on_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """The whole uint8 array on the device when it fits in 80% of free GPU memory; else kept in host memory,
    where batches stream from (pinned, asynchronous copies; see take). Packed sequences (data.sequences' rows) alike."""
    if not isinstance(images, np.ndarray):
        if device.type != "cuda":
            return images
        size = images.packed.values.nbytes
        if size < 0.8 * torch.cuda.mem_get_info(device)[0]:
            return images.to(device)
        print(f"notice: {size / 2**30:.1f} GiB of frames exceed free GPU memory; batches are gathered in host memory "
              "and streamed")
        return images
    host = torch.from_numpy(images if images.flags.writeable else np.array(images))
    if device.type != "cuda":
        return host
    if images.nbytes < 0.8 * torch.cuda.mem_get_info(device)[0]:
        return host.to(device)
    print(f"notice: {images.nbytes / 2**30:.1f} GiB of images exceed free GPU memory; streaming batches from host memory")
    return host


def take(images: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows `idx` of images that live on the device, or stream them from host memory (pinned, asynchronous)."""
    if images.device == device:
        return images[idx]
    return to_device(images[idx.cpu()], device)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch gathered in host memory sent to the GPU through pinned memory (an asynchronous copy); else as is."""
    if device.type == "cuda" and batch.device.type == "cpu":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """python, numpy and torch (CPU and every GPU) from one seed; --deterministic also pins cuDNN's algorithms."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"--device: {name} requested but no CUDA GPU is visible; use --device cpu or auto")
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    return device


@functools.lru_cache(maxsize=8)
def resolve_precision(name: str, device: torch.device) -> str:
    """auto: bf16 on GPUs with fast bf16 (Ampere and later), fp16 on older ones (Kaggle's T4, P100), fp32 on CPU."""
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise PipelineError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no fast bf16; use fp16 or auto")
    return name


def autocast(device: torch.device, precision: str = "auto"):
    """Mixed precision for the forward pass: bf16 or fp16 autocast, or none (fp32)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    if resolve_precision(precision, device) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


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
