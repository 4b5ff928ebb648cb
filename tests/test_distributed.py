"""More than one process per experiment, on CPU: folds in parallel (--gpus cpu,cpu), DistributedDataParallel
through torchrun (gloo), two torchrun "nodes" on loopback, and a worker killed mid-fold."""
import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline import make_folds, train
from pipeline.distributed import parse_devices
from pipeline.errors import PipelineError

pytestmark = pytest.mark.slow
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")} | \
        {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def folds_made(tiny_comp, workdir):
    assert make_folds.main(["--data", str(tiny_comp)]) == 0
    return str(tiny_comp)


def single_threaded(args: list[str]) -> int:
    """A sequential run with one torch thread, as each of two parallel CPU workers on two cores has."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train.main(args)
    finally:
        torch.set_num_threads(before)


def same_experiment_files(a: Path, b: Path) -> None:
    """a and b hold the same files and the same numbers (the epoch times aside)."""
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for name in ("oof.csv", "selection.csv"):  # same seeds and thread count per fold: the same numbers
        pd.testing.assert_frame_equal(pd.read_csv(a / name), pd.read_csv(b / name), atol=1e-6, rtol=0)
    ma, mb = (pd.read_csv(d / "metrics.csv").drop(columns="seconds").sort_values(["fold", "epoch"])
              .reset_index(drop=True) for d in (a, b))
    pd.testing.assert_frame_equal(ma, mb, atol=1e-6, rtol=0)


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_parallel_folds_match_a_sequential_run_even_when_the_parent_is_killed(folds_made, workdir, capsys):
    """--gpus cpu,cpu writes the files of a sequential run. Then the parent of such a run is killed with kill -9
    mid-fold: within seconds no worker is left writing to the experiment, and --resume ends with those files."""
    common = ["--data", folds_made, "--epochs", "2", "--batch-size", "32"]
    assert single_threaded([*common, "--exp", "seq"]) == 0
    assert train.main([*common, "--exp", "par", "--gpus", "cpu,cpu"]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"fold \d: started on cpu \(process \d+\)", out)) == 5
    assert len(set(re.findall(r"started on cpu \(process (\d+)\)", out))) == 2  # two processes shared the 5 folds
    same_experiment_files(workdir / "weights/seq", workdir / "weights/par")

    args = [sys.executable, "-m", "pipeline.train", *common, "--exp", "gk", "--gpus", "cpu,cpu"]
    proc = subprocess.Popen(args, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    pids, lines, deadline = set(), [], time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        pids |= {int(p) for p in re.findall(r"started on cpu \(process (\d+)\)", line)}
        if len(pids) == 2 and re.match(r"fold [1-4] epoch +1/2", line):
            break
    assert len(pids) == 2, "".join(lines)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    give_up = time.time() + 5
    while any(alive(p) for p in pids) and time.time() < give_up:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids), "a fold worker outlived its killed parent"
    resumed = subprocess.run(args + ["--resume"], cwd=workdir, capture_output=True, text=True, env=env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    same_experiment_files(workdir / "weights/seq", workdir / "weights/gk")


def test_devices_flag_is_checked():
    assert parse_devices("cpu,cpu") == ["cpu", "cpu"]
    with pytest.raises(PipelineError, match="--gpus: a comma-separated list of GPU indices or 'cpu'"):
        parse_devices("0,x")
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="no CUDA GPU is visible; use --gpus cpu,cpu"):
            parse_devices("0,1")


def test_a_killed_worker_leaves_the_other_folds_and_resume_finishes_it(folds_made, workdir):
    args = [sys.executable, "-m", "pipeline.train", "--data", folds_made, "--epochs", "6", "--batch-size", "32",
            "--exp", "k", "--gpus", "cpu,cpu"]
    proc = subprocess.Popen(args, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    victim, fold, lines = None, None, []
    deadline = time.time() + 300
    while victim is None and time.time() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        started = re.match(r"fold (\d): started on cpu \(process (\d+)\)", line)
        if started and started[1] == "1":
            fold, pid = int(started[1]), int(started[2])
        if fold is not None and re.match(rf"fold {fold} epoch +2/6", line):
            victim = pid
    assert victim is not None, "".join(lines)
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err
    assert f"fold {fold}: its process on cpu died (exit code -9) mid-fold" in err
    assert "Traceback" not in err
    exp = workdir / "weights/k"
    finished = set(pd.read_csv(exp / "oof.csv")["fold"])
    assert finished == {0, 1, 2, 3, 4} - {fold}  # the other worker took every remaining fold
    assert (exp / f"fold{fold}.last.pth").is_file()  # the killed fold's snapshot is kept for --resume
    hint = shlex.split(err.split("finish with: ", 1)[1].splitlines()[0])  # the command, run as printed
    assert hint[:3] == ["python", "-m", "pipeline.train"] and "--resume" in hint
    resumed = subprocess.run([sys.executable, *hint[1:]], cwd=workdir, capture_output=True, text=True, env=env())
    assert resumed.returncode == 0, resumed.stderr
    assert f"resume: fold {fold} continues after epoch" in resumed.stdout
    assert set(pd.read_csv(exp / "oof.csv")["fold"]) == {0, 1, 2, 3, 4}



def hold_inherited_lock(lock, ready, release) -> None:
    ready.set()
    release.wait(60)


def test_a_fold_process_keeps_the_experiment_locked_after_its_parent_lets_go(tmp_path):
    """The lock travels to a spawned fold process as the same open file: while that process lives, a second
    writer is refused even though the process that took the lock has closed it."""
    import multiprocessing as mp

    from pipeline import experiment

    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    with experiment.locked(tmp_path / "e") as held:
        child = ctx.Process(target=hold_inherited_lock, args=(held, ready, release))
        child.start()
        assert ready.wait(60)
    try:  # our descriptors are closed now; only the child holds the lock
        with pytest.raises(PipelineError, match="another training is writing to this experiment"):
            with experiment.locked(tmp_path / "e"):
                pass
    finally:
        release.set()
        child.join(60)
    with experiment.locked(tmp_path / "e"):  # the child is gone: the experiment is free
        pass


def torchrun(workdir, *args, nproc=2, extra=()):
    return subprocess.run([TORCHRUN, f"--nproc-per-node={nproc}", *extra, "-m", "pipeline.train", *args],
                          cwd=workdir, capture_output=True, text=True, env=env(), timeout=600)


def test_torchrun_two_ranks_match_one_process_and_only_rank_0_writes(sample_dir, workdir):
    assert make_folds.main(["--data", str(sample_dir)]) == 0
    common = ["--data", str(sample_dir), "--fold", "0", "--epochs", "5", "--batch-size", "64"]
    done = torchrun(workdir, *common, "--exp", "ddp", extra=["--master-port", str(free_port())])
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(re.findall(r"^fold 0 epoch +\d/5", done.stdout, flags=re.M)) == 5  # one rank prints (and writes)
    assert "2 ranks (DistributedDataParallel)" in done.stdout
    assert single_threaded([*common, "--exp", "one"]) == 0
    ddp = pd.read_csv(workdir / "weights/ddp/metrics.csv")
    one = pd.read_csv(workdir / "weights/one/metrics.csv")
    assert len(ddp) == 5 and ddp["lr"].tolist() == pytest.approx(one["lr"].tolist())  # same global batch, schedule
    # the same global batch of 64 (32 per rank): BatchNorm sees 32 rows and augmentation draws differ, so the
    # trajectories differ; the best validation accuracy agrees within 0.03 (9 of the fold's 288 rows)
    assert ddp["valid_accuracy"].max() == pytest.approx(one["valid_accuracy"].max(), abs=0.03)
    assert ddp["valid_accuracy"].max() > 0.9  # it learned (10 classes: chance is 0.1)
    resumed = torchrun(workdir, *common, "--exp", "ddp", "--resume",
                       extra=["--master-port", str(free_port())])
    assert resumed.returncode == 0 and "resume: folds 0 already finished" in resumed.stdout, resumed.stderr[-2000:]
    again = torchrun(workdir, *common, "--exp", "ddp", extra=["--master-port", str(free_port())])
    ours = [line for line in again.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and "experiment exists" in ours[0], again.stderr[-2000:]  # printed by rank 0 alone
    # our exit status for bad input; torchrun lists the ranks that had ended when it noticed the first (one or both)
    codes = re.findall(r"exitcode  : (-?\d+)", again.stderr)
    assert codes and set(codes) == {"2"}, again.stderr[-2000:]


def test_torchrun_notices_print_once_and_the_automatic_batch_splits_over_the_ranks(workdir):
    assert make_folds.main([]) == 0  # no competition data here: the bundled sample, with its notice
    done = torchrun(workdir, "--fold", "0", "--epochs", "1", "--exp", "three", nproc=3,
                    extra=["--master-port", str(free_port())])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("notice: no competition data") == 1
    assert done.stdout.count("batch size 63 (chosen automatically, a multiple of the 3 ranks") == 1


def test_a_lost_rank_is_one_line_and_resume_continues(folds_made, workdir):
    args = [TORCHRUN, "--nproc-per-node=2", f"--master-port={free_port()}", "-m", "pipeline.train", "--data",
            folds_made, "--fold", "1", "--epochs", "4", "--batch-size", "32", "--exp", "lost"]
    proc = subprocess.Popen(args, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    lines, deadline = [], time.time() + 300
    while time.time() < deadline and not (lines and re.match(r"fold 1 epoch +1/4", lines[-1])):
        lines.append(proc.stdout.readline())
    assert re.match(r"fold 1 epoch +1/4", lines[-1]), "".join(lines)
    rank1 = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
             .stdout.split()]
    children = {pid: open(f"/proc/{pid}/environ", "rb").read() for pid in rank1}
    victim = next(pid for pid, environ in children.items() if b"\0RANK=1\0" in b"\0" + environ)
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    ours = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and ours[0].startswith("error: rank 0: ") and "--resume" in ours[0], err[-3000:]
    assert "pipeline/" not in err  # no traceback through our code, from any rank
    resumed = subprocess.run(args + ["--resume"], cwd=workdir, capture_output=True, text=True, env=env(), timeout=600)
    assert resumed.returncode == 0 and "resume: fold 1 continues after epoch" in resumed.stdout, resumed.stderr[-2000:]


def test_two_torchrun_nodes_on_loopback(folds_made, workdir):
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen([TORCHRUN, "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                               f"--rdzv-endpoint={endpoint}", "--rdzv-id=pipeline-test", "-m", "pipeline.train",
                               "--data", folds_made, "--fold", "1", "--epochs", "2", "--batch-size", "32",
                               "--exp", "nodes"], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env()) for _ in range(2)]
    outs = [n.communicate(timeout=600) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    printed = [o for o, _ in outs if "local CV (nodes" in o]
    assert len(printed) == 1 and "2 ranks (DistributedDataParallel)" in printed[0]  # one rank 0 over both nodes
    assert set(pd.read_csv(workdir / "weights/nodes/oof.csv")["fold"]) == {1}


def test_sync_bn_on_cpu_is_one_line(folds_made, workdir):
    done = torchrun(workdir, "--data", folds_made, "--fold", "0", "--epochs", "1", "--exp", "s", "--sync-bn",
                    extra=["--master-port", str(free_port())])
    assert done.returncode != 0
    assert "error: --sync-bn: torch's SyncBatchNorm runs on CUDA GPUs only" in done.stderr


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_trains_on_its_share_of_every_global_batch(rank):
    """The global batch order is the same on every rank (same generator); rank r takes rows r, r+2, ... of each
    global batch of --batch-size, so two ranks together see each batch once."""
    from pipeline.augment import MEAN, STD
    from pipeline.config import Config
    from pipeline.distributed import Ranks
    from pipeline.inputs.spec import DataSpec
    from helpers import one_epoch
    from pipeline.tasks import Task

    class Seen(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.rows = torch.nn.Linear(1, 2), []

        def forward(self, x):
            self.rows.append(x[:, 0, 0, 0].detach().clone())
            return self.fc(x[:, :1, 0, 0])

    images = torch.arange(16, dtype=torch.uint8).view(16, 1, 1, 1).expand(16, 1, 16, 16).contiguous()
    cfg = Config(batch_size=8, lr=0.1, warmup_epochs=0, rotate=0, scale=0, shift=0, img_size=16, label_smoothing=0.0)
    spec = DataSpec(Task("multiclass", ("a", "b")), 16, (0.0,), (1 / 255,), "none")  # input value = the row number
    order = torch.randperm(16, generator=torch.Generator().manual_seed(7))
    model = Seen()
    result = one_epoch(model, torch.optim.SGD(model.parameters(), lr=0.0), None, images, torch.arange(16),
                             torch.zeros(16, dtype=torch.long), cfg, spec, 0, torch.Generator().manual_seed(7),
                             ranks=Ranks(rank, 2))
    assert result.step == 2 and [len(r) for r in model.rows] == [4, 4]
    for i, seen in enumerate(model.rows):
        assert seen.round().long().tolist() == order[i * 8:(i + 1) * 8][rank::2].tolist()
    del MEAN, STD


def test_single_fold_jobs_of_one_experiment_run_side_by_side(folds_made, workdir, capsys):
    """SLURM-array style: --fold K --resume jobs on one experiment train at once; the same fold twice, or a whole
    experiment run meanwhile, is refused; a final --fold all --resume writes the CV and trains nothing finished."""
    from pipeline import experiment

    common = ["--data", folds_made, "--epochs", "1", "--batch-size", "32", "--exp", "arr", "--resume"]
    exp = workdir / "weights/arr"
    with experiment.locked(exp, 0):  # fold 0's job is running
        assert train.main([*common, "--fold", "1"]) == 0  # a new experiment's first job: --resume starts it
        assert train.main([*common, "--fold", "0"]) == 2
        assert "another training is writing to this experiment (fold 0)" in capsys.readouterr().err
        assert train.main([*common, "--fold", "all"]) == 2
        assert "another training is writing to this experiment" in capsys.readouterr().err
    assert train.main([*common, "--fold", "0"]) == 0
    capsys.readouterr()
    assert train.main([*common, "--fold", "all"]) == 0
    out = capsys.readouterr().out
    assert "resume: folds 0, 1 already finished" in out and "fold 2 epoch" in out and "fold 0 epoch" not in out
    assert set(pd.read_csv(exp / "oof.csv")["fold"]) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("ending", ["refusal", "success"])
def test_a_rank_leaves_its_process_group_however_the_training_ends(monkeypatch, ending):
    """Left to the interpreter's exit, gloo's threads sometimes aborted a refusing rank (SIGABRT, 'terminate called
    without an active exception': 4 of 20 torchrun refusals). `joined` destroys the group on the way out, and a
    rank leaving with its one line ignores torchrun's stop from then on. Here a group of one stands in for torchrun's."""
    import torch.distributed as dist

    from pipeline import distributed

    real_init = dist.init_process_group
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend: real_init(backend, store=dist.HashStore(), rank=0, world_size=1))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(PipelineError) if ending == "refusal" else contextlib.nullcontext():
            with distributed.joined("cpu") as (ranks, device):
                assert dist.is_initialized() and ranks.distributed and device == "cpu"
                if ending == "refusal":
                    raise PipelineError("weights/x: experiment exists")
        assert not dist.is_initialized()
        ignored = signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        assert ignored == (ending == "refusal")
    finally:
        signal.signal(signal.SIGTERM, before)
        if dist.is_initialized():
            dist.destroy_process_group()
