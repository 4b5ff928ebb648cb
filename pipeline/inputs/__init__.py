"""Input kinds: how one row looks, and everything that depends on it alone.

    image   (N, C, H, W) uint8 on the device; augmentation and TTA on the device; no per-fold preprocessing
    table   (N, F) float32 raw features (NaN = missing, categories as codes); per-fold preprocessing fitted on the
            fold's training rows (imputation, scaling, one-hot, feature selection), saved beside the fold
    sequence  variable-length (T, F) sequences packed in one tensor: random crops to train, whole ones to predict
    frames    single frames of packed sequences, each with its neighbours (pipeline.inputs.sequence)

Stages ask a kind (through DataSpec, which names it) and never branch on it: `train_batch` (the augmented
training input), `model_input` (what the model consumes), `fit_fold` / `apply_fold` (per-fold preprocessing),
`tta_check` (a kind without TTA refuses --tta in one line), `forward` (how a batch enters the model).
"""
from __future__ import annotations

from pipeline.errors import PipelineError
from pipeline.inputs.image import ImageInput
from pipeline.inputs.spec import DataSpec  # noqa: F401 - how a model sees the data
from pipeline.inputs.sequence import FramesInput, SequenceInput
from pipeline.inputs.table import TableInput

KINDS = {"image": ImageInput(), "table": TableInput(), "sequence": SequenceInput(), "frames": FramesInput()}


def input_kind(name: str):
    """The input kind called `name`; an unknown one (a damaged config) is one line with the valid names."""
    if name not in KINDS:
        raise PipelineError(f"input kind {name!r} unknown; valid: {', '.join(KINDS)} (retrain with --overwrite)")
    return KINDS[name]
