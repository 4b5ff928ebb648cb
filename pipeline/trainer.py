"""One fold, any learner: what `python -m pipeline.train` runs for each fold, and what fold workers, bench and tune
call. `setup` reads the data and the folds and refuses what cannot work before any training; `fit_fold` trains
fold k by its learner (the torch engine's `train_fold`, or a boosting library's); `train_full` trains --fold full.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from timm.utils import ModelEmaV3
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from pipeline import data, distributed, experiment
from pipeline.io import BackgroundWriter, load_checkpoint, save_checkpoint, write_json
from pipeline.augment import is_albumentations, load_albumentations
from pipeline.config import Config, ExperimentConfig
from pipeline.distributed import SINGLE, Ranks
from pipeline.device import grad_scaler, on_device, resolve_device, resolve_precision
from pipeline.inputs.spec import DataSpec
from pipeline.engine import auto_batch_size, make_scheduler, predict, steps_per_epoch, train_one_epoch
from pipeline.errors import PipelineError, TrainingDiverged
from pipeline.folds import description_path, file_hash, make_folds_command, read_description, read_folds
from pipeline.inputs import check_model, input_kind, model_form
from pipeline.learners import gbm_learner
from pipeline.models import build_model, pretrained_stats, unwrap
from pipeline.recipe import check_finite, finish_swa, fold_setup, make_optimizer, mixer, stop_early
from pipeline.resume import FoldProgress, check_snapshot, restore, snapshot

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

    def images(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, targets): the decoded train images on the device (or host memory), the targets on the device."""
        cached = data.train_images(self.src, self.desc, self.train, self.cfg.img_size, self.cfg.cache_dir)
        images = on_device(cached, device if not is_albumentations(self.spec.augment) else torch.device("cpu"))
        return images, torch.from_numpy(self.train.targets).to(device)

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
    cfg = model_for(cfg, input_kind(desc.kind), say)
    exp_dir = experiment.experiment_dir(cfg.weights_dir, cfg.exp_name)
    folds = read_folds(cfg.folds_path, train.train_hash, len(train.targets), cfg.data)
    cfg.fold_ids(folds.n_splits)  # a fold the folds file lacks is refused here
    neural = model_form(cfg.model) != "gbm"
    if cfg.cat_encoding != Config().cat_encoding and not (neural and desc.spec_features.get("categorical")):
        say(f"notice: --cat-encoding {cfg.cat_encoding} applies to a neural model on a table's categorical columns; "
            f"{'LightGBM splits on categories itself' if not neural else 'this data has none'}: ignored")
        cfg = replace(cfg, cat_encoding=Config().cat_encoding)  # not saved as the recipe: --resume without it works
    cfg = input_kind(desc.kind).resolve(cfg, desc.spec_features, say)
    if not neural:  # the torch engine's notices (batch size, warmup, precision) would be noise
        say = (lambda *_: None)
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
    kind = input_kind(desc.kind)
    spec = DataSpec(desc.task, cfg.img_size, mean, std, cfg.aug or desc.augment, desc.kind,
                    desc.spec_features | kind.settings(cfg))
    if is_albumentations(spec.augment):
        load_albumentations(spec.augment)  # a bad file fails here, before any work
    if cfg.mixup or cfg.cutmix:
        kind.check_mixing(cfg)  # cutmix pastes image patches; mixed category slots or sequences mean nothing
    mixer(cfg, spec.task, cfg.batch_size)  # refused here when it cannot apply
    if cfg.fold == "full" and cfg.sched == "plateau":
        raise PipelineError("--sched plateau: decays on the validation metric, and --fold full has no validation rows; "
                            "use cosine, step or constant")
    make_optimizer(nn.Linear(1, 1), cfg)
    device = resolve_device(cfg.device)
    say(f"precision {resolve_precision(cfg.precision, device)}" + (" (with a gradient scaler)"
                                                                   if grad_scaler(cfg.precision, device) else ""))
    recipe_extra = {}
    if model_form(cfg.model) == "gbm":
        library = gbm_learner(cfg.model)  # a bad params file or a task it cannot fit fails here, before any work
        params = library.load_params(cfg.gbm_params) if cfg.gbm_params else {}
        library.check_task(desc.task, params)
        # the parameters themselves are the recipe (every fold and --resume read them here), not the file's path
        recipe_extra = {"gbm_param_values": params, "gbm_params_hash": file_hash(Path(cfg.gbm_params).read_bytes())} if cfg.gbm_params else {}
    else:
        build_model(cfg.model, desc.task.num_outputs, desc.channels, cfg.img_size, cfg.pretrained, cfg.pretrained_path,
                    cfg.drop_rate, cfg.drop_path_rate, len(spec.features.get("names", [])), cfg.hidden)  # fail fast
    resolved = ExperimentConfig.resolve(cfg, n_splits=folds.n_splits, num_classes=desc.task.num_outputs,
                                        in_chans=desc.channels, train_hash=train.train_hash, folds_hash=folds.folds_hash,
                                        group_col=desc.group_col, data_spec=spec.to_dict(), data=desc.to_dict())
    resolved = replace(resolved, recipe=resolved.recipe | recipe_extra)
    return Setup(cfg, exp_dir, src, desc, train, folds, spec, resolved)


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


