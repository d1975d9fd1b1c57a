"""Input, result and card of run_simulation (the MCP schema, CLI flags and JSON export derive from these)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from session.run_info import RunInfo
from tools.simulate.dataset import Format
from tools.simulate.quality import QualityReport
from tools.watch.snapshot import Signal
from toolserver.contract import LiveFamily

SCHEMA_VERSION = "trainspect.simulation.v1"
PASSES = ("0", "1", "2", "2c")
SIGN_CONVENTION = (
    "score_f = −⟨∇L_resid, W_dec[f]⟩ × base_acts_mean[f]: the residual moves along −∇L under gradient descent, so "
    "positive = predicted to strengthen, negative = predicted to suppress (the seed's formula without the minus "
    "sign gives the opposite)"
)
DPO_CONVENTION = (
    "margin = Σ log P(chosen | prompt) − Σ log P(rejected | prompt) over the response tokens and EOS, under the base "
    "model; DPO loss −log σ(β·margin) as the seed states it (reference-free: with the base as DPO's reference the "
    "step-0 loss is log 2 for every pair and its gradient (β/2)·∇margin)"
)

# the live events of a simulation: one step per pass-2 batch in watch's StepSnapshot schema, signals, pass timeline
SIM_EVENTS = LiveFamily(prefix="simulate", card="simulation", fields=("step", "loss", "maxGrad"))


class SimulateInput(BaseModel):
    dataset: str = Field(description="training set: JSONL or a JSON array of SFT or preference rows")
    format: Format | None = Field(None, description="sft or preference (default: detected from the first row)")
    passes: list[str] | None = Field(
        None,
        description="passes to run, of 0 (dataset quality), 1 (SAE baseline), 2 (gradient landscape; with 1 the SAE "
        "decomposition), 2c (preference margins); comma-separated on the CLI (default: every pass that applies)",
    )
    lr: float = Field(2e-4, gt=0, description="learning rate of the simulated fine-tune (recorded for part 2)")
    epochs: float = Field(1.0, gt=0, description="epochs of the simulated fine-tune (sets the step count T)")
    steps: int | None = Field(None, ge=1, description="optimizer steps T of the simulated fine-tune (overrides epochs)")
    batch_size: int = Field(8, ge=1, le=4096, description="sequences per batch, as the fine-tune would use")
    grad_clip: float = Field(1.0, gt=0, description="the fine-tune's gradient clipping norm (the spike signal: 5×)")
    max_len: int = Field(512, ge=2, description="tokens per sequence; longer rows lose their tail")
    beta: float = Field(0.1, gt=0, description="DPO β (pass 2c)")
    top: int = Field(20, ge=1, le=500, description="strengthened and suppressed features listed")
    labels: str | None = Field(None, description="feature labels file for the SAE (as sae diff reads it)")
    out: str | None = Field(None, description="directory to save the result and its tensors for part 2 and compare")
    name: str | None = Field(None, description="label for this simulation (default: the dataset's file name)")

    @field_validator("passes", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        """`--passes 0,1,2` and `--passes 0 1 2` alike."""
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            v = [p.strip() for item in v for p in str(item).split(",") if p.strip()]
            unknown = [p for p in v if p not in PASSES]
            if unknown:
                raise ValueError(f"unknown pass {unknown[0]!r}: passes are {', '.join(PASSES)}")
        return v


class PassTiming(BaseModel):
    name: str = Field(description="0, 1, 2, 2c, or 1+2 when the baseline rode on the landscape's forward")
    started_s: float = Field(description="seconds since the simulation started")
    seconds: float


class ModuleGrad(BaseModel):
    name: str = Field(description="parameter-owning module, named as watch's emitters name it")
    mean: float = Field(description="mean gradient norm over the batches")
    max: float
    dead: bool = Field(description="mean norm below 1e-6 over all batches")


class Heatmap(BaseModel):
    rows: list[str]
    cols: list[int] = Field(description="the last batch of each column (columns average consecutive batches)")
    values: list[list[float]] = Field(description="rows × cols gradient norms")


class Landscape(BaseModel):
    batches: int
    target_tokens: int
    loss_mean: float
    max_grad_mean: float = Field(description="mean over batches of the largest per-parameter grad norm")
    max_grad_max: float
    grad_clip: float
    spike_limit: float = Field(description="5 × grad_clip: a mean max grad norm above it fires gradient_spike")
    modules: list[ModuleGrad] = Field(description="every module in model order")
    dead: list[str]
    series_loss: list[float] = Field(description="per batch")
    series_max_grad: list[float | None] = Field(description="per batch: the largest per-parameter grad norm")
    series_mean_grad: list[float] = Field(description="per batch: the mean of the modules' grad norms")
    heatmap: Heatmap = Field(description="module × batch grad norms, at most 16k cells")
    skipped_batches: int = Field(0, description="batches with no target token after truncation (not run)")


class FeatureScore(BaseModel):
    feature: int
    score: float = Field(description="the sign convention is the result's sae.convention")
    alignment: float = Field(description="−⟨∇L_resid, W_dec[f]⟩")
    base_act: float = Field(description="base_acts_mean[f]")
    label: str | None = None


class SaePrediction(BaseModel):
    hook: str
    layer: int
    d_sae: int
    tokens: int = Field(description="tokens averaged into base_acts_mean")
    active_features: int = Field(description="features with base_acts_mean > 0 (the others score 0)")
    resid_grad_norm: float = Field(description="‖∇L_resid‖")
    convention: str = SIGN_CONVENTION
    strengthen: list[FeatureScore]
    suppress: list[FeatureScore]


class FeatureShift(BaseModel):
    feature: int
    preference: float = Field(description="its score under the DPO loss, divided by the largest |score| there")
    sft: float = Field(description="its score under SFT on the chosen responses, divided likewise")
    shift: float = Field(description="preference − sft")
    label: str | None = None


class PairMargin(BaseModel):
    row: int
    line: int
    margin: float
    chosen_logp: float
    rejected_logp: float


class PreferenceReport(BaseModel):
    pairs: int
    beta: float
    convention: str = DPO_CONVENTION
    mean_margin: float
    median_margin: float
    negative_share: float = Field(description="share of pairs whose margin is below 0: the base prefers rejected")
    dpo_loss_mean: float
    histogram_edges: list[float]
    histogram_counts: list[int]
    most_backwards: list[PairMargin] = Field(description="the pairs with the lowest margins (at most 10)")
    prediction: SaePrediction | None = Field(None, description="the DPO loss's gradient at the SAE hook, decomposed")
    differs_from_sft: list[FeatureShift] = Field(
        default_factory=list, description="features the preference objective pushes most differently from SFT"
    )


class Invariant(BaseModel):
    """No optimiser step: every parameter's bits summed as integers before the first pass and after the last."""

    parameters: int
    checksum_before: str
    checksum_after: str
    unchanged: bool


