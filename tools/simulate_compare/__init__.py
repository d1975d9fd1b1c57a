"""compare_simulations: two saved simulations side by side (what removing or adding rows changed)."""

from tools.simulate_compare.models import CompareInput, CompareResult, SimulationCompareCard
from toolserver.contract import ToolSpec, lazy

SPEC = ToolSpec(
    name="compare_simulations",
    command="simulate compare",
    card="simulationCompare",
    summary=(
        "Two saved simulations side by side: what removing or adding rows (or changing the run) changed. A and B are "
        "directories written by run_simulation with out=DIR (or their simulation.json); each section is compared only "
        "when both have it: influence per training row matched by content hash (the largest changes, rows only in A "
        "or only in B with their scores, rows that flipped harmful ↔ helpful, Σ IF, harmful count, predicted removal "
        "and test loss A vs B; a different test set is flagged as not directly comparable), SAE feature-score shifts "
        "per hook, the effective-LR map per tensor, dataset-quality flag counts and the flagged rows cleared or "
        "introduced (matched by content), sharpness λ_max against 2/η, the loss and dead modules. Use after "
        "re-simulating a cleaned dataset. Cost: no model; reads two JSON files (seconds). Next: run_simulation on a "
        "dataset still flagged."
    ),
    input_model=CompareInput,
    output_model=CompareResult,
    slim_model=SimulationCompareCard,
    run=lazy("tools.simulate_compare.run:run"),
    slim=lazy("tools.simulate_compare.report:slim"),
    table=lazy("tools.simulate_compare.report:table"),
    needs_session=False,
)
TOOLS = [SPEC]
