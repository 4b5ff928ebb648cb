"""Batch augmentation on the training device for in-memory images, and the model-input transform.

Digits keep their label under small shifts, rotations and zooms, never under flips
(a flipped 2 is no digit) or 90-degree turns (6 and 9 swap).
"""
from __future__ import annotations

import functools
import math
import os

import numpy as np

import torch
import torch.nn.functional as F

MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics on the 0..1 scale


def affine_theta(angle: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) sampling matrices: rotate by `angle` radians, magnify by `zoom`, move by `shift`.

    `shift` is (B, 2) as a fraction of the side (x, y); positive moves the content right / down.
    """
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    tx, ty = -2 * shift[:, 0], -2 * shift[:, 1]  # grid coordinates span [-1, 1]: a side is 2 units
    return torch.stack([torch.stack([cos, -sin, tx * cos - ty * sin], 1),
                        torch.stack([sin, cos, tx * sin + ty * cos], 1)], 1)


def warp(images: torch.Tensor, theta: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Resample float images (B, C, H, W) with (B, 2, 3) matrices; new pixels are background (0)."""
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def random_affine(images: torch.Tensor, rotate: float, scale: float, shift: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Independent random rotation (degrees), zoom (fraction) and shift (fraction) per image.

    images: (B, C, H, W) uint8 on any device -> (B, C, H, W) float32 on 0..255.
    """
    x = images.float()
    if rotate == 0 and scale == 0 and shift == 0:
        return x
    b, dev = x.shape[0], x.device
    u = torch.rand(b, 4, device=dev, generator=generator) * 2 - 1  # uniform in [-1, 1)
    theta = affine_theta(u[:, 0] * math.radians(rotate), 1 + u[:, 1] * scale, u[:, 2:] * shift)
    return warp(x, theta)


def random_natural(images: torch.Tensor, generator: torch.Generator | None = None, min_area: float = 0.35,
                   rotate: float = 10.0, jitter: float = 0.2) -> torch.Tensor:
    """Photos: random resized crop (area min_area..1, aspect 3/4..4/3), horizontal flip, a small rotation,
    brightness and contrast, each drawn per image. (B, C, H, W) uint8 on any device -> float32 on 0..255."""
    x = images.float()
    b, dev = x.shape[0], x.device
    u = torch.rand(b, 7, device=dev, generator=generator)
    area = min_area + (1 - min_area) * u[:, 0]
    aspect = torch.exp((u[:, 1] * 2 - 1) * math.log(4 / 3))
    w, h = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)  # crop size, fraction of the side
    cx, cy = (u[:, 2] * 2 - 1) * (1 - w), (u[:, 3] * 2 - 1) * (1 - h)  # crop centre in grid units, inside the image
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    angle = (u[:, 5] * 2 - 1) * math.radians(rotate)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([w * flip * cos, -w * sin, cx], 1),
                         torch.stack([h * flip * sin, h * cos, cy], 1)], 1)  # input = crop(rotate(flip(output)))
    x = warp(x, theta, padding_mode="reflection")
    contrast = 1 + (u[:, 6:7, None, None] * 2 - 1) * jitter
    brightness = (torch.rand(b, 1, 1, 1, device=dev, generator=generator) * 2 - 1) * jitter * 255
    mean = x.mean((1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + brightness).clamp(0, 255)


def augment(images: torch.Tensor, law: str, rotate: float, scale: float, shift: float,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """The training augmentation `law` (digits: label-safe affine; natural: crop, flip, colour; none)."""
    if law == "digits":
        return random_affine(images, rotate, scale, shift, generator)
    if law == "natural":
        return random_natural(images, generator)
    return images.float()


@functools.lru_cache(maxsize=16)
def _stats(device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, 1, 1) scale and shift on the device, made once (a tensor per batch would sync the GPU)."""
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return 1 / (255 * s), -m / s


def to_model_input(x: torch.Tensor, img_size: int, channels_last: bool,
                   mean: tuple[float, ...] = (MEAN,), std: tuple[float, ...] = (STD,)) -> torch.Tensor:
    """0..255 images (uint8 or float, (B, C, H, W)) -> normalised float32 at img_size, as the model sees them."""
    if len(mean) == 1:
        x = (x.float() * (1 / 255) - mean[0]) / std[0]
    else:
        scale, shift = _stats(x.device, tuple(mean), tuple(std))
        x = torch.addcmul(shift, x.float(), scale)
    if x.shape[-1] != img_size or x.shape[-2] != img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def is_albumentations(law: str) -> bool:
    return law.endswith((".json", ".yaml", ".yml"))


def load_albumentations(path: str):
    """An albumentations pipeline saved with A.save (JSON or YAML); a bad file is one line naming it."""
    import albumentations as A

    from pipeline.errors import PipelineError

    if not os.path.isfile(path):
        raise PipelineError(f"--aug: {path} not found; write one with albumentations.save(transform, '{path}')")
    try:
        return A.load(path, data_format="yaml" if path.endswith((".yaml", ".yml")) else "json")
    except Exception as e:  # noqa: BLE001 - albumentations raises many types for a file it cannot rebuild
        raise PipelineError(f"--aug: {path}: not an albumentations pipeline ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:100] if str(e) else ''})") from None


class AlbumentationsRows(torch.utils.data.Dataset):
    """Cached uint8 images (N, C, H, W) through an albumentations pipeline, one row per item, in worker processes.

    The pipeline should not normalise (the model input does that): its output is read on the 0..255 scale.
    """

    def __init__(self, images, rows, path: str):
        self.images, self.rows, self.path, self.transform = images, rows, path, None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.transform is None:  # built in each worker
            self.transform = load_albumentations(self.path)
        image = np.ascontiguousarray(np.asarray(self.images[int(self.rows[i])]).transpose(1, 2, 0))  # (H, W, C)
        out = self.transform(image=image if image.shape[2] > 1 else image[..., 0])["image"]
        out = out[..., None] if out.ndim == 2 else out
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))).float()


def _seed_worker(worker_id: int) -> None:
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def albumentations_batches(images, order: torch.Tensor, batch: int, path: str, generator: torch.Generator):
    """Batches (float32 (B, C, H, W) on 0..255) of the rows in `order`, augmented in DataLoader workers."""
    workers = min(4, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(
        AlbumentationsRows(images, order.cpu().numpy(), path), batch_size=batch, shuffle=False, drop_last=True,
        num_workers=workers, worker_init_fn=_seed_worker, pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(int(torch.randint(2**31, (1,), generator=generator,
                                                                  device=generator.device).item())))
    return iter(loader)


def albumentations_affine(rotate: float, scale: float, shift: float):
    """The same augmentation for images read from files, as an albumentations pipeline (CPU workers)."""
    import albumentations as A

    return A.Affine(rotate=(-rotate, rotate), scale=(1 - scale, 1 + scale),
                    translate_percent=(-shift, shift), border_mode=0, fill=0, p=1.0)
