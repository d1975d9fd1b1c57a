"""run_trajectory_analysis: a fine-tune's path over its checkpoints, in weight space."""

from tools.trajectory.models import TrajectoryCard, TrajectoryInput, TrajectoryResult
from toolserver.contract import ToolSpec, lazy

SPEC = ToolSpec(
    name="run_trajectory_analysis",
    command="trajectory-analysis",
    card="trajectoryAnalysis",
    summary=(
        "A fine-tune's path over its saved checkpoints (a glob, or a run directory searched recursively: "
        "Trainer checkpoint-N/ dirs with full weights or a PEFT adapter, .pt/.bin/.safetensors files), in step "
        "order: per checkpoint ‖ΔW‖ and ‖ΔW‖/‖W‖ from the session's base overall, per layer and matrix type, "
        "median stable rank, the top changed matrix; between checkpoints the movement ‖W_k − W_k−1‖ and the "
        "cosine of consecutive updates. Finds jumps, where movement slowed, layers that never moved. Cost: CPU "
        "only, no forward pass; the base and every checkpoint are read once (about the time to read them all). "
        "Unreadable or duplicate checkpoints are listed and the rest analysed."
    ),
    input_model=TrajectoryInput,
    output_model=TrajectoryResult,
    slim_model=TrajectoryCard,
    run=lazy("tools.trajectory.run:run"),
    slim=lazy("tools.trajectory.report:slim"),
    table=lazy("tools.trajectory.report:table"),
)
TOOLS = [SPEC]
