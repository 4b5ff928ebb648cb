"""Code competitions: the trained experiments and the code as two Kaggle datasets, and the inference notebook.

    python -m pipeline.export --exp digit_cnn --tta --competition digit-recognizer            # build, check
    python -m pipeline.export --exp a b --ensemble learned --tta --dataset alice/cassava-r50 --push

Builds under --export-dir (git-ignored), for the weights dataset USER/SLUG:
  SLUG/export.json what the folder holds (experiments, settings, dataset id); an export of others is never replaced
  SLUG/weights/    <exp>/fold<k>.pth, config.json, cv.json, oof.csv (or oof.fold<k>.npz); the blend file; dataset-metadata.json
  SLUG/code/       the pipeline wheel, the wheels the Kaggle image lacks, requirements.txt; dataset-metadata.json
  SLUG/kernel/     inference.ipynb (notebooks/kaggle_inference.ipynb, the settings written in); kernel-metadata.json
  SLUG/check/      local.csv (infer) and exported.csv (the notebook's command), both on a copy of SLUG/weights/
Refuses experiments with missing folds or named twice; the two check files must be identical before anything is
pushed. Nothing is written under --weights-dir. The default SLUG is the experiments' names and -weights
(r50-effb3-weights), with a hash of the exact names where lower-casing or shortening them loses anything
(E2 -> e2-713a5bb2-weights), so that two sources never share a folder or a Kaggle dataset.
--push creates the datasets (or adds a version) and pushes the notebook through the kaggle client, then prints
its address and the command that submits it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


import pipeline
from pipeline import infer, predict
from pipeline.io import write_json
from pipeline.kaggle_client import default_slug, exists, kaggle_username, upload_dataset  # noqa: F401 - export's names
from pipeline.wheels import KAGGLE_IMAGE, code_dataset, repo_root, requirement_name, shipped_requirements  # noqa: F401
from pipeline.config import PATH_FIELDS, Config, flag, make_config, parse_stage, without_local_paths  # noqa: F401
from pipeline.errors import PipelineError, main_guard
from pipeline.experiment import ARTIFACTS, experiment_dir, oof_parts

FLAGS = ["exp", "weights_dir", "data", "ensemble", "tta", "tta_preset", "with_full", "precision", "competition",
         "dataset", "push", "export_dir", "message", "device", "cache_dir"]

MANIFEST = "export.json"  # what an export folder holds; only a folder holding the same experiments is replaced
LEGACY_MARKER = ".pipeline-export"  # what exports made before the manifest hold instead
NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "kaggle_inference.ipynb"
SETTINGS_CELL = "# settings: written by `python -m pipeline.export`"


def names(cfg: Config) -> tuple[str, str, str]:
    """(user, slug, competition): the weights dataset USER/SLUG, from --dataset or the kaggle username and the
    experiments' names."""
    if cfg.dataset:
        user, slug = cfg.dataset.split("/")
        return user, slug, cfg.competition
    return kaggle_username(), default_slug(cfg.exp), cfg.competition


def check_distinct(exps: tuple[str, ...]) -> None:
    """A blend of an experiment with itself would weigh it twice and ship one folder for two names."""
    twice = next((e for i, e in enumerate(exps) if e in exps[:i]), None)
    if twice:
        raise PipelineError(f"{flag('exp')}: {twice} is named twice; a blend takes each experiment once")


PARTS = ("weights", "code", "kernel", "check")  # the folders an export writes, and replaces the next time


def fresh_folder(path: Path, manifest: dict) -> Path:
    """The export folder with its parts gone and `manifest` in it: created, or cleared of what an earlier export of
    the same experiments wrote; nothing else in it is touched. An empty folder (a kill -9 right after creating it)
    is taken as new; one holding other experiments, or not made by the export, is refused."""
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        held = held_experiments(path)
        if sorted(held) != sorted(manifest["experiments"]):
            raise PipelineError(f"{path}: holds the export of {', '.join(held)} ({MANIFEST}), not of "
                                f"{', '.join(manifest['experiments'])}; choose another --dataset or --export-dir")
        for part in PARTS:
            if (path / part).is_symlink():
                (path / part).unlink()
            elif (path / part).is_dir():
                shutil.rmtree(path / part)
    path.mkdir(parents=True, exist_ok=True)
    write_json(manifest, path / MANIFEST)  # atomic: the folder always says what it holds, old or new
    (path / LEGACY_MARKER).unlink(missing_ok=True)
    return path


