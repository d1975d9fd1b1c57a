"""Norms, top singular value and stable rank of a weight update, without a full SVD.

stable rank = ‖ΔW‖_F² / σ_max²: 1 when the update is one direction, up to min(d_out, d_in) when it is
spread evenly. σ_max comes from block Krylov iteration with Rayleigh–Ritz on ΔWᵀΔW (only products
ΔW @ V and ΔWᵀ @ Y, so a huge matrix can be streamed in row chunks); a LoRA update's spectrum comes
exactly from its r×r core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class LinearOperator(Protocol):
    """A matrix known only through products, e.g. ΔW recomputed chunk by chunk from two files."""

    shape: tuple[int, int]

    def mm(self, v: torch.Tensor) -> torch.Tensor: ...  # M @ v

    def rmm(self, y: torch.Tensor) -> torch.Tensor: ...  # Mᵀ @ y


@dataclass(frozen=True)
class Spectrum:
    fro: float
    sigma_max: float

    @property
    def stable_rank(self) -> float | None:
        """‖M‖_F² / σ_max²; None for a zero matrix, where it is undefined."""
        return self.fro**2 / self.sigma_max**2 if self.sigma_max > 0 else None


class _Transposed:
    def __init__(self, op: LinearOperator) -> None:
        self.op, self.shape = op, (op.shape[1], op.shape[0])

    def mm(self, v: torch.Tensor) -> torch.Tensor:
        return self.op.rmm(v)

    def rmm(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.mm(y)


class DenseOperator:
    def __init__(self, m: torch.Tensor) -> None:
        self.m, self.shape = m, (m.shape[0], m.shape[1])

    def mm(self, v: torch.Tensor) -> torch.Tensor:
        return self.m @ v

    def rmm(self, y: torch.Tensor) -> torch.Tensor:
        return (y.T @ self.m).T  # far faster than m.T @ y for thin y with some BLAS builds


def sigma_max(op: LinearOperator, rtol: float = 1e-6, block: int = 16, max_iter: int = 64, seed: int = 0) -> float:
    return top_singular(op, rtol=rtol, block=block, max_iter=max_iter, seed=seed)[0]


def top_singular(
    op: LinearOperator,
    start: torch.Tensor | None = None,
    rtol: float = 1e-6,
    block: int = 16,
    max_iter: int = 64,
    seed: int = 0,
) -> tuple[float, torch.Tensor]:
    """Largest singular value by block Lanczos on G = MᵀM with full reorthogonalisation, and the top `block`
    Ritz vectors (right singular directions, in M's column space) to start the next, similar matrix from.

    The basis V spans the Krylov space {Ω, GΩ, G²Ω, …}, kept in the smaller of the two dimensions. Each
    step costs one product with M and one with Mᵀ; the Rayleigh–Ritz matrix VᵀGV comes from the same
    products. Its top eigenpair (θ, s) gives σ_max² ≥ θ, and the part of G·Vs outside the basis is the
    residual r, so some eigenvalue lies within min(‖r‖, ‖r‖²/gap) of θ (gap = θ − the next Ritz value).
    Stops when that bound, relative on σ, is below rtol, or when the basis spans the whole space (exact).
    `start` (n × b, e.g. the previous checkpoint's vectors) replaces the random first block's leading columns:
    the bound is the same, only fewer steps are needed when it is close.
    """
    if op.shape[1] > op.shape[0]:
        op = _Transposed(op)  # keep the basis in the smaller dimension
    n = op.shape[1]
    gen = torch.Generator().manual_seed(seed)
    omega = torch.randn(n, min(block, n), generator=gen)
    if start is not None and start.shape[0] == n:  # vectors from top_singular on a matrix of this shape
        k = min(start.shape[1], omega.shape[1])
        omega[:, :k] = start[:, :k]
    v = torch.linalg.qr(omega)[0]
    basis = v
    ritz = torch.zeros(0, 0, dtype=torch.float64)  # VᵀGV, grown by one block column per step
    theta = 0.0
    vectors = torch.ones(1, 1, dtype=torch.float64)
    for _ in range(max_iter):
        z = op.rmm(op.mm(v))  # G v
        column = (basis.T @ z).double()
        k, b = ritz.shape[0], v.shape[1]
        grown = torch.zeros(k + b, k + b, dtype=torch.float64)
        grown[:k, :k] = ritz
        grown[:, k:] = column
        grown[k:, :k] = column[:k].T
        ritz = (grown + grown.T) / 2
        values, vectors = torch.linalg.eigh(ritz)
        theta = float(values[-1].clamp_min(0))
        if basis.shape[1] >= n or theta == 0.0:
            break
        w = _orthogonalise(z, basis)  # G·V_last outside the basis; older blocks' images lie inside it
        residual = float((w @ vectors[k:, -1].to(w.dtype)).norm())
        gap = theta - float(values[-2]) if len(values) > 1 else theta
        if min(residual, residual**2 / gap if gap > 0 else residual) <= 2 * rtol * theta:
            break
        v = _next_block(w, float(z.norm()), n - basis.shape[1])
        if v is None:  # the basis is an invariant subspace: the Ritz value is exact
            break
        basis = torch.cat([basis, v], dim=1)
    top = basis @ vectors[:, -min(block, vectors.shape[1]) :].flip(1).to(basis.dtype)
    return theta**0.5, top


def _orthogonalise(z: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """z minus its projection on the basis (Gram–Schmidt twice, for float32 stability)."""
    for _ in range(2):
        z = z - basis @ (basis.T @ z)
    return z


def _next_block(w: torch.Tensor, scale: float, room: int) -> torch.Tensor | None:
    """Orthonormal directions of w (already orthogonal to the basis) that are not numerically zero."""
    q, r = torch.linalg.qr(w)
    keep = r.diagonal().abs() > 1e-5 * scale
    if not bool(keep.any()):
        return None
    return q[:, keep][:, :room]


def dense_spectrum(op: LinearOperator, fro: float) -> Spectrum:
    return Spectrum(fro=fro, sigma_max=sigma_max(op) if fro > 0 else 0.0)


def lowrank_spectrum(left: torch.Tensor, right: torch.Tensor, scale: float) -> Spectrum:
    """Spectrum of scale · left @ right (left d_out×r, right r×d_in) from QR of the thin factors.

    left = Q_L R_L and rightᵀ = Q_R R_R give ΔW = Q_L (scale · R_L R_Rᵀ) Q_Rᵀ with orthonormal Q's,
    so ΔW has exactly the singular values of the r×r core; the d_out×d_in product is never formed.
    """
    r_left = torch.linalg.qr(left.double(), mode="r")[1]
    r_right = torch.linalg.qr(right.double().T, mode="r")[1]
    sv = torch.linalg.svdvals(scale * r_left @ r_right.T)
    return Spectrum(fro=float(sv.square().sum().sqrt()), sigma_max=float(sv[0]) if sv.numel() else 0.0)
