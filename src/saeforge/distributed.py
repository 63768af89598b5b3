"""Data-parallel training on torch.distributed, launched by torchrun.

    torchrun --nproc_per_node N -m saeforge train ...            one node
    torchrun --nnodes M --nproc_per_node N --rdzv-backend c10d \\
             --rdzv-endpoint HOST:PORT -m saeforge train ...      several nodes

What each rank does (see docs/distributed.md):
- reads a disjoint part of the data: toy batches are generated whole from the step number
  and each rank takes its slice of rows; a cache is split by shard (rank r takes shards
  i ≡ r mod world); a live model reads every world-th batch of contexts;
- trains a full replica of the dictionary: after each step's hand-written backward, one
  all-reduce sums the four gradients and the per-feature firing sums in a single flat
  buffer (gradients are then divided by world: the gradient of the global batch's mean);
  Adam and the decoder renormalization then run identically on every rank, so the replicas
  stay equal without broadcasting weights;
- resampling: the dead set is the same everywhere (firing sums are all-reduced); rank 0
  computes the new directions and broadcasts them;
- only rank 0 writes logs, checkpoints and the dictionary; every rank reads the checkpoint
  on resume, with the same or another number of ranks.
NCCL on GPUs, gloo on CPUs. Outside torchrun (no WORLD_SIZE) everything is a no-op.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_name: str = "auto") -> None:
    """Join the process group torchrun described in the environment (once)."""
    if not launched() or dist.is_initialized():
        return
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=10))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def device_for(name: str) -> str:
    """Under torchrun with CUDA, 'auto'/'cuda' mean this rank's own GPU."""
    if active() and torch.cuda.is_available() and name in ("auto", "cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return name


def all_reduce_step(params: list[torch.Tensor], feature_sums_F: torch.Tensor, group=None) -> None:
    """Average the gradients and sum the firing statistics across ranks (of `group`: a feature
    shard's data group), in one collective."""
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [feature_sums_F.reshape(-1)])
    dist.all_reduce(flat, group=group)
    n = dist.get_world_size(group)
    i = 0
    for g in grads:
        g.copy_(flat[i:i + g.numel()].view_as(g)).div_(n)
        i += g.numel()
    feature_sums_F.copy_(flat[i:])


def all_reduce_sum_(t: torch.Tensor, group=None) -> torch.Tensor:
    if active():
        dist.all_reduce(t, group=group)
    return t


def all_reduce_mean(values: list[float], device) -> list[float]:
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world()).tolist()


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of t (the same shape on each), concatenated in rank order."""
    if not active() or world() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    if active():
        dist.broadcast(t, src)
    return t


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
