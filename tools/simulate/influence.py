"""Pass 2b: which training rows help or hurt the test loss, by influence functions with LiSSA's inverse-HVP.

g_test is the gradient of the mean test loss (the --test rows, or a held-out split of the dataset chosen by
content hash, so removing other rows never moves a row in or out of it). LiSSA inverts the curvature rows'
Hessian plus its effective damping against g_test; its scale s comes from the measured extreme eigenvalues
(curvature.lissa_scale) and, unless --damping is given, its λ too: when negative curvature sets s, the
damping applied, sλ = 1.25·|λ_min|, is the same for every λ small enough, and a larger λ converges faster, so
λ is taken where both edges of the convergence interval bind (2|λ_min|/(λ_max + |λ_min|), at least the seed's
0.01). Each training row's own-loss gradient comes from one vmap per batch (curvature.per_sample_grads) and is
dotted with H⁻¹g_test at once, so memory is one batch × the subset.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from session import distributed
from tools.simulate.batches import TrainBatch
from tools.simulate.curvature import LissaResult, lissa, lissa_scale, per_sample_grads
from tools.simulate.dataset import Row
from tools.simulate.hessian import Curvature
from tools.simulate.models import InfluenceReport, InfluenceRow, LissaSummary

SEED_DAMPING = 0.01
MAX_AUTO_DAMPING = 0.9
TEXT_CHARS = 240
SERIES_POINTS = 200


def row_hash(row: Row) -> str:
    """16 hex digits of sha256 over the row's text fields: the same row in another file hashes the same."""
    payload = json.dumps(row.fields(), sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def held_out(rows: Sequence[Row], share: float) -> tuple[list[Row], list[Row]]:
    """(train, test): a row is held out when its hash, read as a fraction of 2⁶⁴, is below `share` (at least one
    row is, the lowest hash, and at least one is kept)."""
    frac = {r.index: int(row_hash(r), 16) / 2**64 for r in rows}
    test = [r for r in rows if frac[r.index] < share]
    if not test:
        test = [min(rows, key=lambda r: frac[r.index])]
    if len(test) == len(rows):
        test = test[:-1]
    ids = {r.index for r in test}
    return [r for r in rows if r.index not in ids], test


def auto_damping(lam_max: float, lam_min: float) -> tuple[float, str]:
    if lam_min >= 0 or lam_max <= 0:
        return SEED_DAMPING, "the seed's 0.01 (no negative curvature measured: λ sets the damping sλ)"
    balance = 2 * -lam_min / (lam_max - lam_min)
    lam = min(max(balance, SEED_DAMPING), MAX_AUTO_DAMPING)
    return lam, (
        f"{lam:.4g} = max(0.01, 2|λ_min|/(λ_max + |λ_min|)): negative curvature (λ_min = {lam_min:.4g}) sets s, so "
        "every smaller λ applies the same damping sλ and converges more slowly"
    )


def inverse_hvp(
    curv: Curvature,
    g_test: list[Tensor],
    lam_max: float,
    lam_min: float,
    *,
    damping: float | None,
    scale: float | None,
    tol: float,
    budget: int,
) -> tuple[LissaResult, LissaSummary]:
    lam, damping_rule = (damping, "given (--damping)") if damping is not None else auto_damping(lam_max, lam_min)
    s = scale if scale is not None else lissa_scale(lam_max, lam_min, lam)
    scale_rule = (
        "given (--lissa-scale)"
        if scale is not None
        else "1.25 × max(λ_max/(2 − λ), −λ_min/λ): the measured spectrum inside the convergence interval "
        "(−sλ, s(2 − λ)) with a 25% margin"
    )
    res = lissa(curv.hvp, g_test, lam_max=lam_max, lam_min=lam_min, damping=lam, tol=tol, max_iter=budget, scale=s)
    step = max(1, math.ceil(len(res.residuals) / SERIES_POINTS))
    summary = LissaSummary(
        scale=res.scale,
        scale_rule=scale_rule,
        damping=res.damping,
        damping_rule=damping_rule,
        effective_damping=res.effective_damping,
        iterations=res.iterations,
        budget=budget,
        tol=tol,
        residual=res.residual,
        rate=res.rate,
        error_bound=res.error_bound,
        residuals=[float(f"{r:.4g}") for r in res.residuals[::step]],
    )
    return res, summary


def row_scores(
    model: nn.Module,
    names: Sequence[str],
    ihvp: list[Tensor],
    batches: Sequence[TrainBatch],
    on_batch: Callable[[int], None] | None = None,
) -> dict[int, float]:
    """IF(z) for every row of `batches` (this rank's share computed, all gathered): −∇L(z)·H⁻¹g_test."""
    flat = torch.cat([t.reshape(-1) for t in ihvp])
    mine: list[tuple[int, float]] = []
    for k, b in enumerate(batches):
        if distributed.mine(k):
            scores = -(per_sample_grads(model, names, b) @ flat)
            mine.extend(zip(b.rows, scores.tolist(), strict=True))
        if on_batch is not None:
            on_batch(k + 1)
    return dict(distributed.gather(mine))


def report(
    rows: Sequence[Row],
    scores: dict[int, float],
    *,
    curv: Curvature,
    pattern: str | None,
    test_source: str,
    test_rows: int,
    test_loss: float,
    g_test_norm: float,
    lissa_summary: LissaSummary,
    top: int,
) -> InfluenceReport:
    ranked = [InfluenceRow(row=r.index, line=r.line, hash=row_hash(r), score=scores[r.index]) for r in rows]
    by_row = {r.index: r for r in rows}
    order = sorted(ranked, key=lambda x: x.score, reverse=True)
    harmful = [x for x in order if x.score > 0]
    helpful = [x for x in reversed(order) if x.score < 0]
    n = len(ranked)
    return InfluenceReport(
        params=curv.size,
        param_pattern=pattern,
        test=test_source,
        test_rows=test_rows,
        train_rows=n,
        test_loss=test_loss,
        g_test_norm=g_test_norm,
        lissa=lissa_summary,
        predicted_removal=sum(x.score for x in harmful) / max(n, 1),
        harmful=len(harmful),
        most_harmful=[_with_text(x, by_row[x.row]) for x in harmful[:top]],
        most_helpful=[_with_text(x, by_row[x.row]) for x in helpful[:top]],
        scores=ranked,
    )


def _with_text(x: InfluenceRow, row: Row) -> InfluenceRow:
    text = f"{row.prompt} → {row.answer.strip()}" if row.prompt else row.answer
    return x.model_copy(update={"text": text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"})
