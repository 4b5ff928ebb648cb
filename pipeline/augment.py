"""Batch augmentation on the training device for in-memory images, and the model-input transform.

Digits keep their label under small shifts, rotations and zooms, never under flips
(a flipped 2 is no digit) or 90-degree turns (6 and 9 swap).
"""
from __future__ import annotations

import math

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


def to_model_input(x: torch.Tensor, img_size: int, channels_last: bool) -> torch.Tensor:
    """0..255 images (uint8 or float, (B, C, H, W)) -> normalised float32 at img_size, as the model sees them."""
    x = (x.float() * (1 / 255) - MEAN) / STD
    if x.shape[-1] != img_size or x.shape[-2] != img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def albumentations_affine(rotate: float, scale: float, shift: float):
    """The same augmentation for images read from files, as an albumentations pipeline (CPU workers)."""
    import albumentations as A

    return A.Affine(rotate=(-rotate, rotate), scale=(1 - scale, 1 + scale),
                    translate_percent=(-shift, shift), border_mode=0, fill=0, p=1.0)
