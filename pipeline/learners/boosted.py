"""The table learners: `--model lightgbm | catboost | xgboost | linear` (pipeline.learners.TABLE_LIBRARIES: one module
each, with pipeline.learners.gbm's names).

Per fold: the table's preprocessing fitted on the fold's training rows (feature selection, categories the fold
never saw -> missing; one-hot and scaling for the linear model), the model fitted on them (boosting with early
stopping on the fold's validation rows in the competition metric; the linear model's regularisation by an inner CV on
the training rows), saved as `fold<k><suffix>` in the library's own format beside `fold<k>.prep.json`, which records
each saved model's hash (a model edited since is refused). --seeds N fits each fold N times (fold<k>.s<j><suffix>)
and averages them. The fold's validation predictions are its OOF rows; metrics.csv gets one row per fold (epoch =
the best iteration), so runs, report and the CV read it as they read a neural fold.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
import time
from pathlib import Path

import numpy as np
import torch

from pipeline import experiment, preprocess
from pipeline.errors import PipelineError
from pipeline.experiment import GBM_RECIPE
from pipeline.io import file_hash
from pipeline.learners import SEED_STRIDE, TABLE_LIBRARIES, Learner

SUFFIX = ".txt"  # LightGBM's fold model: fold<k>.txt
SEED_KEYS = ("seed", "random_seed", "random_state", "seed_value")  # the libraries' names for their seed
MIN_LEAF_ALIASES = ("min_data_in_leaf", "min_data_per_leaf", "min_data", "min_child_samples", "min_samples_leaf")


def gbm_learner(name: str):
    """The module that fits and predicts with the table library `name`, its package checked to be installed."""
    if name not in TABLE_LIBRARIES:
        raise PipelineError(f"--model: unknown table learner {name!r}; valid: {', '.join(TABLE_LIBRARIES)}")
    library = importlib.import_module(f"pipeline.learners.{TABLE_LIBRARIES[name]}")
    if importlib.util.find_spec(library.PACKAGE) is None:
        extra = f"pip install 'pipeline[{library.EXTRA}]' (or pip install {library.PACKAGE})" if library.EXTRA else \
            f"pip install {library.PACKAGE}"
        raise PipelineError(f"--model {name}: needs the {library.PACKAGE} package, which is not installed: {extra}; "
                            "the other learners run without it")
    return library


class Boosted(Learner):
    form = "gbm"  # a table's rows only
    recipe = tuple(GBM_RECIPE)
    report_keys = tuple(GBM_RECIPE[:3])

    def __init__(self, name: str):
        self.name = name
        self.suffix = importlib.import_module(f"pipeline.learners.{TABLE_LIBRARIES[name]}").SUFFIX

    @property
    def library(self):
        return gbm_learner(self.name)  # checked when used: naming the model needs no library

    def check(self, cfg, task, n_features: int) -> dict:
        """A bad params file or a task the library cannot fit fails here, before any work; the parameters themselves
        are the recipe (every fold and --resume read them from config.json), not the file's path."""
        library = self.library
        params = library.load_params(cfg.gbm_params) if cfg.gbm_params else {}
        fixed = [key for key in params if key in SEED_KEYS]
        if fixed and cfg.seeds > 1:
            raise PipelineError(f"--gbm-params: {fixed[0]} fixes one seed for every model of --seeds {cfg.seeds}, "
                                "which would fit the same model each time; remove it (--seed and --seeds set them)")
        library.check_task(task, params)
        if not cfg.gbm_params:
            return {}
        return {"gbm_param_values": params, "gbm_params_hash": file_hash(Path(cfg.gbm_params).read_bytes())}

    def resolve(self, cfg, kind, features: dict, say):
        from dataclasses import replace

        from pipeline.config import Config

        if cfg.cat_encoding != Config().cat_encoding:
            how = "splits on categories itself" if self.library.ROWS == "gbm" else "one-hot encodes them"
            say(f"notice: --cat-encoding {cfg.cat_encoding} applies to a neural model on a table's categorical "
                f"columns; {self.name} {how}: ignored")
            cfg = replace(cfg, cat_encoding=Config().cat_encoding)  # not saved as the recipe: --resume without it works
        if cfg.seeds > 1 and not self.library.SEEDED:
            say(f"notice: --seeds {cfg.seeds}: {self.name} fits the same model whatever the seed; one fit per fold")
        return cfg

    def fit_fold(self, setup, k: int, rows: tuple, run) -> np.ndarray:
        if run.ranks.distributed:
            raise PipelineError(f"--model {self.name}: a table learner trains a fold in one process; run it without "
                                "torchrun (--gpus cpu,cpu trains folds in parallel)")
        params = setup.resolved.setting("gbm_param_values") or {}  # read once at setup: one recipe for every fold
        return train_fold(setup.cfg, params, setup.spec, k, rows, setup.folds.fold, setup.exp_dir, run)

    def train_full(self, setup, run) -> dict:
        raise PipelineError(f"--fold full: {self.name} picks its number of trees (or its regularisation) on a fold's "
                            "rows, which --fold full does not split; train --fold all and infer from the fold models")

    def predict_fold(self, path: Path, rows: torch.Tensor, cfg, config, preset: str, device, desc: str) -> np.ndarray:
        from pipeline.inputs.spec import DataSpec

        spec = DataSpec.from_config(config, str(path.parent / "config.json"))
        return predict_fold(path, rows.cpu().numpy(), spec, self.name, int(config.setting("seeds") or 1))

    def importance(self, exp_dir: Path):
        return importance(exp_dir, self.name)

    def fold_summary(self, exp_dir: Path, metrics) -> str:
        if self.library.ROWS == "gbm":
            best = ", ".join(f"fold {int(r.fold)}: {int(r.epoch)}" for r in metrics.itertuples())
            return f"## Boosting\nbest iteration per fold (early stopping on the fold's validation rows): {best}\n"
        paths = sorted(exp_dir.glob(f"fold[0-9]*{self.suffix}"))
        each = ", ".join(f"{p.name.split('.')[0]}: {self.library.describe(checked_model(p, self.library, None))}"
                         for p in paths)
        return f"## Regularisation\nstrength per fold (an inner CV on the fold's training rows): {each}\n"

    def runs_columns(self, config) -> dict:
        return {"epochs": "-", "batch": "-", "lr": "-", "smooth": "-"}  # no epochs, batches or lr schedule

    def search_space(self, trial, cfg) -> dict:
        return self.library.search_space(trial)

    def trial_config(self, cfg, params: dict, path: Path):
        """A point becomes a params file in the study folder, under the user's own --gbm-params."""
        from dataclasses import replace

        from pipeline.io import write_json

        base = self.library.load_params(cfg.gbm_params) if cfg.gbm_params else {}
        write_json(base | params, path)
        return replace(cfg, gbm_params=str(path))


