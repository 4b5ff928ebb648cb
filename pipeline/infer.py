"""Offline inference: k fold models (pretrained=False) averaged, optional TTA, optional blend of experiments.

    python -m pipeline.infer --tta                          # submissions/digit_cnn.csv
    python -m pipeline.infer --exp a b --ensemble learned   # blend two experiments, weights fitted on OOF
    python -m pipeline.infer --exp a b c --ensemble greedy  # Caruana's forward selection on OOF
    python -m pipeline.infer --exp a b c --ensemble stack   # a level-2 model fitted on OOF (--stacker, --stack-features)
    python -m pipeline.infer --data /kaggle/input/digit-recognizer --weights-dir /kaggle/input/my-weights
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import data
from pipeline.io import write_csv, write_json
from pipeline.config import Config, parse_config
from pipeline.device import on_device, resolve_device
from pipeline.errors import PipelineError, main_guard
from pipeline.experiment import experiment_dir
from pipeline.inputs import input_kind
from pipeline.predict import default_experiment, experiment_data, fit_ensemble, predict_experiment, stack_features

FLAGS = ["data", "exp", "weights_dir", "tta", "tta_preset", "ensemble", "stacker", "stack_features", "out", "device",
         "batch_size", "cache_dir", "precision", "with_full"]


def run(cfg: Config) -> pd.DataFrame:
    exps = cfg.exp or (default_experiment(Path(cfg.weights_dir), cfg.model),)
    if len(set(exps)) < len(exps):
        raise PipelineError(f"--exp: {' '.join(exps)} names an experiment twice; a blend takes each once")
    out = Path(cfg.out or f"submissions/{'+'.join(exps)}{'_' + cfg.ensemble if len(exps) > 1 else ''}.csv")
    check_writable(out, "--out")
    exp_dirs = [experiment_dir(cfg.weights_dir, e) for e in exps]
    desc, spec = experiment_data(exp_dirs[0])
    for d in exp_dirs[1:]:
        if experiment_data(d)[1].task != spec.task:
            raise PipelineError(f"--exp: {d.name} was trained for another task than {exp_dirs[0].name} "
                                f"({experiment_data(d)[1].task.describe()} vs {spec.task.describe()})")
    if len(exps) == 1 and cfg.ensemble != "mean":
        print(f"notice: --ensemble {cfg.ensemble}: one experiment ({exps[0]}) has nothing to blend; "
              "the flag is ignored", file=sys.stderr)
    if cfg.ensemble != "stack" and (cfg.stack_features or cfg.stacker != Config().stacker):
        raise PipelineError(f"--{'stack-features' if cfg.stack_features else 'stacker'}: sets up --ensemble stack; "
                            f"this run blends with --ensemble {cfg.ensemble}")
    src = data.resolve(cfg.data)
    test, sample = data.read_test(src, desc, spec.img_size, cfg.cache_dir)
    features = stack_features(exp_dirs[0], src, desc, test, cfg.cache_dir) if cfg.stack_features else None
    # fitted on OOF before any inference, so a refused blend (other folds files, rank without AUC) costs no inference
    combine = fit_ensemble(Path(cfg.weights_dir), exps, cfg.ensemble, cfg.stacker, features) if len(exps) > 1 else None
    submission_shape = spec.task.submission_mode(sample)  # refuse a sample this task cannot fill, before inference
    check_replaceable(out, sample, src)
    before = previous_settings(out)
    device = resolve_device(cfg.device)
    images = on_device(test, device)  # (N, C, H, W) uint8, on the GPU when it fits
    preset = cfg.tta_preset or desc.tta_preset
    if cfg.tta:
        input_kind(desc.kind).tta_check(preset)  # a kind without TTA refuses it in one line
    test_probs = np.stack([predict_experiment(d, images, cfg, preset, device) for d in exp_dirs])
    final = test_probs[0] if combine is None else combine(test_probs)
    submission = spec.task.submission(final, sample)
    write_csv(submission, out)
    record_settings(out, submission_settings(cfg, exps, preset), before)
    mode, columns = submission_shape
    what = f"P({spec.task.classes[spec.task.positive_class(columns[0])]})" if mode == "positive" else mode
    print(f"wrote {out}: {len(submission):,} rows, {what} in {', '.join(columns[:3])}"
          f"{', ...' if len(columns) > 3 else ''}; {spec.task.prediction_summary(final)}")
    return submission


def check_writable(path: Path, what: str) -> None:
    """Fail before any work when `path` cannot be written: a folder in its place, or an unwritable parent."""
    if path.is_dir():
        raise PipelineError(f"{what}: {path} is a directory; give a file name such as {path / 'submission.csv'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK):
        raise PipelineError(f"{what}: cannot write into {path.parent}/ (permission denied); choose another path")


def check_replaceable(out: Path, sample: pd.DataFrame, src: data.Source) -> None:
    """An existing --out is replaced only when it is an earlier submission (the sample's header), never another file,
    and nothing is written inside the competition's data (its sample_submission.csv has the same header)."""
    where = Path(os.path.realpath(out.parent)) / out.name  # realpath, unlike resolve, never raises on a link loop
    if src.path.is_dir() and where.is_relative_to(os.path.realpath(src.path)):
        raise PipelineError(f"--out: {out} is inside the competition data {src.path}/, which is read-only input; "
                            "write the submission elsewhere (default: submissions/)")
    if not out.is_file():
        return
    try:
        header = [str(c) for c in pd.read_csv(out, nrows=0).columns]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        header = None
    if header != [str(c) for c in sample.columns]:
        raise PipelineError(f"--out: {out} exists and is not a submission of this competition (header "
                            f"{','.join(map(str, sample.columns))}); refusing to replace it: choose another --out")


def settings_path(out: Path) -> Path:
    """Where the settings that made a submission are kept: submissions/a.csv -> submissions/a.csv.json."""
    return out.with_name(f"{out.name}.json")


def submission_settings(cfg: Config, exps: tuple[str, ...], preset: str) -> dict:
    """What decides a submission's predictions, beside the experiments' weights."""
    return {"written_by": "pipeline.infer", "exp": list(exps), "ensemble": cfg.ensemble if len(exps) > 1 else None,
            "tta": preset if cfg.tta else None, "with_full": cfg.with_full,
            "stack": {"stacker": cfg.stacker, "features": cfg.stack_features} if cfg.ensemble == "stack" else None,
            "weights_dir": str(Path(cfg.weights_dir).resolve())}


def previous_settings(out: Path) -> dict | None:
    """The settings recorded beside an existing --out (None: no earlier submission, or one made before they were
    recorded); a file in the record's place that infer did not write is never replaced."""
    path = settings_path(out)
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        saved = None
    if not isinstance(saved, dict) or saved.get("written_by") != "pipeline.infer":
        raise PipelineError(f"--out: {path} exists and is not the settings record infer writes beside {out.name}; "
                            "refusing to replace it: move it or choose another --out")
    return saved if out.is_file() else None


def describe_settings(settings: dict) -> str:
    """'exp a + b, learned blend, TTA digits, with full.pth' (pure)."""
    parts = [f"exp {' + '.join(map(str, settings.get('exp') or ['?']))}"]
    stack = settings.get("stack") if isinstance(settings.get("stack"), dict) else None
    parts += [f"{settings['ensemble']} blend" + (f" ({stack.get('stacker')}{' + the table columns' if stack.get('features') else ''})"
                                                 if stack else "")] if settings.get("ensemble") else []
    parts += [f"TTA {settings['tta']}" if settings.get("tta") else "no TTA"]
    parts += ["with full.pth"] if settings.get("with_full") else []
    return ", ".join(parts)


def record_settings(out: Path, settings: dict, before: dict | None) -> None:
    """Save the settings beside the submission; replacing one made otherwise is said, old vs new."""
    write_json(settings, settings_path(out))
    if before is not None and describe_settings(before) != describe_settings(settings):
        print(f"notice: replaced {out}, made with {describe_settings(before)}, by one made with "
              f"{describe_settings(settings)}", file=sys.stderr)


def main(argv=None) -> int:
    return main_guard(lambda a: run(parse_config(a, "infer", FLAGS, __doc__)), argv)


if __name__ == "__main__":
    sys.exit(main())