def held_experiments(path: Path) -> list[str]:
    """The experiments an existing export folder holds, from its manifest; any other folder is refused."""
    file = path / MANIFEST
    again = "choose another --dataset or --export-dir"
    if not path.is_dir() or file.is_symlink() or not file.is_file():
        if (path / LEGACY_MARKER).is_file():
            raise PipelineError(f"{path}: made by an earlier pipeline.export that did not record its experiments "
                                f"(no {MANIFEST}); remove it (rm -r {path}) or {again}")
        raise PipelineError(f"{path}: exists and was not made by pipeline.export (no {MANIFEST}); {again}")
    try:
        held = json.loads(file.read_text())["experiments"]
    except (ValueError, KeyError, TypeError, OSError):
        held = None
    if not isinstance(held, list) or not held or not all(isinstance(e, str) for e in held):
        raise PipelineError(f"{file}: expected a JSON object whose experiments is a list of names; remove {path} "
                            f"or {again}")
    return held


def manifest(cfg: Config, dataset_id: str) -> dict:
    """What an export folder holds, written into it first: its experiments, the settings and the dataset id."""
    return {"experiments": list(cfg.exp), "dataset": dataset_id, "competition": cfg.competition,
            **{k: v for k, v in settings(cfg).items() if k != "exp"},
            "weights_dir": cfg.weights_dir, "pipeline": pipeline.__version__}


def experiment_files(cfg: Config) -> dict[str, list[Path]]:
    """Every file each experiment exports, after checking it is finished: all folds trained, none in progress
    (a fold<k>.last.pth), OOF rows for every fold, full.pth with --with-full. Nothing is built before this."""
    files = {}
    for e in cfg.exp:
        src = experiment_dir(cfg.weights_dir, e)
        checkpoints = predict.fold_checkpoints(src)  # refuses an experiment with missing or unfinished folds
        busy = sorted(p.name for p in src.glob("fold*.last.pth"))
        resume = f"finish it with: python -m pipeline.train --exp {e} --fold all --resume"
        if busy:
            raise PipelineError(f"{src}: {', '.join(busy)} left by an unfinished training; {resume}")
        extra = [src / "full.pth"] if cfg.with_full else []
        preps = sorted(src.glob("fold*.prep.json")) + sorted(src.glob("full.prep.json") if cfg.with_full else [])
        seeds = sorted(p for p in src.glob("fold*.s[0-9]*") if ARTIFACTS.fullmatch(p.name))  # --seeds' other models
        files[e] = [*checkpoints, *seeds, *extra, *preps, src / "config.json", src / "cv.json",
                   *(oof_parts(src).values() or [src / "oof.csv"])]
        for path in files[e]:
            if not path.is_file():
                raise PipelineError(f"{path}: missing; the export needs it "
                                    + ("(train it with --fold full)" if path.name == "full.pth" else f"({resume})"))
    return files


