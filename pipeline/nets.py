"""The project's own networks for non-image inputs, by name; each declares the input form it wants.

    mlp   (B, F) vectors (a table's preprocessed features, or a flattened image): the course's HW1/HW2 network,
          Linear + BatchNorm1d + ReLU + Dropout blocks of --hidden sizes, then a linear head; a table's categorical
          columns as one-hot blocks in the vector, or (--cat-encoding embed) as slot indices in its last columns,
          each looked up in its own learned embedding.

timm's registry holds the image backbones; `lightgbm`, `catboost`, `xgboost` and `linear` are not networks: they
name the table learners (TABLE_MODELS: the module of pipeline.learners fitting each)
(pipeline.learners).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from pipeline.errors import PipelineError

DEFAULT_HIDDEN = (256, 128)


def parse_hidden(text: str) -> tuple[int, ...]:
    """--hidden '512,256' -> (512, 256); '' -> the default.

    >>> parse_hidden("512, 256"), parse_hidden("")
    ((512, 256), (256, 128))
    """
    if not text.strip():
        return DEFAULT_HIDDEN
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(not 1 <= s <= 65536 for s in sizes):
        raise PipelineError(f"--hidden: comma-separated layer sizes 1..65536, e.g. 256,128; got {text!r}")
    return sizes


def embedding_dim(slots: int) -> int:
    """Width of a categorical column's embedding: half its slots, at most 50 (the rule of fast.ai's first tabular
    models and of the Rossmann entity-embedding write-ups).

    >>> embedding_dim(3), embedding_dim(12), embedding_dim(1000)
    (2, 6, 50)
    """
    return max(1, min(50, (slots + 1) // 2))


class MLP(nn.Module):
    """(B, ...) -> flattened (B, F) -> [Linear, BatchNorm1d, ReLU, Dropout] per hidden size -> (B, num_classes).

    embeddings: the slots of each categorical column held as an index in the input's last len(embeddings) columns;
    each index is replaced by its learned embedding_dim(slots) vector before the first layer."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = DEFAULT_HIDDEN,
                 drop_rate: float = 0.1, embeddings: tuple[int, ...] = ()):
        super().__init__()
        self.n_dense = in_features - len(embeddings)
        self.embeddings = nn.ModuleList(nn.Embedding(slots, embedding_dim(slots)) for slots in embeddings)
        layers, width = [nn.Flatten()], self.n_dense + sum(e.embedding_dim for e in self.embeddings)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.BatchNorm1d(size), nn.ReLU(inplace=True), nn.Dropout(drop_rate)]
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.embeddings):
            slots = x[:, self.n_dense:].long()  # (B, categorical columns): exact small integers held as floats
            x = torch.cat([x[:, :self.n_dense], *(emb(slots[:, i]) for i, emb in enumerate(self.embeddings))], 1)
        return self.head(self.body(x))


TABLE_MODELS = {"lightgbm": "gbm", "catboost": "catboost", "xgboost": "xgboost", "linear": "linear"}

NETS = {"mlp": "vector", "gru": "sequence", "lstm": "sequence", "transformer": "sequence", "conformer": "sequence"}


def build_net(name: str, num_classes: int, n_features: int, opts, step_features: int = 0) -> nn.Module:
    """mlp on vectors of n_features (a window of opts.steps frames flattened: n_features * steps); a sequence network
    on steps of `step_features` features. opts: models.ModelOptions (hidden, drop_rate, embeddings, layers, pool)."""
    if name == "mlp":
        return MLP(n_features * max(1, opts.steps), num_classes, parse_hidden(opts.hidden),
                   opts.drop_rate if opts.drop_rate else 0.1, tuple(opts.embeddings))
    if NETS.get(name) == "sequence":
        from pipeline.seqnets import build_sequence_net

        sizes = parse_hidden(opts.hidden) if opts.hidden.strip() else (0,)
        return build_sequence_net(name, step_features, num_classes, sizes[0], opts.layers, opts.drop_rate or 0.1,
                                  opts.pool)
    raise PipelineError(f"--model: unknown network {name!r}; the project's own: {', '.join(NETS)}")
