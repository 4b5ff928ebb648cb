"""Train one timm model per fold; save fold weights, OOF predictions and the local CV.

    python -m pipeline.train --fold all                      # weights/digit_cnn/ on folds/folds.csv
    python -m pipeline.train --fold 0 --epochs 1 --data data/digit-recognizer.zip
    python -m pipeline.train --model resnet18 --lr 1e-3 --exp r18 --config my.yaml
    python -m pipeline.train --fold all --resume             # after an interruption
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2
from torch.optim.swa_utils import AveragedModel, update_bn
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from pipeline import data, experiment
from pipeline.checkpoint import BackgroundWriter, load_checkpoint, save_checkpoint, write_json
from pipeline.augment import is_albumentations, load_albumentations
from pipeline.config import Config, parse_config, to_dict
from pipeline.engine import (DataSpec, auto_batch_size, autocast, grad_scaler, load_scheduler_state, make_scheduler,
                             on_device, predict, resolve_device, resolve_precision, scheduler_state, seed_everything,
                             steps_per_epoch, take, train_one_epoch)
from pipeline.errors import PipelineError, TrainingDiverged, main_guard
from pipeline.folds import description_path, read_description, read_folds
from pipeline.infer import oof_tta
from pipeline.models import build_model, pretrained_stats, unwrap

FLAGS = ["data", "folds_path", "model", "pretrained", "pretrained_path", "img_size", "fold", "epochs",
         "batch_size", "lr", "weight_decay", "label_smoothing", "warmup_epochs", "rotate", "scale", "shift",
         "exp", "weights_dir", "device", "seed", "overwrite", "resume", "oof_tta", "tta_preset", "report", "cache_dir", "aug", "precision", "ema",
         "clip_grad", "patience", "drop_rate", "drop_path_rate", "deterministic", "opt", "momentum", "mixup", "cutmix",
         "sched", "min_lr", "warmup_lr", "decay_epochs", "decay_rate", "swa_epochs"]


def data_description(cfg: Config, src) -> data.Description:
    """What make_folds saved beside the folds file; detected with defaults for a folds file older than that."""
    saved = read_description(cfg.folds_path).get("data")
    if saved is None:
        return data.describe(src, group_col=read_description(cfg.folds_path).get("group_col", ""))[0]
    return data.Description.from_dict(saved, str(description_path(cfg.folds_path)))


def run(cfg: Config, on_epoch=None) -> dict:
    """Train the folds named by cfg.fold; `on_epoch(epoch, valid_scores)` is called after every epoch."""
    if len(cfg.exp) > 1:
        raise PipelineError(f"--exp: train writes one experiment, got {len(cfg.exp)}: {' '.join(cfg.exp)}")
    exp_dir = experiment.experiment_dir(cfg.weights_dir, cfg.exp_name)
    src = data.resolve(cfg.data)
    desc = data_description(cfg, src)
    train = data.read_train_as(src, desc, cfg.data, str(description_path(cfg.folds_path)))
    folds = read_folds(cfg.folds_path, train.train_hash, len(train.targets))
    fold_ids = cfg.fold_ids(folds.n_splits)
    if cfg.batch_size == 0:
        cfg = replace(cfg, batch_size=auto_batch_size(int((folds.fold != 0).sum())))
    if desc.task.kind == "regression" and cfg.label_smoothing:
        print(f"notice: --label-smoothing {cfg.label_smoothing} does not apply to regression; ignored")
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
    print(f"precision {resolve_precision(cfg.precision, device)}" + (" (with a gradient scaler)"
                                                                     if grad_scaler(cfg.precision, device) else ""))
    build_model(cfg.model, desc.task.num_outputs, desc.channels, cfg.img_size, cfg.pretrained, cfg.pretrained_path,
                cfg.drop_rate, cfg.drop_path_rate)  # fail fast, before any work
    resolved = to_dict(cfg) | {"exp": [cfg.exp_name], "n_splits": folds.n_splits, "num_classes": desc.task.num_outputs,
                               "in_chans": desc.channels, "train_hash": train.train_hash, "folds_hash": folds.folds_hash,
                               "group_col": desc.group_col, "data_spec": spec.to_dict(), "data": desc.to_dict()}
    if cfg.fold == "full":
        return train_full(cfg, resolved, spec, src, desc, train, exp_dir, device)
    with experiment.locked(exp_dir):
        todo = experiment.prepare(exp_dir, resolved, fold_ids, cfg.resume, cfg.overwrite)
        write_json(resolved, exp_dir / "config.json")
        print(f"{desc.summary()}\ntraining {cfg.model} on {len(train.targets):,} rows, folds {fold_ids} -> {exp_dir}/ "
              f"(device {device}{', %d GPUs' % torch.cuda.device_count() if device.type == 'cuda' else ''})")
        cached = data.train_images(src, desc, train, cfg.img_size, cfg.cache_dir)
        images = on_device(cached, device if not is_albumentations(spec.augment) else torch.device("cpu"))
        targets = torch.from_numpy(train.targets).to(device)
        started = time.perf_counter()
        for k in todo:
            preds = train_fold(cfg, resolved, spec, k, images, targets, folds.fold, exp_dir, device, on_epoch)
            valid = np.flatnonzero(folds.fold == k)
            experiment.write_oof(exp_dir, train.ids[valid], k, train.targets[valid], preds, desc.task)
            (exp_dir / f"fold{k}.last.pth").unlink(missing_ok=True)
        cv = experiment.write_cv(exp_dir, folds.n_splits, {"train_seconds": round(time.perf_counter() - started, 1)},
                                 desc.task)
        print(experiment.format_cv(cv, cfg.exp_name))
        if cfg.oof_tta:
            cv = oof_tta(exp_dir, images, cfg.tta_preset or desc.tta_preset, cfg.batch_size, device, cfg.precision)
        if cfg.report:
            from pipeline.report import write_report
            print(f"report: {write_report(exp_dir, images)}")
        else:
            print(f"figures: python -m pipeline.report --exp {cfg.exp_name}")
    return cv


def train_full(cfg: Config, resolved: dict, spec: DataSpec, src, desc, train, exp_dir: Path, device: torch.device) -> dict:
    """--fold full: every row for the same epochs, no validation (so no CV, no best epoch): the last epoch is saved."""
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
        ema = ModelEmaV3(model, decay=cfg.ema) if cfg.ema else None
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
               folds: np.ndarray, exp_dir: Path, device: torch.device, on_epoch=None) -> np.ndarray:
    """Train fold k; save its best epoch (or its SWA average, when that scores better) by the competition metric;
    return those validation predictions."""
    train_idx = torch.from_numpy(np.flatnonzero(folds != k)).to(images.device)
    valid_idx = torch.from_numpy(np.flatnonzero(folds == k)).to(images.device)
    valid_targets = targets[valid_idx.to(device)].cpu().numpy()
    model, net, optimizer, generator = fold_setup(cfg, spec, int(resolved["in_chans"]), k, device)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch(len(train_idx), cfg.batch_size),
                               spec.task.higher_is_better)
    scaler = grad_scaler(cfg.precision, device)
    ema = ModelEmaV3(model, decay=cfg.ema) if cfg.ema else None
    swa = AveragedModel(model) if cfg.swa_epochs else None
    mix = mixer(cfg, spec.task, cfg.batch_size)
    judged = ema.module if ema is not None else net  # what is validated, saved as best and predicted with
    metric = spec.task.metric
    state = {"epoch": 0, "step": 0, "best": None, "best_preds": None, "best_epoch": 0}
    last = exp_dir / f"fold{k}.last.pth"
    if cfg.resume and last.is_file():
        state = restore(load_checkpoint(last), model, optimizer, generator, last, scaler, ema, scheduler, swa)
        check_snapshot(state, (len(valid_idx), spec.task.num_outputs), metric, cfg.epochs, last)
        print(f"resume: fold {k} continues after epoch {state['epoch']} of {cfg.epochs} "
              f"(best {metric} so far {state['best'][metric]:.5f})")
    x_valid = images[valid_idx]
    with BackgroundWriter() as writer:  # checkpoints go to disk while the next epoch trains
        for epoch in range(state["epoch"], cfg.epochs):
            t0 = time.perf_counter()
            epoch_result = train_one_epoch(net, optimizer, scheduler, images, train_idx, targets, cfg, spec,
                                           state["step"], generator, desc=f"fold {k} epoch {epoch + 1}/{cfg.epochs}",
                                           scaler=scaler, ema=ema, mix=mix)
            state["step"], loss = epoch_result.step, epoch_result.loss
            lr = optimizer.param_groups[0]["lr"]
            preds = predict(judged, x_valid, 2 * cfg.batch_size, spec, device, precision=cfg.precision)
            check_finite(loss, preds, unwrap(judged), k, epoch, state["epoch"])
            valid = spec.task.scores(preds, valid_targets)
            seconds = time.perf_counter() - t0  # training and validation; checkpoint writes are timed apart
            scheduler.step(epoch + 1, valid[metric])  # plateau decays here; the step-driven schedules ignore it
            if swa is not None and epoch >= cfg.epochs - cfg.swa_epochs:
                swa.update_parameters(model)
            improved = spec.task.better(valid, state["best"])
            if improved:  # best by the competition metric, ties broken by the lower loss
                state |= {"best": valid, "best_preds": preds, "best_epoch": epoch + 1}
                writer.save({"state_dict": unwrap(judged).state_dict(), "config": resolved, "fold": k,
                             "epoch": epoch + 1, "score": valid}, exp_dir / f"fold{k}.pth")
            row = {"fold": k, "epoch": epoch + 1, "train_loss": loss, "train_accuracy": epoch_result.accuracy,
                   "valid_loss": valid["loss"]} | {f"valid_{m}": v for m, v in valid.items() if m != "loss"} \
                | {"lr": lr, "seconds": round(seconds, 3)}
            experiment.append_metrics(exp_dir, row, epoch_result.lrs)
            state["epoch"] = epoch + 1
            writer.save(snapshot(state, model, optimizer, generator, scaler, ema, scheduler, swa), last)
            tqdm.write(f"fold {k} epoch {epoch + 1:>3}/{cfg.epochs}  train loss {loss:.4f}  valid loss "
                       f"{valid['loss']:.4f}  valid {metric} {valid[metric]:.5f}  lr {lr:.2e}  "
                       f"{seconds:5.1f}s  {len(train_idx) / seconds:,.0f} img/s{'  *best' if improved else ''}")
            if on_epoch is not None:
                on_epoch(epoch + 1, valid)
            if stop_early(epoch + 1, state["best_epoch"], cfg.patience):
                tqdm.write(f"fold {k}: no better {metric} for {cfg.patience} epochs since epoch "
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
                tqdm.write(f"fold {k}: SWA of the last {int(swa.n_averaged)} epochs: valid {metric} "
                           f"{swa_score[metric]:.5f} vs best epoch {state['best_epoch']}: {state['best'][metric]:.5f}"
                           f" -> keeping {'SWA' if keep else 'the best epoch'}")
                if keep:
                    state["best_preds"] = swa_preds
                    writer.save({"state_dict": swa.module.state_dict(), "config": resolved, "fold": k,
                                 "epoch": state["epoch"], "score": swa_score, "swa_epochs": int(swa.n_averaged)},
                                exp_dir / f"fold{k}.pth")
        writer.wait()
        tqdm.write(f"fold {k}: checkpoints written in the background, {writer.seconds:.1f}s of disk time "
                   "(not in the img/s above)")
    experiment.write_selection(exp_dir, selection)
    return state["best_preds"]


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
    if task.kind != "multiclass":
        raise PipelineError(f"--mixup/--cutmix: for multiclass tasks (mixing class labels); this task is {task.kind}")
    if batch_size % 2:
        raise PipelineError(f"--mixup/--cutmix: the batch size must be even (pairs are mixed), got {batch_size}")
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                 num_classes=task.num_outputs)


def fold_setup(cfg: Config, spec: DataSpec, in_chans: int, k: int, device: torch.device):
    """Fold k's model (and its DataParallel wrapper), AdamW, and the generator for batch order and augmentation."""
    seed_everything(cfg.seed + k, cfg.deterministic)  # weight init, dropout, python and numpy: per fold
    model = build_model(cfg.model, spec.task.num_outputs, in_chans, cfg.img_size, pretrained=cfg.pretrained,
                        pretrained_path=cfg.pretrained_path, drop_rate=cfg.drop_rate,
                        drop_path_rate=cfg.drop_path_rate).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net = nn.DataParallel(model) if device.type == "cuda" and torch.cuda.device_count() > 1 else model
    optimizer = make_optimizer(model, cfg)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed * 1000 + k)
    return model, net, optimizer, generator


