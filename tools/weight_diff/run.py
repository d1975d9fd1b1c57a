"""run_weight_diff's run: open base and checkpoint lazily, measure every common tensor, report.

Base = the session's model directory; checkpoint = anything session.checkpoints reads. Full checkpoints
are diffed tensor by tensor; LoRA adapters are measured from their factors (ΔW = scale·B@A never formed).
"""

from __future__ import annotations

from pathlib import Path

from session.checkpoints import align, open_checkpoint
from session.context import ToolContext
from tools.weight_diff import compute
from tools.weight_diff.models import WeightDiffInput, WeightDiffResult
from tools.weight_diff.report import findings, follow_ups
from toolserver.contract import Outcome, Reporter


def run(ctx: ToolContext, args: WeightDiffInput, reporter: Reporter) -> Outcome[WeightDiffResult]:
    base_dir = ctx.base_dir()
    reporter.progress(0.0, "opening the base model and the checkpoint")
    with open_checkpoint(base_dir) as base, open_checkpoint(args.checkpoint) as ckpt:
        aligned = align(base, ckpt)
        collected = compute.collect(base, ckpt, aligned, reporter)
        rows = compute.matrix_rows(collected)
        path = Path(args.checkpoint)
        result = WeightDiffResult(
            name=args.name or (path.name if path.is_dir() else path.stem),
            checkpoint=str(ckpt.path),
            base=str(base_dir),
            mode=ckpt.kind,
            step=ckpt.step,
            n_layers=len({r.layer for r in rows}),
            rows=rows,
            embeddings=compute.tensor_rows(collected, ("embedding",)),
            norms=compute.tensor_rows(collected, ("norm", "bias")),
            other=compute.tensor_rows(collected, ("other",)),
            top_changed=compute.top_changed(collected, args.top_k),
            nonfinite=collected.nonfinite,
            totals=compute.totals(collected, aligned),
        )
    reporter.progress(1.0, f"compared {result.totals.tensors_compared} tensors")
    return Outcome(result=result, findings=findings(result), follow_ups=follow_ups(result))