def weights_dataset(cfg: Config, files: dict[str, list[Path]], out: Path, dataset_id: str) -> list[Path]:
    """Each experiment's checked files and the blend file, copied; dataset-metadata.json."""
    copied = []
    for e, paths in files.items():
        (out / e).mkdir()
        for path in paths:
            if path.name == "config.json":  # the local paths in it (/home/me/...) stay here
                write_json(without_local_paths(json.loads(path.read_text(encoding="utf-8"))), out / e / path.name)
            else:
                shutil.copy2(path, out / e / path.name)
            copied.append(out / e / path.name)
    files = copied
    if len(cfg.exp) > 1:
        blend = f"blend_{'+'.join(cfg.exp)}.json"
        source = Path(cfg.weights_dir) / blend
        if source.is_file():
            shutil.copy2(source, out / blend)
    metadata = {"title": dataset_id.split("/")[1][:50], "id": dataset_id, "licenses": [{"name": "CC0-1.0"}],
                "subtitle": f"pipeline weights: {', '.join(cfg.exp)}"[:80].ljust(20, "."),
                "description": "Fold checkpoints, config.json, cv.json and oof.csv written by pipeline.train."}
    (out / "dataset-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return copied


def settings(cfg: Config) -> dict:
    """The infer settings the notebook runs with: exactly what the local check ran."""
    return {"exp": list(cfg.exp), "tta": cfg.tta, "tta_preset": cfg.tta_preset, "ensemble": cfg.ensemble,
            "with_full": cfg.with_full, "precision": cfg.precision}


def write_notebook(path: Path, competition_dir: str, code_dir: str, weights_dir: str, values: dict) -> None:
    """notebooks/kaggle_inference.ipynb with its settings cell written for this export; outputs stay empty."""
    nb = json.loads(NOTEBOOK.read_text())
    cell = next((c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).startswith(SETTINGS_CELL)),
                None)
    if cell is None:
        raise PipelineError(f"{NOTEBOOK}: no cell starting with {SETTINGS_CELL!r} to write the settings into")
    text = "\n".join([SETTINGS_CELL, f"COMPETITION = {competition_dir!r}", f"CODE = {code_dir!r}",
                      f"WEIGHTS = {weights_dir!r}", f"VERSION = {pipeline.__version__!r}",
                      f"SETTINGS = {values!r}",
                      'OUT = "/kaggle/working/submission.csv"'])
    cell["source"] = text.splitlines(keepends=True)
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
    path.write_text(json.dumps(nb, indent=1) + "\n")


def kernel_folder(out: Path, kernel_id: str, competition: str, sources: list[str], values: dict) -> None:
    user_slugs = [s.split("/")[1] for s in sources]
    write_notebook(out / "inference.ipynb", f"/kaggle/input/{competition}", f"/kaggle/input/{user_slugs[1]}",
                   f"/kaggle/input/{user_slugs[0]}", values)
    slug = kernel_id.split("/")[1]
    metadata = {"id": kernel_id, "title": slug, "code_file": "inference.ipynb", "language": "python",
                "kernel_type": "notebook", "is_private": True, "enable_gpu": True, "enable_internet": False,
                "dataset_sources": sources, "competition_sources": [competition], "kernel_sources": [],
                "model_sources": []}
    (out / "kernel-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")


def check(cfg: Config, root: Path) -> None:
    """The written notebook's own cells, run here on the local competition data with its paths pointed at the
    export, must write the file `infer` writes with the same settings.

    Both run on check/weights, a copy of the weights dataset: infer writes test_probs and the blend file beside
    the weights it reads, and neither --weights-dir nor the dataset may change (a kill -9 there would leave them
    half-done)."""
    out = root / "check"
    weights = shutil.copytree(root / "weights", out / "weights")
    try:
        local = out / "local.csv"
        infer.run(make_config({"data": cfg.data, "device": cfg.device, "cache_dir": cfg.cache_dir,
                               "weights_dir": str(weights), "out": str(local), **settings(cfg)}))
        nb = json.loads((root / "kernel" / "inference.ipynb").read_text())
        cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
        paths = {"COMPETITION": cfg.data, "CODE": str((root / "code").resolve()), "WEIGHTS": str(weights.resolve()),
                 "OUT": str((out / "exported.csv").resolve())}
        cells[0] = local_settings(cells[0], cfg, paths)
        (out / "notebook.py").write_text("\n\n".join(cells) + "\n")
        done = subprocess.run([sys.executable, str(out / "notebook.py")], capture_output=True, text=True)
    finally:
        shutil.rmtree(weights, ignore_errors=True)  # a copy: the next export replaces check/ anyway
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"export: the exported notebook fails when run on {cfg.data} ({last[:200]}); nothing pushed")
    if local.read_bytes() != (out / "exported.csv").read_bytes():
        raise PipelineError(f"export: the exported notebook predicts differently from infer on the local weights "
                            f"({out / 'exported.csv'} vs {local}); nothing pushed")


def local_settings(cell: str, cfg: Config, paths: dict) -> str:
    """The notebook's settings cell with its /kaggle paths replaced by `paths` (COMPETITION, CODE, WEIGHTS, OUT)."""
    lines = [f"{line.split(' = ')[0]} = {paths[line.split(' = ')[0]]!r}" if line.split(" = ")[0] in paths else line
             for line in cell.splitlines()]
    return "\n".join(lines + [f"SETTINGS = dict(SETTINGS, device={cfg.device!r}, cache_dir={cfg.cache_dir!r})"])


