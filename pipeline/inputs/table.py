"""The table input kind: (N, F) float32 raw features; each fold fits its own preprocessing on its training rows.

The raw matrix holds numbers with NaN for missing cells and categorical columns as codes (the index of the value
in the train file's vocabulary). A fold's preprocessing (median imputation, standardisation, one-hot with a slot for
categories its training rows never saw, optional feature selection) is fitted on that fold's training rows only,
saved beside the fold as JSON, and applied to its validation rows and, at inference, to the test rows.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline import fingerprints as fp
from pipeline import preprocess
from pipeline.errors import PipelineError
from pipeline.inputs.spec import InputKind


ONEHOT_MAX_WIDTH = 512  # one-hot slots over every categorical column before the MLP embeds them instead


class TableInput(InputKind):
    name = "table"
    unit = "row"  # what the training speed counts: row/s
    has_preprocessing = True
    forms = ("vector", "gbm")  # mlp (the neural learner) or lightgbm (the gbm learner)
    default_model = "lightgbm"

    def audit_units(self, rows, features: dict) -> fp.Units:
        """One unit per row: the hash of its values as the reader normalised them (categories as codes), of its
        values rounded, its columns themselves for adversarial validation, and the keys of its repeated column blocks
        (overlapping windows)."""
        matrix = np.asarray(rows, dtype=np.float32)
        names = list(features.get("names") or [f"x{j}" for j in range(matrix.shape[1])])
        blocks = fp.column_blocks(names)
        notes = [f"columns repeat in {len(blocks)} blocks of {len(blocks[0])} ({', '.join(names[j] for j in blocks[0][:4])}"
                 f", ...): consecutive blocks compared across rows"] if blocks else []
        return fp.Units("row", fp.hash_rows(matrix), fp.hash_rows(fp.rounded(matrix)), matrix, names,
                        windows=fp.window_keys(matrix, blocks), notes=notes)

    def train_batch(self, x: torch.Tensor, spec, steps, generator: torch.Generator) -> torch.Tensor:
        """Rows are preprocessed already; tables have no augmentation preset."""
        return x

    def model_input(self, x: torch.Tensor, spec, channels_last: bool) -> torch.Tensor:
        return x.float()

    def tta_check(self, preset: str) -> None:
        raise PipelineError("--tta: tables have no test-time augmentation; infer without --tta")

    def fit_fold(self, data: torch.Tensor, train_rows: torch.Tensor, targets: torch.Tensor, spec,
                 cfg) -> tuple[torch.Tensor, dict]:
        """The fold's preprocessing fitted on `train_rows` only (--select-features, --cat-encoding); every row
        transformed with it (on data's device)."""
        raw = data.cpu().numpy()
        rows = train_rows.cpu().numpy()
        state = preprocess.fit(raw[rows], list(spec.features.get("categorical", [])),
                               list(spec.features.get("cardinalities", [])), list(spec.features.get("names", [])),
                               y=targets[train_rows.to(targets.device)].cpu().numpy(), task_kind=spec.task.kind,
                               select_k=cfg.select_features, encoding=cfg.cat_encoding)
        return self.apply_fold(state, data), state

    def apply_fold(self, state: dict, data) -> torch.Tensor:
        """Raw rows (a tensor on any device, or a numpy array) -> the fold's model input, (N, F') float32."""
        raw = data.cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data, dtype=np.float32)
        out = torch.from_numpy(np.ascontiguousarray(preprocess.apply(state, raw), dtype=np.float32))
        return out.to(data.device) if isinstance(data, torch.Tensor) else out

    def settings(self, cfg) -> dict:
        return {}

    def check_mixing(self, cfg) -> None:
        """Mixup blends whole rows of numbers (one-hot blocks included); cutmix cuts image patches, and a blend of two
        embedding slot indices names a third category."""
        if cfg.cutmix:
            raise PipelineError("--cutmix: cuts and pastes image patches; a table has none (--mixup blends rows)")
        if cfg.mixup and cfg.cat_encoding == "embed":
            raise PipelineError("--mixup: would blend the category slot indices of --cat-encoding embed into other "
                                "categories; use --cat-encoding onehot with --mixup, or no --mixup")

    def save_state(self, state: dict, path) -> None:
        preprocess.save(state, path)

    def load_state(self, path, spec=None) -> dict:
        """A fold's saved preprocessing, checked against the experiment's columns (`spec`: its DataSpec)."""
        return preprocess.load(path, spec.features if spec is not None else None)

    def resolve(self, cfg, features: dict, say):
        """The recipe a network needs on this data (the neural learner asks): one-hot blocks wider than
        ONEHOT_MAX_WIDTH in all (a 9,000-value column of a 0.5 MB file took 4.9 GB) become learned embeddings, with a
        notice (before any work)."""
        from dataclasses import replace

        cards = list(features.get("cardinalities", []))
        width = sum(c + 1 for c in cards)
        if cfg.cat_encoding != "onehot" or width <= ONEHOT_MAX_WIDTH:
            return cfg
        name = features["names"][features["categorical"][int(np.argmax(cards))]]
        say(f"notice: one-hot blocks of {len(cards)} categorical column(s) would be {width:,} input columns (over "
            f"{ONEHOT_MAX_WIDTH:,}; the largest, {name}, has {max(cards):,} values); using --cat-encoding embed "
            "(a learned embedding per column) instead")
        return replace(cfg, cat_encoding="embed")

    def train_inputs(self, data, idx: torch.Tensor, device: torch.device, spec, steps, generator: torch.Generator):
        from pipeline.device import take

        return self.model_input(take(data, idx, device), spec, False)

    def eval_inputs(self, data, batch_size: int, device: torch.device, spec):
        for start in range(0, len(data), batch_size):
            rows = data[start:start + batch_size].to(device, non_blocking=True)
            yield torch.arange(start, start + len(rows)), self.model_input(rows, spec, False)

    def net_input(self, in_chans: int, img_size: int, state: dict | None) -> dict:
        """The MLP's input: apply's width, and the slots of each categorical column it embeds (the last columns)."""
        return {"n_features": len(preprocess.output_names(state)), "embeddings": tuple(preprocess.embedding_sizes(state))}
