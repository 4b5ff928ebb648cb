"""Learners: how one fold is fit. Each gradient-boosting library is one module with the same functions
(fit_fold, predict, save, load, load_params, feature_importance; see pipeline.learners.gbm), looked up by name here.

    from pipeline import learners
    gbm = learners.gbm_learner("lightgbm")
    booster, best_iteration, valid_preds = gbm.fit_fold(x_train, y_train, x_valid, y_valid, categorical, task, {}, 0)

Modules are imported on first use, so importing this package costs nothing and needs no boosting library.
"""
from __future__ import annotations

import importlib

from pipeline.errors import PipelineError

GBM_LEARNERS = {"lightgbm": "pipeline.learners.gbm"}  # name -> module; xgboost, catboost: one more module each


def gbm_learner(name: str):
    """The module that fits and predicts with the gradient-boosting library `name`."""
    if name not in GBM_LEARNERS:
        raise PipelineError(f"--model: unknown gradient-boosting learner {name!r}; valid: {', '.join(GBM_LEARNERS)}")
    return importlib.import_module(GBM_LEARNERS[name])
