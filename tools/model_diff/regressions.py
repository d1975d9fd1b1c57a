"""get_regressions' run: the session's model-diff runs as series per category and score, each point flagged when
it is worse than the run just before it by more than the threshold (never compared with the base)."""

from __future__ import annotations

from session.context import ToolContext
from tools.model_diff.models import HIGHER_IS_BETTER, SCORES, RegressionsInput, RegressionsResult, RunPoint, Series
from tools.model_diff.report import regressions_findings, regressions_follow_ups
from tools.model_diff.scores import flags
from toolserver.contract import Outcome, Reporter


def run(ctx: ToolContext, args: RegressionsInput, reporter: Reporter) -> Outcome[RegressionsResult]:
    runs = ctx.require_session().runs
    per_run = [flags(runs[i - 1].scores if i else None, r.scores, runs[i - 1].name if i else "", HIGHER_IS_BETTER)
               for i, r in enumerate(runs)]  # fmt: skip
    flagged = [{(f.category, f.score) for f in fl} for fl in per_run]
    categories = sorted({c for r in runs for c in r.scores}, key=lambda c: (c == "all", c))
    series = [
        Series(
            category=c,
            score=s,
            values=[r.scores.get(c, {}).get(s) for r in runs],
            flagged=[(c, s) in f for f in flagged],
        )
        for c in categories
        for s in SCORES
    ]
    result = RegressionsResult(
        runs=[RunPoint(id=r.id, created_at=r.created_at, name=r.name, checkpoint=r.checkpoint) for r in runs],
        series=series,
        latest=per_run[-1] if per_run else [],
    )
    return Outcome(result, regressions_findings(result), regressions_follow_ups(result))
