"""Inputs, outputs and cards of run_sae_diff, run_sae_train and run_sae_align."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from session.probes import ProbeSummary
from session.run_info import RunInfo
from session.state import SaeRef

FDR_Q = 0.05  # Benjamini–Hochberg level across a layer's features
MIN_EFFECT = 0.1  # |Δ| at least this × the feature's pooled standard deviation over tokens
TRANSFER_RATIO = 1.5  # warn when the checkpoint's FVU exceeds the base's by this factor ...
TRANSFER_MIN_FVU = 0.05  # ... and is itself above this (tiny FVUs doubling is not a transfer failure)
ALIGN_MATCH = 0.7  # a decoder direction without a counterpart: its best cosine is below this
DIGITS = 6  # significant digits of the per-feature columns (the full table, paged)

PROBES_FIELD = Field(
    None,
    description="probes file: a JSON array or JSONL of strings, or JSONL of {instruction, response} rows "
    "(default: the built-in set of short prompts across domains)",
)


# ----- load sae ---------------------------------------------------------------------------------------------


class LoadSaeInput(BaseModel):
    sae: list[str] = Field(
        description="one or more SAEs, one per layer: local sae-lens directories (written by sae.save_model) or "
        "release/sae_id from sae-lens' registry, e.g. gpt2-small-res-jb/blocks.8.hook_resid_pre; each replaces the "
        "session's SAE at the same hook",
        json_schema_extra={"positional": True},
        min_length=1,
    )


class LoadedSae(BaseModel):
    sae: str = Field(description="the SAE spec as stored (local directories made absolute)")
    source: str = Field(description="local or pretrained")
    hook: str = Field(description="TransformerLens hook the SAE reads, from its metadata")
    hook_assumed: bool = Field(
        description="the SAE's metadata names no hook, so `hook` is the default layer's resid_post, a guess"
    )
    layer: int
    d_in: int
    d_sae: int = Field(description="number of SAE features")
    architecture: str
    model_kwargs: dict[str, Any] = Field(
        description="how sae-lens loaded the model the SAE was trained on (HookedTransformer.from_pretrained "
        "kwargs, from its metadata)"
    )
    processing: str = Field(description="the weight processing analyses run the model with to match the SAE, and why")


class LoadSaeResult(BaseModel):
    session: str
    loaded: list[LoadedSae]
    replaced: list[str] = Field(description="SAEs the session had at the same hooks, no longer attached")
    attached: list[SaeRef] = Field(description="every SAE attached to the session now, in layer order")


class SaeCardRow(BaseModel):
    sae: str
    hook: str
    layer: int
    d_in: int
    d_sae: int
    architecture: str
    processing: str


class SaeCard(BaseModel):
    """The card of a load_sae call: the SAEs loaded, and what the session holds now."""

    loaded: list[SaeCardRow]
    replaced: list[str]
    attached: list[SaeRef]


# ----- sae diff ---------------------------------------------------------------------------------------------


class SaeDiffInput(BaseModel):
    checkpoint: str = Field(
        description="fine-tuned checkpoint to compare with the session's base: .pt/.bin, .safetensors, a "
        "save_pretrained directory or a PEFT LoRA adapter directory (merged into the base weights)"
    )
    prompts: str | None = PROBES_FIELD
    layer: int | None = Field(None, description="diff only the session's SAE at this layer (default: every one)")
    sae: str | None = Field(
        None, description="an SAE directory or release/sae_id to use for this call instead of the session's"
    )
    labels: str | None = Field(
        None,
        description="JSON file of feature labels: {feature: label}, or {hook: {feature: label}} for several SAEs "
        "(a labels.json beside a local SAE is read too)",
    )
    threshold: float | None = Field(
        None, gt=0, description="call a feature changed when |Δ mean activation| exceeds this, instead of the test"
    )
    fdr: float = Field(FDR_Q, gt=0, lt=1, description="false-discovery rate across a layer's features")
    min_effect: float = Field(
        MIN_EFFECT, ge=0, description="changed features move by at least this × their pooled standard deviation"
    )
    top_k: int = Field(20, ge=1, le=500, description="features listed per layer, by |Δ|")
    name: str | None = Field(None, description="label for the checkpoint in the output and the web card")
    batch_size: int = Field(16, ge=1, le=1024, description="probes per forward pass")
    max_length: int = Field(256, ge=2, description="tokens per probe at most (and at most the model's context)")


class FeatureDelta(BaseModel):
    feature: int
    label: str | None = Field(description="from --labels, a labels.json beside the SAE, or None (never invented)")
    url: str | None = Field(description="the feature's Neuronpedia page, when the SAE has a Neuronpedia id")
    base_mean: float = Field(description="mean activation over the unit (tokens, or probes for encoders), base")
    tuned_mean: float
    delta: float = Field(description="tuned_mean − base_mean")
    base_freq: float = Field(description="fraction of units where the feature fires (activation > 0), base")
    tuned_freq: float
    effect: float | None = Field(description="|Δ| / pooled standard deviation over units (None when both are 0)")
    p_value: float | None = Field(description="paired t-test over probes (None under --threshold)")
    q_value: float | None = Field(description="Benjamini–Hochberg adjusted p (None under --threshold)")
    changed: bool


class FeatureColumns(BaseModel):
    """Every feature of the layer, column by column (index = feature), DIGITS significant digits."""

    base_mean: list[float]
    tuned_mean: list[float]
    base_freq: list[float]
    tuned_freq: list[float]
    q_value: list[float | None]


class Transfer(BaseModel):
    """How well the SAE reconstructs each model's activations: fraction of variance unexplained."""

    fvu_base: float
    fvu_tuned: float
    ratio: float | None = Field(description="fvu_tuned / fvu_base")
    ok: bool = Field(description=f"not (ratio > {TRANSFER_RATIO} and fvu_tuned > {TRANSFER_MIN_FVU})")


