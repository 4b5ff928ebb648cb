"""What every process training an experiment shares: `setup` reads the data and the folds, resolves the recipe and
refuses what cannot work before any training; the Setup it returns trains fold k, or --fold full, by the model's
learner (pipeline.learners). `python -m pipeline.train`, fold workers, bench and tune call it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pipeline import data, experiment, tracking
from pipeline.config import Config, ExperimentConfig
from pipeline.device import on_device, resolve_device, resolve_precision, grad_scaler
from pipeline.distributed import Ranks
from pipeline.errors import PipelineError
from pipeline.folds import description_path, make_folds_command, read_description, read_folds
from pipeline.inputs import input_kind
from pipeline.inputs.spec import DataSpec
from pipeline.learners import Learner, Run, check_model, learner_for, model_form
from pipeline.models import pretrained_stats
from pipeline.training.engine import auto_batch_size
from pipeline.training.recipe import check_mixer, check_optimizer


def data_description(cfg: Config, src) -> data.Description:
    """What make_folds saved beside the folds file; detected with defaults for a folds file older than that."""
    saved = read_description(cfg.folds_path, cfg.data).get("data")
    if saved is None:
        return data.describe(src, data.Options(group_col=read_description(cfg.folds_path, cfg.data).get("group_col", "")))[0]
    return data.Description.from_dict(saved, str(description_path(cfg.folds_path)),
                                      f"remake it with: {make_folds_command(cfg.data, cfg.folds_path)}")


@dataclass
class Setup:
    """What every process training this experiment shares: the data, its folds, the spec, the resolved config."""
    cfg: Config
    exp_dir: Path
    src: object
    desc: data.Description
    train: data.TrainSet
    folds: object
    spec: DataSpec
    resolved: ExperimentConfig
    learner: Learner

    def rows(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, targets): the train rows on the device (or host memory, where the kind augments on the CPU or they
        do not fit), the targets on the device."""
        cached = data.train_rows(self.src, self.desc, self.train, self.cfg.img_size, self.cfg.cache_dir)
        rows = on_device(cached, self.spec.input_kind.rows_device(self.spec, device))
        return rows, torch.from_numpy(self.train.targets).to(device)

    def fit_fold(self, k: int, rows: tuple, run: Run) -> np.ndarray:
        """Fold k by the model's learner: its validation predictions."""
        return self.learner.fit_fold(self, k, rows, run)

    def train_full(self, run: Run) -> dict:
        """--fold full by the model's learner."""
        return self.learner.train_full(self, run)

    def finish_fold(self, k: int, preds: np.ndarray) -> None:
        """Fold k's OOF rows written; its resume snapshot no longer needed."""
        valid = np.flatnonzero(self.folds.fold == k)
        experiment.write_oof(self.exp_dir, self.train.ids[valid], k, self.train.targets[valid], preds, self.desc.task,
                             len(self.train.ids))
        (self.exp_dir / f"fold{k}.last.pth").unlink(missing_ok=True)


