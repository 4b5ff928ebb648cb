"""The sequence input kinds: rows that are variable-length (T, F) arrays packed into one tensor (pipeline.data.packed).

    sequence   one row per sequence (HW4's utterances): training takes a random --crop-len window of each (shorter
               ones padded and masked); evaluation and inference take whole sequences in batches of similar lengths,
               so OOF and test predictions see what the leaderboard scores. Models get (x, lengths).
    frames     one row per frame (HW2's phonemes): each frame with its --context K neighbours on either side inside
               its utterance (2K + 1 frames), gathered per batch, never materialised. Models get (B, 2K + 1, F):
               sequence models predict the centre frame, the mlp reads the window flattened.

Each fold normalises every feature by its mean and standard deviation over the fold's training frames (saved beside
the fold as JSON). `--aug specaugment` masks random spans of steps and of features in each training batch.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline import fingerprints as fp
from pipeline.data.packed import by_length, context_batch, crop_batch, whole_batch
from pipeline.device import to_device
from pipeline.errors import PipelineError
from pipeline.inputs.spec import InputKind

EVAL_FRAMES = 200_000  # padded frames per evaluation batch of whole sequences (each batch pads to its longest)
EVAL_SQUARE = 1 << 26  # rows x T^2 per evaluation batch: an attention map of 67M cells (256 MB float32 per head)


class SequenceInput(InputKind):
    name = "sequence"
    unit = "seq"  # what the training speed counts: seq/s
    has_preprocessing = True
    forms = ("sequence",)
    default_model = "transformer"
    pool = "mean"

    def audit_units(self, rows, features: dict) -> fp.Units:
        """One unit per sequence (frames: per utterance, each frame mapped to its own): the hash of its array, of its
        summary rounded, and the summary (length, each feature's mean and std)."""
        packed, of_row = self.audit_sequences(rows)
        values, offsets = packed.values.cpu(), packed.offsets.cpu()
        summary, names = fp.sequence_summary(values, offsets)
        return fp.Units("utterance", fp.sequence_hashes(values, offsets), fp.hash_rows(fp.rounded(summary)), summary,
                        names, of_row=of_row)

    def audit_sequences(self, rows):
        """(the rows' sequences packed, the sequence of each row or None: one per row)."""
        return rows.packed.subset(rows.rows), None

    def resolve(self, cfg, features: dict, say):
        """The recipe this data needs: as given (tables widen theirs)."""
        return cfg

    def settings(self, cfg) -> dict:
        """The training window, saved in the data spec."""
        return {"crop": cfg.crop_len}

    def check_mixing(self, cfg) -> None:
        raise PipelineError(f"--mixup/--cutmix: mix images; {self.name} rows are not mixed (--aug specaugment masks "
                            "spans of steps and features instead)")

    # -- per-fold normalisation ---------------------------------------------------------------------------------
    def fit_fold(self, data, train_rows: torch.Tensor, targets: torch.Tensor, spec, cfg):
        """Mean and std per feature over the training rows' frames; every row normalised with them."""
        mean, std = data[train_rows].moments()
        state = {"kind": self.name, "mean": mean.tolist(), "std": torch.where(std > 0, std, 1.0).tolist()}
        return self.apply_fold(state, data), state | self.settings_of(spec)

    def settings_of(self, spec) -> dict:
        """What the fold's network shape depends on besides the features, kept with its normalisation."""
        return {}

    def apply_fold(self, state: dict, data):
        values = data.packed.values
        mean = torch.tensor(state["mean"], dtype=torch.float32, device=values.device)
        std = torch.tensor(state["std"], dtype=torch.float32, device=values.device)
        if len(mean) != values.shape[1]:
            raise PipelineError(f"the fold was trained on {len(mean)} features per frame; these frames have "
                                f"{values.shape[1]}")
        return data.normalised(mean, std)

    def save_state(self, state: dict, path) -> None:
        from pipeline.io import write_json

        write_json(state, path)

    def load_state(self, path, spec=None) -> dict:
        from pipeline.io import read_json

        state = read_json(path, "normalisation state")
        ok = isinstance(state, dict) and state.get("kind") == self.name and all(
            isinstance(state.get(k), list) and state[k] and all(isinstance(v, (int, float)) and np.isfinite(v)
                                                                 for v in state[k]) for k in ("mean", "std"))
        if not ok or len(state["mean"]) != len(state["std"]) or min(state["std"]) <= 0:
            raise PipelineError(f"{path}: not a {self.name} normalisation written by pipeline.train; retrain this fold "
                                "with --overwrite")
        return state

    def net_input(self, in_chans: int, img_size: int, state: dict | None) -> dict:
        n = len(state["mean"]) if state else 0
        return {"n_features": n, "step_features": n}

    # -- batches ------------------------------------------------------------------------------------------------
    def train_inputs(self, data, idx: torch.Tensor, device: torch.device, spec, steps, generator: torch.Generator):
        x, lengths = crop_batch(data.packed, data.rows[idx.to(data.rows.device)], int(spec.features.get("crop", 128)),
                                generator)
        x = spec_augment(x, lengths, generator) if spec.augment == "specaugment" else x
        return to_device(x, device), lengths.to(device)

    def eval_inputs(self, data, batch_size: int, device: torch.device, spec):
        """(positions in data, model inputs) per batch: whole sequences, similar lengths together."""
        for batch in by_length(data.lengths.cpu(), max(1, batch_size), EVAL_FRAMES, EVAL_SQUARE):
            x, lengths = whole_batch(data.packed, data.rows[batch.to(data.rows.device)])
            yield batch, (to_device(x, device), lengths.to(device))

    def forward(self, model, x):
        """Sequence networks take (x, lengths); a frame's window (the mlp) is one tensor."""
        return model(*x) if isinstance(x, tuple) else model(x)

    def tta_check(self, preset: str) -> None:
        raise PipelineError(f"--tta: {self.name} rows have no test-time augmentation; infer without --tta")


class FramesInput(SequenceInput):
    name = "frames"
    unit = "frame"  # what the training speed counts: frame/s
    forms = ("sequence", "vector")
    default_model = "mlp"
    pool = "center"

    def settings(self, cfg) -> dict:
        """The window of neighbours, saved in the data spec and with each fold."""
        return {"context": cfg.context}

    def settings_of(self, spec) -> dict:
        return {"context": int(spec.features.get("context", 5))}

    def audit_sequences(self, rows):
        """Every utterance of the packed set, and each frame's utterance."""
        return rows.packed, rows.packed.sequence_of_frame(rows.rows).cpu().numpy()

    def net_input(self, in_chans: int, img_size: int, state: dict | None) -> dict:
        """A window of 2K + 1 frames: the mlp reads it flattened, sequence models step through it to its centre."""
        n = len(state["mean"]) if state else 0
        return {"n_features": n, "step_features": n, "steps": 2 * int(state.get("context", 5)) + 1 if state else 1,
                "pool": self.pool}
    def train_inputs(self, data, idx: torch.Tensor, device: torch.device, spec, steps, generator: torch.Generator):
        x = context_batch(data.packed, data.rows[idx.to(data.rows.device)], int(spec.features.get("context", 5)))
        if spec.augment == "specaugment":
            x = spec_augment(x, None, generator)
        return to_device(x, device)

    def eval_inputs(self, data, batch_size: int, device: torch.device, spec):
        """(positions in data, model inputs) per batch: consecutive frames, each with its window."""
        k = int(spec.features.get("context", 5))
        for start in range(0, len(data), max(1, batch_size)):
            batch = torch.arange(start, min(start + batch_size, len(data)))
            yield batch, to_device(context_batch(data.packed, data.rows[batch.to(data.rows.device)], k), device)


def spec_augment(x: torch.Tensor, lengths: torch.Tensor | None, generator: torch.Generator, time_width: float = 0.1,
                 feature_width: float = 0.15) -> torch.Tensor:
    """SpecAugment's masking (Park et al. 2019) on a batch (B, T, F): per row, one span of up to 10% of its steps and
    one of up to 15% of its features set to zero (0 is the normalised mean)."""
    b, t, f = x.shape
    gen_device = generator.device

    def spans(limit: torch.Tensor, size: int) -> torch.Tensor:
        width = (torch.rand(b, generator=generator, device=gen_device).to(x.device) * limit).long()
        start = (torch.rand(b, generator=generator, device=gen_device).to(x.device)
                 * (torch.as_tensor(size, device=x.device) - width).clamp_min(1)).long()
        steps = torch.arange(size, device=x.device)[None]
        return (steps >= start[:, None]) & (steps < (start + width)[:, None])

    n = lengths.to(x.device) if lengths is not None else torch.full((b,), t, device=x.device)
    time = spans(n.float() * time_width, t)
    feature = spans(torch.full((b,), f * feature_width, device=x.device), f)
    return x.masked_fill(time[:, :, None] | feature[:, None, :], 0.0)
