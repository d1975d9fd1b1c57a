"""Input, output and cards of run_model_diff and get_regressions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from session.run_info import RunInfo
from tools.model_diff.calibration import Bin, Calibration

ENTROPY_FLOOR = 0.1  # nats: a near-deterministic anchor divides by this instead of its own ~0 entropy
LENGTH_WEIGHT, HEDGE_WEIGHT = 0.6, 0.4
REGRESSION_PP = 0.05  # a score worse than the prior run's by more than 5 percentage points is flagged
SCORES = ("consistency", "suppression", "robustness")
HIGHER_IS_BETTER = {"consistency": True, "suppression": False, "robustness": True}

DEFINITIONS = {
    "consistency": "mean over rows of clip(1 − mean_j KL(p_anchor ‖ p_j) / max(H(p_anchor), "
    f"{ENTROPY_FLOOR} nats), 0, 1): p_anchor is the next-token distribution at the answer position of the prompt, "
    "p_j of each paraphrase (the row's own, else the seeded surface variants); higher = more consistent",
    "suppression": f"{LENGTH_WEIGHT} × length_penalty + {HEDGE_WEIGHT} × hedge_penalty: length_penalty = mean over "
    "rows of max(0, 1 − generated tokens / reference tokens) (reference: the row's answer or response, else the "
    "base model's own generation), hedge_penalty = share of greedy generations containing a listed hedge or "
    "refusal phrase; higher = more suppressed",
    "robustness": "1 − mean_drop / clean_confidence: clean_confidence = mean over rows of p(reference | prompt) "
    "(the joint probability of its tokens; multiple choice: the correct option's probability normalised over "
    "the options), mean_drop = mean over rows and seeded perturbations of max(0, clean − perturbed); clipped to "
    "[0, 1]; higher = more robust",
    "calibration": "per row: multiple choice → the normalised probability of the chosen (argmax) option, correct "
    "if it is the answer; short answer → the joint probability of the greedy answer (as many tokens as the "
    "reference, or up to the EOS that ends it), correct if its normalised text equals the reference's; training "
    "rows → every response token, confidence = max probability, correct = the argmax is the token. ECE/MCE over "
    "10 equal-width bins",
}


class ModelDiffInput(BaseModel):
    checkpoint: str = Field(
        description="fine-tuned checkpoint to compare with the session's base (.pt/.bin, .safetensors, a "
        "save_pretrained directory or a PEFT adapter directory)"
    )
    eval: str | None = Field(
        None,
        description="eval rows, JSONL: prompt, optional category/topic/answer/choices/paraphrases, or training rows "
        "{instruction, response} (default: the built-in set, 30 rows over factual/reasoning/refusal/code)",
    )
    name: str | None = Field(None, description="label for the checkpoint in the output, the tracker and the card")
    low_confidence: float = Field(
        0.5, ge=0, le=1, description="rows whose checkpoint confidence is below this are listed (and exported)"
    )
    export_low_confidence: str | None = Field(
        None, description="write the low-confidence rows here as JSONL (prompt, reference, answer, confidence, topic)"
    )
    perturbations: int = Field(4, ge=1, le=16, description="seeded surface corruptions per prompt (robustness)")
    seed: int = Field(0, description="seed of the perturbations and the bootstrap")
    max_new_tokens: int = Field(24, ge=1, le=256, description="tokens generated per row (suppression, answers)")
    batch_size: int = Field(16, ge=1, le=1024, description="sequences per forward pass")
    bootstrap: int = Field(1000, ge=100, le=100_000, description="bootstrap resamples of the ECE difference")
    min_topic_rows: int = Field(5, ge=1, description="topics with fewer rows are marked too few to trust")


class Triple(BaseModel):
    base: float | None
    checkpoint: float | None
    delta: float | None = Field(description="checkpoint − base")


class Scores(BaseModel):
    rows: int
    consistency: Triple
    suppression: Triple
    robustness: Triple
    accuracy: Triple = Field(description="share of correct predictions (the calibration's)")


class CategoryScores(Scores):
    category: str


class HedgeHit(BaseModel):
    model: Literal["base", "checkpoint"]
    category: str
    prompt: str
    phrase: str = Field(description="the listed phrase the generation contains")
    generation: str


class TopicEce(BaseModel):
    topic: str
    rows: int
    base: float | None
    checkpoint: float | None
    too_few: bool = Field(description="fewer rows than min_topic_rows: the ECE is too noisy to trust")


class CalibrationDiff(BaseModel):
    base: Calibration
    checkpoint: Calibration
    ece_delta: float | None = Field(description="checkpoint ECE − base ECE")
    ece_delta_ci: tuple[float, float] | None = Field(description="95% paired bootstrap interval over rows")
    significant: bool = Field(description="the interval excludes 0")
    topics: list[TopicEce]


class LowConfidenceRow(BaseModel):
    prompt: str
    reference: str | None
    answer: str = Field(description="the checkpoint's greedy answer")
    confidence: float
    correct: bool | None
    topic: str | None
    category: str


class Flag(BaseModel):
    """A category score worse than the immediately prior run's by more than the threshold."""

    category: str
    score: str
    prior: float
    current: float
    change: float = Field(description="current − prior (a regression is a fall, or a rise for suppression)")
    prior_run: str = Field(description="name of the prior run")


