"""Cosine distance and relative norm change per layer, accumulated batch by batch (float64 sums)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from session.activations import BatchActivations, Reduce, TokenBatch, run_pair
from session.models import ModelPair


@dataclass
class Drift:
    """Running sums of one hook's per-probe distances."""

    n: int = 0
    cos_sum: float = 0.0
    cos_max: float = 0.0
    rel_sum: float = 0.0
    rel_max: float = 0.0

    def add(self, base: torch.Tensor, tuned: torch.Tensor) -> None:
        b, t = base.double(), tuned.double()
        cos = torch.nn.functional.cosine_similarity(b, t, dim=-1, eps=1e-30)
        dist = (1.0 - cos).clamp_min(0.0)
        rel = (t - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-30)
        self.n += dist.numel()
        self.cos_sum += float(dist.sum())
        self.cos_max = max(self.cos_max, float(dist.max()))
        self.rel_sum += float(rel.sum())
        self.rel_max = max(self.rel_max, float(rel.max()))


def drift(
    pair: ModelPair, batches: Iterable[TokenBatch], hooks: list[str], reduce: Reduce
) -> tuple[dict[str, Drift], int]:
    """Per hook, the drift between base and checkpoint over every probe; and how many probes were truncated."""
    out = {h: Drift() for h in hooks}
    truncated = 0
    pairs: Iterable[tuple[BatchActivations, BatchActivations]] = run_pair(pair, batches, hooks, reduce)
    for base, tuned in pairs:
        truncated += base.batch.truncated
        for h in hooks:
            out[h].add(base.acts[h], tuned.acts[h])
    return out, truncated
