"""What people and agents read of a residual-drift call: findings, follow-ups, the card, a text table."""

from __future__ import annotations

from tools.residual_drift.models import GROWS_RHO, DriftCell, ResidualDriftCard, ResidualDriftResult
from tools.sae import DIFF as SAE_DIFF
from tools.weight_diff import SPEC as WEIGHT_DIFF
from toolserver.contract import Finding, FollowUp


def _where(layer: int | str | None) -> str:
    return "the embedding output" if layer == "embed" else f"layer {layer}"


def findings(res: ResidualDriftResult) -> list[Finding]:
    by_layer = {d.layer: d for d in res.layers}
    out: list[Finding] = []
    if res.start_layer is None:
        worst = max(d.cos_mean for d in res.layers)
        return [
            Finding(
                severity="warn",
                text=f"No layer drifts: the largest mean cosine distance is {worst:.2g}, under "
                f"the {res.drift_floor:g} floor, over {res.probes.count} probes; the "
                "checkpoint computes what the base computes on these probes.",
            )
        ]
    start, peak = by_layer[res.start_layer], by_layer[res.peak_layer]
    before = (
        "the embeddings themselves changed"
        if res.start_layer == "embed"
        else "every earlier layer stays under the floor"
    )
    out.append(
        Finding(
            text=f"Drift starts at {_where(res.start_layer)}: mean cosine distance {start.cos_mean:.3g} "
            f"(> {res.drift_floor:g}); {before}."
        )
    )
    out.append(
        Finding(
            text=f"Drift peaks at {_where(res.peak_layer)}: mean cosine distance {peak.cos_mean:.3g}, max "
            f"{peak.cos_max:.3g} over {res.probes.count} probes, relative norm change "
            f"{peak.rel_norm_mean:.3g}."
        )
    )
    if res.depth_rho is not None:
        trend = "grows with depth" if res.grows_with_depth else "does not grow steadily with depth"
        out.append(
            Finding(
                text=f"Drift {trend}: Spearman ρ {res.depth_rho:.2f} of mean distance against depth "
                f"(grows when ρ ≥ {GROWS_RHO:g})."
            )
        )
    return out + res.probes.findings()


def follow_ups(res: ResidualDriftResult) -> list[FollowUp]:
    if res.start_layer is None:
        return []
    out = [
        FollowUp(
            tool=WEIGHT_DIFF.name,
            args={"checkpoint": res.checkpoint},
            why=f"see which matrices moved at {_where(res.start_layer)}, where the drift starts",
        )
    ]
    if isinstance(res.peak_layer, int):
        out.append(
            FollowUp(
                tool=SAE_DIFF.name,
                args={"checkpoint": res.checkpoint},
                why=f"see which SAE features changed where the drift peaks (layer {res.peak_layer}); "
                "needs an SAE loaded there",
            )
        )
    return out


def slim(res: ResidualDriftResult) -> ResidualDriftCard:
    return ResidualDriftCard(
        name=res.name,
        kind=res.kind,
        reduction=res.reduction,
        probes=res.probes.count,
        truncated=res.probes.truncated,
        layers=[
            DriftCell(
                layer=d.layer,
                cos_mean=float(f"{d.cos_mean:.4g}"),
                cos_max=float(f"{d.cos_max:.4g}"),
                rel_norm_mean=float(f"{d.rel_norm_mean:.4g}"),
            )
            for d in res.layers
        ],
        start_layer=res.start_layer,
        peak_layer=res.peak_layer,
        drift_floor=res.drift_floor,
    )


def table(res: ResidualDriftResult) -> str:
    lines = [
        f"residual drift: {res.name} vs base {res.base}",
        f"{res.probes.count} probes ({res.probes.source}), {res.reduction}",
        f"{'layer':>6}  {'1−cos mean':>11} {'1−cos max':>11} {'‖Δh‖/‖h‖ mean':>14} {'max':>9}",
    ]
    for d in res.layers:
        mark = "  ← starts" if d.layer == res.start_layer else "  ← peak" if d.layer == res.peak_layer else ""
        lines.append(
            f"{d.layer!s:>6}  {d.cos_mean:>11.4g} {d.cos_max:>11.4g} {d.rel_norm_mean:>14.4g} "
            f"{d.rel_norm_max:>9.4g}{mark}"
        )
    return "\n".join(lines)
