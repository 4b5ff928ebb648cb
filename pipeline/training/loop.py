"""The one epoch loop of a torch model: fold k (validated every epoch, best epoch kept, early stop, SWA chosen by
score, a resume snapshot per epoch) and --fold full (every row, no validation: the last epoch, or the SWA average,
is saved). Under torchrun every rank runs it; rank 0 alone writes and prints."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline import distributed, experiment
from pipeline.config import ExperimentConfig
from pipeline.errors import TrainingDiverged
from pipeline.io import BackgroundWriter, load_checkpoint
from pipeline.models import unwrap
from pipeline.training.engine import Rows, predict, train_one_epoch
from pipeline.training.recipe import FoldState, Recipe, check_finite, stop_early


@dataclass(frozen=True)
class FoldJob:
    """One fold to train: every row (`data`, `targets`), which of them train and which validate (None: --fold
    full), and the experiment folder its files go to."""
    k: int | str  # the fold's index, or 'full'
    data: object
    targets: torch.Tensor
    train_idx: torch.Tensor
    valid_idx: torch.Tensor | None
    exp_dir: Path
    seed: int = 0  # --seeds: which of the fold's seeds (0: the one a single-seed run trains)

    @property
    def full(self) -> bool:
        return self.valid_idx is None

    @property
    def prep_stem(self) -> str:
        """The fold's preprocessing file, shared by its seeds: full.prep.json, fold<k>.prep.json."""
        return "full" if self.full else f"fold{self.k}"

    @property
    def stem(self) -> str:
        """The model files of this seed of the fold: full, fold<k> (seed 0), fold<k>.s<j>."""
        return self.prep_stem + (f".s{self.seed}" if self.seed else "")

    @property
    def label(self) -> str:
        return f"fold {self.k}" + (f" seed {self.seed}" if self.seed else "")


def fit(recipe: Recipe, resolved: ExperimentConfig, rows: tuple, folds: np.ndarray, k: int, exp_dir: Path,
        on_epoch=None, deadline: float | None = None) -> np.ndarray:
    """Fold k of `folds` on `rows` ((data, targets) of every row): what the neural learner and the benchmarks run.
    `deadline` (time.monotonic()): no epoch starts after it (the best epoch so far is kept)."""
    return train_fold(recipe, resolved, fold_job(rows, folds, k, exp_dir), on_epoch, deadline)


def fold_job(rows: tuple, folds: np.ndarray, k: int, exp_dir: Path, seed: int = 0) -> FoldJob:
    """Fold k of `folds` on `rows` ((data, targets) of every row); `seed`: which of its --seeds (files
    fold<k>.s<j>.pth; the recipe's seed is the caller's)."""
    data, targets = rows
    train_idx = torch.from_numpy(np.flatnonzero(folds != k)).to(data.device)
    valid_idx = torch.from_numpy(np.flatnonzero(folds == k)).to(data.device)
    return FoldJob(k, data, targets, train_idx, valid_idx, exp_dir, seed)


def fold_inputs(recipe: Recipe, job: FoldJob) -> tuple[object, dict]:
    """The rows as this fold's model sees them, and what the network gets (width, embedded slots, features per
    step): the input kind's preprocessing (tables: imputation, scaling, encoding, selection; sequences: per-feature
    normalisation) fitted on the fold's training rows alone and saved beside the fold (JSON) for inference; images
    pass through."""
    kind = recipe.spec.input_kind
    fitted, state = kind.fit_fold(job.data, job.train_idx, job.targets, recipe.spec, recipe.cfg)
    if state is not None and recipe.ranks.main:
        kind.save_state(state, job.exp_dir / f"{job.prep_stem}.prep.json")
    return fitted, kind.net_input(recipe.in_chans, recipe.cfg.img_size, state)


