"""What `python -m pipeline.remote` pushes, built under --remote-dir (git-ignored) and each reused by content hash:

  <remote-dir>/code/          the code dataset USER/pipeline-code: the pipeline wheel, the wheels Kaggle lacks, code.json
  <remote-dir>/<slug>/run/    the run dataset USER/<slug>-run: train.json, folds.csv, folds.json, shipped files, run.json
  <remote-dir>/<slug>/kernel/ kaggle_train.py (its settings written in) and kernel-metadata.json
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from pipeline import wheels
from pipeline.config import DEFAULT_DATA, TRAIN_FLAGS, Config, to_dict, without_local_paths
from pipeline.data import SAMPLES
from pipeline.errors import PipelineError
from pipeline.folds import description_path
from pipeline.io import write_json

SCRIPT = Path(__file__).with_name("kaggle_train.py")
SETTINGS = ("# settings: written by `python -m pipeline.remote`", "# end of settings")
MACHINES = {"T4x2": "NvidiaTeslaT4", "P100": "NvidiaTeslaP100"}  # kernel-metadata.json's machine_shape
SHIPPED = ("gbm_params", "pretrained_path", "aug")  # flags naming a local file the kernel needs: copied into the run
# train flags the kernel sets itself: no tracker or report there, a fresh folder, its own devices (--gpus 0,1 on two GPUs)
# What each folder under --remote-dir holds; one holding anything else is not removed (a --remote-dir of other files)
CODE_FILES = re.compile(r"[\w.+-]+\.whl|requirements\.txt|code\.json|dataset-metadata\.json")
RUN_FILES = re.compile(r"train\.json|run\.json|folds\.csv|folds\.json|dataset-metadata\.json|(gbm_params|pretrained_path|aug)(\.\w+)?")
KERNEL_FILES = re.compile(r"kaggle_train\.py|kernel-metadata\.json")
NOT_REMOTE = {"track": "", "track_uri": "", "report": False, "resume": False, "overwrite": False, "device": "auto",
              "gpus": ""}


def clear(folder: Path, ours: re.Pattern) -> None:
    """An empty `folder`: made, or emptied when it holds only files of the kind this stage writes there."""
    if folder.exists() or folder.is_symlink():
        foreign = [p.name for p in folder.iterdir() if not (p.is_file() and ours.fullmatch(p.name))] \
            if folder.is_dir() and not folder.is_symlink() else [folder.name]
        if foreign:
            raise PipelineError(f"{folder}: holds {foreign[0]}, which pipeline.remote did not write there; choose "
                                "another --remote-dir")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def code_dataset(folder: Path, dataset_id: str) -> tuple[str, bool]:
    """(the code's hash, whether the folder was made now): remade only when the sources changed."""
    digest = wheels.content_hash(wheels.sources())
    if _hash_in(folder / "code.json") == digest and (folder / "requirements.txt").is_file():
        return digest, False
    clear(folder, CODE_FILES)
    wheels.code_dataset(folder, dataset_id)
    return digest, True


def _hash_in(record: Path) -> str | None:
    try:
        return json.loads(record.read_text())["hash"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def kernel_data(data: str) -> str:
    """The kernel's --data: a bundled sample by its name ('' = the competition's data attached to the kernel)."""
    if data in SAMPLES:
        return data
    path = Path(data)
    if data.rstrip("/") == DEFAULT_DATA and not path.exists() and not path.with_suffix(".zip").is_file():
        return "sample"  # what train falls back to here
    return ""


def train_values(cfg: Config) -> dict:
    """train.json: the train flags of this run as the kernel passes them (--config), paths set there."""
    here = ("weights_dir", "cache_dir")  # where this machine keeps them; the kernel sets its own
    values = {k: v for k, v in to_dict(cfg).items() if k in TRAIN_FLAGS and k not in here} | NOT_REMOTE
    return without_local_paths(values) | {"exp": [cfg.exp_name]}  # no /home/me/... leaves this machine


def shipped_files(cfg: Config) -> dict[str, Path]:
    """Each flag naming a local file (--gbm-params, --pretrained-path, an --aug file) -> that file, checked here."""
    files = {}
    for field in SHIPPED:
        value = getattr(cfg, field)
        if field == "aug" and not re.search(r"\.(json|ya?ml)$", value, re.I):
            continue  # a preset's name, not a file
        if value:
            if not Path(value).is_file():
                raise PipelineError(f"--{field.replace('_', '-')}: {value} not found; the kernel needs the file")
            files[field] = Path(value)
    return files


def run_dataset(folder: Path, dataset_id: str, cfg: Config) -> tuple[str, dict[str, str]]:
    """(its hash, Config field -> shipped file name): train.json, the folds file and its description, shipped files."""
    folds = Path(cfg.folds_path)
    if not folds.is_file() or not description_path(folds).is_file():
        raise PipelineError(f"--folds-path: {folds} (and {description_path(folds).name}) not found; make the folds "
                            f"first (python -m pipeline.make_folds --data {cfg.data}): the kernel trains on the same folds")
    clear(folder, RUN_FILES)
    shipped = {field: f"{field}{path.suffix}" for field, path in shipped_files(cfg).items()}
    for field, name in shipped.items():
        shutil.copy2(getattr(cfg, field), folder / name)
    shutil.copy2(folds, folder / "folds.csv")
    shutil.copy2(description_path(folds), folder / "folds.json")
    write_json(train_values(cfg), folder / "train.json")
    files = {p.name: p for p in folder.iterdir()}
    digest = wheels.content_hash(files)
    write_json({"hash": digest}, folder / "run.json")
    _metadata(folder, dataset_id, "pipeline run: train.json and the folds")
    return digest, shipped


def _metadata(folder: Path, dataset_id: str, subtitle: str) -> None:
    metadata = {"title": dataset_id.split("/")[1][:50], "id": dataset_id, "licenses": [{"name": "CC0-1.0"}],
                "subtitle": subtitle}
    (folder / "dataset-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")


def script(settings: dict) -> str:
    """kaggle_train.py with its settings block written (each name = its value, as Python literals)."""
    text = SCRIPT.read_text()
    start, end = text.index(SETTINGS[0]), text.index(SETTINGS[1])
    lines = [SETTINGS[0], *(f"{name} = {value!r}" for name, value in settings.items())]
    return text[:start] + "\n".join(lines) + "\n" + text[end:]


def kernel_folder(folder: Path, kernel_id: str, settings: dict, sources: dict, cfg: Config) -> dict:
    """kaggle_train.py and kernel-metadata.json (returned): a private GPU script kernel with its inputs."""
    clear(folder, KERNEL_FILES)
    (folder / "kaggle_train.py").write_text(script(settings))
    metadata = {"id": kernel_id, "title": kernel_id.split("/")[1], "code_file": "kaggle_train.py",
                "language": "python", "kernel_type": "script", "is_private": True, "enable_gpu": True,
                "enable_internet": cfg.pretrained,  # --pretrained downloads timm's weights from the hub
                "machine_shape": MACHINES[cfg.accelerator], **sources, "model_sources": []}
    (folder / "kernel-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata
