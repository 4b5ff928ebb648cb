import re

import pytest
import torch

from pipeline.bench import digits as bench

pytestmark = pytest.mark.slow


def test_bench_runs_both_paths_and_prints_speedup(sample_dir, capsys):
    assert bench.main(["--data", str(sample_dir), "--device", "cpu", "--limit", "300", "--epochs", "1",
                       "--batch-size", "32", "--workers", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("seed-notebook") and "img/s" in line and "valid acc" in line for line in out)
    assert any(line.startswith("pipeline") and "host RSS" in line for line in out)
    match = re.fullmatch(r"speedup: (\d+\.\d\d)x \(pipeline ([\d,]+) img/s vs seed-notebook ([\d,]+) img/s\)", out[-1])
    assert match, out[-1]
    speedup, fast, slow = float(match[1]), *(int(g.replace(",", "")) for g in match.groups()[1:])
    assert fast > 0 and slow > 0 and speedup > 0
    assert speedup == pytest.approx(fast / slow, rel=0.02)  # the printed ratio is the ratio of the printed figures


def test_bench_image_files(workdir, capsys):
    assert bench.main(["--images", "48", "--device", "cpu", "--img-size", "32", "--batch-size", "16",
                       "--workers", "1"]) == 0
    out = capsys.readouterr().out
    delivery = re.search(r"delivery +notebook +([\d,]+) img/s +pipeline +([\d,]+) img/s +(\d+\.\d\d)x", out)
    epoch = re.search(r"epoch +notebook +([\d.]+) s .* pipeline +([\d.]+) s", out)
    last = re.fullmatch(r"speedup: delivery (\d+\.\d\d)x, epoch (\d+\.\d\d)x \(digit_cnn at 32px\)", out.strip().splitlines()[-1])
    assert delivery and epoch and last, out
    notebook, pipeline = (int(g.replace(",", "")) for g in delivery.groups()[:2])
    assert notebook > 0 and pipeline > 0 and float(last[1]) == pytest.approx(pipeline / notebook, rel=0.02)
    assert float(last[2]) == pytest.approx(float(epoch[1]) / float(epoch[2]), rel=0.1)
    assert len(list((workdir / ".cache" / "bench-jpegs" / "train_images").glob("*.jpg"))) == 48


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_on_gpu(sample_dir, capsys):
    assert bench.main(["--data", str(sample_dir), "--device", "cuda", "--epochs", "1"]) == 0
    assert "peak GPU memory" in capsys.readouterr().out


def test_bench_table_prints_both_sides_and_ratios(capsys, tmp_path):
    params = tmp_path / "params.json"
    params.write_text('{"num_iterations": 60, "early_stopping_round": 10}')  # both sides: the test stays short
    assert bench.main(["--table", "1500", "--epochs", "2", "--device", "cpu", "--batch-size", "128",
                       "--gbm-params", str(params)]) == 0
    out = capsys.readouterr().out
    sides = dict(re.findall(r"^mlp (seed-notebook|pipeline) +([\d,]+) rows/s", out, flags=re.M))
    walls = dict(re.findall(r"^lightgbm (plain 5-fold loop|pipeline) +([\d.]+) s", out, flags=re.M))
    last = re.fullmatch(r"speedup: mlp (\d+\.\d\d)x \(rows/s, pipeline vs seed-notebook\); lightgbm wall (\d+\.\d\d)x "
                        r"of the plain loop", out.strip().splitlines()[-1])
    assert len(sides) == 2 and len(walls) == 2 and last, out
    fast, slow = (int(sides[k].replace(",", "")) for k in ("pipeline", "seed-notebook"))
    assert float(last[1]) == pytest.approx(fast / slow, rel=0.02)  # the printed ratios are the printed figures'
    assert float(last[2]) == pytest.approx(float(walls["pipeline"]) / float(walls["plain 5-fold loop"]), rel=0.1)


@pytest.mark.parametrize("mode,size,unit", [("--frames", "2000", "frames"), ("--speakers", "50", "utterances")])
def test_bench_sequences_runs_each_side_in_its_own_process(capsys, monkeypatch, mode, size, unit):
    """--frames through real subprocesses; --speakers in this process (the same side() code, a faster test)."""
    extra = ["--hidden", "8"] if mode == "--frames" else ["--workers", "0", "--batch-size", "16"]
    if mode == "--speakers":
        import json

        from pipeline.bench import sequences as bench_sequences

        def in_process(name, settings):
            bench_sequences.side(name, settings)
            return json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        monkeypatch.setattr(bench_sequences, "run_side", in_process)
    assert bench.main([mode, size, "--epochs", "1", "--device", "cpu", *extra]) == 0
    out = capsys.readouterr().out
    kind = mode[2:]
    sides = {m[0]: m[1] for m in re.findall(rf"^{kind} (seed-notebook|pipeline) +([\d,]+) {unit}/s .* peak RSS [\d,]+ MB",
                                            out, re.M)}
    data = re.search(rf"data path alone .*: seed-notebook ([\d,]+) {unit}/s, pipeline ([\d,]+) {unit}/s = ([\d.]+)x", out)
    last = re.fullmatch(rf"speedup: (\d+\.\d\d)x \({unit}/s, pipeline vs seed-notebook\); peak RSS ([\d,]+) MB vs "
                        r"([\d,]+) MB", out.strip().splitlines()[-1])
    assert len(sides) == 2 and data and last, out
    fast, slow = (int(sides[k].replace(",", "")) for k in ("pipeline", "seed-notebook"))
    # the printed ratio is the printed figures' (each rounded to a whole number: tiny rates move the ratio)
    assert (fast - 0.5) / (slow + 0.5) - 0.01 <= float(last[1]) <= (fast + 0.5) / (slow - 0.5) + 0.01
    assert float(data[3]) == pytest.approx(int(data[2].replace(",", "")) / int(data[1].replace(",", "")), rel=0.05)
