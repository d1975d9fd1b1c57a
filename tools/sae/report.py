"""What people and agents read of the SAE tools: findings, follow-ups, cards and terminal tables."""

from __future__ import annotations

import base64

import numpy as np

from tools.residual_drift import SPEC as RESIDUAL_DRIFT
from tools.sae import TRAIN
from tools.sae.models import (
    TRANSFER_MIN_FVU,
    TRANSFER_RATIO,
    FeatureDelta,
    LayerCard,
    LayerSaeDiff,
    LoadSaeResult,
    SaeAlignCard,
    SaeAlignResult,
    SaeCard,
    SaeCardRow,
    SaeDiffCard,
    SaeDiffResult,
    SaeTrainCard,
    SaeTrainResult,
)
from tools.weight_diff import SPEC as WEIGHT_DIFF
from toolserver.contract import Finding, FollowUp

SLIM_TOP = 10


def _feature(f: FeatureDelta) -> str:
    label = f" “{f.label}”" if f.label else ""
    return f"F{f.feature}{label} {f.base_mean:.3g} → {f.tuned_mean:.3g} (Δ {f.delta:+.3g})"


def _densest(res: SaeDiffResult) -> LayerSaeDiff | None:
    changed = [x for x in res.layers if x.n_changed]
    return max(changed, key=lambda x: x.n_changed / x.d_sae) if changed else None


# ----- load sae ---------------------------------------------------------------------------------------------


def slim_sae(r: LoadSaeResult) -> SaeCard:
    rows = [SaeCardRow.model_validate(x.model_dump(include=set(SaeCardRow.model_fields))) for x in r.loaded]
    return SaeCard(loaded=rows, replaced=r.replaced, attached=r.attached)


def table_sae(r: LoadSaeResult) -> str:
    lines = [f"{'layer':>5}  {'hook':<28} {'features':>8}  {'architecture':<12} sae"]
    lines += [f"{x.layer:>5}  {x.hook:<28} {x.d_sae:>8}  {x.architecture:<12} {x.sae}" for x in r.loaded]
    if r.replaced:
        lines.append("replaced: " + ", ".join(r.replaced))
    lines.append(
        f"session {r.session} now has {len(r.attached)} SAE{'s' if len(r.attached) != 1 else ''}: "
        + ", ".join(f"layer {x.layer}" for x in r.attached)
    )
    return "\n".join(lines)


# ----- sae diff ---------------------------------------------------------------------------------------------


def diff_findings(res: SaeDiffResult) -> list[Finding]:
    out: list[Finding] = []
    densest = _densest(res)
    if densest is None:
        tested = ", ".join(f"layer {x.layer} ({x.d_sae} features)" for x in res.layers)
        out.append(
            Finding(
                severity="info",
                text=f"No feature changed at {tested} over {res.probes.count} probes (rule: {res.layers[0].rule}).",
            )
        )
    else:
        out.append(
            Finding(
                text=f"Layer {densest.layer} changed most: {densest.n_changed}/{densest.d_sae} features "
                f"({densest.n_changed / densest.d_sae:.1%}), mean |Δ| {densest.mean_abs_delta:.3g}, "
                f"max |Δ| {densest.max_abs_delta:.3g}; top {_feature(densest.changed[0])}."
            )
        )
        for layer in res.layers:
            if layer is not densest and layer.n_changed:
                out.append(
                    Finding(
                        text=f"Layer {layer.layer}: {layer.n_changed}/{layer.d_sae} features changed, "
                        f"top {_feature(layer.changed[0])}."
                    )
                )
        if densest.changed[0].url:
            out.append(Finding(text=f"Feature {densest.changed[0].feature} on Neuronpedia: {densest.changed[0].url}"))
    for layer in res.layers:
        t = layer.transfer
        if not t.ok:
            out.append(
                Finding(
                    severity="warn",
                    text=f"Layer {layer.layer}: the SAE fits the checkpoint much worse "
                    f"than the base (FVU {t.fvu_tuned:.3g} vs {t.fvu_base:.3g}, "
                    f"{t.ratio:.2f}× > {TRANSFER_RATIO:g}×, above "
                    f"{TRANSFER_MIN_FVU:g}): its diff says little there; train one "
                    "on the fine-tune (run_sae_train with checkpoint) and align "
                    "them.",
                )
            )
        if layer.unit == "tokens" and layer.probes_tested < 2 and layer.rule.startswith("paired"):
            out.append(
                Finding(
                    severity="warn",
                    text=f"Layer {layer.layer}: {layer.probes_tested} probe(s) with "
                    "tokens to test: the paired test needs 2+; pass more probes.",
                )
            )
    if res.kind == "llm":
        out.append(
            Finding(text="Each probe's first token (BOS or not) is left out: its outlier norm dominates SAE error.")
        )
    return out + res.probes.findings()


