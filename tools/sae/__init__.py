"""The SAE tools: load_sae (attach SAEs to the session, one per layer), run_sae_diff (what the fine-tune did to
SAE features), run_sae_train (an SAE for a layer, trained with sae-lens on the model's own activations) and
run_sae_align (two SAEs' decoder directions matched)."""

from tools.sae.models import (
    LoadSaeInput,
    LoadSaeResult,
    SaeAlignCard,
    SaeAlignInput,
    SaeAlignResult,
    SaeCard,
    SaeDiffCard,
    SaeDiffInput,
    SaeDiffResult,
    SaeTrainCard,
    SaeTrainInput,
    SaeTrainResult,
)
from toolserver.contract import ToolSpec, lazy

LOAD_SAE = ToolSpec(
    name="load_sae",
    command="load sae",
    card="sae",
    summary=(
        "Attach a sae-lens SAE to the current session: a local directory written by sae.save_model, or "
        "release/sae_id from sae-lens' pretrained registry. Its hook and layer come from the SAE's metadata; "
        "d_in is checked against the model; the weight processing it was trained on is matched by later analyses. "
        "Use before SAE-feature analyses. Cost: seconds for a local directory (no model is loaded); release/sae_id "
        "downloads from the HF hub. Next: run_weight_diff."
    ),
    input_model=LoadSaeInput,
    output_model=LoadSaeResult,
    slim_model=SaeCard,
    run=lazy("tools.sae.run_load:run_load_sae"),
    slim=lazy("tools.sae.report:slim_sae"),
    table=lazy("tools.sae.report:table_sae"),
)

DIFF = ToolSpec(
    name="run_sae_diff",
    command="sae diff",
    card="saeDiff",
    summary=(
        "Base vs checkpoint through the session's SAEs (one per layer) on the same probes: per feature the mean "
        "activation and firing rate on both sides and Δ; which features changed, by a stated rule (a paired t-test "
        "over "
        "probes, Benjamini–Hochberg FDR across features, a minimum effect; --threshold for a plain |Δ| cut); per layer "
        "changed/d_sae, mean and max |Δ|, the top features with their labels when known; and whether the SAE still "
        "fits "
        "the fine-tune (reconstruction FVU on both). LLMs read the SAE's TransformerLens hook on every token after "
        "each "
        "probe's first; encoders the mean-pooled hidden state. Cost: loads both models, two forward passes plus SAE "
        "encoding (seconds for small models on CPU; a GPU is used when present). Next: run_residual_drift and "
        "run_weight_diff at the layer that changed most."
    ),
    input_model=SaeDiffInput,
    output_model=SaeDiffResult,
    slim_model=SaeDiffCard,
    run=lazy("tools.sae.run_diff:run"),
    slim=lazy("tools.sae.report:diff_slim"),
    table=lazy("tools.sae.report:diff_table"),
)

TRAIN = ToolSpec(
    name="run_sae_train",
    command="sae train",
    card="saeTrain",
    summary=(
        "Train a TopK SAE with sae-lens' trainer on one layer's activations of the session's model (or a "
        "checkpoint's), "
        "from a probes or dataset file, and save a sae-lens directory that load_sae accepts; reports the loss curve, "
        "held-out FVU and dead features. Use when no SAE exists for the model, or when run_sae_diff says the base's "
        "SAE "
        "does not fit the fine-tune. Cost: --quick seconds to minutes on CPU for small models (2,000 steps), --full "
        "about "
        "ten times that; a GPU is used when present; start with start_tool and poll for long runs. Next: load_sae with "
        "the output directory, then run_sae_diff; run_sae_align against another SAE."
    ),
    input_model=SaeTrainInput,
    output_model=SaeTrainResult,
    slim_model=SaeTrainCard,
    run=lazy("tools.sae.run_train:run"),
    slim=lazy("tools.sae.report:train_slim"),
    table=lazy("tools.sae.report:train_table"),
)

ALIGN = ToolSpec(
    name="run_sae_align",
    command="sae align",
    card="saeAlign",
    summary=(
        "Match two SAEs' decoder directions (e.g. the base's and one trained on the fine-tune): for every feature of A "
        "the closest feature of B by cosine, the mean best-match cosine, mutual matches, the weakest and strongest "
        "matches and the features without a counterpart. Cost: no model; a matrix product of the two decoders in "
        "blocks (under a second for 16k features on CPU). Next: run_sae_diff with the better-fitting SAE."
    ),
    input_model=SaeAlignInput,
    output_model=SaeAlignResult,
    slim_model=SaeAlignCard,
    run=lazy("tools.sae.run_align:run"),
    slim=lazy("tools.sae.report:align_slim"),
    table=lazy("tools.sae.report:align_table"),
    needs_session=False,
)

TOOLS = [LOAD_SAE, DIFF, TRAIN, ALIGN]
