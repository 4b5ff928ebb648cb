"""The GPU figures (#19) in one run: every measured item one JSON line in OUT/figures.jsonl, each command's output in
OUT/logs/, the default recipe's submission in OUT/. Called by bench/gpu.sh (which installs carried wheels first).

    python bench/gpu.py OUT              on a machine with a GPU (about 6-8 minutes on an H100/H200)
    python bench/gpu.py OUT --cpu-smoke  the same commands on tiny data on the CPU: checks the script, measures nothing

An item that fails writes a line with its error and the run goes on to the next one: one bad item never costs the
others. Every JSON line names the machine; ratios are measured side by side in the same run.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(sys.argv[1]).resolve()
SMOKE = "--cpu-smoke" in sys.argv[2:]
DEVICE = "cpu" if SMOKE else "cuda"
DIGITS = "sample" if SMOKE else "data/digit-recognizer.zip"
PY = sys.executable
LOGS = OUT / "logs"
FIGURES = OUT / "figures.jsonl"
STARTED = time.perf_counter()


def machine() -> str:
    if SMOKE:
        return f"CPU smoke run ({os.cpu_count()} cores): not a measurement"
    try:
        import torch

        return f"{torch.cuda.get_device_name()} ({os.cpu_count()} CPU cores), torch {torch.__version__}"
    except Exception as e:  # noqa: BLE001 - the run goes on and says so
        return f"unknown ({e})"


MACHINE = machine()


def record(item: str, **fields) -> None:
    line = {"item": item, "machine": MACHINE, "smoke": SMOKE, **fields}
    with open(FIGURES, "a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line), flush=True)


def run(name: str, args: list[str], timeout: int) -> tuple[float, str]:
    """(wall seconds, output) of `python -m pipeline.<args>`; its output kept in logs/<name>.log; a failure raises."""
    started = time.perf_counter()
    with open(LOGS / f"{name}.log", "w") as log:
        proc = subprocess.run([PY, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, env=os.environ | {"PYTHONUNBUFFERED": "1"})
        log.write(proc.stdout)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = [line for line in proc.stdout.splitlines() if line.strip()][-1:] or ["(no output)"]
        raise RuntimeError(f"{' '.join(args[:2])} exited {proc.returncode}: {tail[0][:300]}")
    return wall, proc.stdout


def lines(text: str, pattern: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if re.search(pattern, line) and "it/s]" not in line]


def number(text: str, pattern: str) -> float | None:
    found = re.findall(pattern, text)
    return float(found[-1].replace(",", "")) if found else None


def item(name: str):
    """Run one measured item; an error is recorded as its line, and the run goes on."""
    def wrap(fn):
        def go():
            started = time.perf_counter()
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - recorded, never fatal to the run
                record(name, error=str(e)[:500], seconds=round(time.perf_counter() - started, 1))
        go.__name__ = name
        return go
    return wrap


# -- 1. the default recipe on Digit Recognizer ------------------------------------------------------------------
SEQUENTIAL = {}


@item("recipe")
def recipe() -> None:
    epochs = ["--epochs", "1"] if SMOKE else []
    folds = ["--folds-path", "folds/gpu.csv"]
    make_s, _ = run("make_folds", ["pipeline.make_folds", "--data", DIGITS, *folds, "--overwrite"], 300)
    train_s, out = run("train", ["pipeline.train", "--data", DIGITS, *folds, "--fold", "all", "--exp", "gpu_default",
                                 "--device", DEVICE, "--overwrite", *epochs], 600)
    SEQUENTIAL["seconds"] = train_s
    infer_s, _ = run("infer", ["pipeline.infer", "--data", DIGITS, "--exp", "gpu_default", "--tta", "--device", DEVICE,
                               "--out", str(OUT / "submission.csv")], 300)
    rates = [float(r.replace(",", "")) for r in re.findall(r"([\d,]+) img/s", out)]
    cv = json.loads(Path("weights/gpu_default/cv.json").read_text())
    record("recipe", make_folds_s=round(make_s, 1), train_s=round(train_s, 1), infer_tta_s=round(infer_s, 1),
           five_folds_plus_tta_s=round(train_s + infer_s, 1), train_img_per_s_median=statistics.median(rates) if rates
           else None, oof_accuracy=cv["oof"].get("accuracy"), submission=str(OUT / "submission.csv"),
           targets={"five_folds_plus_tta_s": "<= 60", "train_img_per_s": ">= 50000", "oof_accuracy": ">= 0.9965",
                    "infer_tta_s": "<= 5"},
           note="wall seconds include each command's start (imports, reading the zip)")


# -- 2. resnet18 at batch 256: pipeline vs the seed-notebook loop -------------------------------------------------
@item("bench_resnet18")
def bench_resnet18() -> None:
    size = ["--limit", "600", "--epochs", "1", "--batch-size", "64"] if SMOKE else ["--epochs", "2", "--batch-size", "256"]
    _, out = run("bench_resnet18", ["pipeline.bench", "--data", DIGITS, "--device", DEVICE, "--model", "resnet18",
                                    "--workers", "4" if not SMOKE else "1", *size], 420)
    record("bench_resnet18", speedup=number(out, r"speedup: ([\d.]+)x"), lines=lines(out, r"img/s|speedup"),
           target="speedup >= 20x")


# -- 3. image files: the decode-once cache vs the per-item loader, and what bounds the step --------------------------
@item("bench_images")
def bench_images() -> None:
    size = ["--images", "64", "--img-size", "32", "--model", "resnet18", "--workers", "1"] if SMOKE else \
        ["--images", "2000", "--img-size", "224", "--model", "resnet50", "--workers", "8", "--batch-size", "128"]
    _, out = run("bench_images", ["pipeline.bench", "--device", DEVICE, *size], 420)
    record("bench_images", delivery_speedup=number(out, r"delivery ([\d.]+)x"),
           epoch_speedup=number(out, r"epoch ([\d.]+)x"), model_step_alone_img_per_s=number(out, r"model step alone ([\d,]+)"),
           bound=(re.findall(r"the bound is (.+)$", out, re.M) or [None])[-1], lines=lines(out, r"img/s|speedup|bound"))


# -- 4. two fold processes sharing one GPU vs sequential folds -------------------------------------------------------
@item("gpus_0_0")
def gpus_shared() -> None:
    if "seconds" not in SEQUENTIAL:
        raise RuntimeError("needs the recipe item's sequential training time, which failed")
    epochs = ["--epochs", "1"] if SMOKE else []
    devices = "cpu,cpu" if SMOKE else "0,0"
    wall, out = run("train_gpus_0_0", ["pipeline.train", "--data", DIGITS, "--folds-path", "folds/gpu.csv", "--fold",
                                       "all", "--exp", "gpu_shared", "--gpus", devices, "--overwrite", *epochs], 600)
    cv = json.loads(Path("weights/gpu_shared/cv.json").read_text())
    record("gpus_0_0", sequential_s=round(SEQUENTIAL["seconds"], 1), two_workers_one_gpu_s=round(wall, 1),
           speedup=round(SEQUENTIAL["seconds"] / wall, 3), oof_accuracy=cv["oof"].get("accuracy"),
           question="does a small model leave the GPU idle enough for two folds at once to pay?")


# -- 5. the other bench modes ------------------------------------------------------------------------------------------
@item("bench_table")
def bench_table() -> None:
    rows = ["--table", "3000", "--epochs", "2"] if SMOKE else ["--table", "100000", "--epochs", "3"]
    _, out = run("bench_table", ["pipeline.bench", "--device", DEVICE, *rows], 420)
    record("bench_table", mlp_speedup=number(out, r"speedup: mlp ([\d.]+)x"),
           lightgbm_wall_ratio=number(out, r"lightgbm wall ([\d.]+)x"), lines=lines(out, r"rows/s|lightgbm|speedup"),
           targets={"mlp_speedup": ">= 3x", "lightgbm_wall_ratio": "<= 1.2x"})


@item("bench_frames")
def bench_frames() -> None:
    size = ["--frames", "6000", "--epochs", "2", "--hidden", "32"] if SMOKE else ["--frames", "200000", "--epochs", "3"]
    _, out = run("bench_frames", ["pipeline.bench", "--device", DEVICE, "--context", "10", *size], 420)
    record("bench_frames", speedup=number(out, r"speedup: ([\d.]+)x"), lines=lines(out, r"frames/s|speedup"),
           target="frames/s >= 3x, peak memory below the notebook's")


@item("bench_speakers")
def bench_speakers() -> None:
    size = ["--speakers", "200", "--epochs", "2"] if SMOKE else ["--speakers", "6000", "--epochs", "3", "--workers", "8"]
    _, out = run("bench_speakers", ["pipeline.bench", "--device", DEVICE, *size], 420)
    record("bench_speakers", speedup=number(out, r"speedup: ([\d.]+)x"), lines=lines(out, r"utterances/s|speedup"),
           target="utterances/s >= 2x")


# -- 8. the Kaggle kernel `python -m pipeline.remote` pushes, run here as Kaggle runs it -------------------------------
@item("kernel")
def kernel() -> None:
    """pipeline/remote/kaggle_train.py with its settings written, /kaggle/input and /kaggle/working remapped (as the
    tests' stand-in server does): the code dataset from .whl/code (bash bench/gpu.sh --wheels), the run dataset built
    here from the recipe's folds, the competition's zip unpacked as its mount. One GPU here; Kaggle's T4x2 trains
    two folds at once, each slower."""
    import shutil
    import zipfile

    from pipeline import wheels
    from pipeline.config import make_config
    from pipeline.remote import build

    folds = Path("folds/gpu.csv")
    if not folds.is_file():
        run("make_folds_kernel", ["pipeline.make_folds", "--data", DIGITS, "--folds-path", str(folds)], 300)
    root = OUT / "kernel"
    shutil.rmtree(root, ignore_errors=True)
    inputs, working = root / "input", root / "working"
    working.mkdir(parents=True)
    code = Path(".whl/code")
    if SMOKE:
        build.code_dataset(code, "bench/pipeline-code")  # remade when the sources changed
    elif not (code / "code.json").is_file() or \
            json.loads((code / "code.json").read_text())["hash"] != wheels.content_hash(wheels.sources()):
        raise RuntimeError(".whl/code is missing or of other sources: make it with bash bench/gpu.sh --wheels")
    shutil.copytree(code, inputs / "pipeline-code")
    cfg = make_config({"data": DIGITS, "folds_path": str(folds), "exp": ["gpu_kernel"],
                       **({"epochs": 1} if SMOKE else {})})
    run_hash, shipped = build.run_dataset(inputs / "gpu-kernel-train-run", "bench/gpu-kernel-train-run", cfg)
    if DIGITS.endswith(".zip"):
        with zipfile.ZipFile(DIGITS) as z:
            z.extractall(inputs / "digit-recognizer")
    settings = {"EXP": "gpu_kernel", "CODE": "pipeline-code",
                "CODE_HASH": json.loads((code / "code.json").read_text())["hash"], "RUN": "gpu-kernel-train-run",
                "RUN_HASH": run_hash, "COMPETITION": "digit-recognizer", "DATA": build.kernel_data(DIGITS),
                "FILES": shipped, "PREVIOUS": "", "HOURS": 11.5}
    (root / "kaggle_train.py").write_text(build.script(settings))
    started = time.perf_counter()
    with open(LOGS / "kernel.log", "w") as log:
        proc = subprocess.run([PY, str(root / "kaggle_train.py")], cwd=working, stdout=log, stderr=subprocess.STDOUT,
                              timeout=900, env=os.environ | {"KAGGLE_INPUT_DIR": str(inputs),
                                                             "KAGGLE_WORKING_DIR": str(working)})
    wall = time.perf_counter() - started
    manifest = json.loads((working / "remote.json").read_text())
    cv = json.loads((working / "weights/gpu_kernel/cv.json").read_text())
    record("kernel", exit=proc.returncode, status=manifest["status"], wall_s=round(wall, 1),
           train_s=cv.get("train_seconds"), oof_accuracy=cv["oof"].get("accuracy"),
           local_train_s=SEQUENTIAL.get("seconds"),
           note="the whole kernel (input checks, offline pip install, train --fold all, manifest) on this machine; "
                "local_train_s: the recipe item's train command, same recipe")


def main() -> int:
    LOGS.mkdir(parents=True, exist_ok=True)
    FIGURES.unlink(missing_ok=True)
    record("start", python=sys.version.split()[0], cwd=os.getcwd())
    only = [a for a in sys.argv[2:] if not a.startswith("--")]  # bench/gpu.py OUT [items...]: a rerun of some
    for go in (recipe, bench_resnet18, bench_images, gpus_shared, bench_table, bench_frames, bench_speakers, kernel):
        if not only or go.__name__ in only:
            go()
    record("end", seconds=round(time.perf_counter() - STARTED, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