def train_full(cfg: Config, resolved: ExperimentConfig, spec: DataSpec, src, desc, train, exp_dir: Path, device: torch.device,
               ranks: Ranks = SINGLE) -> dict:
    """--fold full: every row for the same epochs, no validation (so no CV, no best epoch): the last epoch is saved."""
    if ranks.distributed:
        raise PipelineError("--fold full: trains in one process; run it without torchrun")
    if model_form(cfg.model) == "gbm":
        raise PipelineError(f"--fold full: {cfg.model} picks its number of trees on a fold's validation rows, which "
                            "--fold full does not have; train --fold all and infer from the fold models")
    if cfg.resume:  # it would silently start over
        raise PipelineError("--resume: --fold full keeps no per-epoch snapshot, so there is nothing to resume; run it "
                            "without --resume (add --overwrite to replace an existing full.pth)")
    with experiment.locked(exp_dir):
        experiment.prepare_full(exp_dir, resolved, cfg.overwrite)
        if not (exp_dir / "config.json").exists():
            write_json(resolved.to_dict() | {"fold": "all"}, exp_dir / "config.json")
        images = on_device(data.train_images(src, desc, train, cfg.img_size, cfg.cache_dir),
                           device if not is_albumentations(spec.augment) else torch.device("cpu"))
        targets = torch.from_numpy(train.targets).to(device)
        rows = torch.arange(len(targets), device=images.device)
        k = resolved.n_splits  # seeds apart from every fold's
        images, net_input = fold_inputs(images, rows, targets, spec, cfg, exp_dir / "full.prep.json")
        model, net, optimizer, generator = fold_setup(cfg, spec, resolved.in_chans, k, device,
                                                      net_input=net_input, train_targets=train.targets)
        scaler, mix = grad_scaler(cfg.precision, device), mixer(cfg, spec.task, cfg.batch_size)
        scheduler = make_scheduler(optimizer, cfg, steps_per_epoch(len(rows), cfg.batch_size))
        ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=True) if cfg.ema else None
        swa = AveragedModel(model) if cfg.swa_epochs else None
        step = 0
        print(f"training {cfg.model} on all {len(rows):,} rows for {cfg.epochs} epochs, no validation -> {exp_dir}/full.pth")
        for epoch in range(cfg.epochs):
            result = train_one_epoch(net, optimizer, scheduler, images, rows, targets, cfg, spec, step, generator,
                                     desc=f"full epoch {epoch + 1}/{cfg.epochs}", scaler=scaler, ema=ema, mix=mix)
            step = result.step
            check_finite(result.loss, np.zeros((1, 1)), unwrap(ema.module if ema else net), "full", epoch, 0)
            scheduler.step(epoch + 1)
            if swa is not None and epoch >= cfg.epochs - cfg.swa_epochs:
                swa.update_parameters(model)
            tqdm.write(f"full epoch {epoch + 1:>3}/{cfg.epochs}  train loss {result.loss:.4f}")
        final = unwrap(ema.module if ema else net)
        if swa is not None:  # nothing to compare it with (no validation rows): the average is what is saved
            finish_swa(swa, cfg, spec, images, rows, None, device, "full", cfg.epochs)
            final = swa.module
            print(f"full: saving the SWA average of the last {int(swa.n_averaged)} epochs (no validation to choose by)")
        save_checkpoint({"state_dict": final.state_dict(), "config": resolved.to_dict(), "fold": "full", "epoch": cfg.epochs},
                        exp_dir / "full.pth")
    print(f"wrote {exp_dir}/full.pth (no CV for it: every row was trained on); add it at inference with --with-full")
    return {"full": str(exp_dir / "full.pth")}


