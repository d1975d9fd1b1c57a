"""run_sae_align's run: load both SAEs, match A's decoder directions against B's."""

from __future__ import annotations

from pathlib import Path

import torch

from session.context import ToolContext
from session.sae import load_sae
from tools.sae.align import best_matches, unit_rows
from tools.sae.models import Match, SaeAlignInput, SaeAlignResult
from tools.sae.report import align_findings
from toolserver.contract import Outcome, Reporter, ToolError


def _spec(spec: str) -> str:
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def run(ctx: ToolContext, args: SaeAlignInput, reporter: Reporter) -> Outcome[SaeAlignResult]:
    reporter.progress(0.05, "loading both SAEs")
    (sae_a, info_a), (sae_b, info_b) = load_sae(_spec(args.a)), load_sae(_spec(args.b))
    if info_a.d_in != info_b.d_in:
        raise ToolError(
            f"SAE {args.a} has d_in {info_a.d_in} but {args.b} has {info_b.d_in}", "align SAEs of the same model width"
        )
    reporter.progress(0.3, f"matching {info_a.d_sae} decoder directions against {info_b.d_sae}")
    best, cos, mutual = best_matches(unit_rows(sae_a.W_dec), unit_rows(sae_b.W_dec))
    matches = [
        Match(feature=i, best=int(b), cos=float(c), mutual=bool(m))
        for i, (b, c, m) in enumerate(zip(best.tolist(), cos.tolist(), mutual.tolist(), strict=True))
    ]
    order = torch.argsort(cos)
    unmatched = [int(i) for i in torch.nonzero(cos < args.match).flatten().tolist()]
    result = SaeAlignResult(
        a=info_a.spec,
        b=info_b.spec,
        d_in=info_a.d_in,
        d_sae_a=info_a.d_sae,
        d_sae_b=info_b.d_sae,
        mean_cos=float(cos.mean()),
        median_cos=float(cos.median()),
        mutual=int(mutual.sum()),
        match=args.match,
        unmatched=len(unmatched),
        unmatched_features=unmatched[:200],
        weakest=[matches[i] for i in order[: args.top].tolist()],
        strongest=[matches[i] for i in order.flip(0)[: args.top].tolist()],
        histogram=torch.histc(cos.float(), bins=20, min=-1.0, max=1.0).long().tolist(),
        matches=matches,
    )
    reporter.progress(1.0, f"mean best cosine {result.mean_cos:.3f}")
    return Outcome(result, align_findings(result), [])