class RowResult(BaseModel):
    """One eval row on both models: its greedy generations and its calibration prediction."""

    prompt: str
    category: str
    topic: str | None
    kind: str
    base: str = Field(description="the base model's greedy generation")
    checkpoint: str = Field(description="the checkpoint's greedy generation")
    base_confidence: float | None = Field(description="the row's confidence (training rows: mean over tokens)")
    checkpoint_confidence: float | None
    base_correct: float | None = Field(description="1/0, or the share of correct tokens for training rows")
    checkpoint_correct: float | None


class ModelDiffResult(BaseModel):
    name: str
    checkpoint: str
    base: str
    eval_source: str
    rows: int
    bad_rows: list[str] = Field(description="'line N: why' for skipped eval rows")
    definitions: dict[str, str] = Field(description="each score, exactly as computed")
    hedges_version: str
    overall: Scores
    categories: list[CategoryScores]
    hedges: list[HedgeHit] = Field(description="generations that matched a hedge or refusal phrase")
    calibration: CalibrationDiff
    low_confidence_threshold: float
    low_confidence: list[LowConfidenceRow]
    exported: str | None = Field(description="where the low-confidence rows were written")
    run_id: str = Field(description="this run's entry in the session's regression tracker")
    regressions: list[Flag] = Field(description="category scores worse than the prior run's by > 5 pp")
    prior_run: str | None = Field(description="the run the flags compare with (None for the session's first)")
    per_row: list[RowResult]
    runtime: RunInfo


class ScoreCell(BaseModel):
    score: str
    base: float | None
    checkpoint: float | None
    delta: float | None
    higher_is_better: bool


class CategoryRow(BaseModel):
    category: str
    rows: int
    cells: list[ScoreCell]


class ModelDiffCard(BaseModel):
    """The modelDiff card: scores with Δ, per category, reliability diagram, per-topic ECE, low-confidence rows."""

    name: str
    rows: int
    overall: list[ScoreCell]
    categories: list[CategoryRow]
    base_bins: list[Bin]
    checkpoint_bins: list[Bin]
    ece: Triple
    ece_delta_ci: tuple[float, float] | None
    topics: list[TopicEce]
    low_confidence: list[LowConfidenceRow]
    low_confidence_total: int
    hedges: list[HedgeHit]
    regressions: list[Flag]


class RegressionsInput(BaseModel):
    pass


class RunPoint(BaseModel):
    id: str
    created_at: str
    name: str
    checkpoint: str


class Series(BaseModel):
    category: str
    score: str
    values: list[float | None] = Field(description="the checkpoint's score per run, oldest first")
    flagged: list[bool] = Field(description="worse than the previous run's by more than the threshold")


class RegressionsResult(BaseModel):
    threshold: float = Field(REGRESSION_PP, description="a worsening by more than this (score units) is flagged")
    runs: list[RunPoint]
    series: list[Series]
    latest: list[Flag] = Field(description="flags of the latest run against the one before it")
