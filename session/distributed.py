"""Work sharded over torch.distributed ranks (torchrun), as simulate's passes 2 and 2b do it: batch k belongs to
rank k mod world, sums are all-reduced, per-batch readings gathered in batch order, so every rank ends with the
one-process numbers and rank 0 writes. Without an initialised process group every call is the one-process
identity.

Only a tool registered as distributed (ToolSpec.distributed) joins a process group (the CLI calls init_from_env
under torchrun); the front door mutes ranks other than 0 (no stored result, call record, mirror, --save, stdout
or --out files)."""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def requested() -> int:
    """The world size torchrun asked for (WORLD_SIZE), 1 when not launched by it."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment): gloo on CPU, nccl on GPU.
    Returns whether this process is one rank of several. On CPU the node's cores are split between its ranks
    (2 cores, 2 ranks: one thread each) so they do not oversubscribe them; an OMP_NUM_THREADS above 1 is the
    user's own choice and is kept (torchrun's default is 1 for every rank, which wastes cores when there are
    more cores than ranks)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if requested() <= 1 or not dist.is_available():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    else:
        torch.set_num_threads(threads_per_rank())
    return dist.get_world_size() > 1


def threads_per_rank() -> int:
    """Intra-op threads for one CPU rank: OMP_NUM_THREADS when above 1, else this process's cores over the
    node's ranks (LOCAL_WORLD_SIZE), at least 1."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 1:
        return int(given)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")) or 1))
    return max(1, cores // local)


def leave() -> None:
    """Destroy the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_writer() -> bool:
    return world()[0] == 0


def mine(index: int) -> bool:
    """Whether the 0-based batch `index` is this rank's."""
    rank, size = world()
    return index % size == rank


def _device() -> torch.device:
    """Where collective buffers live: nccl reduces CUDA tensors only, gloo host ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum_(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum each tensor over the ranks, in place (float64 sums stay float64). Small tensors of one dtype and
    device travel together in buckets of up to BUCKET_BYTES: an HVP over a model's parameters is a few hundred
    tensors, and one collective per tensor costs more than the arithmetic on a small model."""
    if world()[1] == 1:
        return tensors
    for bucket in _buckets(tensors):
        if len(bucket) == 1:
            dist.all_reduce(bucket[0], op=dist.ReduceOp.SUM)
            continue
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for t, part in zip(bucket, flat.split([t.numel() for t in bucket]), strict=True):
            t.copy_(part.view_as(t))
    return tensors


BUCKET_BYTES = 32 << 20


def _buckets(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive tensors grouped by (dtype, device) up to BUCKET_BYTES each; a larger one goes alone."""
    out: list[list[torch.Tensor]] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        last = out[-1] if out else None
        if last is None or (last[0].dtype, last[0].device) != (t.dtype, t.device) or size + nbytes > BUCKET_BYTES:
            out.append([t])
            size = nbytes
        else:
            last.append(t)
            size += nbytes
    return out


def all_sum(value: float) -> float:
    return all_sums([value])[0]


def all_sums(values: list[float]) -> list[float]:
    """Each number summed over the ranks, in one float64 reduction (integers up to 2⁵³ stay exact)."""
    if world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.tolist()


def all_sum_named(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum over the ranks of named tensors that some ranks may lack (a rank that ran no batch has no gradient
    sum): the result holds the union of the names, in the order rank 0 lists them and then each further rank's
    new ones (the same on every rank), a missing tensor counting as zeros of the shape and dtype another rank
    gave. Present tensors are reduced in place."""
    if world()[1] == 1:
        return tensors
    specs = gather([(name, tuple(t.shape), t.dtype) for name, t in tensors.items()])
    layout: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for name, shape, dtype in specs:
        layout.setdefault(name, (shape, dtype))
    device = _device()
    out = {
        name: tensors[name] if name in tensors else torch.zeros(shape, dtype=dtype, device=device)
        for name, (shape, dtype) in layout.items()
    }
    all_sum_(list(out.values()))
    return out


def gather(items: list[T]) -> list[T]:
    """Every rank's items, concatenated in rank order (the caller sorts by batch index)."""
    if world()[1] == 1:
        return items
    parts: list[Any] = [None] * world()[1]
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]