class LayerSaeDiff(BaseModel):
    layer: int
    hook: str
    sae: str
    architecture: str
    d_sae: int
    unit: Literal["tokens", "probes"] = Field(description="what a mean activation averages over")
    units: int = Field(description="tokens (LLMs: each probe's first token excluded) or pooled probes (encoders)")
    probes_tested: int = Field(description="probes in the paired test (those with at least one token)")
    rule: str = Field(description="how 'changed' was decided, with its parameters")
    n_changed: int
    mean_abs_delta: float = Field(description="mean |Δ| over all features")
    max_abs_delta: float
    top: list[FeatureDelta] = Field(description="the features with the largest |Δ| (changed ones first)")
    changed: list[FeatureDelta] = Field(description="every changed feature, by |Δ|")
    transfer: Transfer
    processing: str = Field(description="the weight processing the models were run with for this SAE, and why")
    prepend_bos: bool = Field(description="a BOS token was put first where the tokenizer adds none (SAE metadata)")
    neuronpedia_id: str | None
    columns: FeatureColumns


class SaeDiffResult(BaseModel):
    name: str
    checkpoint: str
    base: str
    kind: Literal["llm", "embedding"]
    probes: ProbeSummary
    layers: list[LayerSaeDiff]
    runtime: RunInfo


class LayerCard(BaseModel):
    layer: int
    hook: str
    d_sae: int
    n_changed: int
    mean_abs_delta: float
    max_abs_delta: float
    cells: str = Field(description="base64 of one byte per feature: round(255 × |Δ| / max |Δ|)")
    changed_bits: str = Field(description="base64 of a little-endian bitmap of changed features")
    top: list[FeatureDelta]
    fvu_base: float
    fvu_tuned: float
    transfer_ok: bool
    rule: str


class SaeDiffCard(BaseModel):
    """The saeDiff card: a row of feature cells per layer (shifted ones highlighted), the top features."""

    name: str
    kind: str
    probes: int
    layers: list[LayerCard]


# ----- sae train --------------------------------------------------------------------------------------------