def train_fold(recipe: Recipe, resolved: ExperimentConfig, job: FoldJob, on_epoch=None,
               deadline: float | None = None) -> np.ndarray | None:
    """Train the fold; save its best epoch (or its SWA average, when that scores better) by the competition metric
    and return those validation predictions; --fold full saves its last epoch (or the SWA average) and returns
    None. `on_epoch(epoch, valid_scores)` is called after every validated epoch."""
    cfg, spec, ranks = recipe.cfg, recipe.spec, recipe.ranks
    data, net_input = fold_inputs(recipe, job)
    train_targets = job.targets[job.train_idx.to(job.targets.device)].cpu().numpy()
    fold = recipe.fold(resolved.n_splits if job.full else job.k, job.label, net_input, train_targets,
                       len(job.train_idx))
    say = tqdm.write if ranks.main else (lambda *_: None)
    last = job.exp_dir / f"{job.stem}.last.pth"
    if not job.full and cfg.resume and last.is_file():
        fold.load_state_dict(load_checkpoint(last), last)
        fold.progress.check((len(job.valid_idx), spec.task.num_outputs), spec.task.metric, cfg.epochs, last)
        say(f"resume: {job.label} continues after epoch {fold.progress.epoch} of {cfg.epochs} "
            f"(best {spec.task.metric} so far {fold.progress.best[spec.task.metric]:.5f})")
    if job.full:
        print(f"training {cfg.model} on all {len(job.train_idx):,} rows for {cfg.epochs} epochs, no validation -> "
              f"{job.exp_dir}/full.pth")
    x_valid = None if job.full else data[job.valid_idx]
    with BackgroundWriter() as writer:  # checkpoints go to disk while the next epoch trains
        first = fold.progress.epoch  # a resumed fold trains at least one epoch too
        for epoch in range(first, cfg.epochs):
            if deadline is not None and epoch > first and time.monotonic() > deadline:
                say(f"notice: {job.label}: its share of --time-limit is spent after epoch {epoch}; kept its best "
                    f"epoch so far ({fold.progress.best_epoch})")
                break
            if not _epoch(recipe, resolved, job, (fold, data, x_valid, writer), epoch, on_epoch):
                break
        if job.full:
            _save_full(recipe, resolved, job, (fold, data, writer))
            return None
        if fold.progress.best_preds is None:
            raise TrainingDiverged(f"fold {job.k}: no epoch gave a usable {spec.task.metric} (it was NaN every epoch)")
        selection = _choose_swa(recipe, resolved, job, (fold, data, x_valid, writer))
        writer.wait()
        say(f"fold {job.k}: checkpoints written in the background, {writer.seconds:.1f}s of disk time "
            f"(not in the {spec.input_kind.unit}/s above)")
    if ranks.main and not job.seed:  # the fold's tables follow its first seed
        experiment.write_selection(job.exp_dir, selection)
    return fold.progress.best_preds


def _epoch(recipe: Recipe, resolved: ExperimentConfig, job: FoldJob, run: tuple, epoch: int, on_epoch) -> bool:
    """One epoch: train, then (fold k) validate, keep the best, snapshot; False when training should stop early."""
    cfg, spec, device, ranks = recipe.cfg, recipe.spec, recipe.device, recipe.ranks
    fold, data, x_valid, writer = run
    state, metric = fold.progress, spec.task.metric
    say = tqdm.write if ranks.main else (lambda *_: None)
    t0 = time.perf_counter()
    where = f"full epoch {epoch + 1}/{cfg.epochs}" if job.full else f"{job.label} epoch {epoch + 1}/{cfg.epochs}"
    result = train_one_epoch(fold, Rows(data, job.train_idx, job.targets), spec, recipe.steps, state.step, where,
                             ranks)
    state.step, loss = result.step, result.loss
    lr = fold.optimizer.param_groups[0]["lr"]
    if job.full:
        check_finite(loss, np.zeros((1, 1)), unwrap(fold.judged), "full", epoch, 0)
        fold.scheduler.step(epoch + 1)
        _average(fold, cfg, epoch)
        state.epoch = epoch + 1
        tqdm.write(f"full epoch {epoch + 1:>3}/{cfg.epochs}  train loss {loss:.4f}")
        return True
    validator = unwrap(fold.judged) if ranks.distributed else fold.judged  # DataParallel validates on every GPU
    distributed.sync_buffers(validator, ranks)  # every rank validates rank 0's weights
    preds = distributed.gather_rows(
        lambda a, b: predict(validator, x_valid[a:b], 2 * cfg.batch_size // ranks.world, spec, device,
                             precision=cfg.precision), len(x_valid), ranks, device)
    check_finite(loss, preds, unwrap(fold.judged), job.k, epoch, state.epoch)
    valid_targets = job.targets[job.valid_idx.to(job.targets.device)].cpu().numpy()
    valid = spec.task.scores(preds, valid_targets)
    seconds = time.perf_counter() - t0  # training and validation; checkpoint writes are timed apart
    fold.scheduler.step(epoch + 1, valid[metric])  # plateau decays here; the step-driven schedules ignore it
    _average(fold, cfg, epoch)
    improved = spec.task.better(valid, state.best)
    if improved:  # best by the competition metric, ties broken by the lower loss
        state.improve(epoch + 1, valid, preds)
        if ranks.main:
            writer.save({"state_dict": unwrap(fold.judged).state_dict(), "config": resolved.to_dict(), "fold": job.k,
                         "epoch": epoch + 1, "score": valid}, job.exp_dir / f"{job.stem}.pth")
    state.epoch = epoch + 1
    if ranks.main and not job.seed:  # metrics.csv and the curves follow the fold's first seed
        row = {"fold": job.k, "epoch": epoch + 1, "train_loss": loss, "train_accuracy": result.accuracy,
               "valid_loss": valid["loss"]} | {f"valid_{m}": v for m, v in valid.items() if m != "loss"} \
            | {"lr": lr, "seconds": round(seconds, 3)}
        experiment.append_metrics(job.exp_dir, row, result.lrs)
    if ranks.main:
        writer.save(fold.state_dict(), job.exp_dir / f"{job.stem}.last.pth")
    task, unit = spec.task, spec.input_kind.unit
    say(f"{job.label} epoch {epoch + 1:>3}/{cfg.epochs}  train {task.train_loss_name} {loss:.4f}  valid "
        f"{task.loss_name} {valid['loss']:.4f}  valid {metric} {valid[metric]:.5f}  lr {lr:.2e}  "
        f"{seconds:5.1f}s  {len(job.train_idx) / seconds:,.0f} {unit}/s{'  *best' if improved else ''}")
    if on_epoch is not None and not job.seed:  # tune's pruning judges the first seed
        on_epoch(epoch + 1, valid)
    if stop_early(epoch + 1, state.best_epoch, cfg.patience):
        say(f"{job.label}: no better {metric} for {cfg.patience} epochs since epoch {state.best_epoch}: stopped "
            "early (--patience)")
        return False
    return True


