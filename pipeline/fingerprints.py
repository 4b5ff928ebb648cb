"""Fingerprints of rows for the leakage audit (pure, numpy and torch, in bulk): what makes two rows the same, nearly
the same, or alike enough to tell train from test. Each input kind builds its Units from these (pipeline.inputs);
pipeline.audit finds the pairs.

    exact   a 64-bit hash of each unit's content (a table's normalised row, an image's cached pixels, a sequence's array)
    near    tables and sequences: the hash of the content rounded (ROUND_DIGITS significant digits); images: a 64-bit
            perceptual hash (pHash) of the cached pixels within --hamming bits, confirmed by the correlation of their
            32x32 grey thumbnails (>= CORRELATION: the same picture re-encoded, resized, brightened)
    summary a few numbers per unit that adversarial validation learns from (a table: its columns)
    windows tables whose columns repeat by blocks (HW1's shape: name, name.1, name.2 for consecutive days): the hash of
            each pair of consecutive blocks, so that a row whose later blocks are another's earlier ones is found
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from pipeline.errors import PipelineError

ROUND_DIGITS = 3  # near duplicates of tables and sequences: values equal to this many significant digits
CORRELATION = 0.995  # near duplicate images: pHash close and thumbnails' pixels this correlated (re-encoded, resized)
CHUNK = 4096  # images hashed per torch call
MAX_CANDIDATES = 30_000_000  # near-duplicate image candidates checked pixel by pixel (about 1 GB of pairs)
WORDS = 64  # rows of up to this many 8-byte words are hashed in numpy, wider ones one by one


@dataclass
class Units:
    """What the audit compares, one entry per unit (a row, an image, an utterance)."""
    unit: str  # what one unit is, for the report: row, image, utterance
    exact: np.ndarray  # (U,) uint64
    near: np.ndarray  # (U,) uint64: a rounded content hash, or a pHash (hamming)
    summary: np.ndarray  # (U, D) float32
    names: list[str]  # the D summary columns' names
    hamming: bool = False  # near keys are perceptual hashes compared within HAMMING bits
    of_row: np.ndarray | None = None  # (N,) the unit of each row (frames: their utterance); None: a unit per row
    windows: np.ndarray | None = None  # (U, W) uint64 keys of consecutive column blocks (tables of repeated columns)
    pixels: object = None  # images: (U, C, H, W) uint8, to draw pairs side by side
    thumbs: np.ndarray | None = None  # images: (U, 1024) unit-norm grey thumbnails confirming near pairs
    notes: list[str] = field(default_factory=list)


def hash_rows(matrix: np.ndarray) -> np.ndarray:
    """(N,) uint64 hash of each row's bytes (NaN written one way, -0.0 as 0.0): equal rows, equal hashes. Rows of up
    to WORDS 8-byte words are hashed column by column in numpy; wider ones (images) one by one with blake2b."""
    m = np.asarray(matrix)
    if m.dtype.kind == "f":
        m = np.where(np.isnan(m), np.nan, m + 0.0).astype(m.dtype)
    m = np.ascontiguousarray(m.reshape(len(m), -1))
    raw = m.view(np.uint8).reshape(len(m), -1)
    if raw.shape[1] > 8 * WORDS:
        return np.array([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little") for r in raw],
                        dtype=np.uint64)
    pad = (-raw.shape[1]) % 8
    words = np.ascontiguousarray(np.pad(raw, ((0, 0), (0, pad)))).view(np.uint64)
    out = np.full(len(m), raw.shape[1], dtype=np.uint64)
    for j in range(words.shape[1]):
        out = pd.util.hash_array(out ^ pd.util.hash_array(words[:, j] ^ np.uint64(j)))
    return out


def rounded(matrix: np.ndarray, digits: int = ROUND_DIGITS) -> np.ndarray:
    """Each value rounded to `digits` significant digits (NaN kept)."""
    m = np.asarray(matrix, dtype=np.float64)
    with np.errstate(all="ignore"):
        scale = 10.0 ** (digits - 1 - np.floor(np.log10(np.abs(m))))
        out = np.round(m * scale) / scale
    return np.where((m == 0) | ~np.isfinite(scale), m, out)


def _dct(n: int) -> torch.Tensor:
    k, j = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    basis = torch.cos(torch.pi * (2 * j + 1) * k / (2 * n)) * (2 / n) ** 0.5
    basis[0] /= 2 ** 0.5
    return basis.float()


def _grey(images: np.ndarray, side: int) -> torch.Tensor:
    """(N, side, side) float grey images, resized by area (or bilinear when enlarging)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().mean(1, keepdim=True)
    if x.shape[-1] >= side and x.shape[-2] >= side:
        return torch.nn.functional.adaptive_avg_pool2d(x, (side, side))[:, 0]
    return torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)[:, 0]