class SimConfig(BaseModel):
    lr: float
    steps: int = Field(description="T: optimizer steps of the simulated fine-tune")
    epochs: float
    batch_size: int
    grad_clip: float
    max_len: int
    beta: float


class SimulationResult(BaseModel):
    schema_version: Literal["trainspect.simulation.v1"] = SCHEMA_VERSION
    name: str
    dataset: str
    format: Format
    rows: int
    config: SimConfig
    passes: list[str] = Field(description="passes run")
    skipped: list[str] = Field(default_factory=list, description="passes asked for but not run, with why")
    timeline: list[PassTiming]
    quality: QualityReport | None = None
    landscape: Landscape | None = None
    signals: list[Signal] = Field(
        default_factory=list, description="watch's signal types over the per-batch steps, then the seed's two"
    )
    sae: list[SaePrediction] = Field(default_factory=list, description="one per SAE: the SFT gradient decomposed")
    preference: PreferenceReport | None = None
    invariant: Invariant | None = None
    runtime: RunInfo | None = None
    artifacts: list[str] = Field(default_factory=list, description="files written under --out")


class SimulationCard(BaseModel):
    """The card: pass timeline, module × batch heatmap with dead modules, loss and max-grad lines, top feature
    predictions, quality flags with their rows, the margins histogram."""

    name: str
    timeline: list[PassTiming]
    quality: QualityReport | None
    landscape: Landscape | None
    signals: list[Signal]
    sae: list[SaePrediction]
    preference: PreferenceReport | None
    invariant: Invariant | None