def fit_fold(cfg: Config, resolved: ExperimentConfig, spec: DataSpec, k: int, images: torch.Tensor, targets: torch.Tensor,
             folds: np.ndarray, exp_dir: Path, device: torch.device, on_epoch=None, ranks: Ranks = SINGLE) -> np.ndarray:
    """Fold k by its learner (the model name picks it): a boosting library's, or the torch engine (train_fold)."""
    if model_form(cfg.model) == "gbm":
        if ranks.distributed:
            raise PipelineError(f"--model {cfg.model}: a boosting library trains a fold in one process; run it without "
                                "torchrun (--gpus cpu,cpu trains folds in parallel)")
        from pipeline.learners import boosted

        params = resolved.setting("gbm_param_values") or {}  # read once at setup: one recipe for every fold
        return boosted.train_fold(cfg, params, spec, k, images, targets, folds, exp_dir, ranks.main)
    return train_fold(cfg, resolved, spec, k, images, targets, folds, exp_dir, device, on_epoch, ranks)


def fold_inputs(images: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor, spec: DataSpec, cfg: Config,
                path: Path, ranks: Ranks = SINGLE) -> tuple[torch.Tensor, dict]:
    """The rows as this fold's model sees them, and what the network gets (width, embedded slots, features per
    step): the input kind's preprocessing (tables: imputation, scaling, encoding, selection; sequences: per-feature
    normalisation) fitted on the fold's training `rows` alone and saved at `path` (JSON) for inference; images pass
    through."""
    fitted, state = spec.input_kind.fit_fold(images, rows, targets, spec, cfg)
    if state is not None and ranks.main:
        spec.input_kind.save_state(state, path)
    channels = int(images.shape[1]) if getattr(images, "ndim", 0) == 4 else 0
    return fitted, spec.input_kind.net_input(channels, cfg.img_size, state)


