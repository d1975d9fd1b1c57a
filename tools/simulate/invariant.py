"""No optimiser step ever runs: every parameter's bits, read as integers and summed, before the first pass and
after the last. Any change to any element changes the sum (short of two changes cancelling exactly), costs one
pass over the weights, and fails the run."""

from __future__ import annotations

import torch
from torch import nn

from tools.simulate.models import Invariant
from toolserver.contract import ToolError

_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@torch.no_grad()
def checksum(model: nn.Module) -> str:
    total = 0
    for i, p in enumerate(model.parameters(), 1):
        bits = p.detach().contiguous().view(_INT[p.element_size()]).reshape(-1)
        total += i * int(bits.sum(dtype=torch.int64))  # weighted by position: two tensors swapped also show
    return f"{total & (2**64 - 1):016x}"


def check(model: nn.Module, before: str) -> Invariant:
    after = checksum(model)
    params = sum(p.numel() for p in model.parameters())
    if after != before:
        raise ToolError(
            f"the model's parameters changed during the simulation (checksum {before} → {after}): an optimiser step "
            "or an in-place write ran; no result is reported",
            "a simulation must never update weights: look for an optimizer.step() or a hook writing to parameters",
        )
    return Invariant(parameters=params, checksum_before=before, checksum_after=after, unchanged=True)
