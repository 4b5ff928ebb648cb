"""The image input kind: (N, C, H, W) uint8 rows, augmented and normalised on the device, TTA through ttach."""
from __future__ import annotations

import torch

import numpy as np

from pipeline import fingerprints as fp
from pipeline.augment import albumentations_batches, augment, is_albumentations, load_albumentations, to_model_input
from pipeline.inputs.spec import InputKind


class ImageInput(InputKind):
    name = "image"
    unit = "img"  # what the training speed counts: img/s
    pictures = True
    has_preprocessing = False  # pixels need no fitted statistics: the normalisation is fixed per data set
    forms = ("image", "vector", "sequence")  # timm backbones; the mlp sees the flattened image, sequence models its rows
    default_model = "digit_cnn"

    def audit_units(self, rows, features: dict) -> fp.Units:
        """One unit per image: the hash of its cached pixels, its pHash and thumbnail, its channel statistics."""
        pixels = np.asarray(rows)
        summary, names = fp.image_summary(pixels)
        return fp.Units("image", fp.hash_rows(pixels), fp.phash(pixels), summary, names, hamming=True, pixels=pixels,
                        thumbs=fp.thumbnails(pixels))

    def train_batch(self, x: torch.Tensor, spec, steps, generator: torch.Generator) -> torch.Tensor:
        """(B, C, H, W) uint8 -> the augmented batch, still on the 0..255 scale."""
        return augment(x, spec.augment, steps.rotate, steps.scale, steps.shift, generator)

    def check_augment(self, spec) -> None:
        if is_albumentations(spec.augment):
            load_albumentations(spec.augment)  # a bad file fails here, before any work

    def rows_device(self, spec, device: torch.device) -> torch.device:
        """An albumentations law augments on the CPU, in DataLoader workers: the rows stay in host memory."""
        return torch.device("cpu") if is_albumentations(spec.augment) else device

    def worker_batches(self, data, order: torch.Tensor, batch: int, spec, generator: torch.Generator):
        return albumentations_batches(data, order, batch, spec.augment, generator) \
            if is_albumentations(spec.augment) else None

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

    def check_mixing(self, cfg) -> None:
        """Mixup and cutmix both apply to images."""

    def resolve(self, cfg, features: dict, say):
        """The recipe this data needs: as given (tables widen theirs)."""
        return cfg

    def settings(self, cfg) -> dict:
        """What of the train flags this kind's batches need at inference too (saved in the data spec): nothing."""
        return {}

    def net_input(self, in_chans: int, img_size: int, state: dict | None) -> dict:
        """What a vector model (mlp) gets: the flattened image, no categorical slots; a sequence model: its rows."""
        return {"n_features": in_chans * img_size * img_size, "embeddings": (), "step_features": in_chans * img_size}

    def train_inputs(self, data, idx: torch.Tensor, device: torch.device, spec, steps, generator: torch.Generator):
        """A training batch as the model consumes it: rows taken (from the device, or streamed), augmented, normalised."""
        from pipeline.device import take

        x = self.train_batch(take(data, idx, device), spec, steps, generator)
        return self.model_input(x, spec, device.type == "cuda")

    def eval_inputs(self, data, batch_size: int, device: torch.device, spec):
        """(positions in data, model inputs) per batch, in order."""
        for start in range(0, len(data), batch_size):
            rows = data[start:start + batch_size].to(device, non_blocking=True)
            yield torch.arange(start, start + len(rows)), self.model_input(rows, spec, device.type == "cuda")
