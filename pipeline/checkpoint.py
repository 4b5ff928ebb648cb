"""Atomic writes for every artifact, and safe checkpoint loading (no code runs on load)."""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
import zipfile
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


def load_checkpoint(path: str | Path) -> dict:
    """Load with weights_only=True: tensors and plain containers only, never code."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return {"state_dict": load_file(str(path))}
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).splitlines()[0] if "weights_only" not in str(e) else _refusal(str(e))
        raise PipelineError(f"{path}: refused to load: {reason}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise PipelineError(f"{path}: truncated or corrupted checkpoint ({str(e).splitlines()[0][:120]})") from None
    if isinstance(obj, dict) and "state_dict" not in obj and all(torch.is_tensor(v) for v in obj.values()):
        obj = {"state_dict": obj}  # a bare state dict, as timm and torchvision publish them
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise PipelineError(f"{path}: expected a checkpoint dict with a 'state_dict', got {type(obj).__name__}")
    return obj


def _refusal(message: str) -> str:
    """Name the global that weights_only loading blocked (e.g. os.system)."""
    for line in message.splitlines():
        if "GLOBAL" in line or "Unsupported global" in line:
            return f"it holds code or objects, not only weights ({line.strip()[:160]})"
    return "it holds code or objects, not only weights"
