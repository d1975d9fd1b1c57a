"""Input, output and card of run_merge_analysis: named checks, each with its value, threshold and status."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from session.probes import ProbeSummary
from session.run_info import RunInfo

Status = Literal["pass", "warn", "fail", "skipped"]
Verdict = Literal["pass", "warn", "fail"]
CheckName = Literal["no_op", "non_finite", "rank", "collapse", "vocab_tying", "fidelity", "degenerate", "next_token_kl"]
COLLAPSE_MIN_RANK = 4  # collapse is only judged where the adapter allowed at least this rank
NGRAM = 3  # a generation's repetition is measured over its token 3-grams


class MergeInput(BaseModel):
    checkpoint: str = Field(
        description="what would be merged into the session's base: a PEFT LoRA adapter directory, or a full "
        "checkpoint (.pt/.bin/.safetensors file or save_pretrained directory)"
    )
    prompts: str | None = Field(
        None,
        description="probes file for fidelity and behaviour: a JSON array or JSONL of strings, or JSONL of "
        "{instruction, response} rows (default: the built-in set)",
    )
    no_behavioral: bool = Field(False, description="skip the generation-based behaviour check (faster)")
    name: str | None = Field(None, description="label for the checkpoint in the output and the web card")
    rel_warn: float = Field(0.25, gt=0, description="rank check: warn when a matrix's ‖ΔW‖/‖W‖ reaches this")
    rel_fail: float = Field(1.0, gt=0, description="rank check: fail when a matrix's ‖ΔW‖/‖W‖ reaches this")
    collapse_rank: float = Field(
        1.1, ge=1, description="collapse check: an update whose stable rank is below this is one direction"
    )
    collapse_share: float = Field(
        0.75,
        gt=0,
        le=1,
        description=f"collapse check: warn when at least this share of the adapted matrices (allowed rank ≥ "
        f"{COLLAPSE_MIN_RANK}) collapsed",
    )
    fidelity_warn: float = Field(
        0.05,
        gt=0,
        description="fidelity check: warn when mean |Δ output| between the unmerged and the saved merged model "
        "reaches this share of the adapter's own mean effect",
    )
    fidelity_fail: float = Field(0.25, gt=0, description="fidelity check: fail at this share")
    degenerate_warn: float = Field(
        0.1,
        gt=0,
        le=1,
        description="degenerate check: warn when the share of empty or degenerate generations rises this much "
        "over the base's",
    )
    degenerate_fail: float = Field(0.3, gt=0, le=1, description="degenerate check: fail at this rise")
    repeat_rate: float = Field(
        0.5,
        gt=0,
        le=1,
        description=f"a generation is degenerate when this share of its token {NGRAM}-grams repeat earlier ones",
    )
    kl_warn: float = Field(
        1.0, gt=0, description="next-token KL check: warn when the mean KL(base ‖ merged) reaches this (nats)"
    )
    kl_fail: float = Field(5.0, gt=0, description="next-token KL check: fail at this mean KL (nats)")
    max_new_tokens: int = Field(24, ge=1, le=256, description="tokens generated per probe for the behaviour check")
    batch_size: int = Field(16, ge=1, le=1024, description="probes per forward pass")
    max_length: int = Field(128, ge=2, description="tokens per probe at most (and at most the model's context)")


class Check(BaseModel):
    """One named check of the gate."""

    name: CheckName
    status: Status
    value: float | None = Field(description="the measured number the status comes from (None when skipped)")
    warn_at: float | None = Field(description="the check warns when value ≥ warn_at (None: it never warns)")
    fail_at: float | None = Field(description="the check fails when value ≥ fail_at (None: it never fails)")
    why: str = Field(description="one line: what was measured and what it means")
    items: list[str] = Field(default_factory=list, description="the modules, tensors or keys the check names")


class FlaggedMatrix(BaseModel):
    """An adapted matrix the rank or collapse check flagged."""

    label: str = Field(description="e.g. 'layer 3 Q'")
    key: str
    rel_delta: float | None = Field(description="‖ΔW‖_F / ‖W_base‖_F")
    stable_rank: float | None = Field(description="‖ΔW‖_F² / σ_max²")
    allowed_rank: int | None = Field(description="the LoRA r, or min(rows, cols) of a full matrix")
    reason: Literal["dwarfs weight", "large update", "collapsed"]


class Fidelity(BaseModel):
    """The adapter applied unmerged by peft (float32) against peft's merge saved in `save_dtype`."""

    output: Literal["logits", "pooled hidden"] = Field(description="what was compared (LLM: every real position)")
    save_dtype: str = Field(description="the base's dtype: what merge_and_unload leaves and save_pretrained writes")
    max_abs: float = Field(description="max |Δ| over positions and dimensions")
    mean_abs: float
    scale: float = Field(description="RMS over positions of the unmerged output's std across dimensions")
    max_rel_scale: float = Field(description="max_abs / scale")
    effect_mean_abs: float = Field(description="the adapter's own effect: mean |unmerged − base|")
    share_of_effect: float | None = Field(description="mean_abs / effect_mean_abs (None when the effect is 0)")
    positions: int


class GenerationPair(BaseModel):
    prompt: str
    base: str
    merged: str
    base_degenerate: bool
    merged_degenerate: bool
    merged_repeat_rate: float = Field(description=f"share of the merged generation's token {NGRAM}-grams that repeat")


class Behaviour(BaseModel):
    """Greedy generations of the base and of the saved merged model on the probes."""

    max_new_tokens: int
    base_degenerate: float = Field(description="share of the base's generations that are empty or degenerate")
    merged_degenerate: float
    merged_empty: float = Field(description="share of the merged model's generations with no visible text")
    mean_repeat_rate: float = Field(description=f"mean share of repeated token {NGRAM}-grams, merged model")
    kl_mean: float = Field(description="mean over real probe positions of KL(p_base ‖ p_merged), nats")
    kl_max: float
    generations: list[GenerationPair]


class MergeResult(BaseModel):
    name: str
    checkpoint: str
    base: str
    kind: Literal["llm", "embedding"]
    mode: Literal["full", "lora"]
    verdict: Verdict = Field(description="the worst check's status (skipped checks do not count)")
    checks: list[Check]
    flagged: list[FlaggedMatrix] = Field(description="matrices the rank and collapse checks name, largest first")
    adapted: int = Field(description="matrices the adapter or checkpoint changes (LoRA pairs, or changed tensors)")
    fidelity: Fidelity | None = None
    behaviour: Behaviour | None = None
    probes: ProbeSummary | None = None
    runtime: RunInfo | None = None


class GenerationCell(BaseModel):
    prompt: str
    base: str
    merged: str
    merged_degenerate: bool


class MergeCard(BaseModel):
    """The mergeAnalysis card: verdict badge, checks table, flagged matrices, behaviour and a few generations."""

    name: str
    mode: Literal["full", "lora"]
    verdict: Verdict
    checks: list[Check] = Field(description="every check, naming at most 5 items each")
    flagged: list[FlaggedMatrix]
    flagged_total: int
    fidelity: Fidelity | None
    kl_mean: float | None
    base_degenerate: float | None
    merged_degenerate: float | None
    generations: list[GenerationCell]
