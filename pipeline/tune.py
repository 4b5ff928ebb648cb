"""Optuna search on one fold, in the search space of the model's learner.

neural models: lr, weight decay, label smoothing, batch size and epochs, with pruning after each epoch;
gradient boosting (--model lightgbm): learning rate, leaves, rows per leaf, feature and row fractions, L2, each
trial's parameters written as a --gbm-params file (over the one given, if any).

    python -m pipeline.tune --trials 30 --fold 0 --epochs 20      # epochs: the largest tried
    python -m pipeline.tune --trials 30 --data sample-table --model lightgbm
    python -m pipeline.tune --trials 30 --model catboost --storage sqlite:///tune.db   # several machines, one study
    python -m pipeline.tune --trials 0 --model catboost --storage sqlite:///tune.db    # print the study's best only
    python -m pipeline.train --fold all --config weights/tunes/study/best.json

--storage: Optuna's RDB storage URL (sqlite:///file.db, postgresql://..., mysql://...) or a journal file (any other
path, e.g. /shared/tune.log, for a shared file system); a second tune on the same storage and --name continues the
study (its trials count with the new ones). Without it the study lives in this process only.

Needs the optional extra: pip install -e '.[tune]'  (or: pip install optuna).
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from pipeline import data, experiment, train, trainer
from pipeline.io import write_json
from pipeline.config import TRAIN_FLAGS, Config, check_name, parse_stage
from pipeline.errors import PipelineError, TrainingDiverged, cut, main_guard, one_line
from pipeline.experiment import RECIPE
from pipeline.learners import learner_for

FLAGS = [f for f in TRAIN_FLAGS if f not in ("exp", "resume", "overwrite", "report", "oof_tta")] + ["trials", "storage"]


def run(cfg: Config, extra: dict):
    try:
        import optuna
    except ImportError:
        raise PipelineError("tune needs Optuna, an optional extra: pip install -e '.[tune]' (or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out_dir = Path(cfg.weights_dir) / "tunes" / check_name(extra["name"], "--name")

    learner = learner_for(cfg.model)

    def trial_config(params: dict, name: str) -> Config:
        """The recipe of a point of the space (a parameters file in the study folder, where the learner needs one)."""
        return learner.trial_config(cfg, params, out_dir / f"{name}.gbm_params.json")

    def objective(trial):
        params = learner.search_space(trial, cfg)
        print(f"== trial {trial.number}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in params.items()))

        def report(epoch: int, valid: dict) -> None:
            trial.report(valid[metric], epoch)
            if trial.should_prune():
                print(f"trial {trial.number} pruned after epoch {epoch} (valid {metric} {valid[metric]:.5f})")
                raise optuna.TrialPruned()

        cell = replace(trial_config(params, f"trial{trial.number}"), exp=(f"trial{trial.number}",),
                       weights_dir=str(out_dir), overwrite=True)
        if (out_dir / f"trial{trial.number}").is_dir():  # a trial of an earlier study of this --name: its number is ours
            experiment.remove_artifacts(out_dir / f"trial{trial.number}")
        return train.run(cell, on_epoch=report).score

    task = trainer.data_description(cfg, data.resolve(cfg.data)).task
    metric = task.metric
    direction = "maximize" if task.higher_is_better else "minimize"
    if not cfg.trials and not cfg.storage:
        raise PipelineError("--trials 0: prints the best of a study kept in --storage; give --storage (a journal file "
                            "or a database URL), or trials to run")
    try:
        study = optuna.create_study(direction=direction, storage=storage(cfg.storage), study_name=extra["name"],
                                    load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=cfg.seed),
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
    except PipelineError:
        raise
    except Exception as e:  # SQLAlchemy's and the journal's own errors: a bad URL, a file that is not a journal
        raise PipelineError(f"--storage {cfg.storage}: cannot be opened as an Optuna storage ({type(e).__name__}: "
                            f"{cut(one_line(e), 150)}); give a journal file path or a URL such as sqlite:///tune.db") \
            from None
    identity = {"model": cfg.model, "metric": metric, "data": train_hash(cfg)}
    if study.user_attrs and {k: study.user_attrs.get(k) for k in identity} != identity:
        other = {k: study.user_attrs.get(k) for k in identity}
        raise PipelineError(f"--storage {cfg.storage}: study {extra['name']!r} there tunes {other['model']} for "
                            f"{other['metric']} on data {other['data']}, this run {cfg.model} for {metric} on "
                            f"{identity['data']}; use another --name")
    if not study.trials and not cfg.trials:
        raise PipelineError(f"--trials 0: study {extra['name']!r} in {cfg.storage} has no trials (check --name)")
    for key, value in identity.items():
        study.set_user_attr(key, value)
    if study.direction.name.lower() != direction:
        raise PipelineError(f"--storage {cfg.storage}: study {extra['name']!r} there was made to {study.direction.name.lower()} "
                            f"its metric, and {metric} here is to {direction[:-1]}e; use another --name")
    before = len(study.trials)
    if cfg.storage:  # machines sharing a study must not draw the same points: their own seed each, after the ones there
        import os
        import socket

        study.sampler = optuna.samplers.TPESampler(seed=hash((cfg.seed, before, socket.gethostname(), os.getpid()))
                                                   % 2 ** 31)
    if before:
        print(f"study {extra['name']!r} continues: {before} trials already in {cfg.storage}")
    if cfg.trials:
        study.optimize(objective, n_trials=cfg.trials, catch=(TrainingDiverged,))  # a diverged trial is a failed one
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        raise PipelineError(f"tune: none of the {len(study.trials)} trials completed (all pruned or diverged); "
                            "widen the search or train longer")
    best = trial_config(dict(study.best_params), "best")  # min-lr moved as it was
    keep = [f for f in RECIPE if f != "seed"] + ["model", "data", "folds_path", "device"]
    write_json({k: getattr(best, k) for k in keep}, out_dir / "best.json")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    print(f"{len(done)} trials completed, {len(study.trials) - len(done)} pruned or failed; best valid {metric} "
          f"{study.best_value:.5f} with " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                        for k, v in study.best_params.items()))
    print(f"wrote {out_dir / 'best.json'}; train with it: python -m pipeline.train --fold all --config {out_dir / 'best.json'}")
    return study


def train_hash(cfg: Config) -> str:
    """The train file's hash as the folds file records it: which data a shared study tunes on."""
    from pipeline.folds import read_description

    return str(read_description(cfg.folds_path, cfg.data).get("train_hash", ""))


def storage(where: str):
    """Optuna's storage for --storage: None (this process), an RDB URL, or a journal file on a shared file system."""
    if not where:
        return None
    if "://" in where:
        return where  # Optuna's RDBStorage (SQLAlchemy) refuses a bad URL in its own words
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(where)
    if path.parent.exists() and not path.parent.is_dir():
        raise PipelineError(f"--storage {where}: {path.parent} is a file, not a folder; give a journal file path")
    if path.is_dir():
        raise PipelineError(f"--storage {where}: is a directory; give a journal file (e.g. {path / 'tune.log'}) or a "
                            "database URL (sqlite:///tune.db)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def main(argv=None) -> int:
    extra = {"name": {"default": "study", "help": "study folder under weights/tunes/"}}
    return main_guard(lambda a: run(*parse_stage(a, "tune", FLAGS, __doc__, {"fold": "0", "epochs": 10}, extra)), argv)


if __name__ == "__main__":
    sys.exit(main())