def learner(name: str) -> Boosted:
    return Boosted(name)


def seed_path(exp_dir: Path, k: int, j: int, suffix: str) -> Path:
    """Fold k's model of seed j: fold<k><suffix> for the first (what fold_checkpoints looks for), fold<k>.s<j><suffix>
    for the others."""
    return exp_dir / (f"fold{k}{suffix}" if j == 0 else f"fold{k}.s{j}{suffix}")


def fold_rows(library, state: dict, raw: np.ndarray) -> np.ndarray:
    """The rows a library takes: the raw kept columns with categories as codes, or the MLP's one-hot vectors."""
    return preprocess.gbm_apply(state, raw) if library.ROWS == "gbm" else preprocess.apply(state, raw)


def row_names(library, state: dict) -> list[str]:
    return preprocess.gbm_names(state) if library.ROWS == "gbm" else preprocess.output_names(state)


def train_fold(cfg, params: dict, spec, k: int, rows: tuple, folds: np.ndarray, exp_dir: Path,
               run=None) -> np.ndarray:
    """Fit fold k with the library's `params` (--gbm-params as read at setup and saved in config.json) on `rows`
    ((data, targets) of every row), once per seed (--seeds); save each seed's model and the preprocessing (with the
    models' hashes, so a seed finished before an interruption is kept by --resume); return the seeds' mean
    validation predictions. `run`: the learners' Run (rank 0 writes; its deadline is shared by the seeds still to
    fit); None: one process, no deadline."""
    main, deadline = (True, None) if run is None else (run.ranks.main, run.deadline)
    library = gbm_learner(cfg.model)
    data, targets = rows
    raw, y = data.cpu().numpy(), targets.cpu().numpy()
    train_rows, valid_rows = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
    prep_path = exp_dir / f"fold{k}.prep.json"
    seeds = cfg.seeds if library.SEEDED else 1
    kept = kept_seeds(prep_path, exp_dir, k, spec) if main and cfg.resume else {}
    if kept:
        state = preprocess.load(prep_path, spec.features)
    else:
        features = spec.features
        state = preprocess.fit(raw[train_rows], list(features.get("categorical", [])),
                               list(features.get("cardinalities", [])), list(features.get("names", [])),
                               y=y[train_rows], task_kind=spec.task.kind, select_k=cfg.select_features)
        state["models"] = {}
    x_train, x_valid = fold_rows(library, state, raw[train_rows]), fold_rows(library, state, raw[valid_rows])
    started, runs = time.perf_counter(), []
    for j in range(seeds):
        path = seed_path(exp_dir, k, j, library.SUFFIX)
        if path.name in kept:
            model = library.load(path, spec.task.num_outputs)
            runs.append((kept[path.name], library.predict(model, x_valid, spec.task), model))
            continue
        share = None if deadline is None else time.monotonic() + max(0.0, deadline - time.monotonic()) / (seeds - j)
        model, best, preds = library.fit_fold((x_train, y[train_rows]), (x_valid, y[valid_rows]),
                                              preprocess.gbm_categorical(state), spec.task, params,
                                              cfg.seed + k + SEED_STRIDE * j, share, torch.get_num_threads())
        runs.append((best, preds, model))
        if main:
            library.save(model, path, best)
            state["models"][path.name] = {"sha256": file_hash(path.read_bytes()), "best_iteration": best}
            preprocess.save(state, prep_path)  # after the model: a recorded seed's model is always whole
    seconds = time.perf_counter() - started
    best = round(float(np.mean([r[0] for r in runs])))
    preds = np.mean([r[1] for r in runs], axis=0).astype(np.float32)
    if best <= 1 and library.ROWS == "gbm":  # the first tree alone scored best: usually no split was possible
        leaf = next((params[a] for a in MIN_LEAF_ALIASES if a in params), 20)
        print(f"notice: fold {k}: {cfg.model} kept its first iteration only; {len(train_rows):,} training rows with "
              f"min_data_in_leaf {leaf} leave few splits: set a lower min_data_in_leaf in --gbm-params", flush=True)
    if deadline is not None and time.monotonic() > deadline:
        print(f"notice: fold {k}: {cfg.model} reached its share of --time-limit; kept its best iteration so far "
              f"({best})", flush=True)
    valid = spec.task.scores(preds, y[valid_rows])
    if main:
        row = {"fold": k, "epoch": best, "train_loss": float("nan"), "train_accuracy": float("nan"),
               "valid_loss": valid["loss"]} | {f"valid_{m}": v for m, v in valid.items() if m != "loss"} \
            | {"lr": float("nan"), "seconds": round(seconds, 3)}
        experiment.append_metrics(exp_dir, row, [])
        experiment.write_selection(exp_dir, {"fold": k, "best_epoch": best, f"best_epoch_{spec.task.metric}":
                                             valid[spec.task.metric], "swa_epochs": 0,
                                             f"swa_{spec.task.metric}": float("nan"), "kept": "best_epoch"})
    m = spec.task.metric
    top = ", ".join(name for name, _ in library.feature_importance(runs[0][2], row_names(library, state))[:3])
    spread = ""
    if len(runs) > 1:
        each = [spec.task.scores(r[1], y[valid_rows])[m] for r in runs]
        spread = f"  ({len(runs)} seeds: each {np.mean(each):.5f} +- {np.std(each):.5f}, their mean above)"
    print(f"fold {k}: {cfg.model} {library.describe(runs[0][2])}  valid {m} {valid[m]:.5f}  valid loss "
          f"{valid['loss']:.4f}  {seconds:.1f}s{spread}  (top features: {top})", flush=True)
    return preds


