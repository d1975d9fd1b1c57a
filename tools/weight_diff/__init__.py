"""run_weight_diff: what a fine-tune changed in the weights, per layer and matrix type.

Base = the session's model directory; checkpoint = anything session.checkpoints reads. Full checkpoints
are diffed tensor by tensor; LoRA adapters are measured from their factors (ΔW = scale·B@A never formed).
"""
from __future__ import annotations

from pathlib import Path

from session.checkpoints import align, open_checkpoint
from session.state import Session
from toolserver.registry import Outcome, Reporter, ToolError, ToolSpec, register
from tools.weight_diff import compute
from tools.weight_diff.models import WeightDiffInput, WeightDiffResult
from tools.weight_diff.report import findings, follow_ups, slim, table


def run(session: Session | None, args: WeightDiffInput, reporter: Reporter) -> Outcome[WeightDiffResult]:
    if session is None:
        raise ToolError("weight-diff needs a session", "start one: trainspect session start --id ID --model SPEC")
    base_dir = Path(session.model_source)
    if not base_dir.is_dir():
        raise ToolError(f"the session's base model {session.model_source} is not a local directory",
                        "start the session on a local save_pretrained directory or a catalog model")
    reporter.progress(0.0, "opening the base model and the checkpoint")
    with open_checkpoint(base_dir) as base, open_checkpoint(args.checkpoint) as ckpt:
        aligned = align(base, ckpt)
        collected = compute.collect(base, ckpt, aligned, reporter)
        rows = compute.matrix_rows(collected)
        path = Path(args.checkpoint)
        result = WeightDiffResult(
            name=args.name or (path.name if path.is_dir() else path.stem),
            checkpoint=str(ckpt.path), base=str(base_dir), mode=ckpt.kind, step=ckpt.step,
            n_layers=len({r.layer for r in rows}),
            rows=rows,
            embeddings=compute.tensor_rows(collected, ("embedding",)),
            norms=compute.tensor_rows(collected, ("norm", "bias")),
            other=compute.tensor_rows(collected, ("other",)),
            top_changed=compute.top_changed(collected, args.top_k),
            totals=compute.totals(collected, aligned),
        )
    reporter.progress(1.0, f"compared {result.totals.tensors_compared} tensors")
    return Outcome(result=result, findings=findings(result), follow_ups=follow_ups(result))


SPEC = register(ToolSpec(
    name="run_weight_diff",
    command="weight-diff",
    card="weightDiff",
    summary=(
        "Per-layer weight change between the session's base model and a fine-tuned checkpoint (.pt/.bin, "
        ".safetensors, save_pretrained dir or PEFT LoRA adapter): ‖ΔW‖_F, ‖ΔW‖/‖W‖ and stable rank of ΔW "
        "for Q/K/V/O/MLP matrices, embeddings and norms separately, top changed matrices. CPU only, no "
        "forward pass, tensors streamed one at a time (seconds for small models; for a 1.5 GB pair about "
        "1–2× the time to read both files); LoRA adapters are measured from their factors in well under a "
        "second. Read `findings` first; the layer that changed most is where to look next."
    ),
    input_model=WeightDiffInput,
    output_model=WeightDiffResult,
    run=run,
    slim=slim,
    table=table,
))
