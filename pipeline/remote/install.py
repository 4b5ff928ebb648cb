"""A kernel version's downloaded outputs, checked, then installed as weights/<exp>/ the way a local run writes it."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd

from pipeline import experiment
from pipeline.config import TRAIN_FLAGS, Config, ExperimentConfig, to_dict
from pipeline.errors import PipelineError
from pipeline.experiment import ARTIFACTS, RECIPE
from pipeline.folds import folds_groups, read_description
from pipeline.io import file_hash, read_json, write_csv, write_json
from pipeline.predict import model_suffix
from pipeline.remote.build import SHIPPED
from pipeline.remote.kaggle_train import sha256  # the kernel's own, so both sides hash alike
from pipeline.inputs.spec import DataSpec

TABLES = {"oof.csv": ["id"], "oof_tta.csv": ["id"], "metrics.csv": ["fold", "epoch"],  # rows kept per fold, sorted by
          "schedule.csv": ["fold", "epoch", "step"], "selection.csv": ["fold"]}          # these as train writes them
PER_FOLD = re.compile(r"fold(\d+)\..+|oof(?:_tta)?\.fold(\d+)\.npz")


def manifest(out: Path, run_hash: str) -> dict:
    """remote.json of the outputs: written by the kernel that ran this push, its files all downloaded intact."""
    path = out / "remote.json"
    if not path.is_file():
        raise PipelineError(f"{path}: missing; the kernel did not reach its end (see its log above)")
    found = read_json(path, "kernel manifest")
    files = found.get("files")
    if not isinstance(files, dict) or not all(isinstance(d, str) and re.fullmatch(r"[0-9a-f]{64}", d)
                                              for d in files.values()):
        raise PipelineError(f"{path}: damaged (files must map each output to its sha256); download again with --attach")
    if found.get("run_hash") != run_hash:
        raise PipelineError(f"{path}: written for run {str(found.get('run_hash'))[:12]}, this push is {run_hash[:12]}; "
                            "these outputs are not of the pushed config")
    for rel, digest in found["files"].items():
        file = out / rel
        if not file.is_file():
            raise PipelineError(f"{file}: listed by the kernel (remote.json) but not among the downloaded outputs; "
                                "download again with --attach")
        if sha256(file) != digest:
            raise PipelineError(f"{file}: sha256 differs from the kernel's ({digest[:12]}); the download is damaged, "
                                "download again with --attach")
    return found


def check_config(exp_src: Path, pushed: dict, folds_path: str, shipped: dict) -> dict:
    """The kernel's config.json: every recipe field as pushed (an auto batch size as resolved there), the local folds;
    returned with `shipped` (the fields naming a file shipped in the run dataset, whose hash it checked) as here."""
    config = read_json(exp_src / "config.json", "experiment config")
    differ = [f for f in RECIPE if f in pushed and f not in shipped and config.get(f) != pushed[f]
              and not (f == "batch_size" and pushed[f] == 0)]
    if differ:
        f = differ[0]
        raise PipelineError(f"{exp_src / 'config.json'}: {f}={config.get(f)!r}, the push had {pushed[f]!r}; the "
                            "kernel did not train the config pushed, nothing installed")
    local = file_hash(Path(folds_path).read_bytes())
    if config.get("folds_hash") != local:
        raise PipelineError(f"{exp_src / 'config.json'}: trained on folds {config.get('folds_hash')}, {folds_path} is "
                            f"{local}; the local folds file changed since the push, nothing installed")
    return config | shipped


def finished(exp_src: Path, config: dict, files: dict, folds: list[int]) -> list[int]:
    """The folds asked for that the kernel finished (OOF rows and the fold's model among its listed files)."""
    suffix = model_suffix(ExperimentConfig.from_dict(config, str(exp_src / "config.json")))
    done = set(experiment.done_folds(exp_src))
    prefix = str(exp_src.relative_to(exp_src.parent.parent))
    return [k for k in folds if k in done and f"{prefix}/fold{k}{suffix}" in files]


def check_local(dst: Path, pushed: dict, folds: list[int], n_splits: int, overwrite: bool, folds_path: str) -> None:
    """Before anything is uploaded: the kernel's folds can join weights/<exp>/ (none of them there already unless
    --overwrite; the other folds there of the recipe and folds file pushed, unless --overwrite replaces them all)."""
    if clash := clashes(dst, folds):
        if not overwrite:
            raise PipelineError(f"{dst}: fold(s) {', '.join(map(str, clash))} trained (or begun) here already; add "
                                "--overwrite to replace them with the kernel's, or use another --exp; nothing was uploaded")
    if (overwrite and len(folds) == n_splits) or not (dst / "config.json").is_file() or not experiment.done_folds(dst):
        return
    local = read_json(dst / "config.json", "experiment config")
    differ = [f for f in RECIPE if f in pushed and f not in SHIPPED and local.get(f, pushed[f]) != pushed[f]
              and not (f == "batch_size" and pushed[f] == 0)]
    if not differ and local.get("folds_hash") not in (None, file_hash(Path(folds_path).read_bytes())):
        differ = ["folds_hash"]
    if differ:
        f = differ[0]
        raise PipelineError(f"{dst}: its folds were trained with {f}={local.get(f)!r}, the kernel would train with "
                            f"{pushed.get(f, 'the folds file ' + folds_path)!r}; one experiment holds one recipe and "
                            "one folds file: use the same flags, --overwrite --fold all, or another --exp; nothing was "
                            "uploaded")


def install(exp_src: Path, config: dict, files: list[str], folds: list[int], cfg: Config, overwrite: bool) -> Path:
    """Copy the kernel's folds into weights/<exp>/ under its lock: the whole folder when it holds no other folds (or
    --overwrite replaces them all), else fold by fold beside the local ones (same recipe and folds, a fold trained
    both places only with --overwrite), the CV then computed over every fold there. config.json and cv.json are
    written last: a kill on the way leaves no experiment that looks finished."""
    dst = experiment.experiment_dir(cfg.weights_dir, cfg.exp_name)
    dst.mkdir(parents=True, exist_ok=True)
    theirs = ExperimentConfig.from_dict(config, str(exp_src / "config.json"))
    with experiment.locked(dst):
        others = (set(experiment.done_folds(dst)) | begun(dst)) - set(folds)  # a local fold's work is never removed
        whole = not others or (overwrite and len(folds) == theirs.n_splits)
        local = read_json(dst / "config.json", "experiment config") if (dst / "config.json").is_file() else None
        if not whole and local is not None and (changed := experiment.changed_fields(local, theirs)):
            raise PipelineError(f"{dst}: trained here with {changed[0]}={local.get(changed[0])!r}, the kernel with "
                                f"{config.get(changed[0])!r}; one experiment holds one recipe: use another --exp")
        clash = clashes(dst, folds)
        if clash and not overwrite:
            raise PipelineError(f"{dst}: fold(s) {', '.join(map(str, clash))} trained (or begun) here too; add "
                                "--overwrite to replace them with the kernel's, or use another --exp")
        names = [n for n in (Path(f).name for f in files) if ARTIFACTS.fullmatch(n)
                 and not ((m := PER_FOLD.fullmatch(n)) and int(m.group(1) or m.group(2)) not in folds)]
        if whole:
            experiment.remove_artifacts(dst)
            for name in sorted(names, key=lambda n: (n == "config.json", n == "cv.json")):
                _copy(exp_src / name, dst / name, config, cfg)
        else:
            _merge(exp_src, dst, names, folds, cfg)
    return dst


def begun(dst: Path) -> set[int]:
    """The folds weights/<exp>/ holds a file of (a model, an epoch snapshot, preprocessing, OOF rows of its own)."""
    if not dst.is_dir():
        return set()
    return {int(m.group(1) or m.group(2)) for p in dst.iterdir()
            if ARTIFACTS.fullmatch(p.name) and (m := PER_FOLD.fullmatch(p.name))}


def clashes(dst: Path, folds: list[int]) -> list[int]:
    """The folds of `folds` that weights/<exp>/ holds already, finished or begun."""
    return sorted((begun(dst) | set(experiment.done_folds(dst) if dst.is_dir() else [])) & set(folds))


def _copy(src: Path, dst: Path, config: dict, cfg: Config) -> None:
    """One file; config.json with this machine's paths and settings (the recipe and data fields as trained)."""
    if src.name == "config.json":
        keep = set(RECIPE) | set(ExperimentConfig.IDENTITY)
        write_json(config | {k: v for k, v in to_dict(cfg).items() if k in TRAIN_FLAGS and k not in keep}, dst)
    else:
        tmp = dst.with_name(f".{dst.name}.remote.tmp")
        shutil.copy2(src, tmp)
        tmp.replace(dst)


def _merge(src: Path, dst: Path, names: list[str], folds: list[int], cfg: Config) -> None:
    """The kernel's folds beside the local ones: their files, their rows of each table, then the CV of them all."""
    for k in folds:
        experiment.forget_fold(dst, k)
    for name in names:
        m = PER_FOLD.fullmatch(name)
        if m and int(m.group(1) or m.group(2)) in folds:
            _copy(src / name, dst / name, {}, cfg)
    for name, keys in TABLES.items():
        theirs = experiment.read_table(src / name) if name in names else None
        if theirs is None:
            continue
        ours = experiment.read_table(dst / name)
        rows = pd.concat([t for t in (ours, theirs[theirs["fold"].isin(folds)]) if t is not None], ignore_index=True)
        write_csv(rows.sort_values(keys, kind="stable").reset_index(drop=True), dst / name)
    config = read_json(dst / "config.json", "experiment config")
    spec = DataSpec.from_config(ExperimentConfig.from_dict(config, str(dst / "config.json")), str(dst))
    seconds = sum(_seconds(p / "cv.json") for p in (src, dst))
    experiment.write_cv(dst, int(config["n_splits"]), seconds, spec.task,
                        folds_groups(cfg.folds_path, config.get("folds_hash", ""), len(pd.read_csv(cfg.folds_path))),
                        read_description(cfg.folds_path, cfg.data).get("test_rows"))


def _seconds(path: Path) -> float:
    try:
        return float(read_json(path, "cv").get("train_seconds") or 0)
    except (PipelineError, ValueError, TypeError):
        return 0.0
