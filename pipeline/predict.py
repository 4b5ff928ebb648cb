"""Reading and predicting with trained experiments: what infer, report, submit, runs, export and train share.

    config = experiment_config(exp_dir)           # config.json, checked
    desc, spec = experiment_data(exp_dir)         # what it was trained on, how its models see rows
    probs = predict_experiment(exp_dir, rows, cfg, preset, device)   # the k folds' mean, test_probs.npy beside
    probs, targets, folds, task = read_oofs(weights_dir, ("a", "b"))   # OOF of experiments sharing their folds

No CLI lives here: the stages' command lines import this module, never each other's internals.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import data
from pipeline.io import write_json, write_npy
from pipeline.config import Config, ExperimentConfig, flag
from pipeline.inputs.spec import DataSpec
from pipeline.training.engine import predict
from pipeline.ensemble import Stack, blend, combine, honest_predictions, honest_scores, honest_stack, rank_average
from pipeline.intervals import cv_interval, describe
from pipeline.errors import PipelineError
from pipeline.experiment import (CVSummary, cv_summary, done_folds, experiment_dir, oof_arrays, oof_where,
                                 prob_columns, read_oof, write_oof_rows, writer)
from pipeline.learners import learner_for
from pipeline.learners.neural import load_fold_model
from pipeline.tasks import Task


def experiment_data(exp_dir: Path) -> tuple[data.Description, DataSpec]:
    """What an experiment was trained on (its saved data description) and how its models see images."""
    config = experiment_config(exp_dir)
    where = str(exp_dir / "config.json")
    spec = DataSpec.from_config(config, where)
    if config.data is not None:
        return data.Description.from_dict(config.data, where), spec
    return data.Description("pixels", spec.task, side=28, channels=1), spec  # trained before layouts existed


def default_experiment(weights_dir: Path, model: str) -> str:
    found = sorted(p.parent.name for p in weights_dir.glob("*/config.json"))
    if model in found or len(found) == 1:
        return model if model in found else found[0]
    if not found:
        raise PipelineError(f"{weights_dir}/: no trained experiment; train one with: python -m pipeline.train --fold all")
    raise PipelineError(f"--exp: {weights_dir}/ holds several experiments ({', '.join(found)}); name one or more")


def experiment_config(exp_dir: Path) -> ExperimentConfig:
    """config.json of a trained experiment, checked for what inference and blending rely on."""
    if not (exp_dir / "config.json").exists():
        found = sorted(p.parent.name for p in exp_dir.parent.glob("*/config.json"))
        raise PipelineError(f"{exp_dir}: not a trained experiment (no config.json); "
                            + (f"experiments in {exp_dir.parent}/: {', '.join(found)}" if found else "none trained yet"))
    return ExperimentConfig.read(exp_dir / "config.json")


def fold_checkpoints(exp_dir: Path, cfg: Config | None = None) -> list[Path]:
    """The k fold checkpoints of an experiment, refusing a partial set (cfg: the --data and --weights-dir in use)."""
    config = experiment_config(exp_dir)
    n_splits, suffix = config.n_splits, model_suffix(config)
    paths = [exp_dir / f"fold{k}{suffix}" for k in range(n_splits)]
    missing = [k for k, p in enumerate(paths) if not p.is_file()]
    if missing:
        if holder := writer(exp_dir):
            raise PipelineError(f"{exp_dir}: missing fold weights {', '.join(paths[k].name for k in missing)} of "
                                f"{n_splits}: a training is writing them now ({holder}); wait for it to finish")
        finished = set(done_folds(exp_dir))
        if finished.isdisjoint(missing):  # unfinished folds (an interrupted run): --resume trains them
            how = train_command(exp_dir, cfg or Config(), "--fold all --resume")
        else:  # finished folds whose weights are gone: --resume would keep them as done, so each is retrained
            how = " && ".join(train_command(exp_dir, cfg or Config(), f"--fold {k} --overwrite") for k in missing)
        raise PipelineError(f"{exp_dir}: missing fold weights {', '.join(paths[k].name for k in missing)} of "
                            f"{n_splits}; train them with: {how}")
    unfinished = sorted(set(range(n_splits)) - set(done_folds(exp_dir)))
    if unfinished:  # weights of a fold still training, or of one a kill interrupted (a seed, an epoch): not its own
        busy = writer(exp_dir)
        raise PipelineError(f"{exp_dir}: fold(s) {', '.join(map(str, unfinished))} unfinished (no OOF rows yet): "
                            + (f"a training is writing them now ({busy}); wait for it to finish" if busy else
                               "finish them with: " + train_command(exp_dir, cfg or Config(), "--fold all --resume")))
    return paths


def model_suffix(config: ExperimentConfig) -> str:
    """A fold's model file: fold<k>.pth (torch), fold<k>.txt (a boosting library's text model)."""
    return learner_for(config.model).suffix


def fold_predictions(path: Path, rows: torch.Tensor, cfg: Config, config: ExperimentConfig, preset: str,
                     device: torch.device, desc: str) -> np.ndarray:
    """One fold's predictions (N, outputs) for raw rows, by its learner, through its own preprocessing."""
    return learner_for(config.model).predict_fold(path, rows, cfg, config, preset, device, desc)


