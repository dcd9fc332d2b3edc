"""One training over several processes (``torchrun --nproc_per_node=N``): data-parallel with DDP, gloo on
the CPU and NCCL on GPUs.

Every process draws the same data order and the same augmentation for each *global* batch and trains on
its contiguous shard of it. The per-example losses (detached), labels and groups of the whole batch are
gathered, so that the weighting sees exactly what one process would see: its weights, and its state
(Group DRO's ``q``, the KL-DRO and CVaR normalizations), are identical on every rank and identical to a
single process's. Each rank's objective is ``sum_{i in shard} w_i l_i * N / B``; DDP averages gradients
over the N ranks, which gives ``sum_i w_i l_i / B``, the single-process gradient of ``mean(w * l)``.
Evaluation counts (per class and group) are summed over ranks. Only rank 0 writes results.

Outside ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) every function here is a no-op.

>>> world_size(), rank()
(1, 0)
>>> shard_bounds(10, world=3, rank=1)
(4, 7)
"""

from __future__ import annotations

import os
from typing import List, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import ShiftkitError


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank: the process group's, or before it is joined, the one ``torchrun`` set."""
    if active():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if requested() else 0


def is_primary() -> bool:
    """Whether this process writes results (rank 0, or the only process)."""
    return rank() == 0


def requested() -> bool:
    """Whether the launcher (``torchrun``) asked for several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str) -> str:
    """Join the process group ``torchrun`` set up in the environment (once); returns this rank's
    device (``cuda:<LOCAL_RANK>`` on GPUs)."""
    if not requested():
        return device
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ShiftkitError(f"several processes run on cpu or cuda devices, not '{device}'")
    if kind == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ShiftkitError(f"LOCAL_RANK {local} has no GPU: this machine has {torch.cuda.device_count()}")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if kind == "cuda" else "gloo")
    return device


def shard_bounds(n: int, world: int, rank: int) -> Tuple[int, int]:
    """Rank ``rank``'s contiguous slice ``[lo, hi)`` of ``n`` items split as evenly as possible
    (the first ``n % world`` ranks get one more, as :func:`torch.tensor_split`)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def my_shard(n: int) -> Tuple[int, int]:
    return shard_bounds(n, world_size(), rank())


def gather(local: Tensor, n: int) -> Tensor:
    """The concatenation, in rank order, of every rank's shard of an ``n``-item batch (shards may differ
    in size by one; they are padded for the collective and trimmed)."""
    if not active():
        return local
    world = world_size()
    sizes = [hi - lo for lo, hi in (shard_bounds(n, world, r) for r in range(world))]
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts: List[Tensor] = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over ranks, in place; returns it."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def wrap(model: nn.Module, device: str) -> nn.Module:
    """The model under DDP when several processes train it, else the model itself."""
    if not active():
        return model
    device_ids = [torch.device(device).index] if torch.device(device).type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def barrier() -> None:
    if active():
        dist.barrier()
