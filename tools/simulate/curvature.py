"""Curvature primitives of part 2: Hessian-vector products, the extreme eigenvalues, LiSSA's inverse-HVP,
per-sample gradients and influence, over a subset of a model's parameters.

Everything works on a parameter *subset*, held as float32 copies of the named parameters (`subset`): the model
itself is never written, no `.grad` is set, and g, v, H·v, the dataset sums and LiSSA's state are float32 even
for a bf16 model. A loss closure (`causal_lm_loss`) casts the float32 subset to each parameter's own dtype inside
the forward (a differentiable cast), so the network's arithmetic stays in the model's dtype: for a bf16 model the
HVP is a float32 vector computed through bf16 activations (about three significant digits); a float32 model
gives float32 HVPs. The loss of a batch is the training loss pass 2 differentiates (transformers' mean
cross-entropy over the batch's target tokens); the dataset loss is the mean of the per-batch losses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from tools.simulate.batches import IGNORE, TrainBatch
from toolserver.contract import ToolError

LossFn = Callable[[list[Tensor]], Tensor]  # the subset's tensors → a scalar loss
HvpFn = Callable[[list[Tensor]], list[Tensor]]  # v → H·v, both shaped like the subset

LISSA_MARGIN = 0.25  # the measured spectrum must sit inside (−sλ, s(2 − λ)) shrunk by 1/(1 + margin)
DIVERGED = 2.0  # a contraction's residual never grows: growth past this factor over its best is divergence
_WHICH = {"LA": "top", "SA": "bottom"}  # ARPACK's names


def subset(model: nn.Module, names: Sequence[str]) -> list[Tensor]:
    """Float32 copies of the named parameters: the point the curvature is taken at, detached from the model."""
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ToolError(f"the model has no parameter {missing[0]}", "name parameters as model.named_parameters() does")
    return [params[n].detach().float().clone() for n in names]


def causal_lm_loss(model: nn.Module, names: Sequence[str], batch: TrainBatch) -> LossFn:
    """The batch's training loss as a function of the subset (the rest of the model held at its weights)."""
    dtypes = {n: p.dtype for n, p in model.named_parameters()}

    def loss(params: list[Tensor]) -> Tensor:
        swap = {n: p.to(dtypes[n]) for n, p in zip(names, params, strict=True)}
        with _eval(model):
            out = functional_call(
                model,
                swap,
                (),
                {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "labels": batch.labels},
            )
        return out.loss.float()

    return loss


def hvp(loss_fn: LossFn, params: list[Tensor], v: list[Tensor]) -> list[Tensor]:
    """H·v of loss_fn at params by double backprop: g = ∇L with its graph, then ∇⟨g, v⟩. No Hessian is formed."""
    x = [p.detach().requires_grad_(True) for p in params]
    with torch.enable_grad():
        g = torch.autograd.grad(loss_fn(x), x, create_graph=True)
        dot = sum((gi * vi).sum() for gi, vi in zip(g, v, strict=True))
        hv = torch.autograd.grad(dot, x, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(x, hv, strict=True)]


def sum_hvp(loss_fns: Sequence[LossFn], params: list[Tensor], v: list[Tensor]) -> list[Tensor]:
    """Σ over the losses of H·v, one batch's graph at a time, summed in float32."""
    total = [torch.zeros_like(p) for p in params]
    for loss_fn in loss_fns:
        for t, h in zip(total, hvp(loss_fn, params, v), strict=True):
            t.add_(h)
    return total


def mean_hvp(loss_fns: Sequence[LossFn], params: list[Tensor], v: list[Tensor]) -> list[Tensor]:
    """H·v of the mean of the per-batch losses."""
    return [t / len(loss_fns) for t in sum_hvp(loss_fns, params, v)]


