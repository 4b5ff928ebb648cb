import re

import pytest
import torch

from pipeline import bench

pytestmark = pytest.mark.slow


def test_bench_runs_both_paths_and_prints_speedup(sample_dir, capsys):
    assert bench.main(["--data", str(sample_dir), "--device", "cpu", "--limit", "300", "--epochs", "1",
                       "--batch-size", "32", "--workers", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("seed-notebook") and "img/s" in line and "valid acc" in line for line in out)
    assert any(line.startswith("pipeline") and "host RSS" in line for line in out)
    assert re.fullmatch(r"speedup: \d+\.\dx \(pipeline [\d,]+ img/s vs seed-notebook [\d,]+ img/s\)", out[-1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_on_gpu(sample_dir, capsys):
    assert bench.main(["--data", str(sample_dir), "--device", "cuda", "--epochs", "1"]) == 0
    assert "peak GPU memory" in capsys.readouterr().out
