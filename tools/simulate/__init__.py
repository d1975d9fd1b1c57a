"""run_simulation: what a fine-tune would do, before a single optimiser step."""

from tools.simulate.models import SIM_EVENTS, SimulateInput, SimulationCard, SimulationResult
from toolserver.contract import ToolSpec, lazy

SPEC = ToolSpec(
    name="run_simulation",
    command="simulate",
    card="simulation",
    summary=(
        "What fine-tuning the session's model on a dataset would do, without one optimiser step (parameters are "
        "checksummed before and after). Pass 0: dataset quality (harmful terms, assistant-speak, lengths, duplicates, "
        "instruction diversity; tokenizer only). Pass 1: mean SAE activations over the data. Pass 2: forward+backward "
        "per batch at the base weights: per-module grad norms through watch's signal engine, dead modules (mean norm "
        "< 1e-6), a spike warning (mean max grad norm > 5 × grad_clip), and with an SAE the predicted features: "
        "score = −⟨∇L_resid, W_dec[f]⟩ × base activation, positive = strengthen, negative = suppress. Pass 2c "
        "(preference rows): margins log P(chosen) − log P(rejected), the share aligned backwards, the DPO loss and "
        "its feature decomposition. Cost: about one epoch of forward+backward on the data (no optimiser state); "
        "long runs: start_tool and poll."
    ),
    input_model=SimulateInput,
    output_model=SimulationResult,
    slim_model=SimulationCard,
    run=lazy("tools.simulate.run:run"),
    slim=lazy("tools.simulate.report:slim"),
    table=lazy("tools.simulate.report:table"),
    live=(SIM_EVENTS,),
)
TOOLS = [SPEC]
