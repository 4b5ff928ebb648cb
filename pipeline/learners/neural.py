"""The neural learner: a torch network (a timm backbone, the project's mlp or sequence networks) trained by the
epoch loop (pipeline.training.loop), one fold<k>.pth per fold (the best epoch, or its SWA average), --fold full
as full.pth; predictions through the fold's own preprocessing (fold<k>.prep.json) and, asked for, TTA."""
from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pipeline import experiment
from pipeline.config import Config, ExperimentConfig, with_lr
from pipeline.errors import PipelineError
from pipeline.inputs.spec import DataSpec
from pipeline.experiment import RECIPE
from pipeline.io import load_checkpoint, read_json, write_json
from pipeline.learners import SEED_STRIDE, Learner
from pipeline.models import build_model, check_model_settings
from pipeline.nets import NETS
from pipeline.training.engine import predict
from pipeline.training.loop import FoldJob, fit, fold_job, train_fold
from pipeline.training.recipe import Recipe


class Neural(Learner):
    suffix = ".pth"
    recipe = ("pretrained", *RECIPE)
    report_keys = ("model", "epochs", "batch_size", "lr", "label_smoothing", "img_size")

    def __init__(self, name: str):
        self.name, self.form = name, NETS.get(name, "image")

    def check(self, cfg: Config, task, n_features: int) -> dict:
        check_model_settings(cfg, n_features)
        return {}

    def resolve(self, cfg: Config, kind, features: dict, say) -> Config:
        if cfg.cat_encoding != Config().cat_encoding and not features.get("categorical"):
            say(f"notice: --cat-encoding {cfg.cat_encoding} applies to a neural model on a table's categorical "
                "columns; this data has none: ignored")
            cfg = replace(cfg, cat_encoding=Config().cat_encoding)  # not saved: --resume without it works
        return kind.resolve(cfg, features, say)

    def engine_notices(self, say):
        return say

    def recipe_for(self, setup, run) -> Recipe:
        return Recipe(setup.cfg, setup.spec, setup.resolved.in_chans, run.device, run.ranks, run.bars)

    def fit_fold(self, setup, k: int, rows: tuple, run) -> np.ndarray:
        """Fold k, once per --seeds (seed j: the recipe's --seed + SEED_STRIDE j, files fold<k>.s<j>.pth), the
        seeds' validation predictions averaged. fold<k>.seeds.json records the seeds finished, so --resume predicts
        with those and trains the others (an unfinished one from its own .last.pth)."""
        cfg, exp_dir = setup.cfg, setup.exp_dir
        if cfg.seeds == 1:
            return fit(self.recipe_for(setup, run), setup.resolved, rows, setup.folds.fold, k, exp_dir, run.on_epoch,
                       run.deadline)
        record = exp_dir / f"fold{k}.seeds.json"
        done = set(read_json(record, "seeds record").get("done", [])) if cfg.resume and record.is_file() else set()
        valid = torch.from_numpy(np.flatnonzero(setup.folds.fold == k)).to(rows[0].device)
        each = []
        for j in range(cfg.seeds):
            stem = f"fold{k}" + (f".s{j}" if j else "")
            if j in done and (exp_dir / f"{stem}.pth").is_file():
                print(f"resume: fold {k} seed {j} already finished, predicting with {stem}.pth", flush=True)
                each.append(self._predict_one(exp_dir / f"{stem}.pth", rows[0][valid], replace(cfg, tta=False),
                                              setup.resolved, "", run.device, f"fold {k} seed {j}"))
                continue
            share = None if run.deadline is None else \
                time.monotonic() + max(0.0, run.deadline - time.monotonic()) / (cfg.seeds - j)
            seeded = replace(setup, cfg=replace(cfg, seed=cfg.seed + SEED_STRIDE * j))
            job = fold_job(rows, setup.folds.fold, k, exp_dir, seed=j)
            each.append(train_fold(self.recipe_for(seeded, run), setup.resolved, job, run.on_epoch, share))
            if run.ranks.main:
                done.add(j)
                write_json({"done": sorted(done)}, record)
                if j:  # seed 0's snapshot goes when the fold's OOF rows are written, as a one-seed run's
                    (exp_dir / f"{stem}.last.pth").unlink(missing_ok=True)
        targets = setup.train.targets[setup.folds.fold == k]
        scores = [setup.desc.task.scores(p, targets)[setup.desc.task.metric] for p in each]
        preds = np.mean(each, axis=0).astype(np.float32)
        m = setup.desc.task.metric
        print(f"fold {k}: {len(each)} seeds: each valid {m} {np.mean(scores):.5f} +- {np.std(scores):.5f}; their "
              f"mean {setup.desc.task.scores(preds, targets)[m]:.5f}", flush=True)
        return preds

    def train_full(self, setup, run) -> dict:
        """Every row for the same epochs, no validation (so no CV, no best epoch): the last epoch is saved."""
        cfg, exp_dir, resolved = setup.cfg, setup.exp_dir, setup.resolved
        if run.ranks.distributed:
            raise PipelineError("--fold full: trains in one process; run it without torchrun")
        if cfg.resume:  # it would silently start over
            raise PipelineError("--resume: --fold full keeps no per-epoch snapshot, so there is nothing to resume; "
                                "run it without --resume (add --overwrite to replace an existing full.pth)")
        with experiment.locked(exp_dir):
            experiment.prepare_full(exp_dir, resolved, cfg.overwrite)
            if not (exp_dir / "config.json").exists():
                write_json(resolved.to_dict() | {"fold": "all"}, exp_dir / "config.json")
            data, targets = setup.rows(run.device)
            rows = torch.arange(len(targets), device=data.device)
            train_fold(self.recipe_for(setup, run), resolved, FoldJob("full", data, targets, rows, None, exp_dir))
        print(f"wrote {exp_dir}/full.pth (no CV for it: every row was trained on); add it at inference with --with-full")
        return {"full": str(exp_dir / "full.pth")}

    def predict_fold(self, path: Path, rows: torch.Tensor, cfg: Config, config: ExperimentConfig, preset: str,
                     device: torch.device, desc: str) -> np.ndarray:
        seeds = int(config.setting("seeds") or 1) if re.fullmatch(r"fold\d+\.pth", path.name) else 1
        if seeds > 1:  # the mean of the fold's seeds
            paths = [path] + [path.with_name(f"{path.stem}.s{j}.pth") for j in range(1, seeds)]
            missing = [p.name for p in paths if not p.is_file()]
            if missing:
                raise PipelineError(f"{path.parent}: {', '.join(missing)} missing (the experiment was trained with "
                                    f"--seeds {seeds}); finish it with --resume or retrain the fold with --overwrite")
            return np.mean([self._predict_one(p, rows, cfg, config, preset, device, desc) for p in paths],
                           axis=0).astype(np.float32)
        return self._predict_one(path, rows, cfg, config, preset, device, desc)

    def _predict_one(self, path: Path, rows: torch.Tensor, cfg: Config, config: ExperimentConfig, preset: str,
                     device: torch.device, desc: str) -> np.ndarray:
        model, spec = load_fold_model(path, device, config)
        if cfg.tta:
            from pipeline.tta import with_tta  # ttach is needed only with --tta
            model = with_tta(model, preset)
        return predict(model, fold_input(path, rows, spec), cfg.batch_size or 1024, spec, device, desc=desc,
                       precision=cfg.precision)

    def runs_columns(self, config: ExperimentConfig) -> dict:
        return {"epochs": config.setting("epochs"), "batch": config.setting("batch_size"), "lr": config.setting("lr"),
                "smooth": config.setting("label_smoothing")}

    def curves(self) -> bool:
        return True

    def search_space(self, trial, cfg: Config) -> dict:
        """lr, weight decay, label smoothing, batch size and epochs (at least --swa-epochs)."""
        max_epochs, min_epochs = cfg.epochs, max(1, cfg.swa_epochs)
        return {"lr": trial.suggest_float("lr", 3e-4, 1e-2, log=True),
                "weight_decay": trial.suggest_float("weight_decay", 1e-4, 0.2, log=True),
                "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
                "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128, 256]),
                "epochs": trial.suggest_int("epochs", max(min_epochs, max_epochs // 3), max_epochs)}

    def trial_config(self, cfg: Config, params: dict, path: Path) -> Config:
        params = dict(params)
        return replace(with_lr(cfg, params.pop("lr")), **params)


def learner(name: str) -> Neural:
    return Neural(name)


def fold_input(path: Path, rows: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """Rows as the fold at `path` sees them: its own saved preprocessing applied (tables), or as they are."""
    if not spec.input_kind.has_preprocessing:
        return rows
    return spec.input_kind.apply_fold(fold_state(path, spec), rows)


def fold_state(path: Path, spec: DataSpec) -> dict:
    """The preprocessing state saved beside the fold at `path` (fold<k>.prep.json), as its input kind reads it."""
    prep = path.with_name(path.name.split(".")[0] + ".prep.json")
    if not prep.is_file():
        raise PipelineError(f"{prep}: missing (the preprocessing {path.name} was trained with); retrain with --overwrite")
    return spec.input_kind.load_state(prep, spec)


def load_fold_model(path: Path, device: torch.device,
                    experiment: ExperimentConfig | None = None) -> tuple[torch.nn.Module, DataSpec]:
    """Rebuild the fold's model from the config stored in its checkpoint (pretrained=False).

    `experiment`: the experiment's config.json; a checkpoint trained on other folds or for other outputs is refused.
    """
    ckpt = load_checkpoint(path)
    saved = ExperimentConfig.from_checkpoint(ckpt, path)
    experiment = experiment or saved
    if saved.folds_hash != experiment.folds_hash:
        raise PipelineError(f"{path}: trained on folds file {saved.folds_hash!r}, the experiment's config.json "
                            f"says {experiment.folds_hash!r}; its folds mix two fold assignments: retrain with "
                            "--overwrite --fold all")
    for key in ("num_classes", "in_chans"):
        if getattr(saved, key) != getattr(experiment, key):
            raise PipelineError(f"{path}: checkpoint has {key}={getattr(saved, key)!r}, the data needs "
                                f"{getattr(experiment, key)}")
    spec = DataSpec.from_config(saved, str(path))
    net_input = spec.input_kind.net_input(saved.in_chans, saved.img_size, fold_state(path, spec)) \
        if spec.input_kind.has_preprocessing else {}  # the width (and embedded slots) the fold's preprocessing gives
    model = build_model(saved.model, saved.num_classes, saved.in_chans, saved.img_size, pretrained=False,
                        hidden=str(saved.setting("hidden")), layers=int(saved.setting("layers")),
                        **({"pool": str(saved.setting("pool"))} | net_input))
    model = spec.task.output_head(model)  # regression: its mean and std come with the weights
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        detail = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise PipelineError(f"{path}: weights do not fit {saved.model} ({detail[min(1, len(detail) - 1)][:120]})") from None
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model.to(device).eval(), spec
