"""What a fold trains with, built from the config once per run (`Recipe`, checked without building anything) and
once per fold (`FoldState`: model and its wrapper, optimizer, scheduler, scaler, EMA, SWA, Mixup, generator, and
where training stands); FoldState's state_dict is the per-epoch resume snapshot."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch.optim.swa_utils import AveragedModel, update_bn
from tqdm.auto import tqdm

from pipeline import distributed
from pipeline.config import Config
from pipeline.device import autocast, grad_scaler, seed_everything, take
from pipeline.distributed import SINGLE, Ranks
from pipeline.errors import PipelineError, TrainingDiverged
from pipeline.inputs.spec import DataSpec
from pipeline.models import build_model, unwrap
from pipeline.training.engine import Steps, Trainee, predict, steps_per_epoch


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """timm's optimizer factory; an unknown name is one line with the names it knows."""
    try:
        return create_optimizer_v2(model, cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    except (ValueError, AssertionError, KeyError):
        from timm.optim import list_optimizers

        raise PipelineError(f"--opt: timm knows no optimizer {cfg.opt!r}; valid: {', '.join(list_optimizers()[:40])}, "
                            "...") from None


def check_optimizer(cfg: Config) -> None:
    """--opt names an optimizer timm's factory knows (checked without building one)."""
    from timm.optim._optim_factory import default_registry

    try:
        default_registry.get_optimizer_info(cfg.opt.lower().removeprefix("lookahead_"))
    except ValueError:
        from timm.optim import list_optimizers

        raise PipelineError(f"--opt: timm knows no optimizer {cfg.opt!r}; valid: {', '.join(list_optimizers()[:40])}, "
                            "...") from None


def mixer(cfg: Config, task, batch_size: int):
    """timm's Mixup (mixup and/or cutmix, carrying the label smoothing) for multiclass tasks; None when off."""
    if not (cfg.mixup or cfg.cutmix):
        return None
    check_mixer(cfg, task, batch_size)
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                 num_classes=task.num_outputs)


def check_mixer(cfg: Config, task, batch_size: int) -> None:
    """Mixup and cutmix mix class labels in pairs: a multiclass task and an even batch."""
    if not task.has_classes:
        raise PipelineError(f"--mixup/--cutmix: for multiclass tasks (mixing class labels); this task is {task.kind}")
    if batch_size % 2:
        raise PipelineError(f"--mixup/--cutmix: the batch size must be even (pairs are mixed), got {batch_size}"
                            " (under torchrun: per rank)")


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


