"""The code as Kaggle needs it offline: the pipeline wheel and the wheels of its dependencies the Kaggle image lacks
(export's code dataset for inference notebooks, remote's for training kernels)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pipeline
from pipeline.errors import PipelineError

# The one list of what the Kaggle GPU image already has (import names as pip knows them); every other
# dependency of the pipeline is shipped as a wheel in the code dataset.
KAGGLE_IMAGE = {"torch", "torchvision", "timm", "scikit-learn", "pandas", "numpy", "albumentations", "kaggle", "six", "lightgbm",
                "tqdm", "matplotlib", "pyyaml", "pillow"}

def shipped_requirements() -> list[str]:
    """The pipeline's dependencies (pyproject.toml) the Kaggle image lacks, as requirement strings."""
    import tomllib

    project = tomllib.loads((repo_root() / "pyproject.toml").read_text())["project"]
    return [r for r in project["dependencies"] if requirement_name(r) not in KAGGLE_IMAGE]


def requirement_name(requirement: str) -> str:
    """'ttach>=0.0.3  # comment' -> 'ttach' (normalised as pip does: lower case, - for _ and .).

    >>> requirement_name("Iterative_Stratification>=0.1.7")
    'iterative-stratification'
    """
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9_.-]+)", requirement).group(1)).lower()


def repo_root() -> Path:
    root = Path(pipeline.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise PipelineError(f"export: builds the code from a source checkout (pyproject.toml beside pipeline/); "
                            f"{root} has none. Run it from the cloned repository (pip install -e .)")
    return root


def pip(*args: str, what: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise PipelineError(f"export: {what} failed (pip: {last[0][:160]}); pip needs the package index once to "
                            "fetch the wheels")


def sources() -> dict[str, Path]:
    """What the pipeline wheel is built from (pyproject.toml also decides which wheels are shipped): name -> file."""
    root = repo_root()
    files = {name: root / name for name in ("pyproject.toml", "README.md")}
    for path in sorted((root / "pipeline").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            files[str(path.relative_to(root))] = path
    return files


def content_hash(files: dict[str, Path]) -> str:
    """sha256 over the names and bytes of `files` (name -> local path), in name order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    return digest.hexdigest()


def code_dataset(out: Path, dataset_id: str) -> list[str]:
    """The pipeline wheel and the wheels of its dependencies the Kaggle image lacks, requirements.txt pinning them,
    code.json (the sources' hash), dataset-metadata.json. Built once per version of the sources (pip wheel, pip
    download) into a cache under the temporary folder, then copied."""
    digest = content_hash(sources())
    cache = Path(tempfile.gettempdir()) / f"pipeline-code-{os.getuid()}" / digest
    if not (cache / "code.json").is_file():
        _build(cache.with_name(f"{digest}.{os.getpid()}.tmp"), cache, digest)
    for path in sorted(cache.iterdir(), key=lambda p: p.name == "code.json"):  # code.json last: the copy is whole
        shutil.copy2(path, out / path.name)
    metadata = {"title": dataset_id.split("/")[1][:50], "id": dataset_id, "licenses": [{"name": "CC0-1.0"}],
                "subtitle": "pipeline code and the wheels Kaggle lacks"}
    (out / "dataset-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return (out / "requirements.txt").read_text().split()


def _build(tmp: Path, cache: Path, digest: str) -> None:
    """Build into `tmp`, then rename it to `cache` (a kill or a second process never leaves half a cache)."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    root = repo_root()
    with tempfile.TemporaryDirectory() as src:  # built from a clean copy: no build/ left in the checkout
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, Path(src) / name)
        shutil.copytree(root / "pipeline", Path(src) / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
        pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp), src, what="building the pipeline wheel")
    wanted = shipped_requirements()
    if wanted:
        pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", str(tmp), *wanted,
            what=f"downloading the wheels of {', '.join(requirement_name(r) for r in wanted)}")
    pins = []
    for wheel in sorted(tmp.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        pins.append(f"{requirement_name(name)}=={version}")
    (tmp / "requirements.txt").write_text("\n".join(pins) + "\n")
    (tmp / "code.json").write_text(json.dumps({"hash": digest, "requirements": pins}) + "\n")
    try:
        tmp.rename(cache)
    except OSError:  # another process finished the same build first: theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)
