"""run_weight_diff: what a fine-tune changed in the weights, per layer and matrix type."""

from tools.weight_diff.models import WeightDiffCard, WeightDiffInput, WeightDiffResult
from toolserver.contract import ToolSpec, lazy

SPEC = ToolSpec(
    name="run_weight_diff",
    command="weight-diff",
    card="weightDiff",
    summary=(
        "Per-layer weight change between the session's base model and a fine-tuned checkpoint (.pt/.bin, "
        ".safetensors, save_pretrained dir or PEFT LoRA adapter): ‖ΔW‖_F, ‖ΔW‖/‖W‖ and stable rank of ΔW "
        "for Q/K/V/O/MLP matrices, embeddings and norms separately, top changed matrices. Cost: CPU only, no "
        "forward pass, tensors streamed one at a time (seconds for small models; for a 1.5 GB pair about "
        "1–2× the time to read both files); LoRA adapters are measured from their factors in well under a "
        "second. Read `findings` first; the layer that changed most is where to look next."
    ),
    input_model=WeightDiffInput,
    output_model=WeightDiffResult,
    slim_model=WeightDiffCard,
    run=lazy("tools.weight_diff.run:run"),
    slim=lazy("tools.weight_diff.report:slim"),
    table=lazy("tools.weight_diff.report:table"),
)
TOOLS = [SPEC]
