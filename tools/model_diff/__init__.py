"""run_model_diff and get_regressions: behaviour base vs fine-tune, calibration, and the scores across runs."""

from tools.model_diff.models import (
    ModelDiffCard,
    ModelDiffInput,
    ModelDiffResult,
    RegressionsInput,
    RegressionsResult,
)
from toolserver.contract import ToolSpec, lazy

SPEC = ToolSpec(
    name="run_model_diff",
    command="model-diff",
    card="modelDiff",
    summary=(
        "Behaviour of the session's base vs a fine-tuned checkpoint on eval rows (JSONL prompts with optional "
        "category, topic, answer, choices, paraphrases, or {instruction, response} training rows; default a built-in "
        "set of 30 rows): consistency = mean over rows of clip(1 − mean KL(anchor ‖ paraphrase) / max(anchor entropy,"
        " 0.1 nats), 0, 1) at the answer position; suppression = 0.6 × length_penalty + 0.4 × hedge_penalty (share of"
        " greedy generations with a listed hedge/refusal phrase, named); robustness = 1 − mean_drop / "
        "clean_confidence under seeded surface corruptions (typo, case, whitespace, filler). Each for base, "
        "checkpoint, Δ and per category; calibration (ECE, MCE, reliability bins, per-topic ECE, a bootstrap interval"
        " on the ECE change), low-confidence rows (exportable as JSONL). Appends the scores to the session's "
        "regression tracker and flags categories worse than the prior run by > 5 pp. LLMs only. Cost: both models "
        "generate once and score (1 + perturbations + paraphrases) sequences per row. Next: get_regressions for the "
        "history."
    ),
    input_model=ModelDiffInput,
    output_model=ModelDiffResult,
    slim_model=ModelDiffCard,
    run=lazy("tools.model_diff.run:run"),
    slim=lazy("tools.model_diff.report:slim"),
    table=lazy("tools.model_diff.report:table"),
)
REGRESSIONS = ToolSpec(
    name="get_regressions",
    command="regressions",
    card="regressions",
    summary=(
        "The session's regression tracker: every run_model_diff's per-category consistency, suppression and "
        "robustness of the checkpoint, oldest first, each point flagged when it is worse than the immediately prior "
        "run's by more than 5 percentage points (suppression: a rise). Cost: reads the session file, no model."
    ),
    input_model=RegressionsInput,
    output_model=RegressionsResult,
    slim_model=RegressionsResult,
    run=lazy("tools.model_diff.regressions:run"),
    slim=lazy("tools.model_diff.report:regressions_slim"),
    table=lazy("tools.model_diff.report:regressions_table"),
)
TOOLS = [SPEC, REGRESSIONS]
