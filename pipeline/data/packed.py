"""Variable-length sequences packed into one tensor, and the batches taken from it, padded only to each batch's need.

    values   (S, F) float32   every sequence's frames one after another (S = the sum of the lengths)
    offsets  (N + 1,) int64   sequence i is values[offsets[i]:offsets[i + 1]]

A set of utterances is packed once (on the device when it fits) and never padded as a whole. Batches are gathered
from it by index arithmetic:

    crop_batch      a random window of `crop` frames per sequence (training; shorter ones padded and masked)
    whole_batch     whole sequences, padded to the batch's longest (evaluation and inference)
    context_batch   each frame with its k neighbours on either side inside its own sequence (frame labelling: HW2's
                    concat_nframes = 2k + 1; the edges repeat the first or last frame), never materialised for all
                    frames at once

Every batch is (x (B, T, F), lengths (B,)): positions at or beyond a row's length are zeros, and models mask them.
A fold's normalisation rides with the set (`normalised`): applied to each batch as it is gathered, so a fold never
holds a second, normalised copy of the whole set.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Packed:
    values: torch.Tensor  # (S, F) float32
    offsets: torch.Tensor  # (N + 1,) int64, offsets[0] == 0, offsets[-1] == S
    mean: torch.Tensor | None = None  # (F,): frames are read as (values - mean) / std when set
    std: torch.Tensor | None = None

    def normalised(self, mean: torch.Tensor, std: torch.Tensor) -> Packed:
        """The same frames, read as (values - mean) / std (nothing copied now)."""
        device = self.values.device
        return Packed(self.values, self.offsets, mean.to(device, torch.float32), std.to(device, torch.float32))

    def read(self, pos: torch.Tensor) -> torch.Tensor:
        """The frames at positions `pos` (any shape), normalised when the set is."""
        x = self.values[pos]
        return x if self.mean is None else (x - self.mean) / self.std

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def n_features(self) -> int:
        return int(self.values.shape[1])

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to(self, device: torch.device) -> Packed:
        moved = [None if t is None else t.to(device) for t in (self.mean, self.std)]
        return Packed(self.values.to(device), self.offsets.to(device), *moved)

    def sequence(self, i: int) -> torch.Tensor:
        return self.read(torch.arange(int(self.offsets[i]), int(self.offsets[i + 1]), device=self.values.device))

    def subset(self, idx: torch.Tensor) -> Packed:
        """The sequences `idx`, in that order, packed anew."""
        idx = idx.to(self.offsets.device)
        lengths = self.lengths[idx]
        offsets = torch.zeros(len(idx) + 1, dtype=torch.int64, device=self.offsets.device)
        offsets[1:] = lengths.cumsum(0)
        starts = torch.repeat_interleave(self.offsets[idx], lengths)
        within = torch.arange(int(offsets[-1]), device=self.offsets.device) - torch.repeat_interleave(offsets[:-1], lengths)
        return Packed(self.read((starts + within).to(self.values.device)), offsets)

    def sequence_of_frame(self, frames: torch.Tensor) -> torch.Tensor:
        """The sequence each frame (a row of values) belongs to."""
        return torch.searchsorted(self.offsets, frames.to(self.offsets.device), right=True) - 1


def pack(arrays: list[np.ndarray]) -> Packed:
    """(T_i, F) arrays -> one Packed (float32, on the CPU).

    >>> p = pack([np.ones((2, 3)), np.zeros((4, 3))])
    >>> len(p), p.lengths.tolist(), tuple(p.values.shape)
    (2, [2, 4], (6, 3))
    """
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    values = np.concatenate([np.asarray(a, dtype=np.float32) for a in arrays]) if arrays else np.zeros((0, 0), np.float32)
    return Packed(torch.from_numpy(values), torch.from_numpy(offsets))


def _gather(p: Packed, idx: torch.Tensor, starts: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows idx's frames from `starts` (offsets within each sequence), `width` of them, zero past each end."""
    device = p.values.device
    idx, starts = idx.to(device), starts.to(device)
    offsets, lengths = p.offsets.to(device)[idx], p.lengths.to(device)[idx]
    steps = torch.arange(width, device=device)
    valid = (starts[:, None] + steps[None]) < lengths[:, None]  # (B, width)
    pos = torch.where(valid, offsets[:, None] + starts[:, None] + steps[None], offsets[:, None])
    x = p.read(pos) * valid[..., None]
    return x, torch.clamp(lengths - starts, max=width)


