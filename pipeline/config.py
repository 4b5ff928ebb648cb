"""One frozen Config read by every stage; CLI flags are generated from its fields.

Precedence: field defaults < `--config FILE` (JSON or YAML) < command-line flags.
Each field's trailing comment is its `--help` text.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import re
import shlex
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError, cut, one_line, quote
from pipeline.io import read_json

DEFAULT_DATA = "data/digit-recognizer"


@dataclass(frozen=True)
class Config:
    # data and folds
    data: str = DEFAULT_DATA  # competition folder, the zip `kaggle competitions download` leaves, or 'sample'
    folds_path: str = "folds/folds.csv"  # fold of every train row, written by make_folds, read by train
    n_splits: int = 5  # number of folds, 2..20
    seed: int = 42  # seed for folds, weight init, batch order and augmentation
    group_col: str = ""  # train.csv column whose rows must share a fold (StratifiedGroupKFold); '' = none
    layout: str = ""  # make_folds: a layout's name (docs/layouts.md; an unknown one is refused with the list); '' = detect from --data
    id_col: str = ""  # make_folds: train CSV column naming each image; '' = detect
    target_col: tuple[str, ...] = ()  # make_folds: target column(s) of the train CSV; () = detect
    image_dir: str = ""  # make_folds: folder of the train images (class-folders: of the class folders); '' = detect
    task: str = ""  # make_folds: multiclass | multilabel | regression; '' = detect from the targets
    metric: str = ""  # make_folds: accuracy | macro_f1 | micro_f1 | roc_auc | log_loss | rmse | mse | mae | mcrmse | qwk; '' = the task's default
    threshold: float = 0.5  # multilabel: a label is predicted at probability >= threshold, 0 < x < 1
    cache_dir: str = ".cache"  # decoded image files, reused by every fold, experiment and inference run
    features: tuple[str, ...] = ()  # make_folds, tables: the feature columns to use; () = every column but the id and target(s)
    drop_cols: tuple[str, ...] = ()  # make_folds, tables: columns to leave out (an id-like column the guess kept, a leak)
    group_dups: bool = False  # make_folds: keep rows the audit found duplicated (exact, near or overlapping windows) in one fold, from <audit-dir>/groups.csv
    audit_dir: str = "audit"  # audit: where audit.md, its figures and groups.csv are written; make_folds --group-dups reads groups.csv there
    hamming: int = 6  # audit: images whose 64-bit perceptual hashes differ in at most this many bits are compared pixel by pixel (near duplicates: correlation >= 0.995), 0..16
    # model
    model: str = "digit_cnn"  # images: any timm model name (digit_cnn: the pipeline's own CNN for 28x28 digits); tables: lightgbm, catboost, xgboost, linear or mlp; sequences: gru, lstm, transformer, conformer; frames: mlp or those
    pretrained: bool = False  # start from timm's pretrained weights (downloaded from the hub: needs internet)
    pretrained_path: str = ""  # local .pth/.safetensors to start from (classifier re-initialised)
    img_size: int = 28  # side in pixels that batches are resized to on the device, 16..512
    hidden: str = ""  # mlp: comma-separated hidden layer sizes, e.g. 512,256; '' = 256,128. gru/lstm: the cell width ('' = 256); transformer/conformer: the model width ('' = 80)
    layers: int = 2  # gru, lstm, transformer, conformer: stacked layers
    pool: str = "mean"  # sequence models on whole sequences: mean (masked) or attention (learned weights over the steps)
    crop_len: int = 128  # sequences: frames of the random window each training row is cut to (HW4's sample: 128)
    context: int = 5  # frames: neighbours on each side of a frame in its input window (HW2's concat_nframes = 2K + 1)
    cat_encoding: str = "onehot"  # tables, mlp: categorical columns as one-hot blocks (onehot) or learned embeddings (embed)
    select_features: int = 0  # tables: keep the K best columns by univariate score (scikit-learn SelectKBest), fitted per fold on its training rows; 0 = all
    gbm_params: str = ""  # lightgbm, catboost, xgboost: JSON/YAML file of the library's parameters over the pipeline's defaults (LightGBM: learning_rate 0.05, num_leaves 31, ...)
    seeds: int = 1  # table learners: fit each fold N times with different seeds and average them (OOF and test), 1..100
    # training
    fold: str = "all"  # 'all', one fold index 0..n_splits-1, several joined by commas (0,1), or 'full' (every row, no validation: full.pth, no CV)
    epochs: int = 15  # passes over the fold's training rows, >= 1
    batch_size: int = 0  # rows per optimizer step (images, table rows, utterances or frames); 0 = auto: the largest of 256/128/64/32 giving >= 16 steps an epoch
    lr: float = 3e-3  # peak learning rate after warmup, > 0
    sched: str = "cosine"  # lr schedule (timm's scheduler factory): cosine | step | plateau | constant; cosine, step and constant move every optimizer step, plateau once an epoch on the validation metric
    min_lr: float = 0.0  # lr the cosine decays to, and plateau's floor; sweep and tune keep its ratio to the config's --lr (3e-3 unless set) for each lr they try, 0 <= x < lr
    warmup_lr: float = 0.0  # lr at the first warmup step, rising linearly to --lr, 0 <= x < lr; 0 = --lr / warmup steps
    decay_epochs: float = 0.0  # step: epochs between decays; plateau: epochs without a better metric before a decay; 0 = auto (step: a third of --epochs, plateau: 2)
    decay_rate: float = 0.1  # step and plateau: the lr is multiplied by this at each decay, 0 < x < 1
    weight_decay: float = 0.05  # weight decay (decoupled for adamw; not on norms and biases), >= 0
    label_smoothing: float = 0.1  # on the training loss only, 0 <= x < 1
    warmup_epochs: float = 1.0  # linear warmup length in epochs, from --warmup-lr to --lr, >= 0
    rotate: float = 10.0  # training augmentation: max rotation in degrees, 0..45
    scale: float = 0.1  # training augmentation: max zoom in or out as a fraction, 0..0.5
    shift: float = 0.08  # training augmentation: max translation as a fraction of the side, 0..0.5
    opt: str = "adamw"  # any optimizer timm's factory knows (adamw, sgd, lamb, lion, ...; see timm.optim.list_optimizers())
    momentum: float = 0.9  # momentum for sgd-like optimizers, 0..1
    mixup: float = 0.0  # mixup alpha (timm's Mixup, multiclass): mix pairs of images and their labels; 0 = off
    cutmix: float = 0.0  # cutmix alpha (timm's Mixup, multiclass): paste a patch of another image; 0 = off
    clip_grad: float = 0.0  # clip the gradients' global norm to this before each step; 0 = off
    patience: int = 0  # stop a fold after this many epochs without a better validation metric; 0 = never
    drop_rate: float = 0.0  # dropout before the classifier, passed to the backbone, 0 <= x < 1 (digit_cnn: 0.3 when 0)
    drop_path_rate: float = 0.0  # stochastic depth, passed to backbones that have it, 0 <= x < 1
    deterministic: bool = False  # cuDNN determinism and deterministic algorithms (slower on GPU)
    swa_epochs: int = 0  # average the weights of the fold's last N epochs (torch swa_utils), recompute BatchNorm on its training rows, keep SWA or the best epoch, whichever scores better; 0 = off
    ema: float = 0.0  # model EMA decay per optimizer step (timm's ModelEmaV3), e.g. 0.999; the EMA weights are validated, saved and predicted with; 0 = off
    aug: str = ""  # training augmentation: '' = the layout's (digits for pixels, natural for image files), digits | natural | none, or an albumentations file (.json/.yaml written by A.save, run in DataLoader workers)
    exp: tuple[str, ...] = ()  # experiment name(s) under weights_dir: train takes one, infer several; () = model name
    weights_dir: str = "weights"  # where experiments live: weights/<exp>/
    device: str = "auto"  # auto | cpu | cuda
    gpus: str = ""  # train: folds in parallel, one process per listed device taking the next untrained fold: 0,1,2,3 (GPUs) or cpu,cpu; '' = one process
    sync_bn: bool = False  # train under torchrun: BatchNorm statistics synchronised across ranks (SyncBatchNorm)
    lr_scale: str = "none"  # train under torchrun: none (global batch = --batch-size, split over ranks) | linear (--batch-size per rank, lr x world size)
    precision: str = "auto"  # auto (bf16 where the GPU has it, else fp16 with a gradient scaler; fp32 on CPU) | bf16 | fp16 | fp32
    overwrite: bool = False  # replace existing results: train, the named folds of the experiment; make_folds, the folds file
    resume: bool = False  # train: continue an interrupted experiment
    oof_tta: bool = False  # train: also score TTA on the OOF rows (oof_tta.csv, cv.json), to know its gain locally
    report: bool = False  # train: write weights/<exp>/report/ (figures and report.md) at the end
    track: str = ""  # train: mirror the run in an experiment tracker: mlflow (one parent run per experiment, a child run per fold); '' = none
    track_uri: str = ""  # train --track mlflow: the tracking store or server (sqlite:///x.db, http://host:5000); '' = sqlite:///mlflow.db here
    # inference
    tta: bool = False  # infer: test-time augmentation with ttach
    with_full: bool = False  # infer: add the experiment's full.pth (train --fold full) to its fold models
    tta_preset: str = ""  # 'digits' (shifts, zoom), 'hflip' (natural images), 'd4' (8 flips/turns, top-down images); '' = the layout's
    ensemble: str = "mean"  # infer with several experiments: mean | learned (softmax weights fitted on OOF) | greedy (Caruana, 25 rounds) | rank (AUC metrics) | stack (a level-2 model fitted on OOF)
    stacker: str = "linear"  # infer --ensemble stack: linear (ridge / logistic regression with non-negative weights on the experiments) | lightgbm (few leaves)
    stack_features: bool = False  # infer --ensemble stack: the table's own columns beside the experiments' OOF predictions
    out: str = ""  # infer: submission path; '' = submissions/<exp>.csv
    # runs, sweep, tune
    compare: tuple[str, ...] = ()  # runs: two experiments whose OOF correctness is tested against each other
    lb: bool = False  # runs: the competition's submissions from Kaggle, their leaderboard scores beside their local CV (as submit --scores)
    trials: int = 20  # tune: number of Optuna trials, >= 1
    storage: str = ""  # tune: Optuna storage shared by several machines: an RDB URL (sqlite:///study.db, postgresql://...) or a journal file path (*.log); '' = the study folder's own journal file
    learners: tuple[str, ...] = ()  # portfolio: the learners to train, each its own experiment; () = linear lightgbm xgboost catboost mlp
    time_limit: float = 0.0  # portfolio: seconds for the whole run (learners that would not fit are skipped, one that overruns keeps its best iteration so far); 0 = none
    # submit
    submission: str = ""  # submit: the csv to check and send
    message: str = ""  # submit: submission description
    competition: str = "digit-recognizer"  # submit: Kaggle competition slug
    dry_run: bool = False  # submit: validate only, send nothing
    scores: bool = False  # submit: fetch the public (and private) scores of the competition's past submissions and show them beside each one's local CV
    kernel: str = ""  # submit: a code competition's pushed notebook, USER/SLUG (pipeline.export --push prints it)
    version: int = 0  # submit --kernel: the notebook version to submit; 0 = its latest
    # export (code competitions)
    dataset: str = ""  # export: the weights dataset's id USER/SLUG ('' = <kaggle username>/<experiments>-weights); the code dataset is USER/<slug>-code, the notebook USER/<slug>-inference
    push: bool = False  # export: create or version the two datasets and push the notebook with the kaggle client
    export_dir: str = "export"  # export: where the datasets and the notebook are built (git-ignored)
    # remote (train on Kaggle's GPUs)
    accelerator: str = "T4x2"  # remote: the Kaggle machine the kernel trains on: T4x2 (two T4s, folds in parallel, fp16 with a scaler) | P100 (retired by Kaggle: runs on T4x2)
    attach: bool = False  # remote: watch the kernel pushed last for this experiment (after Ctrl-C) and install its outputs; pushes nothing
    poll: float = 15.0  # remote: seconds before the first status check, growing 1.5x per check to at most 5 minutes, > 0
    hours: float = 11.5  # remote: hours per kernel run (from its start); training then stops and keeps its epoch snapshots for --resume (Kaggle ends a session at 12), 0 < x <= 11.5
    remote_dir: str = "remote"  # remote: where the code and run datasets, the kernel and the downloaded outputs are kept (git-ignored)

    def __post_init__(self):
        for problem in _problems(self):
            raise PipelineError(problem)

    @property
    def exp_name(self) -> str:
        """The single experiment train writes to."""
        return self.exp[0] if self.exp else self.model

    def fold_ids(self, n_splits: int) -> list[int]:
        """The folds to train: all of them, or those named by --fold (in the order given)."""
        if self.fold == "all":
            return list(range(n_splits))
        if self.fold == "full":
            return []
        ks = [int(k) for k in self.fold.split(",")]
        if max(ks) >= n_splits:
            raise PipelineError(f"--fold: must be 'all' or 0..{n_splits - 1} (the folds file has {n_splits}), got {max(ks)}")
        return ks


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; anything over 1 MiB is not one
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}")  # one folder name: no '.', '..', '/', leading dot or dash


def check_name(value: str, what: str) -> str:
    """An experiment, sweep or tune name: one plain folder name that cannot leave its parent folder."""
    if not NAME.fullmatch(value):
        raise PipelineError(f"{what}: must be a folder name of 1-100 letters, digits, _ . + - not starting with "
                            f"'.' or '-', got {quote(value)}")
    return value


RULES = {  # field -> (test, rule text)
    "n_splits": (lambda v: 2 <= v <= 20, "must be 2..20"),
    "seed": (lambda v: 0 <= v < 2**31, "must be 0..2147483647"),
    "img_size": (lambda v: 16 <= v <= 512, "must be 16..512"),
    "fold": (lambda v: v in ("all", "full") or (re.fullmatch(r"[0-9]{1,2}(,[0-9]{1,2})*", v) is not None
                                                 and all(int(k) < 20 for k in v.split(","))
                                                 and len(set(map(int, v.split(",")))) == len(v.split(","))),
             "must be 'all', 'full' or a fold index 0..n_splits-1 (several: distinct indices joined by commas, 0,1)"),
    "epochs": (lambda v: 1 <= v <= 10_000, "must be 1..10000"),
    "batch_size": (lambda v: v == 0 or 2 <= v <= 65_536, "must be 0 (auto) or 2..65536"),
    "lr": (lambda v: 0 < v < 10, "must be > 0 (and < 10)"),
    "weight_decay": (lambda v: 0 <= v <= 10, "must be 0..10"),
    "label_smoothing": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "warmup_epochs": (lambda v: 0 <= v <= 10_000, "must be 0..10000"),
    "sched": (lambda v: v in ("cosine", "step", "plateau", "constant"), "must be cosine, step, plateau or constant"),
    "min_lr": (lambda v: 0 <= v < 10, "must be >= 0"),
    "warmup_lr": (lambda v: 0 <= v < 10, "must be >= 0"),
    "decay_epochs": (lambda v: 0 <= v <= 10_000, "must be 0 (auto) or a number of epochs"),
    "decay_rate": (lambda v: 0 < v < 1, "must be between 0 and 1"),
    "swa_epochs": (lambda v: 0 <= v <= 10_000, "must be 0 (off) or a number of epochs"),
    "rotate": (lambda v: 0 <= v <= 45, "must be 0..45 degrees"),
    "scale": (lambda v: 0 <= v <= 0.5, "must be 0..0.5"),
    "shift": (lambda v: 0 <= v <= 0.5, "must be 0..0.5"),
    "precision": (lambda v: v in ("auto", "bf16", "fp16", "fp32"), "must be auto, bf16, fp16 or fp32"),
    "accelerator": (lambda v: v in ("T4x2", "P100"), "must be T4x2 or P100"),
    "poll": (lambda v: 0 < v <= 3600, "must be > 0 seconds (and at most 3600)"),
    "hours": (lambda v: 0 < v <= 11.5, "must be > 0 and at most 11.5 (Kaggle ends a session at 12, and the kernel needs minutes to install, stop and save)"),
    "gpus": (lambda v: v == "" or re.fullmatch(r"(cpu|\d{1,2})(,(cpu|\d{1,2})){0,63}", v) is not None,
             "must be a comma-separated list of GPU indices or cpu, e.g. 0,1,2,3 or cpu,cpu"),
    "lr_scale": (lambda v: v in ("none", "linear"), "must be none or linear"),
    "device": (lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:"), "must be auto, cpu or cuda"),
    "tta_preset": (lambda v: v in ("", "digits", "hflip", "flips", "d4"), "must be digits, hflip or d4"),
    "opt": (lambda v: re.fullmatch(r"[a-z0-9_]{1,40}", v) is not None, "must be an optimizer name such as adamw or sgd"),
    "momentum": (lambda v: 0 <= v <= 1, "must be 0..1"),
    "mixup": (lambda v: 0 <= v <= 10, "must be 0 (off) or an alpha such as 0.2"),
    "cutmix": (lambda v: 0 <= v <= 10, "must be 0 (off) or an alpha such as 1.0"),
    "clip_grad": (lambda v: 0 <= v <= 1e6, "must be 0 (off) or a positive norm"),
    "patience": (lambda v: 0 <= v <= 10_000, "must be 0 (off) or a number of epochs"),
    "drop_rate": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "drop_path_rate": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "ema": (lambda v: v == 0 or 0.5 <= v < 1, "must be 0 (off) or in [0.5, 1)"),
    "select_features": (lambda v: 0 <= v <= 100_000, "must be 0 (all) or a number of columns"),
    "cat_encoding": (lambda v: v in ("onehot", "embed"), "must be onehot or embed"),
    "aug": (lambda v: v in ("", "digits", "natural", "none", "specaugment") or v.endswith((".json", ".yaml", ".yml")),
            "must be digits, natural, none, specaugment or an albumentations .json/.yaml file"),
    "layout": (lambda v: bool(re.fullmatch(r"[a-z][a-z-]*|", v)),
               "must be a layout's name (make_folds --help lists them)"),
    "layers": (lambda v: 1 <= v <= 64, "must be 1..64"),
    "pool": (lambda v: v in ("mean", "attention"), "must be mean or attention"),
    "crop_len": (lambda v: 1 <= v <= 100_000, "must be 1..100000 frames"),
    "context": (lambda v: 0 <= v <= 1000, "must be 0..1000 frames on each side"),
    "task": (lambda v: v in ("", "multiclass", "multilabel", "regression"), "must be multiclass, multilabel or regression"),
    "metric": (lambda v: v in ("", "accuracy", "macro_f1", "micro_f1", "roc_auc", "log_loss", "rmse", "mse", "mae",
                               "mcrmse", "qwk"),
               "must be accuracy, macro_f1, micro_f1, roc_auc, log_loss, rmse, mse, mae, mcrmse or qwk"),
    "threshold": (lambda v: 0 < v < 1, "must be between 0 and 1"),
    "ensemble": (lambda v: v in ("mean", "learned", "greedy", "rank", "stack"),
                 "must be mean, learned, greedy, rank or stack"),
    "stacker": (lambda v: v in ("linear", "lightgbm"), "must be linear or lightgbm"),
    "seeds": (lambda v: 1 <= v <= 100, "must be 1..100"),
    "time_limit": (lambda v: 0 <= v <= 10 ** 7, "must be 0 (none) or seconds"),
    "learners": (lambda v: all(NAME.fullmatch(e) for e in v), "must be learner names such as linear lightgbm mlp"),
    "track": (lambda v: v in ("", "mlflow"), "must be mlflow (or empty: no tracking)"),
    "hamming": (lambda v: 0 <= v <= 16, "must be 0..16 bits of 64"),
    "trials": (lambda v: 0 <= v <= 10_000, "must be 0..10000 (0: print a --storage study's best only)"),
    "competition": (lambda v: v == "" or re.fullmatch(r"[a-z0-9][a-z0-9-]{1,99}", v) is not None,
                    "must be a competition slug as in kaggle.com/competitions/SLUG (lower case, digits, dashes)"),
    "kernel": (lambda v: v == "" or re.fullmatch(r"[A-Za-z0-9_-]{1,50}/[A-Za-z0-9_-]{1,100}", v) is not None,
               "must be USER/SLUG, the notebook's id on Kaggle"),
    "version": (lambda v: 0 <= v <= 100_000, "must be 0 (latest) or a version number"),
    "dataset": (lambda v: v == "" or re.fullmatch(r"[A-Za-z0-9_-]{1,50}/[a-z0-9-]{6,40}", v) is not None,
                "must be USER/SLUG with a slug of 6-40 lower-case letters, digits and dashes"),
    "compare": (lambda v: len(v) in (0, 2) and all(NAME.fullmatch(e) for e in v),
                "takes exactly two experiment names"),
    "exp": (lambda v: all(NAME.fullmatch(e) for e in v),
            "must be folder names of 1-100 letters, digits, _ . + - not starting with '.' or '-'"),
}


def _problems(cfg: Config):
    for f in dataclasses.fields(cfg):  # inf and nan pass every range test written as a comparison
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            yield f"{flag(f.name)}: must be a finite number, got {quote(value)}"
            return
        texts = value if isinstance(value, tuple) else (value,)
        if any(isinstance(t, str) and any(ord(ch) < 32 for ch in t) for t in texts):
            yield f"{flag(f.name)}: must not contain control characters (NUL, newline, ...), got {quote(value)}"
            return
    for name, (ok, rule) in RULES.items():
        value = getattr(cfg, name)
        if not ok(value):
            yield f"{flag(name)}: {rule}, got {quote(value)}"
    if cfg.resume and cfg.overwrite:
        yield "--resume and --overwrite: choose one"
    for name in ("min_lr", "warmup_lr"):
        if getattr(cfg, name) and getattr(cfg, name) >= cfg.lr:
            yield f"{flag(name)}: must be below --lr ({cfg.lr:g}), got {getattr(cfg, name):g}"
    if cfg.swa_epochs > cfg.epochs:
        yield f"--swa-epochs: at most --epochs ({cfg.epochs}), got {cfg.swa_epochs}"


def with_lr(cfg: Config, lr: float) -> Config:
    """cfg at another peak lr, --min-lr and --warmup-lr moved with it (same ratio), as the lr x batch-size study asks.

    >>> with_lr(Config(lr=1e-3, min_lr=1e-5), 4e-3).min_lr
    4e-05
    """
    ratio = lr / cfg.lr
    return dataclasses.replace(cfg, lr=lr, min_lr=cfg.min_lr * ratio, warmup_lr=cfg.warmup_lr * ratio)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# the flags of `python -m pipeline.train`; sweep and tune take these, less what they set themselves
TRAIN_FLAGS = ["data", "folds_path", "model", "pretrained", "pretrained_path", "img_size", "fold", "epochs",
               "batch_size", "lr", "weight_decay", "label_smoothing", "warmup_epochs", "rotate", "scale", "shift",
               "exp", "weights_dir", "device", "seed", "overwrite", "resume", "oof_tta", "tta_preset", "report", "cache_dir", "aug", "precision", "ema",
               "clip_grad", "patience", "drop_rate", "drop_path_rate", "deterministic", "opt", "momentum", "mixup", "cutmix",
               "sched", "min_lr", "warmup_lr", "decay_epochs", "decay_rate", "swa_epochs",
               "gpus", "sync_bn", "lr_scale", "hidden", "layers", "pool", "crop_len", "context", "select_features", "cat_encoding",
               "gbm_params", "seeds", "track", "track_uri"]


def command(module: str, cfg: Config, names: list[str], **changes) -> str:
    """The command line that runs `python -m pipeline.<module>` with cfg's values (those of `names` that differ from
    the defaults), `changes` applied: a hint the user can paste as printed.

    >>> command("train", Config(exp=("a",), epochs=3), ["exp", "epochs", "fold", "resume"], resume=True)
    'python -m pipeline.train --exp a --epochs 3 --resume'
    """
    values, default, parts = dataclasses.replace(cfg, **changes), Config(), [f"python -m pipeline.{module}"]
    for name in names:
        value = getattr(values, name)
        if value == getattr(default, name):
            continue
        if isinstance(value, bool):
            parts.append(flag(name) if value else f"--no-{flag(name)[2:]}")
        else:
            parts += [flag(name), *map(shlex.quote, map(str, value if isinstance(value, tuple) else (value,)))]
    return " ".join(parts)


def _field_help() -> dict[str, str]:
    """Trailing comments of the Config fields, used as --help text."""
    source = inspect.getsource(Config)
    return dict(re.findall(r"^\s+(\w+): [^#\n]+#\s*(.+)$", source, flags=re.M))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as for every bad input
        raise PipelineError(f"{self.prog}: {message} (see --help)")


def build_parser(prog: str, names: list[str], doc: str = "", positional: tuple[str, ...] = (),
                 short: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """An argument parser exposing the Config fields in `names` as flags."""
    parser = _Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="JSON or YAML file of field values, applied before flags")
    hints, helps, short = typing.get_type_hints(Config), _field_help(), short or {}
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    for name in names:
        kind, text = hints[name], f"{helps.get(name, '')} (default: {defaults[name]!r})"
        opts = [name] if name in positional else [s for s in (short.get(name), flag(name)) if s]
        extra = {"nargs": "?", "default": None} if name in positional else {"dest": name, "default": None}
        if kind is bool:
            parser.add_argument(*opts, action=argparse.BooleanOptionalAction, help=text, **extra)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(*opts, nargs="+", type=typing.get_args(kind)[0], metavar="NAME", help=text, **extra)
        else:
            parser.add_argument(*opts, type=kind, metavar=name.upper() if name in positional else None,
                                help=text, **extra)
    return parser


def load_config_file(path: str, flag: str = "--config", default_format: str = "JSON") -> dict:
    """A mapping from a JSON or YAML file (.json, .yaml/.yml; other names: `default_format`), read safely: at most
    MAX_CONFIG_BYTES, UTF-8, YAML's safe loader (no object tags). Shared by --config and --gbm-params."""
    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"{flag}: {path} {'is a directory' if p.is_dir() else 'not found'}; expected a JSON or YAML file")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise PipelineError(f"{flag}: {path} is {p.stat().st_size:,} bytes; a settings file is at most {MAX_CONFIG_BYTES:,}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PipelineError(f"{flag}: {path} is not UTF-8 text") from None
    kind = "YAML" if p.suffix.lower() in (".yaml", ".yml") else "JSON" if p.suffix.lower() == ".json" else default_format
    try:
        if kind == "YAML":
            import yaml
            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
        raise PipelineError(f"{flag} {cut(path)}: not valid {kind} ({cut(one_line(e))})") from None
    if not isinstance(values, dict):
        raise PipelineError(f"{flag} {path}: expected a mapping of names to values, found {type(values).__name__}")
    return values


def make_config(values: dict, source: str = "config") -> Config:
    """Config from a mapping, refusing unknown keys and any value that is not already of the annotated type."""
    hints = typing.get_type_hints(Config)
    unknown = sorted(repr(k) for k in set(values) - set(hints))
    if unknown:
        raise PipelineError(f"{cut(source)}: unknown field(s) {cut(', '.join(unknown[:5]))}; valid: {', '.join(hints)}")
    typed = {}
    for name, value in values.items():
        if name == "fold" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # fold: 0 in a file means fold "0"; no other string field takes a number
        typed[name] = strict_value(hints[name], value)
        if typed[name] is None:
            kind = hints[name]
            raise PipelineError(f"{cut(source)}: {name} must be {_type_name(kind)}, got {quote(value)} "
                                f"({type(value).__name__})")
    return Config(**typed)


def strict_value(kind, value):
    """`value` as `kind` when that loses nothing, else None: no rounding 2.7 to 2, no True as 1, no 'yes' as True.

    >>> strict_value(int, 3.0), strict_value(int, 2.7), strict_value(float, "1e-3"), strict_value(bool, 1)
    (3, None, 0.001, None)
    """
    if typing.get_origin(kind) is tuple:
        items = [value] if isinstance(value, str) else value
        ok = isinstance(items, (list, tuple)) and all(isinstance(v, str) for v in items)
        return tuple(items) if ok else None
    if kind is bool:
        return value if isinstance(value, bool) else None
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if kind is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value) if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value.strip()) else None
            except ValueError:
                return None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind is str:
        return value if isinstance(value, str) else None
    return None


