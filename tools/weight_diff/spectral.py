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


def sigma_max(op: LinearOperator, rtol: float = 1e-7, block: int = 8, max_iter: int = 64, seed: int = 0) -> float:
    """Largest singular value by block Krylov iteration with full reorthogonalisation.

    The Krylov basis V spans {Ω, GΩ, G²Ω, …} with G = MᵀM, kept in the smaller of the two dimensions.
    Rayleigh–Ritz on that basis uses Y = M V: the Ritz values are the singular values of Y, a lower
    bound on σ_max that rises monotonically. Stops when it rises by less than rtol, or when the basis
    spans the whole space (then it is exact).
    """
    if op.shape[1] > op.shape[0]:
        op = _Transposed(op)  # keep the basis in the smaller dimension
    n = op.shape[1]
    gen = torch.Generator().manual_seed(seed)
    v = torch.linalg.qr(torch.randn(n, min(block, n), generator=gen))[0]
    basis: list[torch.Tensor] = []
    images: list[torch.Tensor] = []
    previous = 0.0
    for _ in range(max_iter):
        y = op.mm(v)
        basis.append(v)
        images.append(y)
        ys = torch.cat(images, dim=1).double()
        estimate = float(torch.linalg.eigvalsh(ys.T @ ys)[-1].clamp_min(0).sqrt())
        size = sum(b.shape[1] for b in basis)
        if size >= n or estimate == 0.0 or estimate - previous <= rtol * estimate:
            return estimate
        previous = estimate
        v = _next_block(op.rmm(y), torch.cat(basis, dim=1), n - size)
        if v is None:  # the basis is an invariant subspace: the Ritz value is exact
            return estimate
    return estimate


def _next_block(z: torch.Tensor, basis: torch.Tensor, room: int) -> torch.Tensor | None:
    """Orthonormal directions of z not yet in the basis (twice Gram–Schmidt for float32 stability)."""
    scale = float(z.norm())
    for _ in range(2):
        z = z - basis @ (basis.T @ z)
    if scale == 0.0:
        return None
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
