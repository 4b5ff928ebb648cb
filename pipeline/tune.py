"""Optuna search on one fold, in the search space of the model's learner.

neural models: lr, weight decay, label smoothing, batch size and epochs, with pruning after each epoch;
gradient boosting (--model lightgbm): learning rate, leaves, rows per leaf, feature and row fractions, L2, each
trial's parameters written as a --gbm-params file (over the one given, if any).

    python -m pipeline.tune --trials 30 --fold 0 --epochs 20      # epochs: the largest tried
    python -m pipeline.tune --trials 30 --data sample-table --model lightgbm
    python -m pipeline.train --fold all --config weights/tunes/study/best.json

Needs the optional extra: pip install -e '.[tune]'  (or: pip install optuna).
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from pipeline import data, train, trainer
from pipeline.io import write_json
from pipeline.config import TRAIN_FLAGS, Config, check_name, parse_stage
from pipeline.errors import PipelineError, TrainingDiverged, main_guard
from pipeline.experiment import RECIPE
from pipeline.learners import learner_for

FLAGS = [f for f in TRAIN_FLAGS if f not in ("exp", "resume", "overwrite", "report", "oof_tta")] + ["trials"]


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
        return train.run(cell, on_epoch=report).score

    task = trainer.data_description(cfg, data.resolve(cfg.data)).task
    metric = task.metric
    study = optuna.create_study(direction="maximize" if task.higher_is_better else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=cfg.seed), pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
    study.optimize(objective, n_trials=cfg.trials, catch=(TrainingDiverged,))  # a diverged trial is a failed one
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        raise PipelineError(f"tune: none of the {cfg.trials} trials completed (all pruned or diverged); "
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


def main(argv=None) -> int:
    extra = {"name": {"default": "study", "help": "study folder under weights/tunes/"}}
    return main_guard(lambda a: run(*parse_stage(a, "tune", FLAGS, __doc__, {"fold": "0", "epochs": 10}, extra)), argv)


if __name__ == "__main__":
    sys.exit(main())