def _type_name(kind) -> str:
    return "a list of names" if typing.get_origin(kind) is tuple else {bool: "true or false", int: "an integer",
                                                                        float: "a number", str: "a string"}[kind]


def parse_config(argv: list[str] | None, prog: str, names: list[str], doc: str = "",
                 positional: tuple[str, ...] = (), short: dict[str, str] | None = None) -> Config:
    """defaults < --config FILE < flags, validated before any work starts."""
    return parse_stage(argv, prog, names, doc, positional=positional, short=short)[0]


def parse_stage(argv: list[str] | None, prog: str, names: list[str], doc: str = "", stage_defaults: dict | None = None,
                extra: dict[str, dict] | None = None, positional: tuple[str, ...] = (),
                short: dict[str, str] | None = None) -> tuple[Config, dict]:
    """Like parse_config, plus this stage's own defaults for Config fields and its own extra flags.

    Precedence: Config defaults < stage_defaults < --config FILE < flags. Returns (config, extra values).
    """
    parser = build_parser(prog, names, doc, positional, short)
    for name, spec in (extra or {}).items():
        parser.add_argument(flag(name), dest=name, **spec)
    args = vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
    extras = {name: args.pop(name) for name in extra or {}}
    config_file = args.pop("config")
    values = dict(stage_defaults or {}) | (load_config_file(config_file) if config_file else {})
    values.update({k: v for k, v in args.items() if v is not None})
    return make_config(values, source=config_file or prog), extras