def _average(fold: FoldState, cfg, epoch: int) -> None:
    """SWA averages the weights of the last --swa-epochs epochs."""
    if fold.swa is not None and epoch >= cfg.epochs - cfg.swa_epochs:
        fold.swa.update_parameters(fold.model)


def _choose_swa(recipe: Recipe, resolved: ExperimentConfig, job: FoldJob, run: tuple) -> dict:
    """The fold's selection row; with SWA, its average replaces the best epoch when it scores better."""
    fold, data, x_valid, writer = run
    state, metric, task = fold.progress, recipe.spec.task.metric, recipe.spec.task
    selection = {"fold": job.k, "best_epoch": state.best_epoch, f"best_epoch_{metric}": state.best[metric],
                 "swa_epochs": 0, f"swa_{metric}": float("nan"), "kept": "best_epoch"}
    if fold.swa is None:
        return selection
    swa_preds = recipe.finish_swa(fold, data, job.train_idx, x_valid)
    if swa_preds is None:
        return selection
    valid_targets = job.targets[job.valid_idx.to(job.targets.device)].cpu().numpy()
    swa_score = task.scores(swa_preds, valid_targets)
    keep = task.better(swa_score, state.best)
    averaged = int(fold.swa.n_averaged)
    selection |= {"swa_epochs": averaged, f"swa_{metric}": swa_score[metric], "kept": "swa" if keep else "best_epoch"}
    if recipe.ranks.main:
        tqdm.write(f"fold {job.k}: SWA of the last {averaged} epochs: valid {metric} {swa_score[metric]:.5f} vs best "
                   f"epoch {state.best_epoch}: {state.best[metric]:.5f} -> keeping {'SWA' if keep else 'the best epoch'}")
    if keep:
        state.best_preds = swa_preds
    if keep and recipe.ranks.main:
        writer.save({"state_dict": fold.swa.module.state_dict(), "config": resolved.to_dict(), "fold": job.k,
                     "epoch": state.epoch, "score": swa_score, "swa_epochs": averaged},
                    job.exp_dir / f"{job.stem}.pth")
    return selection


def _save_full(recipe: Recipe, resolved: ExperimentConfig, job: FoldJob, run: tuple) -> None:
    """--fold full keeps its last epoch; with SWA, the average (nothing to compare it with: no validation rows)."""
    fold, data, writer = run
    final = unwrap(fold.judged)
    if fold.swa is not None:
        recipe.finish_swa(fold, data, job.train_idx, None)
        final = fold.swa.module
        print(f"full: saving the SWA average of the last {int(fold.swa.n_averaged)} epochs (no validation to choose by)")
    writer.save({"state_dict": final.state_dict(), "config": resolved.to_dict(), "fold": "full",
                 "epoch": recipe.cfg.epochs}, job.exp_dir / "full.pth")
