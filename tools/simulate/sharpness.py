"""Sharpness: the extreme eigenvalues of the training loss's Hessian over the influence parameters, by Lanczos
on HVPs, read against the learning rate (gradient descent at η diverges along any direction whose curvature
exceeds 2/η) and the seed's reliability label for NTK-linearised predictions (λ_max > 10)."""

from __future__ import annotations

from tools.simulate.curvature import extreme_eigenvalues, top_eigenvalue
from tools.simulate.hessian import Curvature
from tools.simulate.models import Sharpness

NTK_UNRELIABLE = 10.0  # the seed: above this λ_max the linearised predictions are least reliable


def sharpness(curv: Curvature, lr: float, *, tol: float, budget: int, bottom: bool) -> Sharpness:
    """λ_max always; λ_min when `bottom` (LiSSA's scale needs it; pass 3 alone does not)."""
    device = curv.params[0].device
    if bottom:
        top, low = extreme_eigenvalues(curv.hvp, curv.shapes, tol=tol, max_iter=budget, device=device)
    else:
        top, low = top_eigenvalue(curv.hvp, curv.shapes, tol=tol, max_iter=budget, device=device), None
    limit = 2.0 / lr
    return Sharpness(
        params=curv.size,
        tensors=len(curv.params),
        hessian_rows=curv.rows,
        lambda_max=top.value,
        lambda_min=low.value if low is not None else None,
        converged=top.converged and (low is None or low.converged),
        iterations=top.iterations,
        budget=budget,
        tol=tol,
        residual=top.residual,
        lr=lr,
        stability_limit=limit,
        unstable=top.value > limit,
        ntk_unreliable=top.value > NTK_UNRELIABLE,
    )
