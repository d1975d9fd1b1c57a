"""What people and agents read of a simulation: the landscape and preference summaries, the seed's two
simulation signals, ranked findings, follow-ups, the card payload and a text table."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from tools.simulate import report_second as second
from tools.simulate.dataset import Row
from tools.simulate.landscape import Sweep
from tools.simulate.models import (
    FeatureShift,
    Heatmap,
    Landscape,
    ModuleGrad,
    PairMargin,
    PreferenceReport,
    SaePrediction,
    SimulateInput,
    SimulationCard,
    SimulationResult,
)
from tools.simulate.preference import PreferenceSweep
from tools.simulate.quality_findings import findings as quality_findings
from tools.watch.snapshot import Signal
from toolserver.contract import SEVERITY_RANK, Finding, FollowUp

DEAD_NORM = 1e-6  # the seed: a module whose mean grad norm over all batches is below this learns nothing
SPIKE_TIMES_CLIP = 5.0  # the seed: mean max grad norm above 5 × grad_clip predicts real spikes
HEATMAP_CELLS = 16_000


def landscape(sw: Sweep, grad_clip: float) -> Landscape:
    names = list(sw.grads[0].modules)
    columns = {name: [b.modules.get(name, 0.0) for b in sw.grads] for name in names}
    modules = [
        ModuleGrad(name=n, mean=statistics.fmean(v), max=max(v), dead=statistics.fmean(v) < DEAD_NORM)
        for n, v in columns.items()
    ]
    maxes = [b.max_grad for b in sw.grads if b.max_grad is not None]
    return Landscape(
        batches=len(sw.grads),
        target_tokens=sum(b.target_tokens for b in sw.grads),
        loss_mean=statistics.fmean(b.loss for b in sw.grads),
        max_grad_mean=statistics.fmean(maxes) if maxes else 0.0,
        max_grad_max=max(maxes, default=0.0),
        grad_clip=grad_clip,
        spike_limit=SPIKE_TIMES_CLIP * grad_clip,
        modules=modules,
        dead=[m.name for m in modules if m.dead],
        series_loss=[b.loss for b in sw.grads],
        series_max_grad=[b.max_grad for b in sw.grads],
        series_mean_grad=[statistics.fmean(b.modules.values()) for b in sw.grads],
        heatmap=_heatmap(names, columns, [b.index for b in sw.grads]),
        skipped_batches=len(sw.skipped),
    )


def _heatmap(names: list[str], columns: dict[str, list[float]], index: list[int]) -> Heatmap:
    """Rows are modules; consecutive batches average into at most HEATMAP_CELLS / rows columns."""
    width = max(1, min(len(index), HEATMAP_CELLS // max(len(names), 1)))
    edges = [round(i * len(index) / width) for i in range(width + 1)]
    spans = [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]
    return Heatmap(
        rows=names,
        cols=[index[b - 1] for _, b in spans],
        values=[[float(f"{statistics.fmean(columns[n][a:b]):.4g}") for a, b in spans] for n in names],
    )


def simulation_signals(land: Landscape) -> list[Signal]:
    """The seed's two, in watch's schema, stepped at the last batch: dead modules and a predicted spike."""
    out = []
    dead = [m for m in land.modules if m.dead]
    if dead:
        shown = ", ".join(m.name for m in dead[:8]) + (f" and {len(dead) - 8} more" if len(dead) > 8 else "")
        out.append(
            Signal(
                type="dead_layers",
                severity="warn",
                step=land.batches,
                metric="mean_grad_norm",
                value=max(m.mean for m in dead),
                threshold=DEAD_NORM,
                layers=[m.name for m in dead],
                message=f"{len(dead)} module{'s' if len(dead) > 1 else ''} with mean grad norm below {DEAD_NORM:g} "
                f"over all {land.batches} batches: {shown}; this configuration would leave them untrained (a "
                "simulation: no step has run)",
            )
        )
    if land.max_grad_mean > land.spike_limit:
        out.append(
            Signal(
                type="gradient_spike",
                severity="warn",
                step=land.batches,
                metric="max_grad_mean",
                value=land.max_grad_mean,
                threshold=land.spike_limit,
                message=f"the mean over {land.batches} batches of the max grad norm is {land.max_grad_mean:.4g}, above "
                f"{SPIKE_TIMES_CLIP:g} × grad_clip = {land.spike_limit:g} before any momentum builds up: expect real "
                "spikes once Adam's moments amplify them (lower the learning rate or warm up longer)",
            )
        )
    return out


def preference_report(
    ps: PreferenceSweep,
    rows: Sequence[Row],
    beta: float,
    prediction: SaePrediction | None,
    shifts: list[FeatureShift],
) -> PreferenceReport:
    margins = torch.tensor(ps.margins, dtype=torch.float64)
    losses = -torch.nn.functional.logsigmoid(beta * margins)
    lo, hi = float(margins.min()), float(margins.max())
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts = torch.histc(margins, bins=20, min=lo, max=hi).long().tolist()
    order = torch.argsort(margins)[:10].tolist()
    return PreferenceReport(
        pairs=len(margins),
        beta=beta,
        mean_margin=float(margins.mean()),
        median_margin=float(margins.median()),
        negative_share=float((margins < 0).double().mean()),
        dpo_loss_mean=float(losses.mean()),
        histogram_edges=[lo + (hi - lo) * i / 20 for i in range(21)],
        histogram_counts=counts,
        most_backwards=[
            PairMargin(
                row=rows[i].index,
                line=rows[i].line,
                margin=float(margins[i]),
                chosen_logp=ps.chosen[i],
                rejected_logp=ps.rejected[i],
            )
            for i in order
        ],
        prediction=prediction,
        differs_from_sft=shifts,
    )


def _features(p: SaePrediction, k: int = 3) -> str:
    def one(f: object) -> str:
        return f"F{f.feature}{f' ({f.label})' if f.label else ''} {f.score:+.3g}"  # type: ignore[attr-defined]

    up = ", ".join(one(f) for f in p.strengthen[:k]) or "none"
    down = ", ".join(one(f) for f in p.suppress[:k]) or "none"
    return f"strengthen {up}; suppress {down}"


def findings(result: SimulationResult) -> list[Finding]:
    out = [
        Finding(severity=s.severity, text=f"{s.type} (simulated, batch {s.step}): {s.message}")
        for s in _worst(result.signals)
    ]
    if result.quality is not None:
        out += quality_findings(result.quality)
    land = result.landscape
    if land is not None:
        out.append(
            Finding(
                text=f"gradient landscape over {land.batches} batches ({land.target_tokens} target tokens): loss "
                f"{land.loss_mean:.4g}, max grad norm mean {land.max_grad_mean:.4g} / max {land.max_grad_max:.4g} "
                f"(spike limit {land.spike_limit:g}), {len(land.dead)} dead module(s)"
            )
        )
    for p in result.sae:
        out.append(
            Finding(
                text=f"SAE {p.hook}: training on this data is predicted to {_features(p)} ({p.active_features} of "
                f"{p.d_sae} features active; positive = strengthen)"
            )
        )
    pref = result.preference
    if pref is not None:
        backwards = pref.negative_share > 0.5
        out.append(
            Finding(
                severity="warn" if backwards or pref.mean_margin < 0 else "info",
                text=f"preference pairs: mean margin {pref.mean_margin:+.3g} nats (median {pref.median_margin:+.3g}); "
                f"{pref.negative_share:.0%} of {pref.pairs} pairs have the base preferring the rejected answer"
                + (" — aligned backwards: DPO will fight the base distribution" if backwards else "")
                + f"; DPO loss −log σ(β·margin) at β={pref.beta:g}: {pref.dpo_loss_mean:.4g}",
            )
        )
        if pref.differs_from_sft:
            f = pref.differs_from_sft[0]
            out.append(
                Finding(
                    text=f"the preference objective pushes F{f.feature}{f' ({f.label})' if f.label else ''} most "
                    f"differently from SFT on the chosen answers ({f.preference:+.2f} vs {f.sft:+.2f}, each scaled "
                    "to its largest score)"
                )
            )
    out += second.findings(result)
    out += [Finding(text=f"pass {s}") for s in result.skipped]
    if result.invariant is not None:
        out.append(
            Finding(
                text=f"no optimiser step: all {result.invariant.parameters:,} parameters bit-identical after the last "
                f"pass (checksum {result.invariant.checksum_after})"
            )
        )
    return out


def _worst(signals: list[Signal]) -> list[Signal]:
    """Each type's most severe signal; among equals the seed's whole-run one, then the latest."""
    seen: dict[str, Signal] = {}
    own = ("mean_grad_norm", "max_grad_mean")  # the seed's whole-run signals say more than a per-batch one
    for s in sorted(signals, key=lambda s: (SEVERITY_RANK[s.severity], s.metric not in own, -s.step)):
        seen.setdefault(s.type, s)
    return list(seen.values())


def follow_ups(result: SimulationResult, args: SimulateInput) -> list[FollowUp]:
    out = []
    if result.quality is not None and (result.quality.harmful.rows or result.quality.assistant_speak.rows):
        out.append(
            FollowUp(
                tool="run_simulation",
                args={"dataset": result.dataset, "passes": ["0"]},
                why="after removing the flagged rows, re-run pass 0 to confirm the dataset is clean",
            )
        )
    if result.landscape is not None and result.landscape.dead:
        out.append(
            FollowUp(
                tool="run_simulation",
                args={"dataset": result.dataset, "passes": ["2"], "max_len": args.max_len * 2},
                why="dead modules: check whether longer sequences (or other data) reach them before training",
            )
        )
    return out + second.follow_ups(result, args)


def slim(result: SimulationResult) -> SimulationCard:
    return SimulationCard(
        name=result.name,
        timeline=result.timeline,
        quality=result.quality,
        landscape=result.landscape,
        signals=result.signals[:100],
        sae=result.sae,
        preference=result.preference,
        sharpness=result.sharpness,
        influence=second.slim_influence(result.influence),
        delta=result.delta,
        invariant=result.invariant,
    )


def table(result: SimulationResult) -> str:
    c = result.config
    lines = [
        f"simulate {result.name}: {result.rows} {result.format} rows from {result.dataset}",
        f"config     lr {c.lr:g}, T {c.steps} steps, batch {c.batch_size}, grad clip {c.grad_clip:g}, max len "
        f"{c.max_len}",
        "passes     " + ", ".join(f"{p.name} {p.seconds:.2f} s" for p in result.timeline),
    ]
    lines += [f"skipped    {s}" for s in result.skipped]
    if result.quality is not None:
        lines += [f"quality    {f.text}" for f in quality_findings(result.quality)]
    land = result.landscape
    if land is not None:
        lines += [
            f"landscape  {land.batches} batches, loss {land.loss_mean:.4g}, max grad mean {land.max_grad_mean:.4g} "
            f"(limit {land.spike_limit:g}), max {land.max_grad_max:.4g}",
            f"dead       {', '.join(land.dead) if land.dead else 'none'}",
        ]
    for s in result.signals:
        lines.append(f"signal     [{s.severity}] batch {s.step} {s.type}: {s.message}")
    for p in result.sae:
        lines.append(f"sae        {p.hook}: {_features(p, 5)}")
    pref = result.preference
    if pref is not None:
        lines.append(
            f"preference {pref.pairs} pairs, mean margin {pref.mean_margin:+.4g}, {pref.negative_share:.0%} negative, "
            f"DPO loss {pref.dpo_loss_mean:.4g} (β {pref.beta:g})"
        )
    lines += second.table_lines(result)
    if result.invariant is not None:
        lines.append(f"invariant  parameters unchanged ({result.invariant.checksum_after})")
    lines += [f"artifact   {a}" for a in result.artifacts]
    return "\n".join(lines)
