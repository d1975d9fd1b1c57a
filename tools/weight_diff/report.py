"""What people and agents read first: ranked findings, honest follow-ups, the web card payload, a text table."""

from __future__ import annotations

import statistics
from collections import defaultdict

from tools.residual_drift import SPEC as RESIDUAL_DRIFT
from tools.sae import DIFF as SAE_DIFF
from tools.weight_diff.layout import MATRIX_ORDER
from tools.weight_diff.models import (
    EmbeddingCell,
    LayerCells,
    MatrixRow,
    TensorRow,
    TopCell,
    TotalsCell,
    WeightDiffCard,
    WeightDiffResult,
)
from toolserver.contract import Finding, FollowUp

LOW_RANK = 2.0  # stable rank at or below this: the update lives in one or two directions
_SLIM_TOP = 5


def _g(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def _layer_energy(rows: list[MatrixRow]) -> dict[int, float]:
    energy: dict[int, float] = defaultdict(float)
    for r in rows:
        energy[r.layer] += r.fro_delta**2
    return dict(energy)


def findings(res: WeightDiffResult) -> list[Finding]:
    t = res.totals
    bad = _nonfinite(res)
    if bad and not t.tensors_compared:
        return [bad]
    if t.tensors_compared and t.unchanged == t.tensors_compared:
        identical = Finding(
            text=f"The checkpoint is identical to the base: all {t.tensors_compared} compared tensors are unchanged.",
            severity="warn",
        )
        return [bad, identical] if bad else [identical]
    out: list[Finding] = [bad] if bad else []
    changed = [r for r in res.rows if r.fro_delta > 0]
    ranked = sorted((r for r in changed if r.rel_delta is not None), key=lambda r: r.rel_delta or 0.0, reverse=True)
    if ranked:
        top = ranked[0]
        nxt = (
            f"; next: layer {ranked[1].layer} {ranked[1].matrix} ({_g(ranked[1].rel_delta)})" if len(ranked) > 1 else ""
        )
        out.append(
            Finding(
                text=f"Layer {top.layer} {top.matrix} changed most: ‖ΔW‖/‖W‖ = {_g(top.rel_delta)} "
                f"(‖ΔW‖_F = {_g(top.fro_delta)}, stable rank {_g(top.stable_rank)}){nxt}."
            )
        )
    energy = _layer_energy(changed)
    total = sum(energy.values())
    if total > 0 and len(energy) > 1:
        shares = sorted(((e / total, layer) for layer, e in energy.items()), reverse=True)
        listed = ", ".join(f"layer {layer} {share:.0%}" for share, layer in shares[:3])
        out.append(
            Finding(
                text=f"Share of the per-layer change (Σ‖ΔW‖_F² over each layer's matrices): {listed} "
                f"of {len(energy)} changed layers."
            )
        )
    ranks = [r.stable_rank for r in changed if r.stable_rank is not None]
    if ranks:
        med = statistics.median(ranks)
        low = sum(sr <= LOW_RANK for sr in ranks)
        widths = statistics.median(min(r.shape) for r in changed)
        shape = (
            "low-rank (a few directions dominate)"
            if med <= LOW_RANK
            else "moderately low-rank"
            if med <= 0.1 * widths
            else "broad (spread over many directions)"
        )
        cap = f"; LoRA rank r = {changed[0].lora_rank} bounds it" if res.mode == "lora" and changed[0].lora_rank else ""
        out.append(
            Finding(
                text=f"The update is {shape}: median stable rank {_g(med)} over {len(ranks)} changed matrices "
                f"(median width {widths:.0f}), {low} with stable rank ≤ {LOW_RANK:g}{cap}."
            )
        )
    out.append(Finding(text=_embeddings_and_norms(res)))
    if t.only_in_checkpoint or t.only_in_base:
        sample = (t.only_in_checkpoint_keys or t.only_in_base_keys)[:2]
        out.append(
            Finding(
                text=f"Not compared: {t.only_in_checkpoint} tensors only in the checkpoint and "
                f"{t.only_in_base} only in the base (e.g. {', '.join(sample)}).",
                severity="warn" if t.only_in_base > t.tensors_compared // 2 else "info",
            )
        )
    return out


def _nonfinite(res: WeightDiffResult) -> Finding | None:
    """NaN/inf in any tensor: critical, named, and said to be out of every norm (never read as 'unchanged')."""
    if not res.nonfinite:
        return None
    named = "; ".join(
        f"{n.key} ({n.note or f'{n.checkpoint} of {n.numel} values in the checkpoint, {n.base} in the base'})"
        for n in res.nonfinite[:4]
    )
    more = f" and {len(res.nonfinite) - 4} more" if len(res.nonfinite) > 4 else ""
    return Finding(
        severity="critical",
        text=f"{len(res.nonfinite)} tensor{'s' if len(res.nonfinite) > 1 else ''} with NaN or inf, left out of every "
        f"norm below: {named}{more}.",
    )


def _embeddings_and_norms(res: WeightDiffResult) -> str:
    emb = [e for e in res.embeddings if e.fro_delta > 0]
    vec = [n for n in res.norms if n.fro_delta > 0]
    if not emb and not vec:
        scope = " (LoRA only touches the adapted matrices)" if res.mode == "lora" else ""
        return f"Embeddings, norms and biases are unchanged{scope}."
    parts = []
    if emb:
        e = max(emb, key=lambda r: r.rel_delta or 0.0)
        parts.append(f"embedding {e.key} ‖ΔW‖/‖W‖ = {_g(e.rel_delta)}")
    else:
        parts.append("embeddings unchanged")
    if vec:
        n = max(vec, key=lambda r: r.fro_delta)
        rel = f", ‖Δ‖/‖w‖ = {_g(n.rel_delta)}" if n.rel_delta is not None else ""
        parts.append(
            f"{len(vec)} of {len(res.norms)} norm/bias vectors changed, most {n.key} (‖Δ‖ = {_g(n.fro_delta)}{rel})"
        )
    else:
        parts.append("norms and biases unchanged")
    return "Outside the layer matrices: " + "; ".join(parts) + "."


def follow_ups(res: WeightDiffResult) -> list[FollowUp]:
    """Next calls (tests check every one against the registry and the tool's input model)."""
    ranked = sorted((r for r in res.rows if r.rel_delta), key=lambda r: r.rel_delta or 0.0, reverse=True)
    if not ranked:
        return []
    layer = ranked[0].layer
    return [
        FollowUp(
            tool=RESIDUAL_DRIFT.name,
            args={"checkpoint": res.checkpoint},
            why=f"check whether the weight change moves activations (layer {layer} changed most)",
        ),
        FollowUp(
            tool=SAE_DIFF.name,
            args={"checkpoint": res.checkpoint},
            why=f"see which SAE features changed (layer {layer} changed most; needs an SAE loaded with load_sae)",
        ),
    ]


def _r(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.4g}")


def slim(res: WeightDiffResult) -> WeightDiffCard:
    """The card: per-layer ‖ΔW‖ bars by matrix type, a stable-rank column, the top changes."""
    types = [m for m in MATRIX_ORDER if any(r.matrix == m for r in res.rows)]
    layers: dict[int, LayerCells] = {}
    for r in res.rows:
        cell = layers.setdefault(r.layer, LayerCells(layer=r.layer, fro={}, stable_rank={}))
        cell.fro[r.matrix] = _r(((cell.fro.get(r.matrix) or 0.0) ** 2 + r.fro_delta**2) ** 0.5)
        cell.stable_rank[r.matrix] = _r(max(cell.stable_rank.get(r.matrix) or 0.0, r.stable_rank or 0.0))
    return WeightDiffCard(
        name=res.name,
        mode=res.mode,
        step=res.step,
        n_layers=res.n_layers,
        matrix_types=types,
        layers=[layers[k] for k in sorted(layers)],
        top_changed=[
            TopCell(label=t.label, rel_delta=_r(t.rel_delta), stable_rank=_r(t.stable_rank))
            for t in res.top_changed[:_SLIM_TOP]
        ],
        embeddings=[EmbeddingCell(key=e.key, rel_delta=_r(e.rel_delta)) for e in res.embeddings],
        norms_changed=sum(n.fro_delta > 0 for n in res.norms),
        totals=TotalsCell(
            tensors_compared=res.totals.tensors_compared,
            unchanged=res.totals.unchanged,
            rel_delta=_r(res.totals.rel_delta),
        ),
    )


def _tensor_lines(rows: list[TensorRow]) -> list[str]:
    return [
        f"  {r.key:<44} {'×'.join(map(str, r.shape)):>12} {r.fro_delta:>11.4g} {_g(r.rel_delta, 4):>11} "
        f"{_g(r.stable_rank, 4):>8}"
        for r in rows
    ]


def table(res: WeightDiffResult) -> str:
    """Fixed-width text for a terminal."""
    step = f"  step {res.step}" if res.step is not None else ""
    lines = [
        f"weight diff: {res.name} ({res.mode}){step}  vs base {res.base}",
        f"{'layer':>5}  {'matrix':<9} {'shape':>11} {'‖ΔW‖_F':>11} {'‖ΔW‖/‖W‖':>11} {'st.rank':>8} {'σ_max':>11}",
    ]
    lines += [
        f"{r.layer:>5}  {r.matrix:<9} {'×'.join(map(str, r.shape)):>11} {r.fro_delta:>11.4g} {_g(r.rel_delta, 4):>11} "
        f"{_g(r.stable_rank, 4):>8} {r.sigma_max:>11.4g}"
        for r in res.rows
    ]
    header = f"  {'tensor':<44} {'shape':>12} {'‖ΔW‖_F':>11} {'‖ΔW‖/‖W‖':>11} {'st.rank':>8}"
    for title, rows in (("embeddings", res.embeddings), ("other matrices", res.other)):
        if rows:
            lines += ["", title, header, *_tensor_lines(rows)]
    changed = sorted((n for n in res.norms if n.fro_delta > 0), key=lambda n: n.fro_delta, reverse=True)
    lines += ["", f"norms and biases: {len(changed)} of {len(res.norms)} changed"]
    if changed:
        lines += [header, *_tensor_lines(changed[:5])]
    if res.nonfinite:
        lines += ["", f"non-finite, left out of every norm: {len(res.nonfinite)} tensors"]
        lines += [
            f"  {n.key:<44} {n.note or f'{n.checkpoint}/{n.numel} NaN/inf in the checkpoint, {n.base} in the base'}"
            for n in res.nonfinite[:20]
        ]
    lines += ["", "top changed (by ‖ΔW‖/‖W‖):"]
    lines += [
        f"  {i + 1:>2}. {t.label:<28} {t.rel_delta:.4g}  (‖ΔW‖_F {t.fro_delta:.4g}, stable rank {_g(t.stable_rank)})"
        for i, t in enumerate(res.top_changed)
    ]
    t = res.totals
    lines += [
        "",
        f"compared {t.tensors_compared} tensors, {t.unchanged} unchanged; total ‖ΔW‖_F {t.fro_delta:.4g} "
        f"(‖ΔW‖/‖W‖ {t.rel_delta:.4g}); only in base {t.only_in_base}, only in checkpoint {t.only_in_checkpoint}"
        + (f"; tied: {', '.join(t.tied)}" if t.tied else ""),
    ]
    return "\n".join(lines)
