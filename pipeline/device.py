"""Where and how tensors run: the device, the precision (autocast and the fp16 gradient scaler), rows kept on the
device or streamed from host memory (take / to_device through pinned memory), and seeding. A leaf: it imports
torch and the project's errors only."""
from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch

from pipeline.errors import PipelineError


def on_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """The whole uint8 array on the device when it fits in 80% of free GPU memory; else kept in host memory,
    where batches stream from (pinned, asynchronous copies; see take). Packed sequences (data.sequences' rows) alike."""
    if not isinstance(images, np.ndarray):
        if device.type != "cuda":
            return images
        size = images.packed.values.nbytes
        if size < 0.8 * torch.cuda.mem_get_info(device)[0]:
            return images.to(device)
        print(f"notice: {size / 2**30:.1f} GiB of frames exceed free GPU memory; batches are gathered in host memory "
              "and streamed")
        return images
    host = torch.from_numpy(images if images.flags.writeable else np.array(images))
    if device.type != "cuda":
        return host
    if images.nbytes < 0.8 * torch.cuda.mem_get_info(device)[0]:
        return host.to(device)
    print(f"notice: {images.nbytes / 2**30:.1f} GiB of images exceed free GPU memory; streaming batches from host memory")
    return host


def take(images: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows `idx` of images that live on the device, or stream them from host memory (pinned, asynchronous)."""
    if images.device == device:
        return images[idx]
    return to_device(images[idx.cpu()], device)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch gathered in host memory sent to the GPU through pinned memory (an asynchronous copy); else as is."""
    if device.type == "cuda" and batch.device.type == "cpu":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """python, numpy and torch (CPU and every GPU) from one seed; --deterministic also pins cuDNN's algorithms."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"--device: {name} requested but no CUDA GPU is visible; use --device cpu or auto")
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    return device


@functools.lru_cache(maxsize=8)
def resolve_precision(name: str, device: torch.device) -> str:
    """auto: bf16 on GPUs with fast bf16 (Ampere and later), fp16 on older ones (Kaggle's T4, P100), fp32 on CPU."""
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise PipelineError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no fast bf16; use fp16 or auto")
    return name


def autocast(device: torch.device, precision: str = "auto"):
    """Mixed precision for the forward pass: bf16 or fp16 autocast, or none (fp32)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    if resolve_precision(precision, device) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


