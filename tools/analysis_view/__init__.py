"""run_analysis_view: what a run's analysis checkpoints say — gradient flow across depth, weight movement,
attention entropy, activations — and the 004 triage rules over them."""

from tools.analysis_view.models import AnalysisViewCard, AnalysisViewInput, AnalysisViewResult
from toolserver.contract import ToolSpec, lazy

SPEC = ToolSpec(
    name="run_analysis_view",
    command="analysis",
    card="analysisView",
    summary=(
        "Reads a training run's analysis checkpoints (the analysis_*.json files StepLogger(analysis_dir=...) writes): "
        "the gradient waterfall (per-layer grad norm across depth at chosen steps, and over every checkpoint), "
        "weight movement from the first checkpoint (ranking and per layer), sampled weight and gradient heatmaps, "
        "attention entropy per head, activation statistics per module. Finds a vanishing gradient path, a pinch "
        "where the flow is blocked, clipping dominated by one tensor, early attention-entropy collapse, parameters "
        "that never move and growing activations, each with its threshold. Cost: no model, no GPU; reads each file "
        "once (about 4 s for 1,000 checkpoints of a 0.5B model, half the time json.loads alone takes). Files of "
        "another schema version are listed and skipped. Next: watch on the run's metrics.jsonl; run_weight_diff on "
        "a saved checkpoint of the run."
    ),
    input_model=AnalysisViewInput,
    output_model=AnalysisViewResult,
    slim_model=AnalysisViewCard,
    run=lazy("tools.analysis_view.run:run"),
    slim=lazy("tools.analysis_view.report:slim"),
    table=lazy("tools.analysis_view.report:table"),
    needs_session=False,
)
TOOLS = [SPEC]