def diff_follow_ups(res: SaeDiffResult) -> list[FollowUp]:
    misfit = [
        FollowUp(
            tool=TRAIN.name,
            args={"layer": x.layer, "checkpoint": res.checkpoint},
            why=f"the SAE at layer {x.layer} fits the checkpoint poorly: train one on the fine-tune's activations",
        )
        for x in res.layers
        if not x.transfer.ok
    ]
    densest = _densest(res)
    if densest is None:
        return misfit
    return misfit + [
        FollowUp(
            tool=RESIDUAL_DRIFT.name,
            args={"checkpoint": res.checkpoint},
            why=f"see how far layer {densest.layer}'s residual stream moved, where the features changed most",
        ),
        FollowUp(
            tool=WEIGHT_DIFF.name,
            args={"checkpoint": res.checkpoint},
            why=f"see which matrices of layer {densest.layer} and before moved",
        ),
    ]


def _cells(layer: LayerSaeDiff) -> tuple[str, str]:
    delta = np.abs(np.asarray(layer.columns.tuned_mean) - np.asarray(layer.columns.base_mean))
    peak = delta.max() if delta.size and delta.max() > 0 else 1.0
    cells = np.round(255 * delta / peak).astype(np.uint8)
    bits = np.zeros(layer.d_sae, dtype=bool)
    bits[[f.feature for f in layer.changed]] = True
    return base64.b64encode(cells.tobytes()).decode(), base64.b64encode(np.packbits(bits, bitorder="little")).decode()


def diff_slim(res: SaeDiffResult) -> SaeDiffCard:
    layers = []
    for x in res.layers:
        cells, bits = _cells(x)
        layers.append(
            LayerCard(
                layer=x.layer,
                hook=x.hook,
                d_sae=x.d_sae,
                n_changed=x.n_changed,
                mean_abs_delta=x.mean_abs_delta,
                max_abs_delta=x.max_abs_delta,
                cells=cells,
                changed_bits=bits,
                top=x.top[:SLIM_TOP],
                fvu_base=x.transfer.fvu_base,
                fvu_tuned=x.transfer.fvu_tuned,
                transfer_ok=x.transfer.ok,
                rule=x.rule,
            )
        )
    return SaeDiffCard(name=res.name, kind=res.kind, probes=res.probes.count, layers=layers)


def diff_table(res: SaeDiffResult) -> str:
    lines = [f"sae diff: {res.name} vs base {res.base}", f"{res.probes.count} probes ({res.probes.source})"]
    for x in res.layers:
        lines += [
            "",
            f"layer {x.layer} ({x.hook}, {x.d_sae} {x.architecture} features, {x.units} {x.unit}): "
            f"{x.n_changed} changed, mean |Δ| {x.mean_abs_delta:.4g}, max |Δ| {x.max_abs_delta:.4g}; "
            f"FVU base {x.transfer.fvu_base:.3g}, checkpoint {x.transfer.fvu_tuned:.3g}",
            f"  rule: {x.rule}",
            f"  {'feature':>8} {'base':>10} {'ckpt':>10} {'Δ':>10} {'fires b/c':>13} {'q':>9}  label",
        ]
        for f in x.top:
            q = "—" if f.q_value is None else f"{f.q_value:.2g}"
            lines.append(
                f"  {f.feature:>8}{'*' if f.changed else ' '}{f.base_mean:>10.4g} {f.tuned_mean:>10.4g} "
                f"{f.delta:>+10.4g} {f.base_freq:>6.2f}/{f.tuned_freq:<6.2f} {q:>9}  {f.label or ''}"
            )
    lines.append("\n* changed under the stated rule")
    return "\n".join(lines)


