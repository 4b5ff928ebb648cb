"""Sequence networks, by name: (x (B, T, F), lengths (B,) or None) -> (B, outputs). Padding never reaches a result.

    gru, lstm     bidirectional by default (--hidden H, --layers L): packed sequences, so a padded step is never read
    transformer   HW4's sample model: a linear projection, nn.TransformerEncoder layers (padding masked in attention)
    conformer     HW4's strong hint (Gulati et al. 2020): macaron feed-forward halves around self-attention and a
                  depthwise-convolution module, padding masked in attention and zeroed before each convolution

A sequence gives one output per sequence by pooling its valid steps (`pool`: masked 'mean', or 'attention', a learned
softmax over the steps), or, for frame labelling, the output at the window's centre step ('center': HW2's BiLSTM over
a frame and its neighbours). An image (B, 1, H, W) is read as H steps of W features (seed 003's RNN over the 28 rows
of a digit).
"""
from __future__ import annotations

import torch
from torch import nn

POOLS = ("mean", "attention", "center")


def step_mask(lengths: torch.Tensor | None, steps: int, device: torch.device) -> torch.Tensor | None:
    """(B, T) True on valid steps; None when every row is full.

    >>> step_mask(torch.tensor([2, 3]), 3, torch.device("cpu")).tolist()
    [[True, True, False], [True, True, True]]
    """
    if lengths is None:
        return None
    return torch.arange(steps, device=device)[None] < lengths.to(device)[:, None]


def as_steps(x: torch.Tensor) -> torch.Tensor:
    """(B, T, F) as is; an image (B, C, H, W) -> (B, H, C * W): its rows are the steps."""
    return x.permute(0, 2, 1, 3).flatten(2) if x.ndim == 4 else x


class Pool(nn.Module):
    """(B, T, D) step outputs -> (B, D): masked mean, learned attention over the valid steps, or the centre step."""

    def __init__(self, width: int, how: str = "mean"):
        super().__init__()
        if how not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {how!r}")
        self.how = how
        self.score = nn.Linear(width, 1) if how == "attention" else None

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.how == "center":
            return h[:, h.shape[1] // 2]
        if self.how == "attention":
            scores = self.score(h).squeeze(-1)  # (B, T)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            return (scores.softmax(1).unsqueeze(-1) * h).sum(1)
        if mask is None:
            return h.mean(1)
        weights = mask.to(h.dtype).unsqueeze(-1)
        return (h * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class RNN(nn.Module):
    """A (bidirectional) GRU or LSTM over the steps, its outputs pooled, then a linear head."""

    def __init__(self, cell: str, n_features: int, num_classes: int, hidden: int = 256, layers: int = 2,
                 drop_rate: float = 0.1, bidirectional: bool = True, pool: str = "mean"):
        super().__init__()
        kind = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.rnn = kind(n_features, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional,
                        dropout=drop_rate if layers > 1 else 0.0)
        width = hidden * (2 if bidirectional else 1)
        self.pool = Pool(width, pool)
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = as_steps(x)
        steps = x.shape[1]
        if lengths is not None and bool((lengths < steps).any()):  # padded rows: the RNN never reads their padding
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu().clamp_min(1), batch_first=True,
                                                       enforce_sorted=False)
            h, _ = self.rnn(packed)
            h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=steps)
        else:
            h, _ = self.rnn(x)
        return self.head(self.pool(h, step_mask(lengths, steps, x.device)))


class Transformer(nn.Module):
    """HW4's sample model: Linear(F -> d), TransformerEncoder layers with the padding masked, pooled, linear head."""

    def __init__(self, n_features: int, num_classes: int, d_model: int = 80, layers: int = 2, heads: int = 2,
                 drop_rate: float = 0.1, pool: str = "mean"):
        super().__init__()
        self.prenet = nn.Linear(n_features, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=4 * d_model, dropout=drop_rate,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.pool = Pool(d_model, pool)
        self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, num_classes))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = as_steps(x)
        mask = step_mask(lengths, x.shape[1], x.device)
        h = self.encoder(self.prenet(x), src_key_padding_mask=None if mask is None else ~mask)
        return self.head(self.pool(h, mask))


class ConformerBlock(nn.Module):
    """Half feed-forward, multi-head self-attention, convolution module, half feed-forward, layer norm."""

    def __init__(self, d: int, heads: int, kernel: int = 15, drop_rate: float = 0.1):
        super().__init__()
        self.ff1, self.ff2 = (nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.SiLU(), nn.Dropout(drop_rate),
                                            nn.Linear(4 * d, d), nn.Dropout(drop_rate)) for _ in range(2))
        self.attn_norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=drop_rate, batch_first=True)
        self.attn_drop = nn.Dropout(drop_rate)
        self.conv_norm = nn.LayerNorm(d)
        self.pointwise_in = nn.Conv1d(d, 2 * d, 1)
        self.depthwise = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.conv_bn = nn.BatchNorm1d(d)
        self.pointwise_out = nn.Conv1d(d, d, 1)
        self.conv_drop = nn.Dropout(drop_rate)
        self.out_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        h = self.attn_norm(x)
        h, _ = self.attn(h, h, h, key_padding_mask=None if mask is None else ~mask, need_weights=False)
        x = x + self.attn_drop(h)
        h = nn.functional.glu(self.pointwise_in(self.conv_norm(x).transpose(1, 2)), dim=1)  # (B, d, T)
        if mask is not None:  # zeros at the padding, as the kernel sees past the end of a sequence alone
            h = h * mask.unsqueeze(1)
        h = self.depthwise(h)
        h = self.pointwise_out(nn.functional.silu(self.conv_bn(h)))
        x = x + self.conv_drop(h.transpose(1, 2))
        x = x + 0.5 * self.ff2(x)
        return self.out_norm(x)


class Conformer(nn.Module):
    def __init__(self, n_features: int, num_classes: int, d_model: int = 80, layers: int = 2, heads: int = 2,
                 drop_rate: float = 0.1, pool: str = "mean"):
        super().__init__()
        self.prenet = nn.Linear(n_features, d_model)
        self.blocks = nn.ModuleList(ConformerBlock(d_model, heads, drop_rate=drop_rate) for _ in range(layers))
        self.pool = Pool(d_model, pool)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = as_steps(x)
        mask = step_mask(lengths, x.shape[1], x.device)
        h = self.prenet(x)
        for block in self.blocks:
            h = block(h, mask)
        return self.head(self.pool(h, mask))


SEQUENCE_NETS = ("gru", "lstm", "transformer", "conformer")


def build_sequence_net(name: str, n_features: int, num_classes: int, hidden: int = 0, layers: int = 2,
                       drop_rate: float = 0.1, pool: str = "mean") -> nn.Module:
    """gru / lstm (hidden: the cell width, 256 by default) or transformer / conformer (hidden: d_model, 80 by
    default, HW4's sample)."""
    if n_features < 1:
        raise ValueError(f"{name}: needs the features per step, got {n_features}")
    if name in ("gru", "lstm"):
        return RNN(name, n_features, num_classes, hidden or 256, layers, drop_rate, pool=pool)
    heads = 2 if (hidden or 80) % 2 == 0 else 1
    cls = Transformer if name == "transformer" else Conformer
    return cls(n_features, num_classes, hidden or 80, layers, heads, drop_rate, pool)
