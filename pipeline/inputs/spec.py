"""DataSpec: how a model sees the data (the task, the input kind and its settings, the augmentation law); saved in
every experiment's config.json and checkpoints."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pipeline.errors import PipelineError
from pipeline.tasks import Task


@dataclass(frozen=True)
class DataSpec:
    """How a model sees the data: the task, the input kind and its settings, the training augmentation law."""
    task: Task
    img_size: int  # image: side the model sees (0 for other kinds)
    mean: tuple[float, ...]  # image: per-channel normalisation on the 0..1 scale
    std: tuple[float, ...]
    augment: str = "digits"  # image: digits | natural | none | an albumentations file
    kind: str = "image"  # input kind (pipeline.inputs): image | table
    features: dict = field(default_factory=dict, hash=False)  # table: names, categorical indices, cardinalities

    @property
    def input_kind(self):
        from pipeline.inputs import input_kind  # the registry of the kinds, beside this module

        return input_kind(self.kind)

    def inputs(self, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
        """A batch of rows as the model consumes it (normalised images, preprocessed features)."""
        return self.input_kind.model_input(x, self, channels_last)

    def train_batch(self, x: torch.Tensor, steps, generator: torch.Generator) -> torch.Tensor:
        """A batch of training rows, augmented the kind's way (before `inputs`); `steps`: the engine's settings."""
        return self.input_kind.train_batch(x, self, steps, generator)

    def to_dict(self) -> dict:
        return {"task": self.task.to_dict(), "img_size": self.img_size, "mean": list(self.mean),
                "std": list(self.std), "augment": self.augment, "kind": self.kind, "features": self.features}

    @classmethod
    def from_config(cls, config, where: str) -> DataSpec:
        """From a resolved config (config.ExperimentConfig: config.json's or a checkpoint's); Digit Recognizer's before
        specs were saved."""
        spec = config.data_spec
        if spec is None:  # trained before task kinds existed: 10 digits, MNIST statistics
            from pipeline.augment import MEAN, STD
            return cls(Task("multiclass", tuple(str(i) for i in range(config.num_classes))), config.img_size,
                       (MEAN,), (STD,))
        try:
            if not isinstance(spec, dict) or not isinstance(spec.get("task"), dict):
                raise TypeError(f"expected a mapping with a task, found {type(spec).__name__}")
            features = spec.get("features", {})
            if not isinstance(features, dict):
                raise TypeError(f"features: expected a mapping, found {type(features).__name__}")
            return cls(Task.from_dict(spec["task"], where), int(spec["img_size"]), tuple(map(float, spec["mean"])),
                       tuple(map(float, spec["std"])), str(spec.get("augment", "digits")),
                       str(spec.get("kind", "image")), features)
        except (KeyError, TypeError, ValueError) as e:
            raise PipelineError(f"{where}: damaged data_spec ({type(e).__name__}: {e}); retrain with --overwrite") from None




class InputKind:
    """What every input kind shares (pipeline.inputs.image, .table, .sequence override what differs)."""
    name = ""
    unit = "row"  # what the training speed counts: row/s
    pictures = False  # whether a row can be shown as a picture (report's wrong predictions)

    def forward(self, model, x):
        """The model's outputs for one batch as eval_inputs / train_inputs give it."""
        return model(x)

    def check_augment(self, spec: DataSpec) -> None:
        """A bad augmentation law is refused here, before any work."""

    def rows_device(self, spec: DataSpec, device: torch.device) -> torch.device:
        """Where the train rows live while training: on the device (batches taken there), unless the kind's
        augmentation runs on the CPU."""
        return device

    def worker_batches(self, data, order: torch.Tensor, batch: int, spec: DataSpec, generator: torch.Generator):
        """Augmented batches from CPU workers, in `order`; None: the kind augments on the device (train_inputs)."""
        return None

    def audit_units(self, rows, features: dict):
        """The leakage audit's fingerprints of these rows (pipeline.fingerprints.Units)."""
        raise NotImplementedError
