"""What the checkpoints say, for agents (findings with their numbers and rules, follow-ups) and for people (a
table), and the card's payload."""

from __future__ import annotations

from pathlib import Path

from tools.analysis_view import SPEC
from tools.analysis_view.compute import layer_of
from tools.analysis_view.models import (
    AnalysisViewCard,
    AnalysisViewInput,
    AnalysisViewResult,
    Heatmap,
)
from tools.trajectory import SPEC as TRAJECTORY
from tools.trajectory.weights_files import is_checkpoint_dir, is_weights_file
from tools.watch import SPEC as WATCH
from tools.weight_diff import SPEC as WEIGHT_DIFF
from toolserver.contract import Finding, FollowUp

_NAMED = 5
_SKIPPED = 10


def _layers(ids: list[int]) -> str:
    return f"L{ids[0]}" if len(ids) == 1 else f"L{ids[0]}–L{ids[-1]}"


def _names(names: list[str]) -> str:
    more = f" and {len(names) - _NAMED} more" if len(names) > _NAMED else ""
    return ", ".join(names[:_NAMED]) + more


def _gradient_flow(res: AnalysisViewResult, args: AnalysisViewInput) -> list[Finding]:
    out = []
    v, p = res.vanishing, res.pinch
    if v is not None and v.checkpoints:
        size = (
            f"{v.ratio:.3g}× the median grad norm of the first third ({_layers(v.first_third)})"
            if v.ratio is not None
            else f"gradient while the first third ({_layers(v.first_third)}) gets none (median 0)"
        )
        out.append(
            Finding(
                severity="warn",
                text=f"Vanishing gradient path in {v.checkpoints} of {v.of} checkpoints: at step {v.step} the last "
                f"third of layers ({_layers(v.last_third)}) has {size} (rule ≥ {args.vanishing_ratio:g}×; steps "
                f"{', '.join(map(str, v.steps[:8]))}{' …' if v.checkpoints > 8 else ''}).",
            )
        )
    if p is not None and p.checkpoints:
        drop = f"{p.drop:.3g}× below" if p.drop is not None else "zero against"
        out.append(
            Finding(
                severity="warn",
                text=f"The gradient waterfall pinches at layer {p.layer}: its grad norm is {drop} layer "
                f"{p.layer + 1}'s ({p.below:.3g} vs {p.above:.3g} at step {p.step}), the largest adjacent drop in "
                f"{p.checkpoints} of "
                f"{p.of} checkpoints (rule ≥ {args.pinch_drop:g}×): the flow is blocked at layer {p.layer}'s output — "
                "inspect its norm, residual path and init.",
            )
        )
    if out or (v is None and p is None):
        return out
    parts = []  # below both thresholds: the margins (a ratio or drop that is not finite would have fired)
    if v is not None:
        parts.append(
            f"last/first-third grad-norm ratio at most {v.ratio:.3g} (step {v.step}; rule ≥ {args.vanishing_ratio:g})"
        )
    if p is not None:
        parts.append(
            f"the largest ratio of a layer's grad norm to the next earlier one's is {p.drop:.3g} (layer "
            f"{p.layer + 1} over {p.layer}; a pinch needs ≥ {args.pinch_drop:g})"
        )
    return [Finding(text="Gradients flow through every layer: " + "; ".join(parts) + ".")]


def _clipping(res: AnalysisViewResult, args: AnalysisViewInput) -> list[Finding]:
    c = res.clipping
    if c is None:
        return []
    source = "given" if c.source == "input" else "recorded"
    if c.dominated:
        return [
            Finding(
                severity="warn",
                text=f"Clipping at nearly every step by one tensor: global grad norm > grad_clip {c.grad_clip:g} "
                f"({source}) in {c.clipped} of {c.of} checkpoints, and {c.top} holds the largest share of the squared "
                f"norm in {c.top_count} of them (mean share {c.top_share:.2f}; rule ≥ {args.clip_fraction:g} for "
                "both) — find why it dominates: its learning rate, init or regularisation.",
            )
        ]
    if c.post_clip:
        return [
            Finding(
                severity="warn",
                text=f"The global grad norm equals grad_clip {c.grad_clip:g} (within 0.1%) in {c.at_clip} of {c.of} "
                "checkpoints: the gradients were recorded after clip_grad_norm_, so clipped steps cannot be counted — "
                "call StepLogger.step before clipping.",
            )
        ]
    holder = f"; {c.top} holds the largest share in {c.top_count} of them" if c.top else ""
    return [
        Finding(
            text=f"Global grad norm above grad_clip {c.grad_clip:g} ({source}) in {c.clipped} of {c.of} checkpoints"
            f"{holder} (clipping by one tensor needs ≥ {args.clip_fraction:g} of both).",
        )
    ]


