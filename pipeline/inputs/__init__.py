"""Input kinds: how one row looks, and everything that depends on it alone.

    image   (N, C, H, W) uint8 on the device; augmentation and TTA on the device; no per-fold preprocessing
    table   (N, F) float32 raw features (NaN = missing, categories as codes); per-fold preprocessing fitted on the
            fold's training rows (imputation, scaling, one-hot, feature selection), saved beside the fold
    sequence  variable-length (T, F) sequences packed in one tensor: random crops to train, whole ones to predict
    frames    single frames of packed sequences, each with its neighbours (pipeline.inputs.sequence)

Stages ask a kind (through DataSpec, which names it) and never branch on it: `train_batch` (the augmented
training input), `model_input` (what the model consumes), `fit_fold` / `apply_fold` (per-fold preprocessing),
`tta_check` (a kind without TTA refuses --tta in one line).
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


def model_form(name: str) -> str:
    """What input a model name wants: 'gbm' (a gradient-boosting learner), 'vector' (the mlp), 'sequence' (gru, lstm,
    transformer, conformer) or 'image' (timm's registry)."""
    from pipeline.learners import GBM_LEARNERS as LEARNERS
    from pipeline.nets import NETS

    return "gbm" if name in LEARNERS else NETS.get(name, "image")


def check_model(kind, model: str) -> None:
    """A model that cannot take this kind's rows is refused before any work, naming the ones that can."""
    if model_form(model) not in kind.forms:
        from pipeline.learners import GBM_LEARNERS as LEARNERS
        from pipeline.nets import NETS

        fits = [n for n in (*NETS, *LEARNERS) if model_form(n) in kind.forms]
        raise PipelineError(f"--model {model}: takes {model_form(model)} input, and this data is a {kind.name}; "
                            f"use {' or '.join(fits)}{' or any timm backbone' if 'image' in kind.forms else ''}")
