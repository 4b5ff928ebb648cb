"""The image input kind: (N, C, H, W) uint8 rows, augmented and normalised on the device, TTA through ttach."""
from __future__ import annotations

import torch

from pipeline.augment import augment, to_model_input


class ImageInput:
    name = "image"
    has_preprocessing = False  # pixels need no fitted statistics: the normalisation is fixed per data set
    forms = ("image", "vector")  # timm backbones; vector models (mlp) see the flattened image
    default_model = "digit_cnn"

    def train_batch(self, x: torch.Tensor, spec, cfg, generator: torch.Generator) -> torch.Tensor:
        """(B, C, H, W) uint8 -> the augmented batch, still on the 0..255 scale."""
        return augment(x, spec.augment, cfg.rotate, cfg.scale, cfg.shift, generator)

    def model_input(self, x: torch.Tensor, spec, channels_last: bool) -> torch.Tensor:
        return to_model_input(x, spec.img_size, channels_last, spec.mean, spec.std)

    def tta_check(self, preset: str) -> None:
        """Every preset applies to images (tta.with_tta names an unknown one)."""

    def apply_fold(self, state: dict | None, data):
        return data

    def fit_fold(self, data: torch.Tensor, train_rows: torch.Tensor, targets: torch.Tensor, spec,
                 cfg) -> tuple[torch.Tensor, dict | None]:
        """Nothing to fit: the fold trains on the data as it is."""
        return data, None

    def net_input(self, in_chans: int, img_size: int, state: dict | None) -> dict:
        """What a vector model (mlp) gets: the flattened image, no categorical slots."""
        return {"n_features": in_chans * img_size * img_size, "embeddings": ()}