def phash(images: np.ndarray) -> np.ndarray:
    """(N,) uint64 perceptual hash of (N, C, H, W) uint8 images: grey at 32x32, 2-D DCT, each of the 8x8 lowest
    frequencies above their median or not (Zauner's pHash); robust to noise, re-encoding and brightness. CHUNK images
    per torch call."""
    out = np.empty(len(images), dtype=np.uint64)
    basis = _dct(32)
    weights = torch.tensor([1 << i for i in range(63)] + [-(1 << 63)], dtype=torch.int64)
    for start in range(0, len(images), CHUNK):
        low = (basis @ _grey(images[start:start + CHUNK], 32) @ basis.T)[:, :8, :8].reshape(-1, 64)
        bits = (low > low[:, 1:].median(1, keepdim=True).values).long()
        out[start:start + len(low)] = (bits * weights).sum(1).numpy().view(np.uint64)
    return out


def thumbnails(images: np.ndarray, side: int = 32) -> np.ndarray:
    """(N, side * side) float32 grey thumbnails, each centred and scaled to unit norm: the dot product of two is
    their pixels' correlation."""
    out = []
    for start in range(0, len(images), CHUNK):
        t = _grey(images[start:start + CHUNK], side).flatten(1)
        t = t - t.mean(1, keepdim=True)
        out.append((t / t.norm(dim=1, keepdim=True).clamp(min=1e-6)).numpy())
    return np.concatenate(out) if out else np.zeros((0, side * side), np.float32)


def correlations(thumbs: np.ndarray, pairs: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Pixel correlation of each pair of thumbnails."""
    return np.concatenate([np.einsum("ij,ij->i", thumbs[p[:, 0]], thumbs[p[:, 1]])
                           for p in np.array_split(pairs, max(1, len(pairs) // chunk))]) if len(pairs) else np.zeros(0)


def image_summary(images: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per image: each channel's mean and std, and a 4x4 grey thumbnail (what an adversarial model can tell apart:
    brightness, contrast, framing, size of the object)."""
    rows = []
    for start in range(0, len(images), CHUNK):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + CHUNK])).float() / 255
        thumb = torch.nn.functional.adaptive_avg_pool2d(x.mean(1, keepdim=True), (4, 4)).flatten(1)
        rows.append(torch.cat([x.mean((2, 3)), x.std((2, 3)), thumb], 1).numpy())
    c = images.shape[1]
    names = [f"mean_c{i}" for i in range(c)] + [f"std_c{i}" for i in range(c)] + \
            [f"thumb_{r}{q}" for r in range(4) for q in range(4)]
    return (np.concatenate(rows) if rows else np.zeros((0, len(names)), np.float32)), names


def sequence_summary(values: torch.Tensor, offsets: torch.Tensor) -> tuple[np.ndarray, list[str]]:
    """Per sequence: its length and each feature's mean and std over its frames."""
    lengths = (offsets[1:] - offsets[:-1]).double()
    seq = torch.repeat_interleave(torch.arange(len(lengths)), (offsets[1:] - offsets[:-1]).long())
    v = values.double()
    sums = torch.zeros(len(lengths), v.shape[1], dtype=torch.float64).index_add_(0, seq, v)
    squares = torch.zeros_like(sums).index_add_(0, seq, v * v)
    n = lengths.clamp(min=1)[:, None]
    mean = sums / n
    std = (squares / n - mean ** 2).clamp(min=0).sqrt()
    f = v.shape[1]
    names = ["length"] + [f"mean_f{i}" for i in range(f)] + [f"std_f{i}" for i in range(f)]
    return torch.cat([lengths[:, None], mean, std], 1).float().numpy(), names


