"""Test-time augmentation through ttach, with label-preserving transforms for digits.

Digits: one-pixel shifts and a slight zoom (no flips: a mirrored 2 is no digit; no 90-degree
turns: 6 and 9 swap). Photos: ttach's horizontal flip. Top-down images (satellite, microscopy):
the 8 flips and right-angle turns (d4).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import ttach
from ttach.base import DualTransform

from pipeline.augment import affine_theta, warp
from pipeline.errors import PipelineError

PIXEL = 1 / 28  # one pixel of a 28x28 digit, as a fraction of the side (any img_size)


class Affine(DualTransform):
    """Shift by (dx, dy) fractions of the side and zoom by `zoom`; the label is unchanged.

    Pixels moved in from outside repeat the border (background for digits).
    """

    identity_param = (0.0, 0.0, 1.0)

    def __init__(self, params: list[tuple[float, float, float]]):
        if self.identity_param not in params:
            params = [self.identity_param, *params]
        super().__init__("affine", params)

    def apply_aug_image(self, image: torch.Tensor, affine=identity_param, **kwargs) -> torch.Tensor:
        if tuple(affine) == self.identity_param:
            return image
        dx, dy, zoom = affine
        b = image.shape[0]
        theta = affine_theta(torch.zeros(b, device=image.device), torch.full((b,), zoom, device=image.device),
                             torch.tensor([[dx, dy]], device=image.device).expand(b, 2))
        return warp(image, theta, padding_mode="border")

    def apply_deaug_label(self, label, **kwargs):
        return label

    def apply_deaug_mask(self, mask, **kwargs):
        raise NotImplementedError("Affine TTA is for classification")

    def apply_deaug_keypoints(self, keypoints, **kwargs):
        raise NotImplementedError("Affine TTA is for classification")


def digit_transforms() -> ttach.Compose:
    """7 views: identity, +-1 pixel in x and y, zoom out 10% and in 10%."""
    return ttach.Compose([Affine([(PIXEL, 0.0, 1.0), (-PIXEL, 0.0, 1.0), (0.0, PIXEL, 1.0), (0.0, -PIXEL, 1.0),
                                  (0.0, 0.0, 0.9), (0.0, 0.0, 1.1)])])


PRESETS = {
    "digits": digit_transforms,  # 7 views
    "hflip": lambda: ttach.Compose([ttach.HorizontalFlip()]),  # 2 views: photos
    "flips": lambda: ttach.Compose([ttach.HorizontalFlip()]),  # older name of hflip
    "d4": lambda: ttach.Compose([ttach.HorizontalFlip(), ttach.Rotate90(angles=[0, 90, 180, 270])]),  # 8: top-down
}


def with_tta(model: nn.Module, preset: str) -> nn.Module:
    """ttach's ClassificationTTAWrapper averaging the logits of the preset's views."""
    if preset not in PRESETS:
        raise PipelineError(f"--tta-preset: unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    return ttach.ClassificationTTAWrapper(model, PRESETS[preset](), merge_mode="mean")