def setup(cfg: Config, quiet: bool = False, world: int = 1) -> Setup:
    """Read the data and the folds, resolve the recipe, and refuse what cannot work before any training.
    `world`: the torchrun ranks the batch is split over (an automatic batch size is a multiple of it)."""
    if len(cfg.exp) > 1:
        raise PipelineError(f"--exp: train writes one experiment, got {len(cfg.exp)}: {' '.join(cfg.exp)}")
    say = (lambda *_: None) if quiet else print
    src = data.resolve(cfg.data)
    desc = data_description(cfg, src)
    # the data checked against the folds' description first: folds of other data are said before any notice on it
    train = data.read_train_as(src, desc, cfg.data, str(description_path(cfg.folds_path)))
    kind = input_kind(desc.kind)
    cfg = model_for(cfg, kind, say)
    learner = learner_for(cfg.model)
    exp_dir = experiment.experiment_dir(cfg.weights_dir, cfg.exp_name)
    folds = read_folds(cfg.folds_path, train.train_hash, len(train.targets), cfg.data)
    cfg.fold_ids(folds.n_splits)  # a fold the folds file lacks is refused here
    cfg = learner.resolve(cfg, kind, desc.spec_features, say)
    say = learner.engine_notices(say)  # the torch engine's notices, from the learners that train with it
    if cfg.batch_size == 0:
        size = auto_batch_size(int((folds.fold != 0).sum()))
        size = max(world, size // world * world)  # under torchrun the global batch splits evenly over the ranks
        say(f"batch size {size} (chosen automatically{f', a multiple of the {world} ranks' if world > 1 else ''}; "
            "set it with --batch-size)")
        cfg = replace(cfg, batch_size=size)
    if cfg.warmup_epochs >= cfg.epochs > 0 and cfg.sched != "plateau" or cfg.warmup_epochs > cfg.epochs:
        say(f"notice: --warmup-epochs {cfg.warmup_epochs:g} >= --epochs {cfg.epochs}: the whole run warms up, so the lr "
            f"reaches --lr only at the end and never decays; lower --warmup-epochs or raise --epochs")
    if not desc.task.smooths_labels and cfg.label_smoothing:
        if cfg.label_smoothing != Config().label_smoothing:  # the default is no request: nothing to tell
            say(f"notice: --label-smoothing {cfg.label_smoothing} does not apply to regression; ignored")
        cfg = replace(cfg, label_smoothing=0.0)
    mean, std = desc.normalize
    if cfg.pretrained or cfg.pretrained_path:  # a pretrained backbone expects the statistics it was trained with
        mean, std = pretrained_stats(cfg.model, desc.channels) or (mean, std)
    spec = DataSpec(desc.task, cfg.img_size, mean, std, cfg.aug or desc.augment, desc.kind,
                    desc.spec_features | kind.settings(cfg))
    kind.check_augment(spec)
    if cfg.mixup or cfg.cutmix:
        kind.check_mixing(cfg)  # cutmix pastes image patches; mixed category slots or sequences mean nothing
        check_mixer(cfg, spec.task, cfg.batch_size)
    if cfg.fold == "full" and cfg.sched == "plateau":
        raise PipelineError("--sched plateau: decays on the validation metric, and --fold full has no validation rows; "
                            "use cosine, step or constant")
    check_optimizer(cfg)
    tracking.check(cfg.track)
    device = resolve_device(cfg.device)
    say(f"precision {resolve_precision(cfg.precision, device)}" + (" (with a gradient scaler)"
                                                                   if grad_scaler(cfg.precision, device) else ""))
    recipe_extra = learner.check(cfg, desc.task, len(spec.features.get("names", [])))
    resolved = ExperimentConfig.resolve(cfg, n_splits=folds.n_splits, num_classes=desc.task.num_outputs,
                                        in_chans=desc.channels, train_hash=train.train_hash, folds_hash=folds.folds_hash,
                                        group_col=desc.group_col, data_spec=spec.to_dict(), data=desc.to_dict())
    resolved = replace(resolved, recipe=resolved.recipe | recipe_extra)
    return Setup(cfg, exp_dir, src, desc, train, folds, spec, resolved, learner)


def model_for(cfg: Config, kind, say) -> Config:
    """The model that trains on this kind of rows: the kind's default when --model was left at digit_cnn (images'),
    else the named one, refused in one line when it cannot take these rows."""
    if cfg.model == Config().model and model_form(cfg.model) not in kind.forms:
        say(f"notice: --model: {cfg.model} takes images and this data is a {kind.name}; training {kind.default_model} "
            f"(the {kind.name} default; choose with --model)")
        cfg = replace(cfg, model=kind.default_model)
    check_model(kind, cfg.model)
    return cfg


def for_ranks(cfg: Config, ranks: Ranks, device_name: str) -> Config:
    """The config one torchrun rank trains with: its device; --lr-scale linear makes --batch-size per rank."""
    if not ranks.distributed:
        return cfg
    if cfg.gpus:
        raise PipelineError("--gpus: runs folds in parallel processes; under torchrun each fold is already spread over "
                            "the ranks. Use one or the other")
    if cfg.sync_bn and device_name == "cpu":
        raise PipelineError("--sync-bn: torch's SyncBatchNorm runs on CUDA GPUs only; on CPU ranks leave it off "
                            "(each rank validates with rank 0's statistics)")
    if cfg.lr_scale == "linear":
        cfg = replace(cfg, batch_size=cfg.batch_size * ranks.world, lr=cfg.lr * ranks.world,
                      min_lr=cfg.min_lr * ranks.world)
    return replace(cfg, device=device_name)


def check_batch(cfg: Config, ranks: Ranks) -> None:
    """Under torchrun the global batch (the auto size included) splits evenly over the ranks; pairs per rank."""
    if ranks.distributed and cfg.batch_size % ranks.world:
        raise PipelineError(f"--batch-size {cfg.batch_size}: the global batch must split evenly over the "
                            f"{ranks.world} ranks; give a multiple of {ranks.world}")
    if ranks.distributed and (cfg.mixup or cfg.cutmix):
        if (cfg.batch_size // ranks.world) % 2:
            raise PipelineError(f"--mixup/--cutmix: each rank's share of the batch must be even (pairs are mixed), "
                                f"got {cfg.batch_size // ranks.world} per rank")
