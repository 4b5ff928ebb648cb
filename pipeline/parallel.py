"""Folds in parallel: `python -m pipeline.train --fold all --gpus 0,1,2,3` (or `--gpus cpu,cpu`) runs one process
per listed device, each taking the next untrained fold until none is left.

Each fold runs `trainer.fit_fold` exactly as a sequential run does (same per-fold seeds, so the same files and,
with the same thread count, the same numbers); the shared tables are written under experiment.tables_locked.
A fold that fails, or whose process dies, is reported; the others finish, and --resume completes it.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from dataclasses import replace

import torch

from pipeline import trainer
from pipeline.config import Config, ExperimentConfig, make_config, to_dict
from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.experiment import HeldLock
from pipeline.learners import Run

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def parallel_folds(cfg: Config, todo: list[int], devices: list[str], lock: HeldLock) -> dict[int, str]:
    """--gpus: one process per device, each taking the next untrained fold until none is left. Returns the folds
    that did not finish, with why (a fold that fails, or whose process dies, does not stop the others).

    Every fold process holds the experiment's lock with us (`lock` travels as the same open files) and dies with
    us: killed with kill -9, we leave no process writing to the experiment and nothing that blocks --resume."""
    import multiprocessing as mp
    import queue

    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    folds, results = ctx.Queue(), ctx.Queue()
    for k in todo:
        folds.put(k)
    for _ in devices:
        folds.put(None)  # one stop sign per process
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    workers = [ctx.Process(target=fold_worker, args=(to_dict(cfg), i, d, folds, results, threads, lock, os.getpid()))
               for i, d in enumerate(devices)]  # not daemons: albumentations runs DataLoader workers inside
    for w in workers:
        w.start()
    running, done, failed, broken = {}, set(), {}, {}

    def drain(timeout: float) -> None:
        try:
            while True:
                kind, k, i, text = results.get(timeout=timeout)
                if kind == "start":
                    running[k] = i
                    print(f"fold {k}: started on {devices[i]} (process {text})", flush=True)
                elif kind == "done":
                    done.add(k)
                    running.pop(k, None)
                elif kind == "broken":  # the process could not start training at all
                    broken[i] = text
                    print(f"error: fold process on {devices[i]}: {text}", file=sys.stderr, flush=True)
                else:
                    failed[k] = f"fold {k} failed on {devices[i]}: {text}"
                    running.pop(k, None)
                    print(f"error: {failed[k]} (the other folds go on)", file=sys.stderr, flush=True)
                timeout = 0.05
        except queue.Empty:
            pass
    try:
        while any(w.is_alive() for w in workers):
            drain(0.5)
    finally:
        for w in workers:
            if w.is_alive():  # interrupted (Ctrl-C): stop the fold processes with us
                w.terminate()
            w.join()
    drain(0.05)
    for k, i in running.items():  # started, never reported: its process died (killed, out of memory)
        failed[k] = f"fold {k}: its process on {devices[i]} died (exit code {workers[i].exitcode}) mid-fold"
    for k in todo:
        if k not in done and k not in failed:
            failed[k] = f"fold {k}: never started ({'; '.join(broken.values()) or 'every fold process stopped'})"
    return dict(sorted(failed.items()))


def fold_worker(values: dict, me: int, device_name: str, folds, results, threads: int, lock: HeldLock,
                parent: int) -> None:
    """One --gpus process: train folds from the queue on one device until its stop sign; report each fold.
    `lock` keeps the experiment locked while this process lives; `parent` is the pid it must not outlive."""
    die_with(parent)
    torch.set_num_threads(threads)
    try:
        if device_name.startswith("cuda"):
            torch.cuda.set_device(torch.device(device_name))  # this process's GPU only, pinned copies included
        cfg = make_config(values | {"device": device_name, "gpus": ""}, "fold worker")
        job = trainer.setup(cfg, quiet=True)
        device = resolve_device(device_name)
        job = replace(job, resolved=ExperimentConfig.read(job.exp_dir / "config.json"))  # the run's, as written
        rows = job.rows(device)
    except KeyboardInterrupt:
        return
    except Exception as e:  # noqa: BLE001 - reported in one line by the parent
        results.put(("broken", -1, me, one_line(e)))
        return
    while (k := folds.get()) is not None:
        results.put(("start", k, me, str(os.getpid())))
        try:
            preds = job.fit_fold(k, rows, Run(device, bars=False))  # one bar per process would overwrite the others
            job.finish_fold(k, preds)
            results.put(("done", k, me, ""))
        except KeyboardInterrupt:
            return
        except Exception as e:  # noqa: BLE001 - a failed fold is reported, the others go on
            results.put(("failed", k, me, one_line(e)))


def die_with(parent: int) -> None:
    """End this process as soon as `parent` is gone (a parent killed with kill -9 runs no clean-up of its own).

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG). Elsewhere, and as a
    backstop, a thread checks every half second whether we were handed to another parent."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def one_line(e: Exception) -> str:
    text = str(e) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
    return text.splitlines()[0][:300] if text else type(e).__name__