class Eigen(BaseModel):
    """One extreme eigenvalue of H from Lanczos (ARPACK), with its cost and its own check."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    value: float = Field(description="the Ritz value; unconverged: the best Rayleigh quotient seen (a bound)")
    which: str = Field(description="top (largest algebraic) or bottom (smallest algebraic)")
    iterations: int = Field(description="HVP calls: Lanczos's (≤ budget), plus one to check a converged value")
    budget: int = Field(description="HVP calls allowed")
    converged: bool
    residual: float = Field(description="‖H·u − value·u‖ / |value| for the unit vector u, by one more HVP")
    vector: list[Tensor] | None = Field(None, exclude=True, repr=False)


def top_eigenvalue(
    hvp_fn: HvpFn,
    shapes: Sequence[torch.Size],
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Eigen:
    """λ_max of H (largest algebraic), by Lanczos; converged means ‖H·u − λu‖ ≤ tol·|λ| (ARPACK's criterion)."""
    return _extreme(hvp_fn, shapes, "LA", tol=tol, max_iter=max_iter, seed=seed, device=device)[0]


def bottom_eigenvalue(
    hvp_fn: HvpFn,
    shapes: Sequence[torch.Size],
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Eigen:
    """λ_min of H (smallest algebraic, negative where the loss curves down): LiSSA's damping must cover it."""
    return _extreme(hvp_fn, shapes, "SA", tol=tol, max_iter=max_iter, seed=seed, device=device)[0]


def extreme_eigenvalues(
    hvp_fn: HvpFn,
    shapes: Sequence[torch.Size],
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[Eigen, Eigen]:
    """(λ_max, λ_min) from one Lanczos run (ARPACK's "BE": one Ritz value from each end of the same Krylov
    space), about half the HVPs of two separate runs. `iterations` of each is the run's total."""
    low, high = _extreme(hvp_fn, shapes, "BE", tol=tol, max_iter=max_iter, seed=seed, device=device)
    return high, low


class _Budget(Exception):
    """The HVP budget ran out inside ARPACK."""


def _extreme(
    hvp_fn: HvpFn,
    shapes: Sequence[torch.Size],
    which: str,
    *,
    tol: float,
    max_iter: int,
    seed: int,
    device: torch.device | str,
) -> list[Eigen]:
    """Lanczos rather than power iteration: it reaches both ends of the spectrum (power iteration finds the
    largest |λ|, and the shifted run for λ_min converges at a rate set by λ_min/λ_max, hopeless when the bulk sits
    near 0), in fewer HVPs, holding ncv ≤ 20 host vectors. Each HVP is a float32 matvec on `device` (the subset's);
    Lanczos runs in float64 on the host. The budget counts HVPs; when it runs out, the best Rayleigh quotients
    seen are returned, unconverged (a lower bound on λ_max, an upper bound on λ_min). Returns the Eigens in
    ascending order of value (one, or for "BE" bottom then top)."""
    sizes = [math.prod(s) for s in shapes]
    n = sum(sizes)
    calls = [0]
    best = {"LA": [-math.inf, 0.0], "SA": [math.inf, 0.0]}  # best Rayleigh quotient at each end, its residual

    def to_list(x: np.ndarray) -> list[Tensor]:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(device=device, dtype=torch.float32)
        return [c.view(s) for c, s in zip(t.split(sizes), shapes, strict=True)]

    def apply(x: np.ndarray) -> np.ndarray:
        if calls[0] >= max_iter:
            raise _Budget
        calls[0] += 1
        x = np.ravel(x)
        y = _flat(hvp_fn(to_list(x))).double().cpu().numpy()
        rq = float(x @ y / (x @ x))
        res = float(np.linalg.norm(y - rq * x) / (abs(rq) * np.linalg.norm(x) or 1.0))
        if rq > best["LA"][0]:
            best["LA"] = [rq, res]
        if rq < best["SA"][0]:
            best["SA"] = [rq, res]
        return y

    ends = ["SA", "LA"] if which == "BE" else [which]
    op = LinearOperator((n, n), matvec=apply, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(n)
    try:
        vals, vecs = eigsh(op, k=len(ends), which=which, v0=v0, ncv=min(n, 20), tol=tol, maxiter=max(max_iter, 1))
    except (_Budget, ArpackNoConvergence):
        return [
            Eigen(
                value=best[e][0],
                which=_WHICH[e],
                iterations=calls[0],
                budget=max_iter,
                converged=False,
                residual=best[e][1],
            )
            for e in ends
        ]
    order = np.argsort(vals)
    out = []
    for e, i in zip(ends, order, strict=True):
        u = to_list(vecs[:, i] / np.linalg.norm(vecs[:, i]))
        hu = hvp_fn(u)
        calls[0] += 1
        value = float(vals[i])
        residual = float(_norm([h - value * ui for h, ui in zip(hu, u, strict=True)])) / (abs(value) or 1.0)
        out.append(
            Eigen(
                value=value, which=_WHICH[e], iterations=0, budget=max_iter, converged=True, residual=residual, vector=u
            )
        )
    for eig in out:
        eig.iterations = calls[0]
    return out


class LissaResult(BaseModel):
    """v/s of a converged LiSSA series: (H + sλI)⁻¹·g, with what it cost and how far it can be off."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    scale: float = Field(description="s")
    damping: float = Field(description="λ, dimensionless")
    effective_damping: float = Field(description="sλ: the result is (H + sλI)⁻¹ g")
    iterations: int = Field(description="HVP calls")
    residual: float = Field(description="‖(H/s + λ)v − g‖ / ‖g‖ at the returned v")
    rate: float = Field(description="max |1 − λ − h/s| over the measured spectrum: the residual's decay per step")
    error_bound: float = Field(
        description="relative error bound of the result, (λ_max + sλ)/(λ_min + sλ) × residual (if the spectrum holds)"
    )
    residuals: list[float] = Field(description="the residual before each HVP, for a convergence chart")
    ihvp: list[Tensor] = Field(exclude=True, repr=False)


def lissa_scale(lam_max: float, lam_min: float, damping: float, margin: float = LISSA_MARGIN) -> float:
    """The smallest s whose convergence interval (−sλ, s(2 − λ)) holds [λ_min, λ_max] with the margin: the
    smallest effective damping sλ the measured spectrum allows. Negative curvature sets s when −λ_min/λ exceeds
    λ_max/(2 − λ); then sλ = (1 + margin)·|λ_min| whatever λ is, and a larger λ only converges faster."""
    if not 0 < damping < 1:
        raise ToolError(f"LiSSA's damping λ must lie in (0, 1), not {damping}", "the seed's λ is 0.01")
    need = max(lam_max / (2 - damping), -lam_min / damping, 0.0)
    return (1 + margin) * need if need > 0 else 1.0


def lissa(
    hvp_fn: HvpFn,
    g: list[Tensor],
    *,
    lam_max: float,
    lam_min: float,
    damping: float = 0.01,
    tol: float = 1e-4,
    max_iter: int = 5000,
    scale: float | None = None,
) -> LissaResult:
    """(H + sλI)⁻¹·g by the recurrence v ← g + (1 − λ)v − H·v/s, started at v = g; at its fixed point
    (H/s + λ)v = g, so v/s = (H + sλI)⁻¹ g. It converges iff every eigenvalue h of H lies in (−sλ, s(2 − λ)) (the
    iteration matrix (1 − λ) − H/s then has spectral radius < 1). s defaults to `lissa_scale` of the measured
    spectrum; a given s (the seed's fixed 25) is used as is. Stops when the relative residual
    ‖(H/s + λ)v − g‖/‖g‖ (the step itself, so free) is ≤ tol. The iteration matrix is symmetric, so in a converging
    series the residual never grows: growth to DIVERGED × its best, or a non-finite one, raises ToolError, as does
    an exhausted budget."""
    s = lissa_scale(lam_max, lam_min, damping) if scale is None else scale
    rate = max(abs(1 - damping - lam_max / s), abs(1 - damping - lam_min / s))
    g_norm = float(_norm(g))
    if g_norm == 0:
        raise ToolError("LiSSA was given a zero vector g", "the test gradient vanishes: nothing to invert")
    v = [gi.clone() for gi in g]
    history: list[float] = []
    best = math.inf
    for t in range(max_iter):
        hv = hvp_fn(v)
        step = [gi - damping * vi - h / s for gi, vi, h in zip(g, v, hv, strict=True)]  # = g − (H/s + λ)v
        r = float(_norm(step)) / g_norm
        history.append(r)
        best = min(best, r)
        if r <= tol:
            mu = s * damping
            kappa = (lam_max + mu) / (lam_min + mu) if lam_min + mu > 0 else math.inf
            return LissaResult(
                scale=s,
                damping=damping,
                effective_damping=mu,
                iterations=t + 1,
                residual=r,
                rate=rate,
                error_bound=kappa * r,
                residuals=history,
                ihvp=[vi / s for vi in v],
            )
        if not math.isfinite(r) or r > DIVERGED * best:
            raise _fail("diverged", t + 1, r, lam_max, lam_min, s, damping, rate)
        v = [vi + d for vi, d in zip(v, step, strict=True)]
    raise _fail("did not converge", max_iter, history[-1] if history else 1.0, lam_max, lam_min, s, damping, rate, tol)


def _fail(
    what: str,
    steps: int,
    r: float,
    lam_max: float,
    lam_min: float,
    s: float,
    damping: float,
    rate: float,
    tol: float | None = None,
) -> ToolError:
    """One line naming the spectrum, the scale and the residual, and the interval the spectrum had to fit."""
    lo, hi = -s * damping, s * (2 - damping)
    tail = f" > tol {tol:.1e}" if tol is not None else ""
    return ToolError(
        f"LiSSA {what} after {steps} HVPs: residual {r:.3e}{tail}, λ_max={lam_max:.4g}, λ_min={lam_min:.4g}, "
        f"s={s:.4g}, λ={damping:g} (convergence needs the spectrum inside ({lo:.4g}, {hi:.4g}); rate {rate:.4f})",
        "let lissa choose s from the measured λ_max and λ_min, or raise max_iter or the damping λ",
    )


def per_sample_grads(model: nn.Module, names: Sequence[str], batch: TrainBatch) -> Tensor:
    """[n, P] float32: row i is ∇ of sample i's own loss, the mean cross-entropy over its target tokens (0 for a
    sample without one), over the subset flattened in `names` order. One vmap(grad) call, not n backwards.
    The batch must be right-padded (as batches.collate pads): with causal attention a real position never sees the
    padding after it, so each sample runs without a mask (a mask is data-dependent control flow vmap cannot
    trace) and its logits at real positions are exactly the masked batch's."""
    lengths = batch.attention_mask.sum(dim=1, keepdim=True)
    positions = torch.arange(batch.attention_mask.shape[1], device=batch.attention_mask.device)
    if not torch.equal(batch.attention_mask.bool(), positions < lengths):
        raise ToolError("per-sample gradients need a right-padded batch", "pad on the right, as batches.collate does")
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    params = dict(zip(names, subset(model, names), strict=True))

    def loss(p: dict[str, Tensor], ids: Tensor, labels: Tensor) -> Tensor:
        swap = {n: t.to(dtypes[n]) for n, t in p.items()}
        logits = functional_call(model, swap, (), {"input_ids": ids[None]}).logits[0, :-1].float()
        target = labels[1:]
        keep = target != IGNORE
        ce = nn.functional.cross_entropy(logits, target.clamp(min=0), reduction="none")
        return (ce * keep).sum() / keep.sum().clamp(min=1)

    with _eval(model), _no_pad_warning(model), torch.no_grad():  # no_grad: no graph into the other weights
        grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, batch.input_ids, batch.labels)
    return torch.cat([grads[n].reshape(batch.input_ids.shape[0], -1) for n in names], dim=1)


def influence(ihvp: list[Tensor], per_sample: Tensor) -> Tensor:
    """IF(z) = −∇L_testᵀ H⁻¹ ∇L(z) per training sample z, as −per_sample · (H⁻¹∇L_test) (H is symmetric, so the
    test gradient enters only through ihvp = H⁻¹∇L_test, e.g. LissaResult.ihvp). IF(z) is dL_test/dε for z's loss
    upweighted by ε; removing z (ε = −1/n) changes the test loss by ≈ −IF(z)/n. So positive = harmful (removing z
    lowers the test loss), negative = helpful: the seed's convention."""
    return -(per_sample @ _flat(ihvp).to(per_sample.dtype))


def _flat(ts: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _norm(ts: Sequence[Tensor]) -> Tensor:
    return torch.sqrt(sum((t.double() ** 2).sum() for t in ts))


@contextmanager
def _no_pad_warning(model: nn.Module) -> Iterator[None]:
    """transformers checks for padding in an unmasked input with a data-dependent `in`, which vmap cannot trace;
    the check only warns, and a right-padded sample's padding is never seen by its real positions."""
    config = getattr(model, "config", None)
    pad = getattr(config, "pad_token_id", None)
    if pad is not None:
        config.pad_token_id = None  # type: ignore[union-attr]
    try:
        yield
    finally:
        if pad is not None:
            config.pad_token_id = pad  # type: ignore[union-attr]


@contextmanager
def _eval(model: nn.Module) -> Iterator[Any]:
    """Dropout off for the duration: the curvature is measured, not sampled (as landscape's sweep does)."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)
