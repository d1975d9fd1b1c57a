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
        "its feature decomposition. Pass 2b: each training row's influence on the test loss (--test, or a held-out "
        "split), IF = −∇L_testᵀ(H + sλI)⁻¹∇L(z), positive = harmful, by LiSSA with its scale from the measured "
        "spectrum (fails loudly unconverged); the most harmful rows with their text. Pass 3: the NTK-linearised "
        "weight delta per tensor (quadratic rule by default, the seed's beside it), clipped, the effective-LR map, "
        "saved as a synthetic checkpoint (needs out) that every other tool reads, with sae diff run on it. "
        "Sharpness (with 2b or 3): λ_max by Lanczos against 2/η. Cost: about one epoch of forward+backward on the "
        "data (no optimiser state); 2b and 3 add Hessian-vector products (each ~4 backward passes) on hessian_rows "
        "rows, up to sharpness_budget per eigenvalue and lissa_depth for LiSSA, and 2b one vmap per batch; long "
        "runs: start_tool and poll."
    ),
    input_model=SimulateInput,
    output_model=SimulationResult,
    slim_model=SimulationCard,
    run=lazy("tools.simulate.run:run"),
    slim=lazy("tools.simulate.report:slim"),
    table=lazy("tools.simulate.report:table"),
    live=(SIM_EVENTS,),
    distributed=True,
)
TOOLS = [SPEC]
