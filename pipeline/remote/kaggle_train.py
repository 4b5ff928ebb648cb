"""Train one experiment of `pipeline` on Kaggle: the script kernel `python -m pipeline.remote` writes and pushes.

It runs on Kaggle's image, offline, with three inputs attached (four when resuming):
  <CODE>         the pipeline wheel and the wheels Kaggle lacks, requirements.txt, code.json (its content hash)
  <RUN>          train.json (the train flags as resolved locally), folds.csv and folds.json, run.json (its hash)
  <COMPETITION>  the competition's data
  <PREVIOUS>     this kernel's previous version, whose outputs hold the epoch snapshots to resume from
and leaves in /kaggle/working (the version's outputs): weights/<EXP>/ as `python -m pipeline.train` writes it, and
remote.json (what ran, how it ended, the sha256 of every file). Training stops after HOURS, before Kaggle ends the
session, so that a version that ran out of time still completes and keeps its snapshots for the next push.
"""
# settings: written by `python -m pipeline.remote`
EXP = "digit_cnn"
CODE = "pipeline-code"
CODE_HASH = ""
RUN = "digit-cnn-run"
RUN_HASH = ""
COMPETITION = "digit-recognizer"
DATA = ""  # a bundled sample's name, or '' for the competition's data
FILES = {}  # Config field -> the file of the run dataset it names (--gbm-params, --pretrained-path, --aug)
PREVIOUS = ""
HOURS = 11.5
# end of settings
import hashlib
import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INPUT = Path(os.environ.get("KAGGLE_INPUT_DIR", "/kaggle/input"))  # a stand-in for Kaggle maps these two
WORKING = Path(os.environ.get("KAGGLE_WORKING_DIR", "/kaggle/working"))


def fail(text: str) -> None:
    print(f"error: {text}", flush=True)
    sys.exit(2)


def mounted(slug: str) -> Path:
    """The folder Kaggle mounted an input in: /kaggle/input/<slug>, or deeper (/kaggle/input/datasets/<user>/<slug>)."""
    if (INPUT / slug).is_dir():
        return INPUT / slug
    for root, dirs, _ in os.walk(INPUT, followlinks=True):
        here = Path(root)
        if here != INPUT and here.name == slug:
            return here
        if len(here.relative_to(INPUT).parts) >= 3:
            dirs[:] = []
    fail(f"input {slug} is not attached under {INPUT}; push the kernel again with python -m pipeline.remote")


def check_hash(folder: Path, name: str, expected: str) -> None:
    """A dataset version Kaggle is still processing mounts as its previous version: refuse it, do not train on it."""
    try:
        found = json.loads((folder / name).read_text())["hash"]
    except (OSError, ValueError, KeyError, TypeError):
        found = None
    if found != expected:
        fail(f"{folder / name}: holds {str(found)[:12]}, the push made {expected[:12]}; Kaggle was still processing the "
             "new dataset version: run the same python -m pipeline.remote command again in a few minutes")


def install(code: Path) -> str:
    """The pipeline and the wheels Kaggle lacks, installed offline into a folder of their own (put first on the path)."""
    target = tempfile.mkdtemp(prefix="pipeline-site-")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target",
                           target, "--find-links", str(code), "-r", str(code / "requirements.txt")])
    return target


def train_config(run: Path, previous: Path | None) -> Path:
    """train.json with this machine's paths: data, folds, weights under /kaggle/working, the shipped files."""
    values = json.loads((run / "train.json").read_text())
    values |= {"data": DATA or str(mounted(COMPETITION)), "folds_path": str(run / "folds.csv"),
               "weights_dir": str(WORKING / "weights"), "cache_dir": tempfile.mkdtemp(prefix="pipeline-cache-"),
               **{field: str(run / name) for field, name in FILES.items()}}
    if previous is not None:
        values["resume"] = True
    import torch  # Kaggle's image has it; two GPUs train folds in parallel, one process each

    folds = values["fold"].split(",") if values["fold"] != "all" else ["all"]
    if torch.cuda.device_count() > 1 and not values.get("gpus") and (len(folds) > 1 or folds == ["all"]):
        values["gpus"] = ",".join(map(str, range(torch.cuda.device_count())))
    path = Path(tempfile.mkdtemp(prefix="pipeline-run-")) / "train.json"
    path.write_text(json.dumps(values, indent=1))
    return path


def train(config: Path, site: str, started: float) -> str:
    """python -m pipeline.train --config <config>, stopped like Ctrl-C (its last finished epoch kept) HOURS after the
    script started; run from a scratch folder (a bundled sample is written there, not among the outputs)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([site, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.train", "--config", str(config)], env=env,
                            cwd=tempfile.mkdtemp(prefix="pipeline-cwd-"),
                            preexec_fn=os.setpgrp)  # its own group: Ctrl-C for it and its fold processes, not for us
    deadline = started + HOURS * 3600
    while proc.poll() is None:
        if time.monotonic() > deadline:
            print(f"pipeline: {HOURS} h of training reached; stopping, the epoch snapshots stay in the outputs", flush=True)
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return "stopped"
        time.sleep(1)
    return "finished" if proc.returncode == 0 else f"failed (exit {proc.returncode})"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(status: str, seconds: float) -> None:
    exp_dir = WORKING / "weights" / EXP
    files = {str(p.relative_to(WORKING)): sha256(p) for p in sorted(exp_dir.rglob("*")) if p.is_file()
             and not p.name.startswith(".")}
    manifest = {"exp": EXP, "run_hash": RUN_HASH, "code_hash": CODE_HASH, "status": status,
                "seconds": round(seconds, 1), "files": files}
    (WORKING / "remote.json").write_text(json.dumps(manifest, indent=1) + "\n")


def main() -> None:
    started = time.monotonic()
    code, run = mounted(CODE), mounted(RUN)
    check_hash(code, "code.json", CODE_HASH)
    check_hash(run, "run.json", RUN_HASH)
    previous = mounted(PREVIOUS) if PREVIOUS else None
    (WORKING / "remote.json").unlink(missing_ok=True)
    if previous is not None:
        if not (previous / "weights" / EXP).is_dir():
            fail(f"{previous}: the previous version left no weights/{EXP} to resume from; push a fresh run without "
                 "--resume (its snapshots, if any, are in remote/<slug>/output/ where it was downloaded)")
        shutil.copytree(previous / "weights" / EXP, WORKING / "weights" / EXP, dirs_exist_ok=True)
        print(f"pipeline: resuming from {previous / 'weights' / EXP}", flush=True)
    status = train(train_config(run, previous), install(code), started)
    write_manifest(status, time.monotonic() - started)
    print(f"pipeline: {status}", flush=True)
    if status.startswith("failed"):
        sys.exit(1)


if __name__ == "__main__":
    main()