@dataclass(frozen=True)
class ExperimentConfig:
    """An experiment's config.json, and the 'config' inside each of its checkpoints: the train flags as resolved (the
    recipe) and what the data and the folds fixed. Written flat, as one JSON mapping (to_dict); read back checked
    (from_dict). The recipe stays the mapping it was saved as: a file from an older version may hold a field this
    one lacks, and `setting` gives a field the file lacks its default."""
    recipe: dict  # Config's fields as resolved (to_dict(cfg))
    n_splits: int  # folds in the folds file
    num_classes: int = 10  # model outputs (Task.num_outputs); older Digit Recognizer files lack it
    in_chans: int = 1  # image channels the model takes
    train_hash: str = ""  # of the train file the folds were made on
    folds_hash: str = ""  # of the folds file every fold must share
    group_col: str = ""
    data_spec: dict | None = None  # engine.DataSpec.to_dict(); None: trained before specs were saved (digits)
    data: dict | None = None  # data.Description.to_dict(); None: trained before layouts existed
    IDENTITY = ("n_splits", "num_classes", "in_chans", "train_hash", "folds_hash", "group_col", "data_spec", "data")

    @property
    def model(self) -> str:
        return str(self.setting("model"))

    @property
    def img_size(self) -> int:
        return int(self.setting("img_size"))

    def setting(self, name: str):
        """A recipe field, an identity field, or (absent from an older file) the field's default."""
        if name in self.IDENTITY:
            return getattr(self, name)
        return self.recipe[name] if name in self.recipe else getattr(Config(), name, None)

    def to_dict(self) -> dict:
        fixed = {name: getattr(self, name) for name in self.IDENTITY}
        return self.recipe | {k: v for k, v in fixed.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> ExperimentConfig:
        """A saved mapping, the fields stages rebuild from checked (one line naming `where` otherwise)."""
        if not isinstance(d, dict):
            raise PipelineError(f"{where}: expected a mapping of settings, found {type(d).__name__}")
        n_splits = d.get("n_splits")
        if not isinstance(n_splits, int) or isinstance(n_splits, bool) or not 2 <= n_splits <= 20:
            raise PipelineError(f"{where}: n_splits must be 2..20, found {n_splits!r}; retrain the experiment with "
                                "--overwrite")
        for key, kind in (("num_classes", int), ("in_chans", int), ("img_size", int), ("model", str),
                          ("train_hash", str), ("folds_hash", str), ("group_col", str), ("data_spec", dict),
                          ("data", dict)):
            if key in d and d[key] is not None and (not isinstance(d[key], kind) or isinstance(d[key], bool)):
                raise PipelineError(f"{where}: {key} must be {_type_name(kind) if kind is not dict else 'a mapping'}, "
                                    f"found {quote(d[key])}; retrain the experiment with --overwrite")
        fixed = {k: d[k] for k in cls.IDENTITY if k in d and d[k] is not None}
        return cls({k: v for k, v in d.items() if k not in cls.IDENTITY}, **fixed)

    @classmethod
    def read(cls, path: str | Path) -> ExperimentConfig:
        return cls.from_dict(read_json(path, "experiment config"), str(path))

    @classmethod
    def from_checkpoint(cls, ckpt: dict, path: Path) -> ExperimentConfig:
        """The resolved config saved in a fold checkpoint, with the keys and types inference rebuilds from."""
        config = ckpt.get("config")
        if not isinstance(config, dict):
            raise PipelineError(f"{path}: no 'config' mapping in the checkpoint; it was not written by pipeline.train")
        for key, kind in (("model", str), ("num_classes", int), ("in_chans", int), ("img_size", int), ("n_splits", int)):
            value = config.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise PipelineError(f"{path}: config {key} must be {kind.__name__}, found {value!r}")
        if not (1 <= config["num_classes"] <= 100_000 and 1 <= config["in_chans"] <= 16 and 16 <= config["img_size"] <= 512):
            raise PipelineError(f"{path}: config num_classes/in_chans/img_size out of range: "
                                f"{config['num_classes']}/{config['in_chans']}/{config['img_size']}")
        return cls.from_dict(config, str(path))

    @classmethod
    def resolve(cls, cfg: Config, **fixed) -> ExperimentConfig:
        """What train saves for a run of `cfg` (its flags as resolved) on data and folds that fixed `fixed`."""
        recipe = {k: v for k, v in to_dict(cfg).items() if k not in cls.IDENTITY}  # 'data': the description, not --data
        return cls(recipe | {"exp": [cfg.exp_name]}, **fixed)


def to_dict(cfg: Config) -> dict:
    """JSON-ready dict of the config (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


PATH_FIELDS = ("data", "folds_path", "weights_dir", "cache_dir", "gbm_params", "pretrained_path", "out", "aug")


def without_local_paths(config: dict) -> dict:
    """An experiment's config.json as exported: absolute paths cut to their file name (a recipe's own
    names and relative paths are kept).

    >>> without_local_paths({"data": "/home/me/comp", "folds_path": "folds/folds.csv", "aug": "digits", "lr": 0.1})
    {'data': 'comp', 'folds_path': 'folds/folds.csv', 'aug': 'digits', 'lr': 0.1}
    """
    return {k: Path(v).name if k in PATH_FIELDS and isinstance(v, str) and Path(v).is_absolute() else v
            for k, v in config.items()}
