"""run_residual_drift: how far the fine-tune moved the residual stream, layer by layer, on the same probes."""

from tools.residual_drift.models import ResidualDriftCard, ResidualDriftInput, ResidualDriftResult
from toolserver.contract import ToolSpec, lazy

SPEC = ToolSpec(
    name="run_residual_drift",
    command="residual-drift",
    card="residualDrift",
    summary=(
        "Per-layer activation drift between the session's base model and a fine-tuned checkpoint on the same probes: "
        "cosine distance 1 − cos and relative norm change of the last real token's hook_resid_post (LLMs) or the "
        "mean-pooled hidden state over real tokens (embedding models), mean and max over probes, the embedding output "
        "as layer 'embed'; findings say where drift starts, where it peaks and whether it grows with depth. "
        "Complements run_weight_diff (weight space) and run_sae_diff (feature space). Cost: loads both models and runs "
        "two forward passes over the probes (seconds for small models on CPU; a GPU is used when present). "
        "Next: run_weight_diff on the same checkpoint to see which matrices moved at the layer where drift starts."
    ),
    input_model=ResidualDriftInput,
    output_model=ResidualDriftResult,
    slim_model=ResidualDriftCard,
    run=lazy("tools.residual_drift.run:run"),
    slim=lazy("tools.residual_drift.report:slim"),
    table=lazy("tools.residual_drift.report:table"),
)
TOOLS = [SPEC]
