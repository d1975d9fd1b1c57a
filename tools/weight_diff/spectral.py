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
        return self.m.T @ y


def sigma_max(op: LinearOperator, rtol: float = 1e-6, block: int = 8, max_iter: int = 64, seed: int = 0) -> float:
    """Largest singular value by block Lanczos on G = MᵀM with full reorthogonalisation.

    The basis V spans the Krylov space {Ω, GΩ, G²Ω, …}, kept in the smaller of the two dimensions. Each
    step costs one product with M and one with Mᵀ; the Rayleigh–Ritz matrix VᵀGV comes from the same
    products, and its top eigenvalue is a lower bound on σ_max² that rises monotonically. Stops when it
    rises by less than rtol (relative, on σ), or when the basis spans the whole space (then it is exact).
    """
    if op.shape[1] > op.shape[0]:
        op = _Transposed(op)  # keep the basis in the smaller dimension
    n = op.shape[1]
    gen = torch.Generator().manual_seed(seed)
    v = torch.linalg.qr(torch.randn(n, min(block, n), generator=gen))[0]
    basis = v
    ritz = torch.zeros(0, 0, dtype=torch.float64)  # VᵀGV, grown by one block column per step
    previous = 0.0
    for _ in range(max_iter):
        z = op.rmm(op.mm(v))  # G v
        column = (basis.T @ z).double()
        k, b = ritz.shape[0], v.shape[1]
        grown = torch.zeros(k + b, k + b, dtype=torch.float64)
        grown[:k, :k] = ritz
        grown[:, k:] = column
        grown[k:, :k] = column[:k].T
        ritz = (grown + grown.T) / 2
        estimate = float(torch.linalg.eigvalsh(ritz)[-1].clamp_min(0).sqrt())
        if basis.shape[1] >= n or estimate == 0.0 or estimate - previous <= rtol * estimate:
            return estimate
        previous = estimate
        v = _next_block(z, basis, n - basis.shape[1])
        if v is None:  # the basis is an invariant subspace: the Ritz value is exact
            return estimate
        basis = torch.cat([basis, v], dim=1)
    return estimate


def _next_block(z: torch.Tensor, basis: torch.Tensor, room: int) -> torch.Tensor | None:
    """Orthonormal directions of z not yet in the basis (Gram–Schmidt twice, for float32 stability)."""
    scale = float(z.norm())
    if scale == 0.0:
        return None
    for _ in range(2):
        z = z - basis @ (basis.T @ z)
    q, r = torch.linalg.qr(z)
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
