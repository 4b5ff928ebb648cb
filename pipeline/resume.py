"""The per-epoch resume snapshot of a fold: everything needed to continue after an epoch exactly as if never
stopped (weights, optimizer, scaler, EMA, SWA average, scheduler counters, random state, best so far)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pipeline.engine import load_scheduler_state, scheduler_state
from pipeline.errors import PipelineError
from pipeline.models import unwrap


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


def snapshot(state: FoldProgress, model: nn.Module, optimizer, generator: torch.Generator, scaler=None, ema=None,
             scheduler=None, swa=None) -> dict:
    """Everything needed to continue after this epoch exactly as if never stopped."""
    rng = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    extra = ({"scaler": scaler.state_dict()} if scaler is not None else {}) | (
        {"ema": ema.module.state_dict()} if ema is not None else {}) | (
        {"swa": swa.state_dict()} if swa is not None else {}) | (
        {"scheduler": scheduler_state(scheduler)} if scheduler is not None else {})
    return extra | {"state_dict": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "rng": rng,
            "epoch": state.epoch, "step": state.step, "best": state.best, "best_epoch": state.best_epoch,
            "best_preds": torch.from_numpy(state.best_preds)}


def restore(saved: dict, model: nn.Module, optimizer, generator: torch.Generator, path: Path, scaler=None,
            ema=None, scheduler=None, swa=None) -> FoldProgress:
    """Put the model, optimizer and random state back as `snapshot` saved them; a damaged snapshot is refused."""
    try:
        model.load_state_dict(saved["state_dict"])
        if ema is not None:
            ema.module.load_state_dict(saved["ema"])
        if swa is not None:
            swa.load_state_dict(saved["swa"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            load_scheduler_state(scheduler, saved.get("scheduler", {}))
        if scaler is not None and "scaler" in saved:
            scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"]["torch"])
        generator.set_state(saved["rng"]["generator"])
        if "cuda" in saved["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        state = FoldProgress(int(saved["epoch"]), int(saved["step"]), {str(m): float(v) for m, v in saved["best"].items()},
                             saved["best_preds"].numpy(), int(saved.get("best_epoch", 0)))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        raise PipelineError(f"{path}: not a usable resume snapshot ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}); "
                            "delete it to restart that fold, or retrain with --overwrite") from None
    return state


def check_snapshot(state: FoldProgress, preds_shape: tuple[int, int], metric: str, epochs: int, path: Path) -> None:
    """A resume snapshot must describe this fold: its predictions' shape, finite values, an epoch within the run."""
    preds, best = state.best_preds, state.best
    problem = ("best predictions of shape {} instead of {}".format(tuple(preds.shape), preds_shape)
               if tuple(preds.shape) != preds_shape else
               "best predictions hold NaN or infinite values" if not np.isfinite(preds).all() else
               f"best scores lack {metric}" if metric not in best else
               "best scores are not finite" if not all(np.isfinite(v) for v in best.values()) else
               f"epoch {state.epoch} outside 1..{epochs}" if not 1 <= state.epoch <= epochs else
               f"step {state.step} is negative" if state.step < 0 else None)
    if problem:
        raise PipelineError(f"{path}: not a usable resume snapshot ({problem}); delete it to restart that fold, "
                            "or retrain with --overwrite")