def sequence_hashes(values: torch.Tensor, offsets: torch.Tensor) -> np.ndarray:
    """(U,) uint64 hash of each sequence's frames (its length and every value)."""
    frames = hash_rows(values.numpy())
    seq = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets.numpy()))
    position = (np.arange(len(frames)) - np.repeat(offsets.numpy()[:-1], np.diff(offsets.numpy()))).astype(np.uint64)
    mixed = pd.util.hash_array(frames ^ (position * np.uint64(0x9E3779B97F4A7C15)))
    out = np.zeros(len(offsets) - 1, dtype=np.uint64)
    np.add.at(out, seq, mixed)  # order-aware through the position, summed mod 2^64
    return out ^ pd.util.hash_array(np.diff(offsets.numpy()).astype(np.uint64))


def column_blocks(names: list[str]) -> list[list[int]]:
    """Column indices of repeated blocks (name, name.1, name.2, ...: HW1's consecutive days), over the names every
    block has, in block order; [] when the columns do not repeat."""
    base = [re.sub(r"\.\d+$", "", n) for n in names]
    which = [int(m.group(1)) if (m := re.search(r"\.(\d+)$", n)) and b != n else 0 for n, b in zip(names, base)]
    counts = pd.Series(base).value_counts()
    k = int(counts.max()) if len(counts) else 0
    if k < 2:
        return []
    common = [b for b in dict.fromkeys(base) if counts[b] == k]
    if len(common) < 2:
        return []
    index = {(b, w): i for i, (b, w) in enumerate(zip(base, which))}
    if any((b, j) not in index for b in common for j in range(k)):
        return []
    return [[index[(b, j)] for b in common] for j in range(k)]


def window_keys(matrix: np.ndarray, blocks: list[list[int]]) -> np.ndarray | None:
    """(N, k - 1) keys of each pair of consecutive blocks of a row, comparable across positions: row r's blocks
    (1, 2) equal row s's blocks (0, 1) when the two rows are windows one step apart."""
    if len(blocks) < 3:  # two blocks: one pair, the whole row; nothing shifted to compare
        return None
    keys = [hash_rows(np.concatenate([matrix[:, blocks[j]], matrix[:, blocks[j + 1]]], 1))
            for j in range(len(blocks) - 1)]
    return np.stack(keys, 1)


def hamming_pairs(codes: np.ndarray, threshold: int, chunk: int = 1024) -> np.ndarray:
    """(P, 2) index pairs i < j whose 64-bit codes differ in at most `threshold` bits (brute force in chunks:
    50,000 codes are 1.25e9 comparisons, a few seconds). More than MAX_CANDIDATES pairs is refused in one line."""
    codes = np.asarray(codes, dtype=np.uint64)
    found, total = [], 0
    for start in range(0, len(codes), chunk):
        block = codes[start:start + chunk, None] ^ codes[None, start:]
        close = np.bitwise_count(block) <= threshold
        i, j = np.nonzero(close)
        i, j = i + start, j + start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], 1))
        total += int(keep.sum())
        if total > MAX_CANDIDATES:
            raise PipelineError(f"--hamming {threshold}: more than {MAX_CANDIDATES:,} image pairs within {threshold} bits "
                                "(images alike at this scale: blank or near-blank ones?); lower --hamming")
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)


def equal_pairs(keys: np.ndarray) -> np.ndarray:
    """(P, 2) pairs i < j of units with equal keys, each unit paired with the first of its key (a chain, enough for
    clusters and counts)."""
    keys = np.asarray(keys)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    same = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1]) + 1
    if not len(same):
        return np.zeros((0, 2), dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    first = order[starts[np.searchsorted(starts, same, side="right") - 1]]
    pairs = np.stack([first, order[same]], 1)
    return np.sort(pairs, 1)


def clusters(n: int, pairs: np.ndarray) -> np.ndarray:
    """(n,) cluster number of each unit: connected components of `pairs` (scipy), numbered in order of first unit."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    labels = connected_components(graph, directed=False)[1]
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse]
