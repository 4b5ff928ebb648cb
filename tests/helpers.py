"""Helpers shared by tests: one training epoch from loose parts, as the tests of the engine build them."""
from __future__ import annotations

from pipeline.distributed import SINGLE
from pipeline.training.engine import Rows, Steps, Trainee, train_one_epoch


def one_epoch(model, optimizer, scheduler, images, rows, targets, cfg, spec, step, generator, scaler=None, ema=None,
              mix=None, ranks=SINGLE):
    """engine.train_one_epoch over a bare model (no wrapper) with the engine settings of `cfg`."""
    return train_one_epoch(Trainee(model, optimizer, generator, scheduler, scaler, ema, mix), Rows(images, rows, targets),
                           spec, Steps.of(cfg), step, ranks=ranks)