def snapshot(state: dict, model: nn.Module, optimizer, generator: torch.Generator, scaler=None, ema=None,
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
            "epoch": state["epoch"], "step": state["step"], "best": state["best"], "best_epoch": state["best_epoch"],
            "best_preds": torch.from_numpy(state["best_preds"])}


def restore(saved: dict, model: nn.Module, optimizer, generator: torch.Generator, path: Path, scaler=None,
            ema=None, scheduler=None, swa=None) -> dict:
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
        state = {"epoch": int(saved["epoch"]), "step": int(saved["step"]), "best_epoch": int(saved.get("best_epoch", 0)),
                 "best": {str(m): float(v) for m, v in saved["best"].items()}, "best_preds": saved["best_preds"].numpy()}
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        raise PipelineError(f"{path}: not a usable resume snapshot ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}); "
                            "delete it to restart that fold, or retrain with --overwrite") from None
    return state


def check_snapshot(state: dict, preds_shape: tuple[int, int], metric: str, epochs: int, path: Path) -> None:
    """A resume snapshot must describe this fold: its predictions' shape, finite values, an epoch within the run."""
    preds, best = state["best_preds"], state["best"]
    problem = ("best predictions of shape {} instead of {}".format(tuple(preds.shape), preds_shape)
               if tuple(preds.shape) != preds_shape else
               "best predictions hold NaN or infinite values" if not np.isfinite(preds).all() else
               f"best scores lack {metric}" if metric not in best else
               "best scores are not finite" if not all(np.isfinite(v) for v in best.values()) else
               f"epoch {state['epoch']} outside 1..{epochs}" if not 1 <= state["epoch"] <= epochs else
               f"step {state['step']} is negative" if state["step"] < 0 else None)
    if problem:
        raise PipelineError(f"{path}: not a usable resume snapshot ({problem}); delete it to restart that fold, "
                            "or retrain with --overwrite")


def main(argv=None) -> int:
    return main_guard(lambda a: run(parse_config(a, "train", FLAGS, __doc__)), argv)


if __name__ == "__main__":
    sys.exit(main())