@dataclass
class FoldProgress:
    """Where a fold's training stands: the epochs done, optimizer steps taken, and the best epoch so far (its scores
    and validation predictions); saved in each snapshot, restored on --resume."""
    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken (the schedule's position)
    best: dict | None = None  # the best epoch's validation scores {metric: value, 'loss': value}
    best_preds: np.ndarray | None = None  # its validation predictions (n_valid, outputs)
    best_epoch: int = 0  # 1-based; 0 = none yet

    def improve(self, epoch: int, scores: dict, preds: np.ndarray) -> None:
        self.best, self.best_preds, self.best_epoch = scores, preds, epoch

    def check(self, preds_shape: tuple[int, int], metric: str, epochs: int, path: Path) -> None:
        """A resume snapshot must describe this fold: its predictions' shape, finite values, an epoch within the run."""
        preds, best = self.best_preds, self.best
        problem = ("best predictions of shape {} instead of {}".format(tuple(preds.shape), preds_shape)
                   if tuple(preds.shape) != preds_shape else
                   "best predictions hold NaN or infinite values" if not np.isfinite(preds).all() else
                   f"best scores lack {metric}" if metric not in best else
                   "best scores are not finite" if not all(np.isfinite(v) for v in best.values()) else
                   f"epoch {self.epoch} outside 1..{epochs}" if not 1 <= self.epoch <= epochs else
                   f"step {self.step} is negative" if self.step < 0 else None)
        if problem:
            raise PipelineError(f"{path}: not a usable resume snapshot ({problem}); delete it to restart that fold, "
                                "or retrain with --overwrite")


@dataclass
class FoldState(Trainee):
    """Everything one fold trains with and where it stands; `state_dict` / `load_state_dict` are its resume snapshot."""
    model: nn.Module = None  # the bare model (net wraps it under DataParallel / DDP)
    swa: AveragedModel | None = None
    progress: FoldProgress = field(default_factory=FoldProgress)
    label: str = "fold"  # 'fold 3', 'fold full': how messages name it

    @property
    def judged(self) -> nn.Module:
        """What is validated, saved as best and predicted with: the EMA weights when kept, else the network."""
        return self.ema.module if self.ema is not None else self.net

    def state_dict(self) -> dict:
        """Everything needed to continue after this epoch exactly as if never stopped."""
        rng = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        p = self.progress
        extra = ({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}) | (
            {"ema": self.ema.module.state_dict()} if self.ema is not None else {}) | (
            {"swa": self.swa.state_dict()} if self.swa is not None else {}) | (
            {"scheduler": scheduler_state(self.scheduler)} if self.scheduler is not None else {})
        return extra | {"state_dict": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                        "rng": rng, "epoch": p.epoch, "step": p.step, "best": p.best, "best_epoch": p.best_epoch,
                        "best_preds": torch.from_numpy(p.best_preds)}

    def load_state_dict(self, saved: dict, path: Path) -> None:
        """Put everything back as `state_dict` saved it; a damaged snapshot is refused in one line."""
        try:
            self.model.load_state_dict(saved["state_dict"])
            if self.ema is not None:
                self.ema.module.load_state_dict(saved["ema"])
            if self.swa is not None:
                self.swa.load_state_dict(saved["swa"])
            self.optimizer.load_state_dict(saved["optimizer"])
            if self.scheduler is not None:
                load_scheduler_state(self.scheduler, saved.get("scheduler", {}))
            if self.scaler is not None and "scaler" in saved:
                self.scaler.load_state_dict(saved["scaler"])
            torch.set_rng_state(saved["rng"]["torch"])
            self.generator.set_state(saved["rng"]["generator"])
            if "cuda" in saved["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
            self.progress = FoldProgress(int(saved["epoch"]), int(saved["step"]),
                                         {str(m): float(v) for m, v in saved["best"].items()},
                                         saved["best_preds"].numpy(), int(saved.get("best_epoch", 0)))
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
            first = str(e).splitlines()[0][:80] if str(e) else ""
            raise PipelineError(f"{path}: not a usable resume snapshot ({type(e).__name__}: {first}); delete it to "
                                "restart that fold, or retrain with --overwrite") from None


class Recipe:
    """What every fold of a run trains with, from the config (checked once by trainer.setup, building nothing:
    check_optimizer, check_mixer, models.check_model_settings), then a FoldState per fold (`fold`)."""

    def __init__(self, cfg: Config, spec: DataSpec, in_chans: int, device: torch.device, ranks: Ranks = SINGLE,
                 bars: bool = True):
        self.cfg, self.spec, self.in_chans, self.device, self.ranks = cfg, spec, in_chans, device, ranks
        self.steps = Steps.of(cfg, bars)

    def fold(self, k: int, label: str, net_input: dict, train_targets: np.ndarray, n_train: int) -> FoldState:
        """Fold k's state (k: its index, or the seed offset of --fold full; label: 'fold 3', 'fold full'): the model built and wrapped
        (DistributedDataParallel under torchrun, DataParallel over the visible GPUs of one process), the optimizer,
        scheduler, scaler, EMA, SWA, Mixup, and the generator for batch order and augmentation (seeded alike on
        every rank: all draw the same global order). net_input: what a vector model gets (the input kind's)."""
        cfg, spec, device, ranks = self.cfg, self.spec, self.device, self.ranks
        seed_everything(cfg.seed + k, cfg.deterministic)  # weight init, dropout, python and numpy: per fold
        model = build_model(cfg.model, spec.task.num_outputs, self.in_chans, cfg.img_size, pretrained=cfg.pretrained,
                            pretrained_path=cfg.pretrained_path, drop_rate=cfg.drop_rate,
                            drop_path_rate=cfg.drop_path_rate, hidden=cfg.hidden, layers=cfg.layers,
                            **({"pool": cfg.pool} | net_input))
        model = spec.task.output_head(model, train_targets).to(device)  # regression: standardised on these rows
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        if ranks.distributed:
            if cfg.sync_bn:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            net = distributed.wrap(model, ranks, device)
        else:
            spread = device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1
            net = nn.DataParallel(model) if spread else model  # --device cuda: every visible GPU; cuda:1: that one
        optimizer = make_optimizer(model, cfg)
        generator = torch.Generator(device=device)
        generator.manual_seed(cfg.seed * 1000 + k)
        scheduler = make_scheduler(optimizer, cfg, steps_per_epoch(n_train, cfg.batch_size), spec.task.higher_is_better)
        return FoldState(net, optimizer, generator, scheduler, grad_scaler(cfg.precision, device),
                         ModelEmaV3(model, decay=cfg.ema, use_warmup=True) if cfg.ema else None,
                         mixer(cfg, spec.task, cfg.batch_size), model=model,
                         swa=AveragedModel(model) if cfg.swa_epochs else None, label=label)

    def finish_swa(self, fold: FoldState, data, train_rows: torch.Tensor, x_valid) -> np.ndarray | None:
        """BatchNorm statistics recomputed for the averaged weights on the training rows (torch's update_bn); its
        validation predictions (None without validation rows, or when no epoch was averaged: early stop)."""
        cfg, spec, device = self.cfg, self.spec, self.device
        swa = fold.swa
        if int(swa.n_averaged) == 0:
            tqdm.write(f"{fold.label}: stopped at epoch {fold.progress.epoch}, before the last {cfg.swa_epochs} "
                       "epochs SWA averages; no SWA model")
            return None
        channels_last = device.type == "cuda"
        batches = (spec.inputs(take(data, train_rows[i:i + cfg.batch_size], device), channels_last)
                   for i in range(0, len(train_rows), cfg.batch_size))
        with autocast(device, cfg.precision):
            update_bn(batches, swa)
        if x_valid is None:
            return None
        preds = predict(swa.module, x_valid, 2 * cfg.batch_size, spec, device, precision=cfg.precision)
        if not np.isfinite(preds).all():
            tqdm.write(f"{fold.label}: the SWA model's predictions are not finite; keeping the best epoch")
            return None
        return preds


def stop_early(epoch: int, best_epoch: int, patience: int) -> bool:
    """--patience: stop when `patience` epochs have passed without a better validation metric (0 = never).

    >>> stop_early(5, 3, 2), stop_early(4, 3, 2), stop_early(9, 1, 0)
    (True, False, False)
    """
    return bool(patience) and epoch - best_epoch >= patience


def check_finite(loss: float, probs: np.ndarray, model: nn.Module, k: int, epoch: int, last_good: int) -> None:
    """Stop the fold when training diverged: a NaN model must never be saved as best or resumed from."""
    bad = ("the training loss" if not np.isfinite(loss) else "the validation probabilities"
           if not np.isfinite(probs).all() else next((f"weights {n}" for n, p in unwrap(model).state_dict().items()
                                                      if p.is_floating_point() and not torch.isfinite(p).all()), None))
    if bad is not None:
        kept = (f"fold{k}.last.pth (epoch {last_good}, the last good one) is kept for --resume" if last_good
                else "nothing of this fold was saved")
        raise TrainingDiverged(f"fold {k} epoch {epoch + 1}: {bad} became NaN or infinite (training diverged); "
                            f"{kept}. Lower --lr, or raise --warmup-epochs, and retrain with --overwrite")


