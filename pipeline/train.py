"""Train one timm model per fold; save fold weights, OOF predictions and the local CV.

    python -m pipeline.train --fold all                      # weights/digit_cnn/ on folds/folds.csv
    python -m pipeline.train --fold 0 --epochs 1 --data data/digit-recognizer.zip
    python -m pipeline.train --model resnet18 --lr 1e-3 --exp r18 --config my.yaml
    python -m pipeline.train --fold all --resume             # after an interruption
"""
from __future__ import annotations

import contextlib
import sys
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
from pipeline.checkpoint import BackgroundWriter, load_checkpoint, save_checkpoint, write_json
from pipeline.augment import is_albumentations, load_albumentations
from pipeline.config import Config, command, parse_config, to_dict
from pipeline.distributed import SINGLE, Ranks
from pipeline.engine import (DataSpec, auto_batch_size, grad_scaler, make_scheduler, on_device, predict,
                             resolve_device, resolve_precision, steps_per_epoch, train_one_epoch)
from pipeline.errors import PipelineError, TrainingDiverged, main_guard
from pipeline.folds import description_path, read_description, read_folds
from pipeline.infer import oof_tta
from pipeline.models import build_model, pretrained_stats, unwrap
from pipeline.recipe import check_finite, finish_swa, fold_setup, make_optimizer, mixer, stop_early
from pipeline.resume import check_snapshot, restore, snapshot

FLAGS = ["data", "folds_path", "model", "pretrained", "pretrained_path", "img_size", "fold", "epochs",
         "batch_size", "lr", "weight_decay", "label_smoothing", "warmup_epochs", "rotate", "scale", "shift",
         "exp", "weights_dir", "device", "seed", "overwrite", "resume", "oof_tta", "tta_preset", "report", "cache_dir", "aug", "precision", "ema",
         "clip_grad", "patience", "drop_rate", "drop_path_rate", "deterministic", "opt", "momentum", "mixup", "cutmix",
         "sched", "min_lr", "warmup_lr", "decay_epochs", "decay_rate", "swa_epochs",
         "gpus", "sync_bn", "lr_scale"]
REPORT_FLAGS = ["exp", "data", "weights_dir", "cache_dir"]  # what `python -m pipeline.report` needs to find the run


def data_description(cfg: Config, src) -> data.Description:
    """What make_folds saved beside the folds file; detected with defaults for a folds file older than that."""
    saved = read_description(cfg.folds_path).get("data")
    if saved is None:
        return data.describe(src, group_col=read_description(cfg.folds_path).get("group_col", ""))[0]
    return data.Description.from_dict(saved, str(description_path(cfg.folds_path)))


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
    resolved: dict

    def images(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, targets): the decoded train images on the device (or host memory), the targets on the device."""
        cached = data.train_images(self.src, self.desc, self.train, self.cfg.img_size, self.cfg.cache_dir)
        images = on_device(cached, device if not is_albumentations(self.spec.augment) else torch.device("cpu"))
        return images, torch.from_numpy(self.train.targets).to(device)

    def finish_fold(self, k: int, preds: np.ndarray) -> None:
        """Fold k's OOF rows written; its resume snapshot no longer needed."""
        valid = np.flatnonzero(self.folds.fold == k)
        experiment.write_oof(self.exp_dir, self.train.ids[valid], k, self.train.targets[valid], preds, self.desc.task)
        (self.exp_dir / f"fold{k}.last.pth").unlink(missing_ok=True)