def findings(res: AnalysisViewResult, args: AnalysisViewInput) -> list[Finding]:
    out = []
    if res.nonfinite:
        first = res.nonfinite[0]
        out.append(
            Finding(
                severity="critical",
                text=f"Non-finite gradient norms in {len(res.nonfinite)} checkpoints, first at step {first.step} "
                f"({_names(first.params)}): those layers are left out of the gradient rules.",
            )
        )
    if res.skipped:
        first = res.skipped[0]
        out.append(
            Finding(
                severity="warn",
                text=f"{len(res.skipped)} of {len(res.skipped) + res.checkpoints} files skipped, the rest analysed; "
                f"e.g. {first.file}: {first.reason}",
            )
        )
    out += _gradient_flow(res, args)
    out += _clipping(res, args)
    if res.still and res.movement is not None:
        by = {
            "none": "no gradient ever reaches them (detached or unused)",
            "zero": "their gradient is 0 at every checkpoint",
            "nonzero": "they have gradients but the optimizer does not move them",
        }
        for status, why in by.items():
            names = [s.name for s in res.still if s.gradient == status]
            if names:
                out.append(
                    Finding(
                        severity="warn",
                        text=f"{len(names)} trainable parameter{'s' if len(names) > 1 else ''} never moved (movement ≤ "
                        f"{args.still:g} at every checkpoint after step {res.movement.reference_step}): "
                        f"{_names(names)} — {why}.",
                    )
                )
    if res.collapsed:
        c = res.collapsed[0]
        others = f" and {len(res.collapsed) - 1} more heads" if len(res.collapsed) > 1 else ""
        out.append(
            Finding(
                severity="warn",
                text=f"Attention entropy collapsed early in {c.head}{others}: {c.first:.3g} → {c.value:.3g} nats "
                f"({c.value / c.first:.1%} of its first; rule ≤ {args.collapse_fraction:g}×) by step {c.step}, within "
                f"the first {args.collapse_window:.0%} of the run (steps ≤ {c.window_end:g}) — check the QK-norm "
                "path, init and learning rate.",
            )
        )
    if res.grown:
        g = res.grown[0]
        others = f" ({len(res.grown) - 1} more modules too)" if len(res.grown) > 1 else ""
        out.append(
            Finding(
                severity="warn",
                text=f"Activation std of {g.module} grew {g.ratio:.3g}× ({g.first:.3g} at step {g.first_step} → "
                f"{g.last:.3g} at step {g.last_step}; rule ≥ {args.activation_growth:g}×){others}.",
            )
        )
    out.append(Finding(text=_overview(res)))
    return out


def _overview(res: AnalysisViewResult) -> str:
    norms = [v for v in res.timeline.grad_norm if v is not None]
    text = (
        f"{res.checkpoints} checkpoints (steps {res.first_step}–{res.last_step}, {res.triggered_total} triggered), "
        f"{res.n_layers} layers"
    )
    if norms:
        text += f"; global grad norm {norms[0]:.3g} → {norms[-1]:.3g}"
    if res.movement_top and res.movement is not None:
        top = res.movement_top[0]
        how = "" if top.exact else ", estimated on a random sample"
        text += f"; most moved since step {res.movement.reference_step}: {top.name} (‖Δw‖/‖w‖ {top.moved:.3g}{how})"
    return text + "."


def _beside(res: AnalysisViewResult) -> tuple[Path | None, list[Path]]:
    """The run's step log and saved weights next to the analysis folder, if any."""
    root = Path(res.dir)
    logs = [d / name for d in (root, root.parent) for name in ("metrics.jsonl", "trainer_state.json")]
    log = next((p for p in logs if p.is_file()), None)
    saved = [p for p in root.parent.iterdir() if is_checkpoint_dir(p) or (p.is_file() and is_weights_file(p))]
    weights = sorted(saved, key=lambda p: (len(p.name), p.name))  # checkpoint-20 before checkpoint-100
    return log, weights


def follow_ups(res: AnalysisViewResult) -> list[FollowUp]:
    log, weights = _beside(res)
    out = []
    if log is not None:
        out.append(
            FollowUp(
                tool=WATCH.name,
                args={"metrics": str(log)},
                why="the same run's step-by-step loss and grad-norm signals",
            )
        )
    flow = bool(res.pinch and res.pinch.checkpoints) or bool(res.vanishing and res.vanishing.checkpoints)
    if flow and res.grids is not None and res.pinch is not None:
        at = [n for n in res.grids.gridded if layer_of(n) == res.pinch.layer]
        if at:
            out.append(
                FollowUp(
                    tool=SPEC.name,
                    args={"dir": res.dir, "tensor": at[0], "step": res.pinch.step},
                    why=f"the weight and gradient grids of layer {res.pinch.layer} where the flow pinches",
                )
            )
    shown = {w.step for w in res.waterfall}
    unseen = [t.step for t in res.triggered if t.step not in shown]
    if unseen:
        out.append(
            FollowUp(
                tool=SPEC.name,
                args={"dir": res.dir, "steps": unseen[:6]},
                why="the gradient waterfall at the triggered checkpoints not shown",
            )
        )
    if weights:
        out.append(
            FollowUp(
                tool=TRAJECTORY.name,
                args={"dir": str(Path(res.dir).parent)},
                why="the run's saved weights in weight space (needs a session: start_session with the base model)",
            )
        )
        if res.still or flow:
            out.append(
                FollowUp(
                    tool=WEIGHT_DIFF.name,
                    args={"checkpoint": str(weights[-1])},
                    why="which matrices the last saved weights changed (needs a session with the base model)",
                )
            )
    return out


