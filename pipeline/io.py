"""Atomic writes for every artifact, and safe checkpoint loading (no code runs on load)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.errors import PipelineError


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path in the same folder; renamed onto `path` only if the block succeeds."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        kind = "a symbolic link" if path.is_symlink() else "a directory" if path.is_dir() else "not a regular file"
        raise PipelineError(f"{path}: is {kind}; refusing to replace it with a file (choose another path)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_json(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def write_npy(array: np.ndarray, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def save_checkpoint(obj: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def to_host(obj):
    """A copy of every tensor in `obj` (nested dicts, lists, tuples) in host memory, safe from later in-place updates."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_host(v) for v in obj)
    return obj


class BackgroundWriter:
    """Checkpoints written on one background thread, in order, so training does not wait for the disk.

    `save` copies the tensors to host memory at once (the training thread goes on changing them), then returns;
    `wait` blocks until every save is on disk and re-raises a failed write. `seconds` is the time spent writing.
    Each file is still written atomically: a process killed mid-write leaves the previous file whole.
    """

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._pending: list = []
        self.seconds = 0.0

    def save(self, obj: dict, path: str | Path) -> None:
        while len(self._pending) > 1:  # at most two copies waiting: host memory stays bounded when the disk is slow
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._write, to_host(obj), Path(path)))

    def _write(self, obj: dict, path: Path) -> None:
        import time

        started = time.perf_counter()
        save_checkpoint(obj, path)
        self.seconds += time.perf_counter() - started

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def read_json(path: str | Path, what: str = "file") -> dict:
    """A JSON object from a file the pipeline wrote; a truncated or hand-broken one is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: {what} not found" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: unreadable {what}, not valid JSON ({str(e)[:80]}); "
                            "remove it or retrain with --overwrite") from None
    if not isinstance(obj, dict):
        raise PipelineError(f"{path}: unreadable {what}: expected a JSON object, found {type(obj).__name__}")
    return obj


def load_checkpoint(path: str | Path) -> dict:
    """Load with weights_only=True (tensors and plain containers only, never code), then check the structure."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: checkpoint not found" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            obj = {"state_dict": load_file(str(path))}
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).splitlines()[0] if "weights_only" not in str(e) else _refusal(str(e))
        raise PipelineError(f"{path}: refused to load: {reason}") from None
    except Exception as e:  # noqa: BLE001 - safetensors, zip and pickle readers raise many types for a bad file
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise PipelineError(f"{path}: truncated or corrupted checkpoint ({first})") from None
    if isinstance(obj, dict) and "state_dict" not in obj and obj and all(torch.is_tensor(v) for v in obj.values()):
        obj = {"state_dict": obj}  # a bare state dict, as timm and torchvision publish them
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise PipelineError(f"{path}: expected a checkpoint dict with a 'state_dict', got {type(obj).__name__}")
    check_state_dict(obj["state_dict"], path)
    return obj


def check_state_dict(state, path: Path) -> None:
    """A non-empty mapping of names to finite tensors, as load_state_dict expects."""
    if not isinstance(state, dict) or not state:
        raise PipelineError(f"{path}: 'state_dict' must be a non-empty mapping of names to tensors, "
                            f"got {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise PipelineError(f"{path}: 'state_dict' entry {str(key)[:60]!r} is {type(value).__name__}, "
                                "expected a tensor under a name")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise PipelineError(f"{path}: weights {key} hold NaN or infinite values; this checkpoint is unusable")


def _refusal(message: str) -> str:
    """Name the global that weights_only loading blocked (e.g. os.system)."""
    for line in message.splitlines():
        if "GLOBAL" in line or "Unsupported global" in line:
            return f"it holds code or objects, not only weights ({line.strip()[:160]})"
    return "it holds code or objects, not only weights"


def file_hash(raw: bytes) -> str:
    """First 16 hex digits of sha256: what identifies a train file, a folds file or a params file."""
    return hashlib.sha256(raw).hexdigest()[:16]
