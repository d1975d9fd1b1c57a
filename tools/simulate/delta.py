"""Pass 3: the NTK-linearised weight delta of the simulated fine-tune, per parameter tensor.

Each tensor i moves along its mean gradient ḡ_i (pass 2's, over the whole dataset) on a 1-D quadratic whose
curvature is the Rayleigh quotient of H in that direction, K_i = ḡ_iᵀ(Hḡ)_i / ḡ_iᵀḡ_i, all K_i from one HVP.
T steps of gradient descent at η on that quadratic move it by exactly (1 − (1 − ηK)^T)/K along −ḡ (the
`quadratic` rule: ηT as K → 0, so flat and dead tensors do not run away; it shrinks where the curvature would
stop descent, and grows (then is clipped) where K < 0 or ηK > 2). The seed's rule ηT/(K + λ) is reported beside
it. The written coefficient is clipped so that ‖Δθ_i‖ ≤ η·T·grad_clip, the most T clipped SGD steps can move one
tensor (each step's whole gradient has norm ≤ grad_clip, so each tensor's share does too).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tools.simulate.models import DeltaRule, DeltaTensor

SMALL = 1e-12  # |ηK| below this: the quadratic rule's limit ηT (its closed form loses every digit)


def quadratic_coef(k: float, lr: float, steps: int) -> float:
    """(1 − (1 − ηK)^T)/K, the distance T gradient steps travel along −ḡ on a quadratic of curvature K (±inf
    when (1 − ηK)^T overflows: descent diverges, or accelerates along negative curvature)."""
    x = lr * k
    if abs(x) < SMALL:
        return lr * steps
    try:
        # 1 − (1 − x)^T = −expm1(T·log1p(−x)) for x < 1, accurate when x is tiny
        grown = -math.expm1(steps * math.log1p(-x)) if x < 1 else 1 - (1 - x) ** steps
    except OverflowError:
        grown = -math.inf if (x > 2 and steps % 2 == 0) or x < 0 else math.inf
    return grown / k


def seed_coef(k: float, lr: float, steps: int, damping: float) -> float:
    denom = k + damping
    return lr * steps / denom if denom != 0 else math.inf


def deltas(
    names: list[str],
    params: list[Tensor],
    grads: list[Tensor],
    hg: list[Tensor],
    *,
    lr: float,
    steps: int,
    damping: float,
    grad_clip: float,
    rule: DeltaRule,
) -> tuple[list[DeltaTensor], dict[str, Tensor]]:
    """The effective-LR map and the written deltas (float32, by parameter name)."""
    limit = lr * steps * grad_clip
    rows, out = [], {}
    for name, w, g, h in zip(names, params, grads, hg, strict=True):
        g64 = g.double()
        gg = float((g64 * g64).sum())
        k = float((g64 * h.double()).sum()) / gg if gg > 0 else 0.0
        quad, seed = quadratic_coef(k, lr, steps), seed_coef(k, lr, steps, damping)
        coef = quad if rule == "quadratic" else seed
        g_norm = math.sqrt(gg)
        clipped = not math.isfinite(coef) or abs(coef) * g_norm > limit
        if clipped:
            coef = math.copysign(limit / g_norm, coef) if g_norm > 0 else 0.0
        delta = (-coef * g64).float()
        out[name] = delta
        w_norm = float(w.double().norm())
        d_norm = abs(coef) * g_norm
        rows.append(
            DeltaTensor(
                name=name,
                numel=w.numel(),
                grad_norm=g_norm,
                curvature=k,
                coef_quadratic=_finite(quad),
                coef_seed=_finite(seed),
                eta_eff=coef / steps,
                delta_norm=d_norm,
                relative=d_norm / w_norm if w_norm > 0 else None,
                clipped=clipped,
            )
        )
    return rows, out


def _finite(x: float) -> float:
    """JSON has no infinity: an overflowing coefficient is reported as the largest float, its sign kept."""
    return x if math.isfinite(x) else math.copysign(torch.finfo(torch.float64).max, x)