def kept_seeds(prep_path: Path, exp_dir: Path, k: int, spec) -> dict:
    """The seeds of fold k an interrupted run finished ({file name: best iteration}), each model's hash checked
    against the one recorded; {} when there are none (or the record is unreadable: the fold starts again)."""
    if not prep_path.is_file():
        return {}
    try:
        models = preprocess.load(prep_path, spec.features).get("models") or {}
    except PipelineError:
        return {}
    kept = {}
    for name, record in models.items():
        path = exp_dir / name
        if path.is_file() and isinstance(record, dict) and file_hash(path.read_bytes()) == record.get("sha256"):
            kept[name] = record.get("best_iteration", 0)
    if kept:
        print(f"resume: fold {k}: {len(kept)} seed(s) already fitted ({', '.join(sorted(kept))}), kept", flush=True)
    return kept


def importance(exp_dir: Path, model_name: str) -> "pd.DataFrame":
    """The importance of every feature in each saved fold's model (total split gain for boosting, the mean absolute
    coefficient of a standardized column for the linear model), the folds' mean last, the most useful first (a
    feature a fold's selection dropped counts 0 there)."""
    import pandas as pd

    library, folds = gbm_learner(model_name), {}
    fold_model = re.compile(rf"fold(\d+){re.escape(library.SUFFIX)}")
    paths = [p for p in exp_dir.glob(f"fold*{library.SUFFIX}") if fold_model.fullmatch(p.name)]
    for path in sorted(paths, key=lambda p: int(fold_model.fullmatch(p.name).group(1))):
        prep = path.with_name(path.name.removesuffix(library.SUFFIX) + ".prep.json")
        if prep.is_file():
            gains = library.feature_importance(checked_model(path, library, None),
                                               row_names(library, preprocess.load(prep)))
            folds[f"fold {fold_model.fullmatch(path.name).group(1)}"] = dict(gains)
    if not folds:
        raise PipelineError(f"{exp_dir}: no fold{library.SUFFIX} model with its .prep.json to read feature importance "
                            "from")
    table = pd.DataFrame(folds).fillna(0.0)
    table["mean"] = table.mean(axis=1)
    table = table.sort_values("mean", ascending=False, kind="stable").rename_axis("feature").reset_index()
    table.attrs["measure"] = library.IMPORTANCE
    return table