def train_command(exp_dir: Path, cfg: Config, what: str) -> str:
    """The train command that adds to an experiment (`what`: --fold full, --fold all --resume): its data, folds and
    recipe as saved in config.json, since train refuses to add to an experiment with another recipe."""
    config, defaults = experiment_config(exp_dir), Config()
    words = ["python -m pipeline.train --exp", shlex.quote(exp_dir.name), what]
    where = {"data": cfg.data, "weights_dir": cfg.weights_dir, "folds_path": config.setting("folds_path")}
    recipe = learner_for(config.model).recipe  # what its learner reads
    for name in [*where, *recipe]:
        value = where[name] if name in where else config.setting(name)
        if value is None or value == getattr(defaults, name):
            continue
        words += [flag(name)] if value is True else [flag(name), shlex.quote(str(value))]
    return " ".join(words)


def predict_experiment(exp_dir: Path, images: torch.Tensor, cfg: Config, preset: str, device: torch.device) -> np.ndarray:
    """Mean of the k fold models' test predictions (N, C); saved as weights/<exp>/test_probs.npy."""
    paths = fold_checkpoints(exp_dir, cfg)
    config = experiment_config(exp_dir)
    if cfg.with_full:
        if not (exp_dir / "full.pth").is_file():
            raise PipelineError(f"--with-full: {exp_dir} has no full.pth; train it with: "
                                f"{train_command(exp_dir, cfg, '--fold full')}")
        paths = [*paths, exp_dir / "full.pth"]
    total = None
    for k, path in enumerate(paths):
        probs = fold_predictions(path, images, cfg, config, preset, device,
                                 f"{exp_dir.name} fold {k}{' tta' if cfg.tta else ''}")
        if not np.isfinite(probs).all():
            raise PipelineError(f"{path}: the model predicts NaN or infinite probabilities; "
                                "this fold is unusable: retrain it with --overwrite")
        total = probs if total is None else total + probs
    mean = total / len(paths)
    where = writable_dir(exp_dir, Path(cfg.out).parent if cfg.out else Path("submissions"))
    prefix = "" if where == exp_dir else f"{exp_dir.name}_"
    write_npy(mean, where / f"{prefix}test_probs.npy")
    write_json({"tta": cfg.tta, "tta_preset": preset if cfg.tta else None, "folds": len(paths),
                "rows": len(mean)}, where / f"{prefix}test_probs.json")
    print(f"{exp_dir.name}: {len(paths) - cfg.with_full} folds{' + the full-data model' if cfg.with_full else ''}"
          f"{' with TTA (' + preset + ')' if cfg.tta else ''} -> "
          f"{where / (prefix + 'test_probs.npy')}")
    return mean


