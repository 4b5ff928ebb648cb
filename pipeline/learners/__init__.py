"""Learners: how one fold is fit, saved and predicted with. Every model name belongs to one learner:

    neural   a torch network (any timm backbone, the project's mlp and sequence networks) trained by the epoch loop
             (pipeline.training); its folds are fold<k>.pth
    table    a table library fitted on a fold's preprocessed rows: lightgbm, catboost, xgboost (early stopping on
             the validation rows) or linear (ridge / logistic regression); its folds are fold<k>.txt, .cbm, .json

`learner_for(name)` gives it; stages ask it (`fit_fold`, `predict_fold`, `importance`, `runs_columns`, ...) and never
branch on its kind. A new learner is one module with a Learner subclass and one line in `_LEARNERS` below.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from pipeline.distributed import SINGLE, Ranks
from pipeline.errors import PipelineError
from pipeline.nets import TABLE_MODELS

# the table learners' libraries: model name -> its module under pipeline.learners (one module each, gbm's functions)
TABLE_LIBRARIES = TABLE_MODELS
GBM_LEARNERS = tuple(TABLE_LIBRARIES)
SEED_STRIDE = 7919  # --seeds: seed j of fold k trains with --seed + SEED_STRIDE j (+ k); seed 0 is a one-seed run's


@dataclass(frozen=True)
class Run:
    """How a process trains: its device, its torchrun ranks, a callback after every validated epoch
    (`on_epoch(epoch, scores)`: tune's pruning), progress bars or not (parallel fold workers: not), and the fold's
    deadline (time.monotonic() seconds; None: none), past which it stops at its best iteration or epoch so far."""
    device: torch.device
    ranks: Ranks = SINGLE
    on_epoch: object = None
    bars: bool = True
    deadline: float | None = None



class Learner:
    """What every learner answers; pipeline.learners.neural and .boosted implement it."""
    name = ""
    form = ""  # the input a model takes: image | vector | sequence | gbm
    suffix = ""  # a fold's model file: fold<k><suffix>
    recipe: tuple[str, ...] = ()  # the train settings it reads (what a command adding to an experiment repeats)
    report_keys: tuple[str, ...] = ()  # the settings a report's header shows

    def check(self, cfg, task, n_features: int) -> dict:
        """Refuse what cannot train, before any work; what else the recipe saved in config.json holds."""
        return {}

    def resolve(self, cfg, kind, features: dict, say):
        """The config this learner trains with on this data (notices said through `say`)."""
        return cfg

    def engine_notices(self, say):
        """`say` for the torch engine's notices (batch size, warmup, precision), or silence where they are noise."""
        return lambda *_: None

    def fit_fold(self, setup, k: int, rows: tuple, run: Run):
        """Fold k's validation predictions; its model and files written. setup: trainer.Setup; rows: (data,
        targets) of every row, as setup.rows gives them."""
        raise NotImplementedError

    def train_full(self, setup, run: Run) -> dict:
        """--fold full: every row, no validation; {'full': path of what was saved}."""
        raise NotImplementedError

    def predict_fold(self, path, rows, cfg, config, preset: str, device, desc: str):
        """A saved fold's predictions (n, outputs) for raw rows; cfg: infer's flags (tta, batch size, precision),
        config: the experiment's ExperimentConfig."""
        raise NotImplementedError

    def importance(self, exp_dir):
        """Feature importance over the saved folds (a DataFrame), or None when the learner has none."""
        return None

    def runs_columns(self, config) -> dict:
        """The recipe columns `runs` shows for an experiment of this learner."""
        return {}

    def fold_summary(self, exp_dir, metrics) -> str:
        """The report's section on how each fold ended, for a learner without curves (markdown)."""
        return ""

    def curves(self) -> bool:
        """Whether a fold trains over epochs (curves to draw, a learning-rate x batch-size grid to sweep)."""
        return False

    def search_space(self, trial, cfg) -> dict:
        """One point of tune's search space (an Optuna trial)."""
        raise NotImplementedError

    def trial_config(self, cfg, params: dict, path):
        """The config of a tune trial's point (`path`: where a parameters file of it may be written)."""
        raise NotImplementedError


def learner_for(name: str) -> Learner:
    """The learner of model `name`: a table library's, else the neural learner (timm or the project's networks; an
    unknown name is refused when the recipe is checked)."""
    module = "pipeline.learners.boosted" if name in TABLE_LIBRARIES else "pipeline.learners.neural"
    return importlib.import_module(module).learner(name)


def model_form(name: str) -> str:
    """What input a model name wants: 'gbm', 'vector' (the mlp), 'sequence' (gru, lstm, transformer, conformer) or
    'image' (timm's registry)."""
    return learner_for(name).form


def all_names() -> list[str]:
    from pipeline.nets import NETS

    return [*NETS, *GBM_LEARNERS]


def check_model(kind, model: str) -> None:
    """A model that cannot take this kind's rows is refused before any work, naming the ones that can."""
    if model_form(model) not in kind.forms:
        fits = [n for n in all_names() if model_form(n) in kind.forms]
        raise PipelineError(f"--model {model}: takes {model_form(model)} input, and this data is a {kind.name}; "
                            f"use {' or '.join(fits)}{' or any timm backbone' if 'image' in kind.forms else ''}")
