"""Matching two SAEs' decoder directions: for every feature of A, the feature of B whose unit decoder row is
closest in cosine, computed in row blocks so a 16k × 16k comparison never sits in memory whole."""

from __future__ import annotations

import torch

BLOCK = 2048


def unit_rows(w_dec: torch.Tensor) -> torch.Tensor:
    w = w_dec.detach().double()
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-30)


def best_matches(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(best B index per A row, its cosine, whether B's best A row is that A row) for unit-row matrices a, b."""
    best = torch.empty(a.shape[0], dtype=torch.long)
    cos = torch.empty(a.shape[0], dtype=torch.float64)
    for s in range(0, a.shape[0], BLOCK):
        sims = a[s : s + BLOCK] @ b.T
        cos[s : s + BLOCK], best[s : s + BLOCK] = sims.max(dim=1)
    back = torch.empty(b.shape[0], dtype=torch.long)
    for s in range(0, b.shape[0], BLOCK):
        back[s : s + BLOCK] = (b[s : s + BLOCK] @ a.T).argmax(dim=1)
    mutual = back[best] == torch.arange(a.shape[0])
    return best, cos, mutual
