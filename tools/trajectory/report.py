"""What a trajectory says: where change concentrated, when movement slowed, jumps, layers that never moved."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from tools.residual_drift import SPEC as RESIDUAL_DRIFT
from tools.trajectory.models import (
    PointCard,
    Rules,
    TrajectoryCard,
    TrajectoryInput,
    TrajectoryResult,
)
from tools.watch import SPEC as WATCH
from tools.weight_diff import SPEC as WEIGHT_DIFF
from toolserver.contract import Finding, FollowUp

_PROBLEMS = 10


def analyse(points: list[Any], n_layers: int, args: TrajectoryInput) -> dict[str, Any]:
    """The rule-based part of the result, each rule stated in `rules`."""
    rates = [p.movement_per_step for p in points]
    median = statistics.median(rates) if rates else 0.0
    jumps = [
        p.step for p in points if len(points) >= 3 and median > 0 and p.movement_per_step > args.jump_factor * median
    ]
    slowed_from = None
    steady = [r for p, r in zip(points, rates, strict=True) if p.step not in jumps]  # a jump is not the pace
    if len(points) >= 3 and steady and max(steady) > 0:
        peak_at = max(i for i, r in enumerate(rates) if r == max(steady))
        bar = args.slowed_fraction * rates[peak_at]
        for i in range(peak_at + 1, len(points)):
            if all(r < bar for r in rates[i:]):
                slowed_from = points[i].step
                break
    never_moved = [
        layer
        for layer in range(n_layers)
        if points and all((p.by_layer[layer] or 0.0) <= args.still_rel for p in points)
    ]
    last = points[-1].by_type if points else {}
    peak_type = max((m for m in last if last[m] is not None), key=lambda m: last[m] or 0.0, default=None)
    rules = Rules(
        jump=f"movement per step ‖W_k − W_k−1‖_F / (step_k − step_k−1) > {args.jump_factor:g} × its median over the "
        "run (needs ≥ 3 checkpoints)",
        slowed=f"from the first checkpoint after the peak movement per step (jumps aside) on which it stays below "
        f"{args.slowed_fraction:g} × that peak",
        never_moved=f"‖ΔW‖/‖W‖ of every matrix in the layer ≤ {args.still_rel:g} at every checkpoint",
        cosine="cos of consecutive updates over every compared tensor: mean ≥ 0.5 consistent direction, "
        "mean ≤ 0 turning back (oscillation)",
        jump_factor=args.jump_factor,
        slowed_fraction=args.slowed_fraction,
        still_rel=args.still_rel,
    )
    return {
        "jumps": jumps,
        "slowed_from": slowed_from,
        "never_moved": never_moved,
        "peak_type": peak_type,
        "rules": rules,
    }


def findings(res: TrajectoryResult, base_nonfinite: list[str]) -> list[Finding]:
    out: list[Finding] = []
    pts = res.points
    skipped = [e for e in res.entries if e.status != "analysed"]
    if skipped:
        kinds = Counter(e.status for e in skipped)
        first = next((e for e in skipped if e.status == "unreadable"), skipped[0])
        example = first.reason if first.reason and first.path in first.reason else f"{first.path}: {first.reason}"
        out.append(
            Finding(
                severity="warn",
                text=f"{len(skipped)} of {len(res.entries)} checkpoints not analysed "
                f"({', '.join(f'{n} {s}' for s, n in kinds.items())}); e.g. {example}.",
            )
        )
    if base_nonfinite:
        out.append(
            Finding(
                severity="critical",
                text=f"The base has NaN/inf in {len(base_nonfinite)} tensors "
                f"({', '.join(base_nonfinite[:3])}): left out of every number.",
            )
        )
    last = pts[-1]
    if len(pts) == 1:
        out.append(
            Finding(
                text=f"One checkpoint ({last.label}): ‖ΔW‖/‖W‖ {last.rel_delta:.3g}; a trajectory needs two or more."
            )
        )
        return out
    top_share = ""
    if res.peak_type and last.by_type.get(res.peak_type) is not None:
        top_share = f"; the most changed matrix type is {res.peak_type} (‖ΔW‖/‖W‖ {last.by_type[res.peak_type]:.3g})"
    since = next(i for i in range(len(pts)) if all(q.top_changed == last.top_changed for q in pts[i:]))
    top = (
        f"{last.top_changed} has been the most changed matrix since {pts[since].label}"
        if since < len(pts) - 1
        else f"the most changed matrix became {last.top_changed} only at the last checkpoint"
    )
    out.append(
        Finding(
            text=f"Over {len(pts)} checkpoints (steps {pts[0].step}–{last.step}) ‖ΔW‖/‖W‖ went from "
            f"{pts[0].rel_delta:.3g} to {last.rel_delta:.3g}{top_share}; {top}."
        )
    )
    for step in res.jumps:
        p = next(q for q in pts if q.step == step)
        median = statistics.median(q.movement_per_step for q in pts)
        out.append(
            Finding(
                severity="warn",
                text=f"Movement jumps at {p.label}: {p.movement_per_step:.3g} per step, "
                f"{p.movement_per_step / median:.1f}× the median (rule: > {res.rules.jump_factor:g}×).",
            )
        )
    if res.slowed_from is not None:
        peak = max(pts, key=lambda q: q.movement_per_step)
        out.append(
            Finding(
                text=f"Movement slowed from step {res.slowed_from}: below {res.rules.slowed_fraction:g} × its peak "
                f"(peak {peak.movement_per_step:.3g} per step at {peak.label}, last {last.movement_per_step:.3g})."
            )
        )
    cosines = [p.update_cosine for p in pts if p.update_cosine is not None]
    if cosines:
        mean = statistics.fmean(cosines)
        if mean <= 0:
            out.append(
                Finding(
                    severity="warn",
                    text=f"Consecutive updates turn back: mean cosine {mean:.2f} "
                    f"(≤ 0), the weights oscillate rather than travel.",
                )
            )
        elif mean >= 0.5:
            out.append(Finding(text=f"The run keeps one direction: mean cosine of consecutive updates {mean:.2f}."))
        else:
            out.append(Finding(text=f"Consecutive updates are loosely aligned: mean cosine {mean:.2f}."))
    if res.never_moved:
        out.append(
            Finding(
                severity="warn",
                text=f"{len(res.never_moved)} layer{'s' if len(res.never_moved) > 1 else ''} never moved "
                f"(‖ΔW‖/‖W‖ ≤ {res.rules.still_rel:g} at every checkpoint): "
                f"{', '.join(map(str, res.never_moved[:10]))} — frozen, or dead in weight space.",
            )
        )
    return out


def follow_ups(res: TrajectoryResult) -> list[FollowUp]:
    if not res.points:
        return []
    last = res.points[-1]
    out = [
        FollowUp(
            tool=WEIGHT_DIFF.name, args={"checkpoint": last.path}, why=f"the full per-matrix table at {last.label}"
        ),
        FollowUp(
            tool=RESIDUAL_DRIFT.name,
            args={"checkpoint": last.path},
            why=f"whether the weight change at {last.label} moves activations",
        ),
    ]
    for step in res.jumps[:1]:
        p = next(q for q in res.points if q.step == step)
        out.append(
            FollowUp(tool=WEIGHT_DIFF.name, args={"checkpoint": p.path}, why=f"what changed at the jump ({p.label})")
        )
    if res.never_moved:
        out.append(
            FollowUp(
                tool=WATCH.name,
                args={},
                why=f"cross-check layers {res.never_moved[:5]} with watch's dead-layer signal: pass metrics= the run's "
                "step log",
            )
        )
    return out


def _g(x: float | None, spec: str = ".3g") -> str:
    return "—" if x is None else format(x, spec)


def table(res: TrajectoryResult) -> str:
    lines = [
        f"trajectory of {len(res.points)} checkpoints ({res.mode}) from {res.source}, base {res.base}",
        f"{res.keys_compared} tensors compared in every checkpoint"
        + (f"; {len(res.keys_not_everywhere)} missing from some, left out" if res.keys_not_everywhere else ""),
        "",
        f"  {'label':<16} {'‖ΔW‖/‖W‖':>10} {'‖ΔW‖_F':>10} {'move/step':>10} {'cos':>6} {'med SR':>7}  top changed",
    ]
    for p in res.points:
        flag = "  ← jump" if p.step in res.jumps else ""
        lines.append(
            f"  {p.label:<16} {p.rel_delta:>10.4g} {p.fro_delta:>10.4g} {p.movement_per_step:>10.3g} "
            f"{_g(p.update_cosine, '.2f'):>6} {_g(p.median_stable_rank):>7}  {p.top_changed or '—'}{flag}"
        )
    if res.matrix_types:
        lines += [
            "",
            "‖ΔW‖/‖W‖ by matrix type:",
            "  " + f"{'label':<16}" + "".join(f"{m:>10}" for m in res.matrix_types),
        ]
        lines += [
            "  " + f"{p.label:<16}" + "".join(f"{_g(p.by_type.get(m)):>10}" for m in res.matrix_types)
            for p in res.points
        ]
    problems = [e for e in res.entries if e.status != "analysed"]
    if problems:
        lines += ["", f"not analysed: {len(problems)}"]
        lines += [f"  {e.status:<11} {e.path}: {e.reason}" for e in problems[:_PROBLEMS]]
    sources = Counter(e.step_source for e in res.entries if e.status == "analysed")
    lines += ["", "steps from: " + ", ".join(f"{s} ({n})" for s, n in sources.items())]
    return "\n".join(lines)


def slim(res: TrajectoryResult) -> TrajectoryCard:
    return TrajectoryCard(
        source=res.source,
        mode=res.mode,
        points=[
            PointCard(
                label=p.label,
                step=p.step,
                rel_delta=float(f"{p.rel_delta:.4g}"),
                movement_per_step=float(f"{p.movement_per_step:.4g}"),
                update_cosine=None if p.update_cosine is None else round(p.update_cosine, 3),
                median_stable_rank=None if p.median_stable_rank is None else float(f"{p.median_stable_rank:.4g}"),
                top_changed=p.top_changed,
                by_type={m: None if v is None else float(f"{v:.4g}") for m, v in p.by_type.items()},
            )
            for p in res.points
        ],
        matrix_types=res.matrix_types,
        entries=dict(Counter(e.status for e in res.entries)),
        problems=[e for e in res.entries if e.status != "analysed"][:_PROBLEMS],
        never_moved=res.never_moved,
        jumps=res.jumps,
        slowed_from=res.slowed_from,
    )
