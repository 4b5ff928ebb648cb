"""Sequence benchmarks, side by side (`python -m pipeline.bench --frames FRAMES` or `--speakers UTTERANCES`).

1. --frames (HW2): the seed notebook's way (its `concat_feat`: every frame's window of 2K + 1 frames concatenated up
   front into one (N, (2K + 1) x 39) array, a TensorDataset, a shuffled DataLoader of --batch-size) against the
   pipeline's `train_fold` on the frames input kind (one packed (N, 39) tensor; each batch's windows gathered by
   index arithmetic). Same network (the pipeline's bidirectional `lstm` over the window, its centre step: HW2's
   boss baseline), optimizer (timm AdamW), schedule, batch size, epochs; each validates every held-out frame once
   an epoch. Frames/s over epochs 2.. (the first is the warm-up); each side's peak resident memory.
2. --speakers (HW4): the sample code's Dataset (one `torch.load` of an utterance's .pt file per item, a random
   --crop-len window) and a padding collate in a DataLoader of --workers processes, against the packed path (every
   utterance in one tensor, windows cropped per batch). Same network (the pipeline's `transformer`: HW4's sample
   model with masks), batch size and epochs; both validate whole utterances (the notebook's padded in its collate,
   the pipeline's batched by length). Utterances/s over epochs 2.., peak memory.

Each side runs in its own process (its peak RSS is its own, the import of torch included in both) on the same
synthetic data: utterances of HW2/HW4-like lengths whose frames are their class's centroid plus noise (phoneme
segments of 3-15 frames for --frames). A speed benchmark: the accuracies only show both sides learn alike.
Figures are printed, never asserted; the last line is the speedup.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FEATURES = {"frames": 39, "speakers": 40}
CLASSES = {"frames": 41, "speakers": 100}


# -- the synthetic sets -------------------------------------------------------------------------------------------
def make_frames(total: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Utterances of 200-800 frames (HW2's mean is ~490) summing to `total` frames, labelled in phoneme segments."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(0, 1, (CLASSES["frames"], FEATURES["frames"])).astype(np.float32)
    feats, labels, left = [], [], total
    while left > 0:
        n = min(left, int(rng.integers(200, 801)))
        seg = np.repeat(rng.integers(0, CLASSES["frames"], n // 3 + 1), rng.integers(3, 16, n // 3 + 1))[:n]
        seg = np.pad(seg, (0, n - len(seg)), mode="edge")
        feats.append(centroids[seg] + rng.normal(0, 1.5, (n, FEATURES["frames"])).astype(np.float32))
        labels.append(seg.astype(np.int64))
        left -= n
    return feats, labels


def make_speakers(count: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """`count` utterances of 100-700 frames of 40 log-mel-like features; the speaker is the class."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(0, 1, (CLASSES["speakers"], FEATURES["speakers"])).astype(np.float32)
    speakers = rng.integers(0, CLASSES["speakers"], count)
    mels = [centroids[s] + rng.normal(0, 2.0, (int(rng.integers(100, 701)), FEATURES["speakers"])).astype(np.float32)
            for s in speakers]
    return mels, speakers.astype(np.int64)


def folds_of(groups: np.ndarray) -> np.ndarray:
    return (groups % 5).astype(np.int64)  # whole utterances per fold


# -- the seed notebooks -------------------------------------------------------------------------------------------
def shift(x: torch.Tensor, n: int) -> torch.Tensor:
    """HW2's sample: the rows moved by n, the edge row repeated."""
    if n < 0:
        return torch.cat((x[0].repeat(-n, 1), x[:n]), dim=0)
    if n > 0:
        return torch.cat((x[n:], x[-1].repeat(n, 1)), dim=0)
    return x


def concat_feat(x: torch.Tensor, concat_n: int) -> torch.Tensor:
    """HW2's sample: every frame with its (concat_n - 1) / 2 neighbours on each side, (T, concat_n x F)."""
    seq_len, feature_dim = x.size(0), x.size(1)
    x = x.repeat(1, concat_n).view(seq_len, concat_n, feature_dim).permute(1, 0, 2)
    mid = concat_n // 2
    for r in range(1, mid + 1):
        x[mid + r, :] = shift(x[mid + r], r)
        x[mid - r, :] = shift(x[mid - r], -r)
    return x.permute(1, 0, 2).reshape(seq_len, concat_n * feature_dim)


