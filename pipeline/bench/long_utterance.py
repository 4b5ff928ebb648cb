"""Peak memory of predicting whole sequences with one long utterance among short ones (the transformer's attention
is batch x T^2): evaluation batches bounded in rows x T^2 (EVAL_SQUARE, the pipeline's) against the frames budget
alone. Each side runs in its own process, so each peak RSS is its own.

    .venv/bin/python -m pipeline.bench.long_utterance            # both sides, side by side
"""
from __future__ import annotations

import resource
import subprocess
import sys
import time


def side(square_on: bool) -> str:
    import numpy as np
    import torch

    from pipeline.data.packed import by_length, pack, whole_batch
    from pipeline.inputs.sequence import EVAL_FRAMES, EVAL_SQUARE
    from pipeline.seqnets import build_sequence_net

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(2000, 40)).astype(np.float32)] + \
        [rng.normal(size=(100, 40)).astype(np.float32) for _ in range(255)]  # one 2,000-frame utterance, 255 of 100
    packed, lengths = pack(arrays), torch.tensor([len(a) for a in arrays])
    net = build_sequence_net("transformer", 40, 600).eval()
    started = time.perf_counter()
    with torch.no_grad():
        for batch in by_length(lengths, 256, EVAL_FRAMES, EVAL_SQUARE if square_on else 0):
            net(*whole_batch(packed, batch))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return f"{peak:.0f} {time.perf_counter() - started:.3f}"


def main() -> None:
    if len(sys.argv) > 1:
        print(side(sys.argv[1] == "on"))
        return
    runs = {}
    for name in ("off", "on"):
        out = subprocess.run([sys.executable, "-m", "pipeline.bench.long_utterance", name], capture_output=True, text=True, check=True).stdout
        runs[name] = [float(v) for v in out.split()]
    (off_mb, off_s), (on_mb, on_s) = runs["off"], runs["on"]
    print(f"frames budget alone : peak RSS {off_mb:,.0f} MB  {off_s:.2f} s")
    print(f"rows x T^2 budget   : peak RSS {on_mb:,.0f} MB  {on_s:.2f} s")
    print(f"ratio: memory {off_mb / on_mb:.1f}x lower, time {off_s / on_s:.1f}x faster")


if __name__ == "__main__":
    main()