def writable_dir(preferred: Path, fallback: Path) -> Path:
    """The experiment folder, or the output folder when weights are read-only (a Kaggle input dataset)."""
    if os.access(preferred, os.W_OK):
        return preferred
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def oof_tta(exp_dir: Path, images: torch.Tensor, preset: str, batch_size: int, device: torch.device,
            precision: str = "auto") -> CVSummary:
    """Each fold's best model with TTA on its own validation rows: oof_tta.csv and its scores in cv.json."""
    from pipeline.tta import with_tta

    spec, config = experiment_data(exp_dir)[1], experiment_config(exp_dir)
    oof = read_oof(exp_dir)
    parts = []
    for k, part in oof.groupby("fold"):
        model, fold_spec = load_fold_model(exp_dir / f"fold{k}.pth", device, config)
        rows = torch.tensor(part["id"].to_numpy(), device=images.device)
        probs = predict(with_tta(model, preset), images[rows], batch_size or 1024, fold_spec, device,
                        desc=f"OOF TTA fold {k}", precision=precision)
        parts.append(part[["id", "fold", *spec.task.target_columns()]].reset_index(drop=True).join(
            pd.DataFrame(probs, columns=prob_columns(probs.shape[1]))))
    table = pd.concat(parts).sort_values("id").reset_index(drop=True)
    for k, part in table.groupby("fold"):
        write_oof_rows(exp_dir, int(k), part, len(oof), "oof_tta")
    cv = CVSummary.read(exp_dir / "cv.json")
    cv.oof_tta = cv_summary(table, cv.n_splits, spec.task).oof | {"preset": preset}
    write_json(cv.to_dict(), exp_dir / "cv.json")
    m = spec.task.metric
    print(f"OOF with TTA ({preset}): {m} {cv.oof_tta[m]:.5f}  loss {cv.oof_tta['loss']:.4f}  "
          f"(without: {cv.oof[m]:.5f}  {cv.oof['loss']:.4f})")
    return cv


def read_oofs(weights_dir: Path, exps: tuple[str, ...], same_folds: bool = True
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Task]:
    """(M, N, C) OOF predictions of the experiments, their targets, folds and task; all must share the folds
    (`same_folds`: a blend fitted on OOF needs them; a mean fits nothing, and each row stays out of fold in each)."""
    frames, hashes, trained_on = [], [], []
    task = experiment_data(experiment_dir(weights_dir, exps[0]))[1].task
    for e in exps:
        hashes.append(experiment_config(experiment_dir(weights_dir, e)).folds_hash)
        trained_on.append(experiment_config(experiment_dir(weights_dir, e)).train_hash)
        table = read_oof(weights_dir / e)
        if table is None:
            raise PipelineError(f"{weights_dir / e / 'oof.csv'}: not found; the ensemble needs every experiment's OOF "
                                "(train --fold all)")
        frames.append(table.sort_values("id").reset_index(drop=True))
    if len(set(trained_on)) > 1:  # any blend, a mean too: rows of other data are other rows under the same ids
        i = next(i for i, h in enumerate(trained_on) if h != trained_on[0])
        raise PipelineError(f"--exp: {exps[i]} was trained on other data than {exps[0]} (train file hash "
                            f"{trained_on[i]!r} vs {trained_on[0]!r}); blend experiments of one competition's data")
    if len(set(hashes)) > 1 and same_folds:
        i = next(i for i, h in enumerate(hashes) if h != hashes[0])
        raise PipelineError(f"--exp: {exps[i]} was trained on folds file {hashes[i]!r}, {exps[0]} on {hashes[0]!r}; "
                            "a blend fitted on OOF rows from two fold assignments leaks: retrain one of them on the "
                            "same folds file (train --overwrite --fold all)")
    n_splits = [experiment_config(experiment_dir(weights_dir, e)).n_splits for e in exps]
    for e, f, k in zip(exps, frames, n_splits):  # each experiment's rows sound before two are compared
        cv_summary(f, k, task, oof_where(weights_dir / e))
    first = frames[0]
    for e, f in zip(exps[1:], frames[1:]):
        if not (f["id"].equals(first["id"]) and (f["fold"].equals(first["fold"]) or not same_folds)):
            raise PipelineError(f"--exp: {e} and {exps[0]} have different OOF rows or folds; "
                                "blend experiments trained on the same folds file with --fold all")
    arrays = [oof_arrays(f, task, oof_where(weights_dir / e)) for e, f in zip(exps, frames)]
    return np.stack([a[0] for a in arrays]), arrays[0][1], first["fold"].to_numpy(), task