class SaeTrainInput(BaseModel):
    layer: int = Field(description="train on this layer's blocks.L.hook_resid_post (encoders: its pooled hidden state)")
    checkpoint: str | None = Field(None, description="train on this fine-tune's activations instead of the base's")
    prompts: str | None = PROBES_FIELD
    dataset: str | None = Field(
        None,
        description="a text file to train on: JSONL of strings / {text} / {instruction, response} rows, a JSON "
        "array, or plain text with one document per line",
    )
    quick: bool = Field(
        False, description="the default: up to 40k activations, 50 epochs of batches of 256 within 300–2,000 steps"
    )
    full: bool = Field(False, description="up to 400k activations, 200 epochs within 3,000–20,000 steps")
    d_sae: int | None = Field(None, ge=2, description="features (default: 8 × d_in quick, 16 × d_in full)")
    k: int | None = Field(None, ge=1, description="active features per input (TopK; default: min(32, d_sae / 8))")
    out: str | None = Field(None, description="output directory (default: $TRAINSPECT_HOME/saes/<session>-L<layer>-…)")
    batch_size: int = Field(16, ge=1, le=1024, description="probes per forward pass while collecting activations")
    max_length: int = Field(256, ge=2, description="tokens per text at most")
    seed: int = 0

    @model_validator(mode="after")
    def _one_mode_one_source(self) -> SaeTrainInput:
        if self.quick and self.full:
            raise ValueError("quick and full: pick one")
        if self.prompts and self.dataset:
            raise ValueError("prompts and dataset: pick one")
        return self

    @property
    def mode(self) -> Literal["quick", "full"]:
        return "full" if self.full else "quick"


class LossPoint(BaseModel):
    step: int
    mse: float


class SaeTrainResult(BaseModel):
    out: str = Field(description="the sae-lens directory written (load it with load_sae)")
    layer: int
    hook: str
    mode: Literal["quick", "full"]
    model: str = Field(description="the model directory or checkpoint the activations came from")
    architecture: str
    d_in: int
    d_sae: int
    k: int
    source: str = Field(description="the texts' file, or 'built-in'")
    texts: int
    activations: int = Field(description="activation vectors collected (tokens, or pooled texts for encoders)")
    held_out: int = Field(description="of them, kept out of training for the evaluation")
    steps: int
    batch: int
    losses: list[LossPoint] = Field(description="training MSE, sampled along the run")
    eval_fvu: float = Field(description="fraction of variance unexplained on the held-out activations")
    eval_l0: float = Field(description="mean active features per held-out activation")
    dead_features: int = Field(description="features that never fire on the held-out activations")
    seconds: float
    runtime: RunInfo


class SaeTrainCard(BaseModel):
    """The saeTrain card: layer, quick/full, the loss curve, where the SAE went."""

    out: str
    layer: int
    mode: str
    d_sae: int
    k: int
    activations: int
    steps: int
    losses: list[LossPoint]
    eval_fvu: float
    dead_features: int


# ----- sae align --------------------------------------------------------------------------------------------


class SaeAlignInput(BaseModel):
    a: str = Field(description="an SAE: directory or release/sae_id", json_schema_extra={"positional": True})
    b: str = Field(description="the SAE to match it against", json_schema_extra={"positional": True})
    match: float = Field(
        ALIGN_MATCH, gt=0, le=1, description="a feature of A has a counterpart when its best cosine reaches this"
    )
    top: int = Field(10, ge=1, le=200, description="weakest and strongest matches listed")


class Match(BaseModel):
    feature: int = Field(description="feature of A")
    best: int = Field(description="the feature of B whose decoder direction is closest")
    cos: float = Field(description="cosine between the two decoder directions")
    mutual: bool = Field(description="A's feature is also B's feature's best match")


class SaeAlignResult(BaseModel):
    a: str
    b: str
    d_in: int
    d_sae_a: int
    d_sae_b: int
    mean_cos: float = Field(description="mean over A's features of the best-match cosine")
    median_cos: float
    mutual: int = Field(description="features whose best match is mutual")
    match: float
    unmatched: int = Field(description="A's features whose best cosine is below `match`")
    unmatched_features: list[int] = Field(description="the first 200 of them")
    weakest: list[Match]
    strongest: list[Match]
    histogram: list[int] = Field(description="best-match cosines in 20 equal bins over [-1, 1]")
    matches: list[Match] = Field(description="every feature of A (paged)")


class SaeAlignCard(BaseModel):
    """The saeAlign card: mean best-match cosine, its histogram, the weakest and strongest matches."""

    a: str
    b: str
    d_sae_a: int
    d_sae_b: int
    mean_cos: float
    mutual: int
    unmatched: int
    match: float
    histogram: list[int]
    weakest: list[Match]
    strongest: list[Match]