def checked_model(path: Path, library, num_outputs: int | None, state: dict | None = None):
    """A saved model, refused in one line naming it when its hash is not the one its fold's .prep.json recorded
    (edited by hand, or damaged since), before the library parses it."""
    if state is None:
        prep = path.parent / f"{path.name.split('.')[0]}.prep.json"
        state = preprocess.load(prep) if prep.is_file() else {}
    record = (state.get("models") or {}).get(path.name) if isinstance(state.get("models"), dict) else None
    if path.is_file() and isinstance(record, dict) and file_hash(path.read_bytes()) != record.get("sha256"):
        raise PipelineError(f"{path}: changed since it was trained (its hash is not the one recorded in "
                            f"{path.name.split('.')[0]}.prep.json): edited by hand or damaged; retrain this fold with "
                            "--overwrite")
    return library.load(path, num_outputs)


def predict_fold(path: Path, raw: np.ndarray, spec, model_name: str, seeds: int = 1) -> np.ndarray:
    """A saved fold's predictions (n, outputs) for raw table rows, through the fold's own preprocessing: the mean of
    its seeds' models, which its .prep.json must record (a LightGBM fold trained before the record existed: its one
    model)."""
    library = gbm_learner(model_name)
    prep = path.with_name(path.name.removesuffix(library.SUFFIX) + ".prep.json")
    if not prep.is_file():
        raise PipelineError(f"{prep}: missing (the preprocessing fold {path.name} was trained with); retrain with "
                            "--overwrite")
    state = preprocess.load(prep, spec.features)
    k = int(path.name.split(".")[0].removeprefix("fold"))
    names = [seed_path(path.parent, k, j, library.SUFFIX).name for j in range(seeds if library.SEEDED else 1)]
    record = state.get("models")
    unrecorded = record is None and model_name == "lightgbm" and names == [path.name]
    if not unrecorded and (not isinstance(record, dict) or sorted(record) != sorted(names)
                           or not all(isinstance(r, dict) and isinstance(r.get("sha256"), str) for r in record.values())):
        raise PipelineError(f"{prep}: its record of the fold's models is not the experiment's ({', '.join(names)}, "
                            f"--seeds {seeds} in config.json): edited by hand, or the fold is unfinished; retrain it "
                            f"with --overwrite --fold {k}")
    x = fold_rows(library, state, raw)
    return np.mean([library.predict(checked_model(path.parent / n, library, spec.task.num_outputs, state), x,
                                    spec.task) for n in names], axis=0).astype(np.float32)