def fit_ensemble(weights_dir: Path, exps: tuple[str, ...], method: str, stacker: str = "linear",
                 features: tuple[np.ndarray, np.ndarray] | None = None):
    """The blend fitted on OOF, as a function of the experiments' test predictions (M, N, C) -> (N, C); prints every
    experiment's OOF score and the blend's honest one (fitted on the other folds, scored on the held-out fold) in the
    competition's metric, and for --ensemble stack the honest scores of mean, learned and greedy beside the stack's.
    `features`: (OOF rows', test rows') table columns for --stack-features, the OOF rows in id order."""
    probs, targets, folds, task = read_oofs(weights_dir, exps, same_folds=method not in ("mean", "rank"))
    if method == "rank" and task.metric != "roc_auc":
        raise PipelineError(f"--ensemble rank: rank averaging keeps only the order of scores, which only AUC judges; "
                            f"this competition's metric is {task.metric}: use mean, learned or greedy")
    m = task.metric
    for e, p in zip(exps, probs):
        own = task.scores(p, targets)
        print(f"OOF {e}: {m} {own[m]:.5f}  loss {own['loss']:.4f}")
    if method != "mean":
        mean = task.scores(probs.mean(0), targets)
        print(f"OOF mean blend (nothing fitted): {m} {mean[m]:.5f}  loss {mean['loss']:.4f}")
    record = {"experiments": list(exps), "method": method, "metric": m,
              "oof_each": {e: task.scores(p, targets) for e, p in zip(exps, probs)}}
    if method == "stack":
        for other in ("learned", "greedy"):
            other_scores = honest_scores(probs, targets, folds, task, other)
            print(f"OOF {other} blend (weights fitted on the other folds): {m} {other_scores[m]:.5f}  "
                  f"loss {other_scores['loss']:.4f}")
        train_x, test_x = features if features is not None else (None, None)
        stacked = honest_stack(probs, targets, folds, task, stacker, train_x)
        honest, interval = task.scores(stacked, targets), cv_interval(stacked, targets, task)
        model = Stack(task, stacker).fit(probs, targets, train_x)
        shown = "" if stacker == "lightgbm" else "; weights on all OOF: " + ", ".join(
            f"{e} {w:.3f}" for e, w in zip(exps, model.weights))
        print(f"OOF stack ({stacker}{' + the table columns' if train_x is not None else ''}, fitted on the other "
              f"folds): {m} {honest[m]:.5f}  {describe(interval)}  loss {honest['loss']:.4f}{shown}")
        record |= {"stacker": stacker, "stack_features": train_x is not None, "oof_blend_honest": honest,
                   "oof_blend_interval": interval,
                   "weights": [float(w) for w in model.weights] if stacker == "linear" else None}
        write_json(record, writable_dir(weights_dir, Path("submissions")) / f"blend_{'+'.join(exps)}.json")
        return lambda test: model.predict(test, test_x)
    weights = combine(probs, targets, task, method)[0]
    blended = honest_predictions(probs, targets, folds, task, method)
    honest, interval = task.scores(blended, targets), cv_interval(blended, targets, task)
    print(f"OOF {method} blend ({'weights fitted on the other folds' if method in ('learned', 'greedy') else 'nothing fitted'}"
          f"): {m} {honest[m]:.5f}  {describe(interval)}  loss {honest['loss']:.4f}; weights on all OOF: "
          + ", ".join(f"{e} {w:.3f}" for e, w in zip(exps, weights)))
    write_json(record | {"weights": weights.tolist(), "oof_blend_honest": honest, "oof_blend_interval": interval},
               writable_dir(weights_dir, Path("submissions")) / f"blend_{'+'.join(exps)}.json")
    if method == "rank":
        return rank_average
    return lambda test: blend(test, weights)


def oof_ids(exp_dir: Path) -> np.ndarray:
    """An experiment's OOF row ids in the order read_oofs gives its rows (by id)."""
    return read_oof(exp_dir).sort_values("id")["id"].to_numpy()


def stack_features(exp_dir: Path, src, desc, test_rows: np.ndarray, cache_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """--stack-features: the table's own columns for the OOF rows (in id order) and the test rows, imputed, scaled
    and one-hot encoded by a preprocessing fitted on the train rows without their targets."""
    from pipeline import preprocess

    spec = experiment_data(exp_dir)[1]
    if "names" not in spec.features:
        raise PipelineError(f"--stack-features: puts a table's own columns beside the OOF predictions; {exp_dir.name} "
                            f"was trained on {desc.kind} data: stack without it")
    train = data.read_train(src, desc)
    raw = np.asarray(data.train_rows(src, desc, train, spec.img_size, cache_dir), dtype=np.float32)
    position = pd.Series(np.arange(len(train.ids)), index=pd.Index(train.ids).astype(str))
    order = position.loc[pd.Index(oof_ids(exp_dir)).astype(str)].to_numpy()
    f = spec.features
    state = preprocess.fit(raw, list(f.get("categorical", [])), list(f.get("cardinalities", [])),
                           list(f.get("names", [])))
    return preprocess.apply(state, raw[order]), preprocess.apply(state, np.asarray(test_rows, dtype=np.float32))