# ----- sae train --------------------------------------------------------------------------------------------


def train_findings(res: SaeTrainResult) -> list[Finding]:
    out = [
        Finding(
            text=f"Trained a {res.d_sae}-feature {res.architecture} SAE (k = {res.k}) on {res.activations} "
            f"activations of {res.hook} in {res.steps} steps ({res.seconds:.0f} s); held-out FVU "
            f"{res.eval_fvu:.3g}, {res.dead_features} features never fire there. Saved to {res.out}."
        )
    ]
    if res.activations < 20 * res.d_sae:
        out.append(
            Finding(
                severity="warn",
                text=f"Only {res.activations} activations for {res.d_sae} features: the "
                "SAE is underdetermined; pass a larger --dataset.",
            )
        )
    if res.eval_fvu > 0.5:
        out.append(
            Finding(
                severity="warn",
                text=f"Held-out FVU {res.eval_fvu:.2f}: it reconstructs little; train "
                "longer (--full) or with more features.",
            )
        )
    return out


def train_slim(res: SaeTrainResult) -> SaeTrainCard:
    return SaeTrainCard.model_validate(res.model_dump(include=set(SaeTrainCard.model_fields)))


def train_table(res: SaeTrainResult) -> str:
    curve = " ".join(f"{p.mse:.3g}" for p in res.losses[:: max(1, len(res.losses) // 8)])
    return "\n".join(
        [
            f"sae train: {res.mode}, layer {res.layer} ({res.hook}) of {res.model}",
            f"  {res.architecture}, d_in {res.d_in}, d_sae {res.d_sae}, k {res.k}",
            f"  {res.texts} texts from {res.source} → {res.activations} activations ({res.held_out} held out)",
            f"  {res.steps} steps of {res.batch}; MSE {curve}",
            f"  held-out FVU {res.eval_fvu:.4g}, L0 {res.eval_l0:.1f}, dead {res.dead_features}",
            f"  saved to {res.out}",
        ]
    )


# ----- sae align --------------------------------------------------------------------------------------------


def align_findings(res: SaeAlignResult) -> list[Finding]:
    out = [
        Finding(
            text=f"Mean best-match cosine {res.mean_cos:.3f} (median {res.median_cos:.3f}) over A's "
            f"{res.d_sae_a} features against B's {res.d_sae_b}; {res.mutual} matches are mutual."
        )
    ]
    if res.unmatched:
        out.append(
            Finding(
                severity="warn" if res.unmatched > res.d_sae_a // 10 else "info",
                text=f"{res.unmatched} of A's features have no counterpart in B (best cosine below "
                f"{res.match:g}), e.g. {', '.join(map(str, res.unmatched_features[:5]))}.",
            )
        )
    return out


def align_slim(res: SaeAlignResult) -> SaeAlignCard:
    return SaeAlignCard.model_validate(res.model_dump(include=set(SaeAlignCard.model_fields)))


def align_table(res: SaeAlignResult) -> str:
    def rows(title: str, matches: list) -> list[str]:  # type: ignore[type-arg]
        return [f"  {title}:"] + [
            f"    A F{m.feature} ↔ B F{m.best}  cos {m.cos:.4f}{'' if m.mutual else '  (not mutual)'}" for m in matches
        ]

    return "\n".join(
        [
            f"sae align: {res.a}  vs  {res.b}",
            f"  mean best cosine {res.mean_cos:.4f}, median {res.median_cos:.4f}, mutual {res.mutual}, "
            f"unmatched {res.unmatched} (< {res.match:g})",
            *rows("strongest", res.strongest),
            *rows("weakest", res.weakest),
        ]
    )