def build(mode: str, cfg, context: int = 0):
    from pipeline.models import build_model

    torch.manual_seed(cfg.seed)
    if mode == "frames":
        return build_model("lstm", CLASSES[mode], 1, 0, hidden=cfg.hidden, layers=cfg.layers, pool="center",
                           n_features=FEATURES[mode], step_features=FEATURES[mode], steps=2 * context + 1)
    return build_model("transformer", CLASSES[mode], 1, 0, hidden=cfg.hidden, layers=cfg.layers, pool="mean",
                       n_features=FEATURES[mode], step_features=FEATURES[mode])


def optimizer_and_schedule(model, cfg, rows: int):
    from timm.optim import create_optimizer_v2

    from pipeline.training.engine import steps_per_epoch
    from pipeline.training.recipe import make_scheduler

    optimizer = create_optimizer_v2(model, cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, make_scheduler(optimizer, cfg, steps_per_epoch(rows, cfg.batch_size), False)


def notebook_frames(cfg, rows: int, context: int, device: torch.device) -> dict:
    feats, labels = make_frames(rows, cfg.seed)
    groups = np.repeat(np.arange(len(feats)), [len(f) for f in feats])
    folds = folds_of(groups)
    started = time.perf_counter()
    x = torch.cat([concat_feat(torch.from_numpy(f), 2 * context + 1) for f in feats])  # (N, (2K + 1) x F)
    y = torch.from_numpy(np.concatenate(labels))
    train, valid = torch.from_numpy(folds != 0), torch.from_numpy(folds == 0)
    x_train, y_train, x_valid, y_valid = x[train], y[train], x[valid], y[valid]
    del x
    prep = time.perf_counter() - started
    from pipeline.training.engine import backward_and_step

    model = build("frames", cfg, context).to(device)
    optimizer, scheduler = optimizer_and_schedule(model, cfg, len(y_train))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train, y_train), batch_size=cfg.batch_size,
                                         shuffle=True, drop_last=True)
    valid_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_valid, y_valid),
                                               batch_size=2 * cfg.batch_size)
    steps = 2 * context + 1
    seconds, step, correct = [], 0, 0
    for _ in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        for xb, yb in loader:
            scheduler.step_update(step)
            logits = model(xb.to(device).view(len(xb), steps, FEATURES["frames"]))
            backward_and_step(F.cross_entropy(logits, yb.to(device)), model, optimizer)
            step += 1
        model.eval()
        correct = 0
        with torch.no_grad():
            for xb, yb in valid_loader:
                correct += int((model(xb.to(device).view(len(xb), steps, -1)).argmax(1).cpu() == yb).sum())
        seconds.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for xb, yb in loader:  # the data path alone: one epoch of batches, no model
        xb.to(device).view(len(xb), steps, FEATURES["frames"]), yb.to(device)
    data_seconds = time.perf_counter() - t0
    return {"epoch_seconds": seconds, "rows": len(y_train), "accuracy": correct / len(y_valid), "prep_seconds": prep,
            "data_seconds": data_seconds}


class SpeakerDataset(torch.utils.data.Dataset):
    """HW4's sample: each item one torch.load of its .pt file and a random window of segment_len frames."""

    def __init__(self, folder: Path, names: list[str], speakers: np.ndarray, segment_len: int):
        self.folder, self.names, self.speakers, self.segment_len = folder, names, speakers, segment_len

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        mel = torch.load(self.folder / self.names[i], weights_only=True)
        if self.segment_len and len(mel) > self.segment_len:
            start = int(torch.randint(0, len(mel) - self.segment_len + 1, ()))
            mel = mel[start:start + self.segment_len]
        return mel, int(self.speakers[i])


def collate(batch):
    """HW4's sample: pad to the batch's longest (it pads with -20, log 1e-20; the lengths also go to the model)."""
    mels, speakers = zip(*batch)
    lengths = torch.tensor([len(m) for m in mels])
    return torch.nn.utils.rnn.pad_sequence(mels, batch_first=True, padding_value=-20), lengths, torch.tensor(speakers)


