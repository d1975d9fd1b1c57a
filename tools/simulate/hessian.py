"""The curvature sharpness, pass 2b and pass 3 share: the training loss's Hessian over a parameter subset,
taken on the first --hessian-rows training rows (the dataset loss there, the mean of its per-batch losses), only
ever applied to vectors (HVPs by double backprop, float32). Curvature batches are sharded over torch.distributed
ranks and every HVP all-reduced, so each rank holds the same H·v."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from session import distributed
from tools.simulate.batches import TrainBatch
from tools.simulate.curvature import LossFn, causal_lm_loss, subset, sum_hvp
from toolserver.contract import ToolError


def select(model: nn.Module, pattern: str | None) -> list[str]:
    """Parameter names matching `pattern` (re.search), in model order; every parameter when None."""
    names = [n for n, _ in model.named_parameters()]
    if pattern is None:
        return names
    chosen = [n for n in names if re.search(pattern, n)]
    if not chosen:
        shown = ", ".join(names[:6]) + (", …" if len(names) > 6 else "")
        raise ToolError(
            f"--influence-params {pattern!r} matches no parameter of the model",
            f"parameters are named like {shown}",
        )
    return chosen


@dataclass
class Curvature:
    """H of the curvature rows' loss over `names`, as an HVP; `calls` counts HVPs."""

    names: list[str]
    params: list[Tensor]
    fns: list[LossFn]  # this rank's curvature batches
    batches: int  # curvature batches over all ranks
    rows: int
    calls: int = 0

    @property
    def shapes(self) -> list[torch.Size]:
        return [p.shape for p in self.params]

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params)

    def hvp(self, v: list[Tensor]) -> list[Tensor]:
        self.calls += 1
        total = distributed.all_sum_(sum_hvp(self.fns, self.params, v))
        return [t / self.batches for t in total]


def curvature(model: nn.Module, names: Sequence[str], batches: Sequence[TrainBatch]) -> Curvature:
    """`batches` are every curvature batch (on the model's device); this rank keeps its share."""
    kept = [b for b in batches if b.target_tokens > 0]
    if not kept:
        raise ToolError(
            "no curvature row has a token to train on after truncation",
            "raise --hessian-rows or --max-len, or check that the rows have responses",
        )
    fns = [causal_lm_loss(model, names, b) for k, b in enumerate(kept) if distributed.mine(k)]
    rows = sum(len(b.rows) for b in kept)
    return Curvature(list(names), subset(model, names), fns, len(kept), rows)


def loss_gradient(model: nn.Module, names: Sequence[str], batches: Sequence[TrainBatch]) -> tuple[list[Tensor], float]:
    """∇ of the mean per-batch loss over `batches` (sharded, all-reduced) and that mean loss, float32."""
    kept = [b for b in batches if b.target_tokens > 0]
    params = subset(model, names)
    total = [torch.zeros_like(p) for p in params]
    loss_sum = torch.zeros(1, dtype=torch.float64, device=params[0].device)
    for k, b in enumerate(kept):
        if not distributed.mine(k):
            continue
        x = [p.detach().requires_grad_(True) for p in params]
        with torch.enable_grad():
            loss = causal_lm_loss(model, names, b)(x)
            grads = torch.autograd.grad(loss, x, allow_unused=True)
        for t, g in zip(total, grads, strict=True):
            if g is not None:
                t.add_(g)
        loss_sum += float(loss.detach())
    distributed.all_sum_([*total, loss_sum])
    n = max(len(kept), 1)
    return [t / n for t in total], float(loss_sum) / n