def crop_batch(p: Packed, idx: torch.Tensor, crop: int, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """A random window of `crop` frames from each sequence idx (all of a shorter one, padded): (B, <= crop, F),
    lengths (a batch of short sequences pads only to its longest).

    >>> p = pack([np.arange(5.0)[:, None], np.arange(2.0)[:, None]])
    >>> x, n = crop_batch(p, torch.tensor([0, 1]), 3, torch.Generator().manual_seed(0))
    >>> n.tolist(), x[1, :, 0].tolist()
    ([3, 2], [0.0, 1.0, 0.0])
    """
    lengths = p.lengths[idx.to(p.offsets.device)]
    room = torch.clamp(lengths - crop, min=0).to(torch.float64)
    device = generator.device if generator is not None else torch.device("cpu")
    draw = torch.rand(len(idx), generator=generator, device=device, dtype=torch.float64).to(room.device)
    starts = torch.floor(draw * (room + 1)).to(torch.int64)
    return _gather(p, idx, starts, min(crop, int(lengths.max())) if len(idx) else crop)  # pad to the batch's need


def whole_batch(p: Packed, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole sequences idx padded to the longest of them: (B, T_max, F), lengths.

    >>> p = pack([np.arange(3.0)[:, None], np.arange(1.0)[:, None]])
    >>> x, n = whole_batch(p, torch.tensor([1, 0]))
    >>> n.tolist(), x[:, :, 0].tolist()
    ([1, 3], [[0.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
    """
    width = int(p.lengths[idx.to(p.offsets.device)].max()) if len(idx) else 0
    return _gather(p, idx, torch.zeros(len(idx), dtype=torch.int64), width)


def context_batch(p: Packed, frames: torch.Tensor, k: int) -> torch.Tensor:
    """Each frame (a row of values) with its k neighbours on either side within its own sequence, the first or last
    frame repeated past an edge: (B, 2k + 1, F).

    >>> p = pack([np.arange(3.0)[:, None], 10 + np.arange(2.0)[:, None]])
    >>> context_batch(p, torch.tensor([0, 3]), 1)[:, :, 0].tolist()
    [[0.0, 0.0, 1.0], [10.0, 10.0, 11.0]]
    """
    device = p.values.device
    frames = frames.to(device)
    seq = p.sequence_of_frame(frames).to(device)
    offsets = p.offsets.to(device)
    first, last = offsets[seq], offsets[seq + 1] - 1
    pos = frames[:, None] + torch.arange(-k, k + 1, device=device)[None]
    pos = torch.maximum(torch.minimum(pos, last[:, None]), first[:, None])
    return p.read(pos)


def by_length(lengths: torch.Tensor, batch_size: int, budget: int = 0, square_budget: int = 0) -> list[torch.Tensor]:
    """Indices in batches of similar lengths (sorted, longest first), each at most batch_size rows and, with a
    budget, at most `budget` padded frames: evaluation pads each batch only to its own longest. `square_budget`
    bounds rows x T^2 (an attention map per row): a 2,000-frame utterance goes with few others.

    >>> [b.tolist() for b in by_length(torch.tensor([5, 1, 4, 2]), 2)]
    [[0, 2], [3, 1]]
    >>> [len(b) for b in by_length(torch.tensor([2000] + [100] * 40), 64, 10**6, 2 * 10**7)]
    [5, 36]
    """
    order = torch.argsort(lengths.cpu(), descending=True, stable=True)
    batches, start = [], 0
    while start < len(order):
        size = batch_size
        longest = max(1, int(lengths[order[start]]))
        if budget:
            size = max(1, min(size, budget // longest))
        if square_budget:
            size = max(1, min(size, square_budget // longest ** 2))
        batches.append(order[start:start + size])
        start += size
    return batches
