"""More than one device: DistributedDataParallel ranks under torchrun, and folds trained in parallel processes.

    torchrun --nproc-per-node 4 -m pipeline.train --fold 0          # one fold over 4 GPUs (DDP)
    python -m pipeline.train --fold all --gpus 0,1,2,3              # 5 folds, one process per GPU
    python -m pipeline.train --fold all --gpus cpu,cpu              # the same with CPU processes

torch.distributed does the work (torchrun's environment and rendezvous, gloo on CPU, NCCL on GPUs); this module
only says which rank this process is, shards and gathers, and hands folds to worker processes.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from pipeline.errors import PipelineError, RankError, cut, one_line


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of one training: (0, 1) without torchrun."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Only rank 0 writes files and prints the epoch lines."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


SINGLE = Ranks()


def from_environment(device_name: str) -> tuple[Ranks, str]:
    """(ranks, device) from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK); the process group joined.

    Without torchrun: one rank on the configured device. With it: cuda:<local rank> when GPUs are visible
    (NCCL), else the CPU (gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE, device_name
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    cuda = torch.cuda.is_available() and device_name != "cpu"
    if cuda:
        if ranks.local_rank >= torch.cuda.device_count():
            raise RankError(f"rank {ranks.rank}: torchrun: local rank {ranks.local_rank} but only {torch.cuda.device_count()} GPUs "
                                "are visible; lower --nproc-per-node")
        torch.cuda.set_device(ranks.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    signal.signal(signal.SIGTERM, _stopped_by_torchrun)  # torchrun stops the ranks left when one rank ends
    return ranks, f"cuda:{ranks.local_rank}" if cuda else "cpu"


@contextlib.contextmanager
def joined(device_name: str):
    """from_environment's (ranks, device) for the block, and the process group left at its end, whatever ends it.

    Left to the interpreter's exit, gloo's threads were sometimes destroyed still running: a rank refusing bad input
    then ended with SIGABRT ('terminate called without an active exception') instead of its exit status 2 (4 torchrun
    refusals in 20 on this CPU, with torch 2.14.1 and 2.11; 0 in 35 since)."""
    ranks, device = from_environment(device_name)
    try:
        yield ranks, device
    except PipelineError:
        if ranks.distributed:  # leaving with its one line: torchrun's stop for this rank (SIGTERM) changes nothing
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise
    finally:
        if ranks.distributed and dist.is_initialized():
            dist.destroy_process_group()


class PeerLost(PipelineError):
    """Another rank of this training ended mid-way (killed, out of memory, its node lost)."""


RESUME_HINT = ("the finished folds and the last finished epoch are saved: rerun the same torchrun command with "
               "--resume to continue (torchrun's summary below names the rank that ended first)")


def _stopped_by_torchrun(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second raise would interrupt printing the first
    raise PeerLost(f"rank {os.environ.get('RANK', '?')}: stopped by torchrun because another rank of this "
                   f"training ended; {RESUME_HINT}")


@contextlib.contextmanager
def peer_loss_as_one_line(ranks: Ranks):
    """A collective that fails because a peer is gone (gloo/NCCL errors, tens of lines) becomes one line."""
    try:
        yield
    except PipelineError:
        raise
    except RuntimeError as e:  # torch.distributed.DistError is one; gloo's lost connections are plain RuntimeErrors
        text = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\] ", "", one_line(e))  # gloo's source location
        if not ranks.distributed or not (isinstance(e, dist.DistError) or
                                         any(w in text for w in ("gloo", "NCCL", "Connection", "connection"))):
            raise
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun's stop signal follows: this line is the one
        raise PeerLost(f"rank {ranks.rank}: lost contact with another rank mid-training ({cut(text, 120)}); "
                       f"{RESUME_HINT}") from None


def wrap(model: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """The model as this rank trains it: DistributedDataParallel under torchrun (gradients averaged over ranks)."""
    if not ranks.distributed:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(rows: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """This rank's share of one global batch (every rank holds the same global order)."""
    return rows[ranks.rank::ranks.world] if ranks.distributed else rows


def sync_buffers(model: nn.Module, ranks: Ranks) -> None:
    """BatchNorm statistics drift apart per rank without --sync-bn: validate every rank with rank 0's."""
    if ranks.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, 0)


def gather_rows(predict_rows, n: int, ranks: Ranks, device: torch.device) -> np.ndarray:
    """Predictions for rows 0..n-1, each rank predicting a contiguous share (`predict_rows(start, stop)`), gathered
    in order on every rank, so every rank scores the same predictions and picks the same best epoch."""
    if not ranks.distributed:
        return predict_rows(0, n)
    size = -(-n // ranks.world)
    start, stop = min(n, ranks.rank * size), min(n, (ranks.rank + 1) * size)
    mine = torch.from_numpy(predict_rows(start, stop)) if stop > start else None
    width = torch.tensor([mine.shape[1] if mine is not None else 0], device=device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    padded = torch.zeros((size, int(width.item())), dtype=torch.float32, device=device)
    if mine is not None:
        padded[:len(mine)] = mine.to(device)
    parts = [torch.empty_like(padded) for _ in range(ranks.world)]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:n].cpu().numpy()


def agree(value, ranks: Ranks):
    """Rank 0's value on every rank (a list of folds to train, a flag)."""
    if not ranks.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, 0)
    return box[0]


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def parse_devices(spec: str) -> list[str]:
    """--gpus '0,1,3' -> ['cuda:0', 'cuda:1', 'cuda:3'] (GPUs must be visible: that example is skipped on CPU);
    'cpu,cpu' -> two CPU workers.

    >>> parse_devices("cpu,cpu")
    ['cpu', 'cpu']
    >>> parse_devices("0,2")  # doctest: +SKIP
    ['cuda:0', 'cuda:2']
    """
    devices = []
    for item in (s.strip() for s in spec.split(",")):
        if item == "cpu":
            devices.append("cpu")
        elif item.isdigit():
            devices.append(f"cuda:{int(item)}")
        else:
            raise PipelineError(f"--gpus: a comma-separated list of GPU indices or 'cpu', e.g. 0,1,2,3 or cpu,cpu; "
                                f"got {item!r} in {spec!r}")
    cuda = [d for d in devices if d.startswith("cuda")]
    if cuda and not torch.cuda.is_available():
        raise PipelineError(f"--gpus {spec}: no CUDA GPU is visible; use --gpus cpu,cpu for CPU processes")
    if any(int(d.split(":")[1]) >= torch.cuda.device_count() for d in cuda):
        raise PipelineError(f"--gpus {spec}: only {torch.cuda.device_count()} GPUs are visible (0.."
                            f"{torch.cuda.device_count() - 1})")
    if len(set(cuda)) != len(cuda):
        raise PipelineError(f"--gpus {spec}: a GPU is listed twice; one fold process per GPU")
    return devices
