"""run_merge_analysis: a pre-merge gate for a LoRA adapter (or a full checkpoint) on the session's base."""

from tools.merge_analysis.models import MergeCard, MergeInput, MergeResult
from toolserver.contract import ToolSpec, lazy

SPEC = ToolSpec(
    name="run_merge_analysis",
    command="merge-analysis",
    card="mergeAnalysis",
    summary=(
        "Pre-merge gate for a PEFT LoRA adapter (or a full checkpoint) on the session's base: named checks, each "
        "with its value, thresholds and pass/warn/fail — no_op (B·A = 0, targets the base lacks), non_finite (NaN/inf "
        "in factors or in the merged tensors in the save dtype), rank (‖ΔW‖/‖W‖ per matrix), collapse (stable rank "
        "≈ 1 across most adapted matrices), vocab_tying (resized vocabulary, broken tied embeddings), fidelity "
        "(peft unmerged vs peft's merge saved in the base's dtype, on the probes), and for LLMs degenerate and "
        "next_token_kl (greedy generations and next-token KL, base vs merged). verdict = the worst check; the CLI "
        "exits 2 on fail. Cost: one pass over the adapter and the base weights it touches, one model load, three "
        "forward passes over the probes (plus generations unless no_behavioral). Next: run_weight_diff for a "
        "failing rank check, run_residual_drift for fidelity or behaviour."
    ),
    input_model=MergeInput,
    output_model=MergeResult,
    slim_model=MergeCard,
    run=lazy("tools.merge_analysis.run:run"),
    slim=lazy("tools.merge_analysis.report:slim"),
    table=lazy("tools.merge_analysis.report:table"),
    exit_status=lazy("tools.merge_analysis.report:exit_status"),
)
TOOLS = [SPEC]