def train_fold(cfg: Config, resolved: ExperimentConfig, spec: DataSpec, k: int, images: torch.Tensor, targets: torch.Tensor,
               folds: np.ndarray, exp_dir: Path, device: torch.device, on_epoch=None,
               ranks: Ranks = SINGLE) -> np.ndarray:
    """Train fold k; save its best epoch (or its SWA average, when that scores better) by the competition metric;
    return those validation predictions. Under torchrun every rank runs this, rank 0 alone writes and prints."""
    train_idx = torch.from_numpy(np.flatnonzero(folds != k)).to(images.device)
    valid_idx = torch.from_numpy(np.flatnonzero(folds == k)).to(images.device)
    valid_targets = targets[valid_idx.to(device)].cpu().numpy()
    images, net_input = fold_inputs(images, train_idx, targets, spec, cfg, exp_dir / f"fold{k}.prep.json", ranks)
    model, net, optimizer, generator = fold_setup(cfg, spec, resolved.in_chans, k, device, ranks, net_input,
                                                  targets[train_idx.to(targets.device)].cpu().numpy())
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch(len(train_idx), cfg.batch_size),
                               spec.task.higher_is_better)
    say = tqdm.write if ranks.main else (lambda *_: None)
    scaler = grad_scaler(cfg.precision, device)
    ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=True) if cfg.ema else None
    swa = AveragedModel(model) if cfg.swa_epochs else None
    mix = mixer(cfg, spec.task, cfg.batch_size)
    judged = ema.module if ema is not None else net  # what is validated, saved as best and predicted with
    metric = spec.task.metric
    state = FoldProgress()
    last = exp_dir / f"fold{k}.last.pth"
    if cfg.resume and last.is_file():
        state = restore(load_checkpoint(last), model, optimizer, generator, last, scaler, ema, scheduler, swa)
        check_snapshot(state, (len(valid_idx), spec.task.num_outputs), metric, cfg.epochs, last)
        say(f"resume: fold {k} continues after epoch {state.epoch} of {cfg.epochs} "
            f"(best {metric} so far {state.best[metric]:.5f})")
    x_valid = images[valid_idx]
    with BackgroundWriter() as writer:  # checkpoints go to disk while the next epoch trains
        for epoch in range(state.epoch, cfg.epochs):
            t0 = time.perf_counter()
            epoch_result = train_one_epoch(net, optimizer, scheduler, images, train_idx, targets, cfg, spec,
                                           state.step, generator, desc=f"fold {k} epoch {epoch + 1}/{cfg.epochs}",
                                           scaler=scaler, ema=ema, mix=mix, ranks=ranks)
            state.step, loss = epoch_result.step, epoch_result.loss
            lr = optimizer.param_groups[0]["lr"]
            validator = unwrap(judged) if ranks.distributed else judged  # DataParallel validates on every GPU
            distributed.sync_buffers(validator, ranks)  # every rank validates rank 0's weights
            preds = distributed.gather_rows(
                lambda a, b: predict(validator, x_valid[a:b], 2 * cfg.batch_size // ranks.world, spec, device,
                                     precision=cfg.precision), len(x_valid), ranks, device)
            check_finite(loss, preds, unwrap(judged), k, epoch, state.epoch)
            valid = spec.task.scores(preds, valid_targets)
            seconds = time.perf_counter() - t0  # training and validation; checkpoint writes are timed apart
            scheduler.step(epoch + 1, valid[metric])  # plateau decays here; the step-driven schedules ignore it
            if swa is not None and epoch >= cfg.epochs - cfg.swa_epochs:
                swa.update_parameters(model)
            improved = spec.task.better(valid, state.best)
            if improved:  # best by the competition metric, ties broken by the lower loss
                state.improve(epoch + 1, valid, preds)
                if ranks.main:
                    writer.save({"state_dict": unwrap(judged).state_dict(), "config": resolved.to_dict(), "fold": k,
                             "epoch": epoch + 1, "score": valid}, exp_dir / f"fold{k}.pth")
            row = {"fold": k, "epoch": epoch + 1, "train_loss": loss, "train_accuracy": epoch_result.accuracy,
                   "valid_loss": valid["loss"]} | {f"valid_{m}": v for m, v in valid.items() if m != "loss"} \
                | {"lr": lr, "seconds": round(seconds, 3)}
            state.epoch = epoch + 1
            if ranks.main:
                experiment.append_metrics(exp_dir, row, epoch_result.lrs)
                writer.save(snapshot(state, model, optimizer, generator, scaler, ema, scheduler, swa), last)
            task, unit = spec.task, spec.input_kind.unit
            say(f"fold {k} epoch {epoch + 1:>3}/{cfg.epochs}  train {task.train_loss_name} {loss:.4f}  valid "
                f"{task.loss_name} {valid['loss']:.4f}  valid {metric} {valid[metric]:.5f}  lr {lr:.2e}  "
                f"{seconds:5.1f}s  {len(train_idx) / seconds:,.0f} {unit}/s{'  *best' if improved else ''}")
            if on_epoch is not None:
                on_epoch(epoch + 1, valid)
            if stop_early(epoch + 1, state.best_epoch, cfg.patience):
                say(f"fold {k}: no better {metric} for {cfg.patience} epochs since epoch "
                           f"{state.best_epoch}: stopped early (--patience)")
                break
        if state.best_preds is None:
            raise TrainingDiverged(f"fold {k}: no epoch gave a usable {metric} (it was NaN every epoch)")
        selection = {"fold": k, "best_epoch": state.best_epoch, f"best_epoch_{metric}": state.best[metric],
                     "swa_epochs": 0, f"swa_{metric}": float("nan"), "kept": "best_epoch"}
        if swa is not None:
            swa_preds = finish_swa(swa, cfg, spec, images, train_idx, x_valid, device, k, state.epoch)
            if swa_preds is not None:
                swa_score = spec.task.scores(swa_preds, valid_targets)
                keep = spec.task.better(swa_score, state.best)
                selection |= {"swa_epochs": int(swa.n_averaged), f"swa_{metric}": swa_score[metric],
                              "kept": "swa" if keep else "best_epoch"}
                say(f"fold {k}: SWA of the last {int(swa.n_averaged)} epochs: valid {metric} "
                           f"{swa_score[metric]:.5f} vs best epoch {state.best_epoch}: {state.best[metric]:.5f}"
                           f" -> keeping {'SWA' if keep else 'the best epoch'}")
                if keep:
                    state.best_preds = swa_preds
                if keep and ranks.main:
                    writer.save({"state_dict": swa.module.state_dict(), "config": resolved.to_dict(), "fold": k,
                                 "epoch": state.epoch, "score": swa_score, "swa_epochs": int(swa.n_averaged)},
                                exp_dir / f"fold{k}.pth")
        writer.wait()
        say(f"fold {k}: checkpoints written in the background, {writer.seconds:.1f}s of disk time "
                   f"(not in the {spec.input_kind.unit}/s above)")
    if ranks.main:
        experiment.write_selection(exp_dir, selection)
    return state.best_preds
