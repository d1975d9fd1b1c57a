"""What run_merge_analysis says first, what to run next, the terminal table, the card and the exit status."""

from __future__ import annotations

from tools.merge_analysis.models import GenerationCell, MergeCard, MergeResult
from tools.residual_drift import SPEC as RESIDUAL_DRIFT
from tools.weight_diff import SPEC as WEIGHT_DIFF
from toolserver.contract import Finding, FollowUp, Severity

SEVERITY: dict[str, Severity] = {"fail": "critical", "warn": "warn", "pass": "info"}
CARD_GENERATIONS = 4
CARD_FLAGGED = 12


def findings(res: MergeResult) -> list[Finding]:
    bad = [c for c in res.checks if c.status in ("fail", "warn")]
    ran = [c for c in res.checks if c.status != "skipped"]
    head = (
        f"merge verdict {res.verdict.upper()}: "
        + ("; ".join(f"{c.name} {c.status}" for c in bad) if bad else f"all {len(ran)} checks that ran pass")
        + f" ({res.adapted} adapted {'modules' if res.mode == 'lora' else 'matrices'})"
    )
    out = [Finding(text=head, severity=SEVERITY[res.verdict])]
    for c in sorted(bad, key=lambda c: c.status != "fail"):
        named = f" [{', '.join(c.items[:5])}{' …' if len(c.items) > 5 else ''}]" if c.items else ""
        out.append(Finding(text=f"{c.name}: {c.why}{named}", severity=SEVERITY[c.status]))
    if res.fidelity is not None and not any(c.name == "fidelity" for c in bad):
        f = res.fidelity
        out.append(
            Finding(
                text=f"saving the merge in {f.save_dtype} changes the {f.output} by mean |Δ| {f.mean_abs:.3g}, max "
                f"{f.max_abs:.3g} ({f.max_rel_scale:.2g} of their scale)"
            )
        )
    skipped = [c.name for c in res.checks if c.status == "skipped"]
    if skipped:
        out.append(Finding(text=f"not run: {', '.join(skipped)} (see each check's why)"))
    return out


def follow_ups(res: MergeResult) -> list[FollowUp]:
    status = {c.name: c.status for c in res.checks}
    bad = {"warn", "fail"}
    out = []
    if status["rank"] in bad or status["collapse"] in bad or status["no_op"] in bad or status["non_finite"] in bad:
        out.append(
            FollowUp(
                tool=WEIGHT_DIFF.name,
                args={"checkpoint": res.checkpoint},
                why="the per-matrix ‖ΔW‖, stable rank and NaN counts behind the weight checks",
            )
        )
    if status["fidelity"] in bad or status["degenerate"] in bad or status["next_token_kl"] in bad:
        out.append(
            FollowUp(
                tool=RESIDUAL_DRIFT.name,
                args={"checkpoint": res.checkpoint},
                why="the layer where the merged model's activations leave the base's",
            )
        )
    if not out:
        out.append(
            FollowUp(
                tool=RESIDUAL_DRIFT.name,
                args={"checkpoint": res.checkpoint},
                why="how far the merged adapter moves the residual stream, layer by layer",
            )
        )
    return out


def exit_status(res: MergeResult) -> int:
    """The CLI's exit code: 2 on a failing gate, so a merge script can stop on it."""
    return 2 if res.verdict == "fail" else 0


def _g(x: float | None) -> str:
    return "—" if x is None else format(x, ".3g")


def table(res: MergeResult) -> str:
    lines = [
        f"merge analysis of {res.name} ({res.mode}, {res.kind}) into {res.base}",
        f"VERDICT: {res.verdict.upper()}",
        "",
        f"{'check':<14} {'status':<8} {'value':>9} {'warn at':>9} {'fail at':>9}  why",
    ]
    for c in res.checks:
        lines.append(f"{c.name:<14} {c.status:<8} {_g(c.value):>9} {_g(c.warn_at):>9} {_g(c.fail_at):>9}  {c.why}")
        if c.items and c.status in ("warn", "fail"):
            lines.append(f"{'':<14} names: {', '.join(c.items[:8])}{' …' if len(c.items) > 8 else ''}")
    if res.flagged:
        lines += ["", f"{'flagged matrix':<22} {'‖ΔW‖/‖W‖':>9} {'stable rk':>9} {'allowed':>7}  reason"]
        lines += [
            f"{f.label:<22} {_g(f.rel_delta):>9} {_g(f.stable_rank):>9} {f.allowed_rank or '—':>7}  {f.reason}"
            for f in res.flagged[:20]
        ]
    if res.behaviour is not None:
        lines += ["", "generations (base → merged):"]
        for g in res.behaviour.generations[:CARD_GENERATIONS]:
            mark = "  [degenerate]" if g.merged_degenerate else ""
            lines.append(f"  {g.prompt[:40]!r}: {g.base[:40]!r} → {g.merged[:40]!r}{mark}")
    return "\n".join(lines)


def slim(res: MergeResult) -> MergeCard:
    b = res.behaviour
    gens = []
    if b is not None:  # the degenerate ones first: they are what a reader needs to see
        ordered = sorted(b.generations, key=lambda g: not g.merged_degenerate)
        gens = [
            GenerationCell(
                prompt=g.prompt[:200], base=g.base[:300], merged=g.merged[:300], merged_degenerate=g.merged_degenerate
            )
            for g in ordered[:CARD_GENERATIONS]
        ]
    return MergeCard(
        name=res.name,
        mode=res.mode,
        verdict=res.verdict,
        checks=[c.model_copy(update={"items": c.items[:5]}) for c in res.checks],
        flagged=res.flagged[:CARD_FLAGGED],
        flagged_total=len(res.flagged),
        fidelity=res.fidelity,
        kl_mean=b.kl_mean if b else None,
        base_degenerate=b.base_degenerate if b else None,
        merged_degenerate=b.merged_degenerate if b else None,
        generations=gens,
    )