def setup(cfg: Config, quiet: bool = False, world: int = 1) -> Setup:
    """Read the data and the folds, resolve the recipe, and refuse what cannot work before any training.
    `world`: the torchrun ranks the batch is split over (an automatic batch size is a multiple of it)."""
    if len(cfg.exp) > 1:
        raise PipelineError(f"--exp: train writes one experiment, got {len(cfg.exp)}: {' '.join(cfg.exp)}")
    say = (lambda *_: None) if quiet else print
    exp_dir = experiment.experiment_dir(cfg.weights_dir, cfg.exp_name)
    src = data.resolve(cfg.data)
    desc = data_description(cfg, src)
    train = data.read_train_as(src, desc, cfg.data, str(description_path(cfg.folds_path)))
    folds = read_folds(cfg.folds_path, train.train_hash, len(train.targets))
    cfg.fold_ids(folds.n_splits)  # a fold the folds file lacks is refused here
    if cfg.batch_size == 0:
        size = auto_batch_size(int((folds.fold != 0).sum()))
        size = max(world, size // world * world)  # under torchrun the global batch splits evenly over the ranks
        say(f"batch size {size} (chosen automatically{f', a multiple of the {world} ranks' if world > 1 else ''}; "
            "set it with --batch-size)")
        cfg = replace(cfg, batch_size=size)
    if cfg.warmup_epochs >= cfg.epochs > 0 and cfg.sched != "plateau" or cfg.warmup_epochs > cfg.epochs:
        say(f"notice: --warmup-epochs {cfg.warmup_epochs:g} >= --epochs {cfg.epochs}: the whole run warms up, so the lr "
            f"reaches --lr only at the end and never decays; lower --warmup-epochs or raise --epochs")
    if desc.task.kind == "regression" and cfg.label_smoothing:
        say(f"notice: --label-smoothing {cfg.label_smoothing} does not apply to regression; ignored")
        cfg = replace(cfg, label_smoothing=0.0)
    mean, std = desc.normalize
    if cfg.pretrained or cfg.pretrained_path:  # a pretrained backbone expects the statistics it was trained with
        mean, std = pretrained_stats(cfg.model, desc.channels) or (mean, std)
    spec = DataSpec(desc.task, cfg.img_size, mean, std, cfg.aug or desc.augment)
    if is_albumentations(spec.augment):
        load_albumentations(spec.augment)  # a bad file fails here, before any work
    mixer(cfg, spec.task, cfg.batch_size)  # refused here when it cannot apply
    if cfg.fold == "full" and cfg.sched == "plateau":
        raise PipelineError("--sched plateau: decays on the validation metric, and --fold full has no validation rows; "
                            "use cosine, step or constant")
    make_optimizer(nn.Linear(1, 1), cfg)
    device = resolve_device(cfg.device)
    say(f"precision {resolve_precision(cfg.precision, device)}" + (" (with a gradient scaler)"
                                                                   if grad_scaler(cfg.precision, device) else ""))
    build_model(cfg.model, desc.task.num_outputs, desc.channels, cfg.img_size, cfg.pretrained, cfg.pretrained_path,
                cfg.drop_rate, cfg.drop_path_rate)  # fail fast, before any work
    resolved = to_dict(cfg) | {"exp": [cfg.exp_name], "n_splits": folds.n_splits, "num_classes": desc.task.num_outputs,
                               "in_chans": desc.channels, "train_hash": train.train_hash, "folds_hash": folds.folds_hash,
                               "group_col": desc.group_col, "data_spec": spec.to_dict(), "data": desc.to_dict()}
    return Setup(cfg, exp_dir, src, desc, train, folds, spec, resolved)


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


def prepared(exp_dir: Path, resolved: dict, fold_ids: list[int], cfg: Config) -> list[int] | str:
    """The folds still to train, or why not (as text, so rank 0 can tell the other ranks before it stops)."""
    try:
        return experiment.prepare(exp_dir, resolved, fold_ids, cfg.resume, cfg.overwrite)
    except PipelineError as e:
        return str(e)


@contextlib.contextmanager
def locked_or_message(exp_dir: Path, fold: int | None, ranks: Ranks):
    """Rank 0 holds the experiment's lock for the block; yields ('', the held lock) or (why it could not, None),
    so every rank can stop on rank 0's refusal."""
    if not ranks.main:
        yield "", None
        return
    try:
        lock = experiment.locked(exp_dir, fold)
        held = lock.__enter__()
    except PipelineError as e:
        yield str(e), None
        return
    try:
        yield "", held
    finally:
        lock.__exit__(None, None, None)


def run(cfg: Config, on_epoch=None) -> dict:
    """Train the folds named by cfg.fold; `on_epoch(epoch, valid_scores)` is called after every epoch."""
    ranks, device_name = distributed.from_environment(cfg.device)
    with distributed.peer_loss_as_one_line(ranks):
        cfg = for_ranks(cfg, ranks, device_name)
        devices = distributed.parse_devices(cfg.gpus) if cfg.gpus else []
        if cfg.fold == "full" and len(devices) > 1:
            print(f"notice: --gpus {cfg.gpus}: --fold full trains one model in one process; on {devices[0]} only")
        if len(devices) == 1 or (devices and (cfg.fold.isdigit() or cfg.fold == "full")):
            cfg, devices = replace(cfg, device=devices[0], gpus=""), devices[:1]
        job = setup(cfg, quiet=not ranks.main, world=ranks.world)
        check_batch(job.cfg, ranks)
        if cfg.fold == "full":
            return train_full(job.cfg, job.resolved, job.spec, job.src, job.desc, job.train, job.exp_dir,
                              resolve_device(job.cfg.device), ranks)
        return train_folds(job, devices, ranks, on_epoch)


def train_folds(job: Setup, devices: list[str], ranks: Ranks, on_epoch=None) -> dict:
    """The folds of cfg.fold, under the experiment's lock: sequentially, in --gpus processes, or over the ranks."""
    cfg, exp_dir, desc = job.cfg, job.exp_dir, job.desc
    device = resolve_device(cfg.device)
    fold_ids = cfg.fold_ids(job.folds.n_splits)
    single = int(cfg.fold) if cfg.fold.isdigit() else None  # one fold: other folds may train at once (SLURM)
    with locked_or_message(exp_dir, single, ranks) as (refused, held):
        if distributed.agree(refused, ranks):
            raise PipelineError(refused)
        todo = distributed.agree(prepared(exp_dir, job.resolved, fold_ids, cfg) if ranks.main else None, ranks)
        if isinstance(todo, str):  # rank 0 refused: every rank stops with its one line
            raise PipelineError(todo)
        if len(devices) > max(1, len(todo)):  # a process without a fold would start, load the data and idle
            print(f"notice: --gpus {cfg.gpus}: {len(devices)} processes for {len(todo)} fold(s) to train; "
                  f"starting {max(1, len(todo))}")
            devices = devices[:max(1, len(todo))]
        if ranks.main:
            write_json(job.resolved, exp_dir / "config.json")
            where = (f"{len(devices)} parallel fold processes on {', '.join(devices)}" if len(devices) > 1 else
                     f"{ranks.world} ranks (DistributedDataParallel)" if ranks.distributed else
                     f"device {device}{', %d GPUs' % torch.cuda.device_count() if device.type == 'cuda' else ''}")
            print(f"{desc.summary()}\ntraining {cfg.model} on {len(job.train.targets):,} rows, folds {fold_ids} -> "
                  f"{exp_dir}/ ({where})")
        distributed.barrier(ranks)
        started, images, failed = time.perf_counter(), None, {}
        if len(devices) > 1 and len(todo) > 1:
            from pipeline.parallel import parallel_folds

            failed = parallel_folds(cfg, todo, devices, held)
        else:
            if devices:  # one fold left of a --gpus run: on the first listed device
                device = resolve_device(devices[0])
            images, targets = job.images(device)
            for k in todo:
                preds = train_fold(cfg, job.resolved, job.spec, k, images, targets, job.folds.fold, exp_dir, device,
                                   on_epoch, ranks)
                if ranks.main:
                    job.finish_fold(k, preds)
        if not ranks.main:
            return {}
        if failed and len(failed) == len(todo) and not (exp_dir / "oof.csv").is_file():
            raise PipelineError("; ".join(failed.values()))
        with experiment.tables_locked(exp_dir):  # single-fold jobs may be writing their rows meanwhile
            cv = experiment.write_cv(exp_dir, job.folds.n_splits,
                                     {"train_seconds": round(time.perf_counter() - started, 1)}, desc.task)
        print(experiment.format_cv(cv, cfg.exp_name))
        if failed:
            raise PipelineError(f"{len(failed)} of {len(todo)} folds did not finish: " + "; ".join(failed.values())
                                + ". The others are saved; finish with: "
                                + command("train", cfg, FLAGS, fold="all", resume=True, overwrite=False))
        if cfg.oof_tta or cfg.report:
            images = images if images is not None else job.images(device)[0]
        if cfg.oof_tta:
            cv = oof_tta(exp_dir, images, cfg.tta_preset or desc.tta_preset, cfg.batch_size, device, cfg.precision)
        if cfg.report:
            from pipeline.report import write_report
            print(f"report: {write_report(exp_dir, images)}")
        else:
            print(f"figures: {command('report', cfg, REPORT_FLAGS, exp=(cfg.exp_name,))}")
    return cv


def train_full(cfg: Config, resolved: dict, spec: DataSpec, src, desc, train, exp_dir: Path, device: torch.device,
               ranks: Ranks = SINGLE) -> dict:
    """--fold full: every row for the same epochs, no validation (so no CV, no best epoch): the last epoch is saved."""
    if ranks.distributed:
        raise PipelineError("--fold full: trains in one process; run it without torchrun")
    if cfg.resume:  # it would silently start over
        raise PipelineError("--resume: --fold full keeps no per-epoch snapshot, so there is nothing to resume; run it "
                            "without --resume (add --overwrite to replace an existing full.pth)")
    with experiment.locked(exp_dir):
        experiment.prepare_full(exp_dir, resolved, cfg.overwrite)
        if not (exp_dir / "config.json").exists():
            write_json(resolved | {"fold": "all"}, exp_dir / "config.json")
        images = on_device(data.train_images(src, desc, train, cfg.img_size, cfg.cache_dir),
                           device if not is_albumentations(spec.augment) else torch.device("cpu"))
        targets = torch.from_numpy(train.targets).to(device)
        rows = torch.arange(len(targets), device=images.device)
        k = int(resolved["n_splits"])  # seeds apart from every fold's
        model, net, optimizer, generator = fold_setup(cfg, spec, int(resolved["in_chans"]), k, device)
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
        save_checkpoint({"state_dict": final.state_dict(), "config": resolved, "fold": "full", "epoch": cfg.epochs},
                        exp_dir / "full.pth")
    print(f"wrote {exp_dir}/full.pth (no CV for it: every row was trained on); add it at inference with --with-full")
    return {"full": str(exp_dir / "full.pth")}


def train_fold(cfg: Config, resolved: dict, spec: DataSpec, k: int, images: torch.Tensor, targets: torch.Tensor,
               folds: np.ndarray, exp_dir: Path, device: torch.device, on_epoch=None,
               ranks: Ranks = SINGLE) -> np.ndarray:
    """Train fold k; save its best epoch (or its SWA average, when that scores better) by the competition metric;
    return those validation predictions. Under torchrun every rank runs this, rank 0 alone writes and prints."""
    train_idx = torch.from_numpy(np.flatnonzero(folds != k)).to(images.device)
    valid_idx = torch.from_numpy(np.flatnonzero(folds == k)).to(images.device)
    valid_targets = targets[valid_idx.to(device)].cpu().numpy()
    model, net, optimizer, generator = fold_setup(cfg, spec, int(resolved["in_chans"]), k, device, ranks)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch(len(train_idx), cfg.batch_size),
                               spec.task.higher_is_better)
    say = tqdm.write if ranks.main else (lambda *_: None)
    scaler = grad_scaler(cfg.precision, device)
    ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=True) if cfg.ema else None
    swa = AveragedModel(model) if cfg.swa_epochs else None
    mix = mixer(cfg, spec.task, cfg.batch_size)
    judged = ema.module if ema is not None else net  # what is validated, saved as best and predicted with
    metric = spec.task.metric
    state = {"epoch": 0, "step": 0, "best": None, "best_preds": None, "best_epoch": 0}
    last = exp_dir / f"fold{k}.last.pth"
    if cfg.resume and last.is_file():
        state = restore(load_checkpoint(last), model, optimizer, generator, last, scaler, ema, scheduler, swa)
        check_snapshot(state, (len(valid_idx), spec.task.num_outputs), metric, cfg.epochs, last)
        say(f"resume: fold {k} continues after epoch {state['epoch']} of {cfg.epochs} "
            f"(best {metric} so far {state['best'][metric]:.5f})")
    x_valid = images[valid_idx]
    with BackgroundWriter() as writer:  # checkpoints go to disk while the next epoch trains
        for epoch in range(state["epoch"], cfg.epochs):
            t0 = time.perf_counter()
            epoch_result = train_one_epoch(net, optimizer, scheduler, images, train_idx, targets, cfg, spec,
                                           state["step"], generator, desc=f"fold {k} epoch {epoch + 1}/{cfg.epochs}",
                                           scaler=scaler, ema=ema, mix=mix, ranks=ranks)
            state["step"], loss = epoch_result.step, epoch_result.loss
            lr = optimizer.param_groups[0]["lr"]
            validator = unwrap(judged) if ranks.distributed else judged  # DataParallel validates on every GPU
            distributed.sync_buffers(validator, ranks)  # every rank validates rank 0's weights
            preds = distributed.gather_rows(
                lambda a, b: predict(validator, x_valid[a:b], 2 * cfg.batch_size // ranks.world, spec, device,
                                     precision=cfg.precision), len(x_valid), ranks, device)
            check_finite(loss, preds, unwrap(judged), k, epoch, state["epoch"])
            valid = spec.task.scores(preds, valid_targets)
            seconds = time.perf_counter() - t0  # training and validation; checkpoint writes are timed apart
            scheduler.step(epoch + 1, valid[metric])  # plateau decays here; the step-driven schedules ignore it
            if swa is not None and epoch >= cfg.epochs - cfg.swa_epochs:
                swa.update_parameters(model)
            improved = spec.task.better(valid, state["best"])
            if improved:  # best by the competition metric, ties broken by the lower loss
                state |= {"best": valid, "best_preds": preds, "best_epoch": epoch + 1}
                if ranks.main:
                    writer.save({"state_dict": unwrap(judged).state_dict(), "config": resolved, "fold": k,
                             "epoch": epoch + 1, "score": valid}, exp_dir / f"fold{k}.pth")
            row = {"fold": k, "epoch": epoch + 1, "train_loss": loss, "train_accuracy": epoch_result.accuracy,
                   "valid_loss": valid["loss"]} | {f"valid_{m}": v for m, v in valid.items() if m != "loss"} \
                | {"lr": lr, "seconds": round(seconds, 3)}
            state["epoch"] = epoch + 1
            if ranks.main:
                experiment.append_metrics(exp_dir, row, epoch_result.lrs)
                writer.save(snapshot(state, model, optimizer, generator, scaler, ema, scheduler, swa), last)
            say(f"fold {k} epoch {epoch + 1:>3}/{cfg.epochs}  train loss {loss:.4f}  valid loss "
                       f"{valid['loss']:.4f}  valid {metric} {valid[metric]:.5f}  lr {lr:.2e}  "
                       f"{seconds:5.1f}s  {len(train_idx) / seconds:,.0f} img/s{'  *best' if improved else ''}")
            if on_epoch is not None:
                on_epoch(epoch + 1, valid)
            if stop_early(epoch + 1, state["best_epoch"], cfg.patience):
                say(f"fold {k}: no better {metric} for {cfg.patience} epochs since epoch "
                           f"{state['best_epoch']}: stopped early (--patience)")
                break
        if state["best_preds"] is None:
            raise TrainingDiverged(f"fold {k}: no epoch gave a usable {metric} (it was NaN every epoch)")
        selection = {"fold": k, "best_epoch": state["best_epoch"], f"best_epoch_{metric}": state["best"][metric],
                     "swa_epochs": 0, f"swa_{metric}": float("nan"), "kept": "best_epoch"}
        if swa is not None:
            swa_preds = finish_swa(swa, cfg, spec, images, train_idx, x_valid, device, k, state["epoch"])
            if swa_preds is not None:
                swa_score = spec.task.scores(swa_preds, valid_targets)
                keep = spec.task.better(swa_score, state["best"])
                selection |= {"swa_epochs": int(swa.n_averaged), f"swa_{metric}": swa_score[metric],
                              "kept": "swa" if keep else "best_epoch"}
                say(f"fold {k}: SWA of the last {int(swa.n_averaged)} epochs: valid {metric} "
                           f"{swa_score[metric]:.5f} vs best epoch {state['best_epoch']}: {state['best'][metric]:.5f}"
                           f" -> keeping {'SWA' if keep else 'the best epoch'}")
                if keep:
                    state["best_preds"] = swa_preds
                if keep and ranks.main:
                    writer.save({"state_dict": swa.module.state_dict(), "config": resolved, "fold": k,
                                 "epoch": state["epoch"], "score": swa_score, "swa_epochs": int(swa.n_averaged)},
                                exp_dir / f"fold{k}.pth")
        writer.wait()
        say(f"fold {k}: checkpoints written in the background, {writer.seconds:.1f}s of disk time "
                   "(not in the img/s above)")
    if ranks.main:
        experiment.write_selection(exp_dir, selection)
    return state["best_preds"]


def main(argv=None) -> int:
    return main_guard(lambda a: run(parse_config(a, "train", FLAGS, __doc__)), argv)


if __name__ == "__main__":
    sys.exit(main())