def _g(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


def _heatmap_line(name: str, h: Heatmap) -> str:
    return f"{name}: {len(h.rows)} rows × {len(h.steps)} checkpoints (steps {h.steps[0]}–{h.steps[-1]})"


def table(res: AnalysisViewResult) -> str:
    lines = [
        f"analysis checkpoints in {res.dir}: {res.checkpoints} read (steps {res.first_step}–{res.last_step}, "
        f"{res.triggered_total} triggered), {len(res.skipped)} skipped; {res.n_layers} layers",
    ]
    if res.movement is not None:
        sample = (
            "every element"
            if res.movement.sample == 0
            else f"exact up to {res.movement.sample:,} elements a tensor, a random sample beyond"
        )
        lines.append(f"movement from step {res.movement.reference_step} ({sample})")
    lines.append(f"grad clip: {res.grad_clip:g}" if res.grad_clip else "grad clip: unknown")
    wf = res.waterfall
    header = "".join(f"{'step ' + str(w.step):>12}" for w in wf)
    lines += ["", "gradient waterfall — per-layer grad norm:", "  " + f"{'':<28}" + header]
    for i in range(res.n_layers):
        flag = "  ← pinch" if res.pinch is not None and res.pinch.checkpoints and res.pinch.layer == i else ""
        lines.append("  " + f"{'L' + str(i):<28}" + "".join(f"{_g(w.layers[i]):>12}" for w in wf) + flag)
    outside = list(dict.fromkeys(n.name for w in wf for n in w.outside))
    for name in outside:
        values = [next((n.norm for n in w.outside if n.name == name), None) for w in wf]
        lines.append("  " + f"{name[-28:]:<28}" + "".join(f"{_g(v):>12}" for v in values))
    lines.append("  " + f"{'global':<28}" + "".join(f"{_g(w.grad_norm):>12}" for w in wf))
    if res.movement_top and res.movement is not None:
        lines += ["", f"most moved since step {res.movement.reference_step} (‖w − w_ref‖/‖w_ref‖ at {res.last_step}):"]
        lines += [f"  {m.moved:>10.4g}  {m.name}{'' if m.exact else '  (sampled)'}" for m in res.movement_top]
    if res.attention is not None:
        a = res.attention
        last = [(row[-1], h) for h, row in zip(a.entropy.rows, a.entropy.values, strict=True)]
        ranked = sorted((v, h) for v, h in last if v is not None)
        lines += ["", _heatmap_line("attention entropy", a.entropy)]
        if ranked:
            lines.append("  lowest at the last: " + ", ".join(f"{h} {v:.3g}" for v, h in ranked[:5]))
    if res.activations is not None:
        acts = res.activations
        lines += ["", f"activations: {len(acts.modules)} modules over {len(acts.steps)} checkpoints"]
        lines += [
            f"  {m.module[-40:]:<40} std {_g(m.std[0])} → {_g(m.std[-1])}  sparsity {_g(m.sparsity[-1])}"
            for m in res.activations.modules[:12]
        ]
    if res.grids is not None:
        g = res.grids
        sampled = f"{len(g.weight)}×{len(g.weight[0]) if g.weight else 0}"
        lines += ["", f"grids: {g.tensor} at step {g.step}, shape {g.shape} ({sampled} sampled)"]
    if res.skipped:
        lines += ["", f"skipped: {len(res.skipped)}"] + [f"  {s.file}: {s.reason}" for s in res.skipped[:_SKIPPED]]
    if res.notes:
        lines += ["", "notes:"] + [f"  {n}" for n in res.notes]
    return "\n".join(lines)


def slim(res: AnalysisViewResult) -> AnalysisViewCard:
    pinch = res.pinch.layer if res.pinch is not None and res.pinch.checkpoints else None
    return AnalysisViewCard(
        dir=res.dir,
        checkpoints=res.checkpoints,
        first_step=res.first_step,
        last_step=res.last_step,
        n_layers=res.n_layers,
        movement=res.movement,
        grad_clip=res.grad_clip,
        timeline=res.timeline,
        waterfall=res.waterfall,
        grad_heatmap=res.grad_heatmap,
        movement_top=res.movement_top,
        movement_layers=res.movement_layers,
        grids=res.grids,
        attention=res.attention,
        activations=res.activations,
        pinch_layer=pinch,
        vanishing_steps=res.vanishing.steps if res.vanishing is not None else [],
        collapsed=[c.head for c in res.collapsed],
        still=[s.name for s in res.still],
        skipped=res.skipped[:_SKIPPED],
        skipped_total=len(res.skipped),
    )