def notebook_speakers(cfg, rows: int, workers: int, device: torch.device) -> dict:
    from pipeline.training.engine import backward_and_step

    mels, speakers = make_speakers(rows, cfg.seed)
    folds = folds_of(np.arange(len(mels)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        names = [f"uttr-{i:06d}.pt" for i in range(len(mels))]
        for name, mel in zip(names, mels):
            torch.save(torch.from_numpy(mel), folder / name)
        del mels
        tr, va = np.flatnonzero(folds != 0), np.flatnonzero(folds == 0)
        pick = lambda idx: ([names[i] for i in idx], speakers[idx])  # noqa: E731
        loader = torch.utils.data.DataLoader(SpeakerDataset(folder, *pick(tr), cfg.crop_len), batch_size=cfg.batch_size,
                                             shuffle=True, drop_last=True, num_workers=workers, collate_fn=collate,
                                             persistent_workers=workers > 0)
        valid_loader = torch.utils.data.DataLoader(SpeakerDataset(folder, *pick(va), 0), batch_size=2 * cfg.batch_size,
                                                   num_workers=workers, collate_fn=collate,
                                                   persistent_workers=workers > 0)
        model = build("speakers", cfg).to(device)
        optimizer, scheduler = optimizer_and_schedule(model, cfg, len(tr))
        seconds, step, correct = [], 0, 0
        for _ in range(cfg.epochs):
            t0 = time.perf_counter()
            model.train()
            for x, lengths, y in loader:
                scheduler.step_update(step)
                logits = model(x.to(device), lengths.to(device))
                backward_and_step(F.cross_entropy(logits, y.to(device)), model, optimizer)
                step += 1
            model.eval()
            correct = 0
            with torch.no_grad():
                for x, lengths, y in valid_loader:
                    correct += int((model(x.to(device), lengths.to(device)).argmax(1).cpu() == y).sum())
            seconds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for x, lengths, y in loader:  # the data path alone: one epoch of batches, no model
            x.to(device), lengths.to(device), y.to(device)
        data_seconds = time.perf_counter() - t0
    return {"epoch_seconds": seconds, "rows": len(tr), "accuracy": correct / len(va), "prep_seconds": 0.0,
            "data_seconds": data_seconds}


# -- the pipeline -------------------------------------------------------------------------------------------------
def pipeline_side(mode: str, cfg, n: int, context: int, device: torch.device) -> dict:
    """Fold 0 through `training.loop.fit` on the frames or sequence input kind, as `train` runs it."""
    import pandas as pd

    from pipeline.config import ExperimentConfig
    from pipeline.data.packed import pack
    from pipeline.data.sequences import FrameRows, SequenceRows
    from pipeline.inputs.spec import DataSpec
    from pipeline.tasks import Task
    from pipeline.training.engine import Steps
    from pipeline.training.loop import fit
    from pipeline.training.recipe import Recipe

    task = Task("multiclass", tuple(str(c) for c in range(CLASSES[mode])))
    started = time.perf_counter()
    if mode == "frames":
        feats, labels = make_frames(n, cfg.seed)
        packed = pack(feats)
        rows = FrameRows(packed, torch.arange(len(packed.values)))
        targets = torch.from_numpy(np.concatenate(labels))
        folds = folds_of(np.repeat(np.arange(len(feats)), [len(f) for f in feats]))
        spec = DataSpec(task, 0, (0.0,), (1.0,), "none", "frames", {"context": context})
        del feats  # only the packed copy stays, as in train
    else:
        mels, speakers = make_speakers(n, cfg.seed)
        packed = pack(mels)
        rows = SequenceRows(packed, torch.arange(len(packed)))
        targets = torch.from_numpy(speakers)
        folds = folds_of(np.arange(len(mels)))
        spec = DataSpec(task, 0, (0.0,), (1.0,), "none", "sequence", {"crop": cfg.crop_len})
        del mels
    prep = time.perf_counter() - started
    resolved = ExperimentConfig.resolve(cfg, n_splits=5, num_classes=CLASSES[mode], data_spec=spec.to_dict())
    with tempfile.TemporaryDirectory() as tmp:
        preds = fit(Recipe(cfg, spec, resolved.in_chans, device), resolved, (rows.to(device), targets.to(device)), folds, 0,
                    Path(tmp))
        seconds = pd.read_csv(Path(tmp) / "metrics.csv")["seconds"].tolist()
    accuracy = float((preds.argmax(1) == targets.numpy()[folds == 0]).mean())
    rows, targets = rows.to(device), targets.to(device)
    train = torch.from_numpy(np.flatnonzero(folds != 0)).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    t0 = time.perf_counter()  # the data path alone, as train_one_epoch takes it: one epoch of batches, no model
    order = train[torch.randperm(len(train), device=device, generator=generator)]
    for i in range(len(order) // cfg.batch_size):
        idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        spec.input_kind.train_inputs(rows, idx, device, spec, Steps.of(cfg), generator), targets[idx]
    data_seconds = time.perf_counter() - t0
    return {"epoch_seconds": seconds, "rows": int((folds != 0).sum()), "accuracy": accuracy, "prep_seconds": prep,
            "data_seconds": data_seconds}


# -- running the sides --------------------------------------------------------------------------------------------
def side(name: str, settings: dict) -> None:
    """One side in this process; its result (and its peak resident memory) as the last line of stdout, JSON."""
    from pipeline.config import Config

    rows, context, workers = (settings.pop(k) for k in ("bench_rows", "context", "workers"))
    cfg = Config(**settings)
    device = torch.device(cfg.device)
    mode = "frames" if name.endswith("frames") else "speakers"
    if name.startswith("notebook"):
        result = notebook_frames(cfg, rows, context, device) if mode == "frames" else \
            notebook_speakers(cfg, rows, workers, device)
    else:
        result = pipeline_side(mode, cfg, rows, context, device)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def run_side(name: str, settings: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "pipeline.bench.sequences", name, json.dumps(settings)],
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench: the {name} side failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rate(r: dict) -> float:
    timed = r["epoch_seconds"][1:] or r["epoch_seconds"]
    return r["rows"] / (sum(timed) / len(timed))


def run(cfg, mode: str, rows: int, workers: int, device: torch.device) -> float:
    from pipeline.config import to_dict

    context = cfg.context
    defaults = {"frames": {"batch_size": 512, "hidden": "256"},  # HW2's sample batch, a 256-wide BiLSTM
                "speakers": {"batch_size": 32, "hidden": "80"}}[mode]  # HW4's sample
    settings = to_dict(cfg) | {"exp": [], "label_smoothing": 0.0, "device": str(device), "precision": "fp32",
                               "batch_size": cfg.batch_size or defaults["batch_size"],
                               "hidden": cfg.hidden or defaults["hidden"],
                               "bench_rows": rows, "context": context, "workers": workers}
    settings["model"] = "lstm" if mode == "frames" else "transformer"
    what = "frames" if mode == "frames" else "utterances"
    print(f"bench --{mode}: {rows:,} {what}, {settings['model']} hidden {settings['hidden']} x {settings['layers']}, "
          f"batch {settings['batch_size']}, {cfg.epochs} epochs, device {device}"
          + (f", context {context} (windows of {2 * context + 1})" if mode == "frames" else
             f", crop {cfg.crop_len}, notebook workers {workers}") + "; each side in its own process; epoch 1 is the warm-up")
    slow = run_side(f"notebook-{mode}", dict(settings))
    fast = run_side(f"pipeline-{mode}", dict(settings))
    for name, r in (("seed-notebook", slow), ("pipeline", fast)):
        gpu = f"  peak GPU {r['peak_gpu_mb']:,.0f} MB" if "peak_gpu_mb" in r else ""
        print(f"{mode} {name:<14} {rate(r):>10,.0f} {what}/s  valid accuracy {r['accuracy']:.4f}  "
              f"set-up {r['prep_seconds']:.1f} s  peak RSS {r['peak_rss_mb']:,.0f} MB{gpu}")
    data = [r["rows"] / r["data_seconds"] for r in (slow, fast)]
    share = rate(slow) / data[0]  # the notebook's data path seconds over its epoch seconds
    print(f"data path alone (one epoch of training batches, no model): seed-notebook {data[0]:,.0f} {what}/s, "
          f"pipeline {data[1]:,.0f} {what}/s = {data[1] / data[0]:.2f}x; the notebook's data path alone takes "
          f"{share:.0%} of its epoch's time, the rest is the model's arithmetic (and validation)")
    speedup = rate(fast) / rate(slow)
    print(f"speedup: {speedup:.2f}x ({what}/s, pipeline vs seed-notebook); peak RSS {fast['peak_rss_mb']:,.0f} MB vs "
          f"{slow['peak_rss_mb']:,.0f} MB")
    return speedup


if __name__ == "__main__":
    side(sys.argv[1], json.loads(sys.argv[2]))