def run(cfg: Config) -> Path:
    if not cfg.exp:
        raise PipelineError(f"{flag('exp')}: name the experiment(s) to export, e.g. --exp digit_cnn")
    check_distinct(cfg.exp)
    if cfg.ensemble == "rank" or len(cfg.exp) > 1:
        predict.read_oofs(Path(cfg.weights_dir), cfg.exp)  # a blend of different folds files is refused at once
    if not cfg.competition:
        raise PipelineError("--competition: the competition's slug, as in its address (kaggle.com/competitions/SLUG), "
                            "e.g. --competition cassava-leaf-disease-classification")
    files = experiment_files(cfg)  # unfinished experiments: refused before anything is built or replaced
    user, slug, competition = names(cfg)
    ids = {"weights": f"{user}/{slug}", "code": f"{user}/{slug}-code", "kernel": f"{user}/{slug}-inference"}
    api = push_api(ids) if cfg.push else None  # no credentials or no username: said before the build
    root = fresh_folder(Path(cfg.export_dir) / slug, manifest(cfg, ids["weights"]))
    print(f"export {', '.join(cfg.exp)} -> {root}/ (datasets {ids['weights']}, {ids['code']}; notebook {ids['kernel']})")
    (root / "weights").mkdir()
    files = weights_dataset(cfg, files, root / "weights", ids["weights"])
    print(f"weights: {len(files)} files, {sum(f.stat().st_size for f in files) / 2**20:,.1f} MiB")
    (root / "code").mkdir()
    pins = code_dataset(root / "code", ids["code"])
    print(f"code: {', '.join(pins)}")
    (root / "kernel").mkdir()
    kernel_folder(root / "kernel", ids["kernel"], competition, [ids["weights"], ids["code"]], settings(cfg))
    (root / "check").mkdir()
    check(cfg, root)
    print(f"check: the exported notebook, run here on {cfg.data}, writes exactly what infer writes from the local "
          f"weights ({root / 'check' / 'exported.csv'}); on Kaggle, precision {cfg.precision} "
          + ("is fp16 on a T4 or P100: the probabilities can differ in the last digits" if cfg.precision == "auto"
             else "is kept"))
    if cfg.push:
        push(api, root, ids, competition, cfg.message or f"pipeline export of {', '.join(cfg.exp)}")
    else:
        print(f"not pushed; upload with --push, or by hand: kaggle datasets create -p {root / 'weights'} --dir-mode zip; "
              f"kaggle datasets create -p {root / 'code'}; kaggle kernels push -p {root / 'kernel'}")
    return root


def push_api(ids: dict):
    """The authenticated kaggle client --push will use; refused in one line before anything is built."""
    from pipeline.kaggle_client import authenticated

    if ids["weights"].startswith("your-kaggle-username/"):
        raise PipelineError("--push: no Kaggle username (set KAGGLE_USERNAME or ~/.kaggle/kaggle.json, or name the "
                            "dataset with --dataset USER/SLUG)")
    return authenticated()


def push(api, root: Path, ids: dict, competition: str, notes: str) -> None:
    """Create each dataset, or add a version when it exists, then push the notebook (the real kaggle client)."""
    from pipeline.kaggle_client import call

    for part in ("weights", "code"):
        upload_dataset(api, root / part, ids[part], competition, notes)
    response = call(f"notebook {ids['kernel']}", competition, api.kernels_push, str(root / "kernel"))
    if getattr(response, "error", None):
        raise PipelineError(f"kaggle: notebook {ids['kernel']}: {response.error}")
    version = getattr(response, "version_number", None) or 0
    url = getattr(response, "url", "") or f"https://www.kaggle.com/code/{ids['kernel']}"
    print(f"kaggle: pushed notebook {ids['kernel']} version {version}: {url}\n"
          f"when it has run, submit it: python -m pipeline.submit --kernel {ids['kernel']} --version {version} "
          f"--competition {competition} -m \"...\"")


def main(argv=None) -> int:
    return main_guard(lambda a: run(parse_stage(a, "export", FLAGS, __doc__, {"competition": ""})[0]), argv)


if __name__ == "__main__":
    sys.exit(main())
