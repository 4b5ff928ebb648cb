"""What one fold trains with, built from the config: model and its wrapper, optimizer (timm's factory), Mixup,
early stopping, the divergence check, and the SWA average's BatchNorm pass."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2
from torch.optim.swa_utils import AveragedModel, update_bn
from tqdm.auto import tqdm

from pipeline import distributed
from pipeline.config import Config
from pipeline.distributed import SINGLE, Ranks
from pipeline.device import autocast, seed_everything, take
from pipeline.inputs.spec import DataSpec
from pipeline.engine import predict
from pipeline.errors import PipelineError, TrainingDiverged
from pipeline.models import build_model, unwrap


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """timm's optimizer factory; an unknown name is one line with the names it knows."""
    try:
        return create_optimizer_v2(model, cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    except (ValueError, AssertionError, KeyError):
        from timm.optim import list_optimizers

        raise PipelineError(f"--opt: timm knows no optimizer {cfg.opt!r}; valid: {', '.join(list_optimizers()[:40])}, "
                            "...") from None


def mixer(cfg: Config, task, batch_size: int):
    """timm's Mixup (mixup and/or cutmix, carrying the label smoothing) for multiclass tasks; None when off."""
    if not (cfg.mixup or cfg.cutmix):
        return None
    if not task.has_classes:
        raise PipelineError(f"--mixup/--cutmix: for multiclass tasks (mixing class labels); this task is {task.kind}")
    if batch_size % 2:
        raise PipelineError(f"--mixup/--cutmix: the batch size must be even (pairs are mixed), got {batch_size}"
                            " (under torchrun: per rank)")
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                 num_classes=task.num_outputs)


def fold_setup(cfg: Config, spec: DataSpec, in_chans: int, k: int, device: torch.device, ranks: Ranks = SINGLE,
               net_input: dict | None = None, train_targets: np.ndarray | None = None):
    """Fold k's model and the wrapper that trains it (DistributedDataParallel under torchrun, DataParallel over the
    visible GPUs of one process), the optimizer, and the generator for batch order and augmentation (seeded alike
    on every rank: all draw the same global order). net_input: what a vector model gets (the input kind's)."""
    seed_everything(cfg.seed + k, cfg.deterministic)  # weight init, dropout, python and numpy: per fold
    model = build_model(cfg.model, spec.task.num_outputs, in_chans, cfg.img_size, pretrained=cfg.pretrained,
                        pretrained_path=cfg.pretrained_path, drop_rate=cfg.drop_rate,
                        drop_path_rate=cfg.drop_path_rate, hidden=cfg.hidden, layers=cfg.layers,
                        **({"pool": cfg.pool} | (net_input or {})))
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
    return model, net, optimizer, generator


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


def finish_swa(swa: AveragedModel, cfg: Config, spec: DataSpec, images: torch.Tensor, rows: torch.Tensor,
               x_valid: torch.Tensor | None, device: torch.device, k, epochs_done: int) -> np.ndarray | None:
    """BatchNorm statistics recomputed for the averaged weights on the training rows (torch's update_bn); its
    validation predictions (None without validation rows, or when no epoch was averaged: early stop)."""
    if int(swa.n_averaged) == 0:
        tqdm.write(f"fold {k}: stopped at epoch {epochs_done}, before the last {cfg.swa_epochs} epochs SWA averages; "
                   "no SWA model")
        return None
    channels_last = device.type == "cuda"
    batches = (spec.inputs(take(images, rows[i:i + cfg.batch_size], device), channels_last)
               for i in range(0, len(rows), cfg.batch_size))
    with autocast(device, cfg.precision):
        update_bn(batches, swa)
    if x_valid is None:
        return None
    preds = predict(swa.module, x_valid, 2 * cfg.batch_size, spec, device, precision=cfg.precision)
    if not np.isfinite(preds).all():
        tqdm.write(f"fold {k}: the SWA model's predictions are not finite; keeping the best epoch")
        return None
    return preds
