"""What run_model_diff and get_regressions say first, what to run next, their tables and their cards."""

from __future__ import annotations

from collections import Counter

from tools.model_diff.models import (
    HIGHER_IS_BETTER,
    REGRESSION_PP,
    SCORES,
    CategoryRow,
    ModelDiffCard,
    ModelDiffResult,
    RegressionsResult,
    ScoreCell,
    Scores,
)
from toolserver.contract import Finding, FollowUp

CARD_ROWS = 12
MOVE = 0.02  # a score change smaller than this is not worth a finding on its own


def _cells(s: Scores) -> list[ScoreCell]:
    out = []
    for name in (*SCORES, "accuracy"):
        t = getattr(s, name)
        out.append(ScoreCell(score=name, base=t.base, checkpoint=t.checkpoint, delta=t.delta,
                             higher_is_better=HIGHER_IS_BETTER.get(name, True)))  # fmt: skip
    return out


def _g(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _d(x: float | None) -> str:
    return "—" if x is None else f"{x:+.3f}"


def findings(res: ModelDiffResult) -> list[Finding]:
    out = []
    o = res.overall
    out.append(
        Finding(
            text=f"On {res.rows} rows, base → checkpoint: consistency {_g(o.consistency.base)} → "
            f"{_g(o.consistency.checkpoint)}, suppression {_g(o.suppression.base)} → {_g(o.suppression.checkpoint)}, "
            f"robustness {_g(o.robustness.base)} → {_g(o.robustness.checkpoint)}, accuracy {_g(o.accuracy.base)} → "
            f"{_g(o.accuracy.checkpoint)}."
        )
    )
    for f in res.regressions:
        out.append(
            Finding(
                severity="critical",
                text=f"Regression vs the prior run {f.prior_run!r}: {f.category} {f.score} {f.prior:.3f} → "
                f"{f.current:.3f} ({f.change * 100:+.1f} pp; flagged beyond {REGRESSION_PP * 100:.0f} pp).",
            )
        )
    sup = o.suppression.delta
    if sup is not None and sup > MOVE:
        phrases = Counter(h.phrase for h in res.hedges if h.model == "checkpoint")
        base_phrases = Counter(h.phrase for h in res.hedges if h.model == "base")
        rising = [f"'{p}' ({n} vs {base_phrases[p]} in the base)" for p, n in phrases.most_common(3)]
        out.append(
            Finding(
                severity="warn",
                text=f"Suppression rose by {sup:+.3f}: the checkpoint hedges or refuses more"
                + (f", most often with {', '.join(rising)}" if rising else "")
                + ". Inspect the training data for these phrases.",
            )
        )
    for c in res.categories:
        if c.category == "factual" and c.robustness.delta is not None and c.robustness.delta < -MOVE:
            out.append(
                Finding(
                    severity="warn",
                    text=f"Robustness on factual rows fell {c.robustness.delta:+.3f} "
                    f"({_g(c.robustness.base)} → {_g(c.robustness.checkpoint)}): under surface corruptions the "
                    "fine-tune holds its facts less well — it has likely learned a surface pattern, not the facts.",
                )
            )
    cal = res.calibration
    if cal.ece_delta is not None:
        ci = f" (95% CI {cal.ece_delta_ci[0]:+.3f} to {cal.ece_delta_ci[1]:+.3f})" if cal.ece_delta_ci else ""
        noise = "beyond the bootstrap noise" if cal.significant else "within the bootstrap noise"
        out.append(
            Finding(
                severity="warn" if cal.significant and cal.ece_delta > 0 else "info",
                text=f"ECE {_g(cal.base.ece)} → {_g(cal.checkpoint.ece)} ({cal.ece_delta:+.3f}{ci}, {noise}); "
                f"accuracy {_g(cal.base.accuracy)} → {_g(cal.checkpoint.accuracy)} over "
                f"{cal.checkpoint.predictions} predictions.",
            )
        )
    if res.low_confidence:
        out.append(
            Finding(
                text=f"{len(res.low_confidence)} rows have checkpoint confidence below {res.low_confidence_threshold:g}"
                + (f"; written to {res.exported}" if res.exported else "")
                + "."
            )
        )
    if res.bad_rows:
        out.append(Finding(severity="warn", text=f"{len(res.bad_rows)} eval rows skipped; first: {res.bad_rows[0]}"))
    return out


def follow_ups(res: ModelDiffResult) -> list[FollowUp]:
    out = []
    sup = res.overall.suppression.delta
    if sup is not None and sup > MOVE:
        out.append(
            FollowUp(
                tool="run_model_diff",
                args={"checkpoint": res.checkpoint},
                why="suppression rose: pass eval= the training data ({instruction, response} JSONL) to see which "
                "training rows carry the hedging phrases",
            )
        )
    cal = res.calibration
    if cal.ece_delta is not None and cal.ece_delta > 0 and not res.exported:
        out.append(
            FollowUp(
                tool="run_model_diff",
                args={
                    "checkpoint": res.checkpoint,
                    "export_low_confidence": "low_confidence.jsonl",
                    "low_confidence": res.low_confidence_threshold,
                },  # fmt: skip
                why="calibration regressed: export the low-confidence rows as a labeled set for the next iteration",
            )
        )
    if res.regressions or len(out) == 0:
        out.append(FollowUp(tool="get_regressions", args={}, why="every run's category scores, the flagged points"))
    out.append(
        FollowUp(
            tool="run_residual_drift",
            args={"checkpoint": res.checkpoint},
            why="where in the network the behaviour change starts",
        )
    )
    return out


def table(res: ModelDiffResult) -> str:
    lines = [f"model diff of {res.name} on {res.rows} rows ({res.eval_source})", ""]
    lines.append(f"{'score':<14} {'base':>7} {'ckpt':>7} {'Δ':>7}")
    lines += [f"{c.score:<14} {_g(c.base):>7} {_g(c.checkpoint):>7} {_d(c.delta):>7}" for c in _cells(res.overall)]
    lines += ["", f"{'category':<12} {'rows':>4}  " + "  ".join(f"{s:>17}" for s in (*SCORES, "accuracy"))]
    for c in res.categories:
        cells = "  ".join(f"{_g(x.checkpoint):>7} ({_d(x.delta)})" for x in _cells(c))
        lines.append(f"{c.category:<12} {c.rows:>4}  {cells}")
    cal = res.calibration
    lines += ["", f"ECE base {_g(cal.base.ece)} → checkpoint {_g(cal.checkpoint.ece)}; MCE {_g(cal.base.mce)} → "
              f"{_g(cal.checkpoint.mce)}"]  # fmt: skip
    if res.regressions:
        lines += ["", "regressions vs the prior run:"]
        lines += [f"  {f.category} {f.score}: {f.prior:.3f} → {f.current:.3f}" for f in res.regressions]
    if res.hedges:
        lines += ["", "hedges (checkpoint):"]
        lines += [f"  {h.phrase!r} in {h.generation[:50]!r}" for h in res.hedges if h.model == "checkpoint"][:5]
    return "\n".join(lines)


def slim(res: ModelDiffResult) -> ModelDiffCard:
    cal = res.calibration
    return ModelDiffCard(
        name=res.name,
        rows=res.rows,
        overall=_cells(res.overall),
        categories=[CategoryRow(category=c.category, rows=c.rows, cells=_cells(c)) for c in res.categories],
        base_bins=cal.base.bins,
        checkpoint_bins=cal.checkpoint.bins,
        ece={"base": cal.base.ece, "checkpoint": cal.checkpoint.ece, "delta": cal.ece_delta},
        ece_delta_ci=cal.ece_delta_ci,
        topics=cal.topics,
        low_confidence=res.low_confidence[:CARD_ROWS],
        low_confidence_total=len(res.low_confidence),
        hedges=[h for h in res.hedges if h.model == "checkpoint"][:CARD_ROWS],
        regressions=res.regressions,
    )


# ----- get_regressions -----------------------------------------------------------------------------------------


def regressions_findings(res: RegressionsResult) -> list[Finding]:
    if not res.runs:
        return [Finding(text="No model-diff runs in this session yet.")]
    head = Finding(text=f"{len(res.runs)} model-diff runs; the latest is {res.runs[-1].name!r}.")
    return [head] + [
        Finding(
            severity="critical",
            text=f"{f.category} {f.score} regressed against {f.prior_run!r}: {f.prior:.3f} → {f.current:.3f} "
            f"({f.change * 100:+.1f} pp).",
        )
        for f in res.latest
    ]


def regressions_follow_ups(res: RegressionsResult) -> list[FollowUp]:
    if not res.runs:
        return [FollowUp(tool="run_model_diff", args={}, why="score a checkpoint first: pass checkpoint= its path")]
    return [FollowUp(tool="run_model_diff", args={"checkpoint": res.runs[-1].checkpoint},
                     why="rerun the latest checkpoint's model diff for its full detail")]  # fmt: skip


def regressions_table(res: RegressionsResult) -> str:
    lines = [f"{len(res.runs)} runs: " + ", ".join(r.name for r in res.runs), ""]
    for s in res.series:
        marks = " ".join(("!" if f else "") + _g(v) for v, f in zip(s.values, s.flagged, strict=True))
        lines.append(f"{s.category:<12} {s.score:<12} {marks}")
    return "\n".join(lines)


def regressions_slim(res: RegressionsResult) -> RegressionsResult:
    return res
