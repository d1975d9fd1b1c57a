"""Input, result and card of run_simulation (the MCP schema, CLI flags and JSON export derive from these)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from session.run_info import RunInfo
from tools.simulate.dataset import Format
from tools.simulate.quality import QualityReport
from tools.watch.snapshot import Signal
from toolserver.contract import LiveFamily

SCHEMA_VERSION = "trainspect.simulation.v1"
PASSES = ("0", "1", "2", "2b", "2c", "3")
DeltaRule = Literal["quadratic", "seed"]
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
INFLUENCE_CONVENTION = (
    "IF(z) = −∇L_testᵀ (H + sλI)⁻¹ ∇L(z), H the Hessian of the training loss over the influence parameters: "
    "positive = harmful (upweighting z raises the test loss; removing it lowers the test loss by ≈ IF(z)/n), "
    "negative = helpful"
)
DELTA_CONVENTION = (
    "SGD with learning rate η for T steps, each tensor i on its own 1-D quadratic of curvature K_i = "
    "ḡ_iᵀ(Hḡ)_i / ḡ_iᵀḡ_i along its mean gradient ḡ_i: quadratic Δθ_i = −(1 − (1 − ηK_i)^T)/K_i · ḡ_i (T exact "
    "steps; −ηT·ḡ_i as K_i → 0); seed Δθ_i = −ηT/(K_i + λ) · ḡ_i as the seed states it. Then clipped: "
    "‖Δθ_i‖ ≤ η·T·grad_clip, the most T clipped steps can move a tensor. Adam's per-coordinate scaling is not "
    "modelled"
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
    test: str | None = Field(
        None,
        description="test rows (same formats as --dataset) whose mean loss gradient pass 2b's influence is taken "
        "against (default: a held-out split of the dataset, see --holdout)",
    )
    holdout: float = Field(
        0.1, gt=0, lt=1, description="share of the rows held out as pass 2b's test set when --test is not given"
    )
    influence_params: str | None = Field(
        None,
        description="regular expression (re.search) over parameter names: the parameters sharpness, pass 2b and the "
        "HVPs are taken over (default: every parameter, the ones a full fine-tune trains)",
    )
    sharpness: bool | None = Field(
        None,
        description="measure λ_max (and with 2b λ_min) by Lanczos: against 2/η and the seed's NTK label (default: "
        "with pass 2b, whose LiSSA needs the spectrum; costs up to --sharpness-budget HVPs)",
    )
    hessian_rows: int = Field(
        32,
        ge=1,
        description="rows the curvature (every HVP: sharpness, LiSSA, pass 3's K) is measured on: the first N "
        "training rows, in --batch-size batches",
    )
    sharpness_tol: float = Field(
        1e-2, gt=0, lt=1, description="Lanczos stops at ‖Hu − λu‖ ≤ tol·|λ| (the Ritz value is far closer than tol)"
    )
    sharpness_budget: int = Field(60, ge=2, description="HVPs Lanczos may spend (one run for both ends)")
    lissa_depth: int = Field(1000, ge=1, description="HVPs LiSSA may spend before it fails as unconverged")
    lissa_tol: float = Field(1e-2, gt=0, lt=1, description="LiSSA stops at this relative residual ‖(H/s+λ)v − g‖/‖g‖")
    damping: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="LiSSA's dimensionless damping λ (the inverse taken is (H + sλI)⁻¹); default: chosen from the "
        "measured spectrum, at least the seed's 0.01 (see the result's influence.lissa.damping_rule)",
    )
    lissa_scale: float | None = Field(
        None,
        gt=0,
        description="LiSSA's scale s as given (the seed's fixed 25) instead of one from the measured spectrum",
    )
    influence_top: int = Field(
        20, ge=1, le=500, description="most harmful and most helpful rows listed with their text"
    )
    delta_rule: DeltaRule = Field("quadratic", description="pass 3's rule written into the synthetic checkpoint")
    checkpoint_format: Literal["hf", "pt"] = Field(
        "hf", description="pass 3's checkpoint: a save_pretrained directory (hf) or a {step, state_dict} .pt file"
    )
    out: str | None = Field(
        None,
        description="directory to save the result, its tensors and pass 3's checkpoint for compare and other tools",
    )
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

    @field_validator("influence_params")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a regular expression: {e}") from None
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


class Sharpness(BaseModel):
    """λ_max (and λ_min) of the training loss's Hessian over the influence parameters, by Lanczos on HVPs."""

    params: int = Field(description="parameters in the subset")
    tensors: int
    hessian_rows: int = Field(description="rows the loss (and so H) is taken over")
    lambda_max: float
    lambda_min: float | None = Field(description="measured when pass 2b runs (LiSSA's scale needs it)")
    converged: bool = Field(description="the eigenvalues measured converged to tol within the budget")
    iterations: int = Field(description="HVPs spent: one Lanczos run for both ends (λ_max alone without 2b)")
    budget: int = Field(description="HVPs Lanczos may spend")
    tol: float
    residual: float = Field(description="‖Hu − λ_max u‖ / |λ_max| for λ_max's unit eigenvector u")
    lr: float
    stability_limit: float = Field(description="2/η: gradient descent at learning rate η is unstable above it")
    unstable: bool = Field(description="λ_max > 2/η")
    ntk_unreliable: bool = Field(description="the seed's label: λ_max > 10, NTK-linearised predictions least reliable")


class LissaSummary(BaseModel):
    scale: float = Field(description="s")
    scale_rule: str = Field(description="how s was chosen")
    damping: float = Field(description="λ")
    damping_rule: str = Field(description="how λ was chosen")
    effective_damping: float = Field(description="sλ: the inverse taken is (H + sλI)⁻¹")
    iterations: int = Field(description="HVPs")
    budget: int
    tol: float
    residual: float = Field(description="relative residual at the returned vector")
    rate: float = Field(description="the residual's decay per step over the measured spectrum")
    error_bound: float = Field(description="relative error bound of H⁻¹g, condition number × residual")
    residuals: list[float] = Field(description="the residual along the series (at most 200 points)")


class InfluenceRow(BaseModel):
    row: int
    line: int
    hash: str = Field(description="sha256 of the row's text fields (16 hex digits): compare matches rows by it")
    score: float = Field(description="IF(z); the sign convention is the report's convention")
    text: str | None = Field(None, description="the row's prompt and response, shortened (ranked lists only)")


class InfluenceReport(BaseModel):
    convention: str = INFLUENCE_CONVENTION
    params: int
    param_pattern: str | None = Field(description="--influence-params, or None for every parameter")
    test: str = Field(description="where g_test came from: the --test file, or the held-out split")
    test_rows: int
    train_rows: int
    test_loss: float = Field(description="mean test loss at the base weights")
    g_test_norm: float
    lissa: LissaSummary
    predicted_removal: float = Field(
        description="Σ IF(z)/n over the harmful rows: the test-loss drop predicted from removing all of them"
    )
    harmful: int = Field(description="rows with IF > 0")
    most_harmful: list[InfluenceRow]
    most_helpful: list[InfluenceRow]
    scores: list[InfluenceRow] = Field(description="every training row, in dataset order (no text)")


class DeltaTensor(BaseModel):
    name: str
    numel: int
    grad_norm: float = Field(description="‖ḡ_i‖, the mean gradient over the dataset")
    curvature: float = Field(description="K_i = ḡ_iᵀ(Hḡ)_i / ḡ_iᵀḡ_i")
    coef_quadratic: float = Field(description="(1 − (1 − ηK)^T)/K: Δθ = −coef·ḡ (ηT at K = 0)")
    coef_seed: float = Field(description="ηT/(K + λ)")
    eta_eff: float = Field(description="the written rule's coefficient after clipping, divided by T: per-step LR")
    delta_norm: float = Field(description="‖Δθ_i‖ as written")
    relative: float | None = Field(description="‖Δθ_i‖ / ‖θ_i‖; None when θ_i = 0 (e.g. a zero-initialised bias)")
    clipped: bool


class SaeDiffSummary(BaseModel):
    hook: str
    features: int
    changed: int = Field(description="features sae diff calls changed")
    mean_abs_delta: float = Field(description="mean |Δ mean activation| over the SAE's features")


class SyntheticCheckpoint(BaseModel):
    path: str
    format: Literal["hf", "pt"]
    tensors: int
    reloaded: bool = Field(description="loaded back through the session's checkpoint loader")
    matched: int = Field(description="tensors equal to the written delta (bit for bit in the model's dtype)")
    sae_diff: list[SaeDiffSummary] = Field(default_factory=list, description="sae diff of the checkpoint, per SAE")
    sae_diff_texts: int = Field(0, description="dataset texts sae diff ran on")


class DeltaReport(BaseModel):
    convention: str = DELTA_CONVENTION
    rule: DeltaRule = Field(description="the rule written into the checkpoint")
    lr: float
    steps: int
    damping: float = Field(description="λ of the seed rule")
    clip_limit: float = Field(description="η·T·grad_clip")
    hessian_rows: int
    clipped: list[str] = Field(description="tensors whose written delta was clipped")
    tensors: list[DeltaTensor] = Field(description="every parameter tensor, the effective-LR map")
    checkpoint: SyntheticCheckpoint | None = None


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
    sharpness: Sharpness | None = None
    influence: InfluenceReport | None = None
    delta: DeltaReport | None = None
    invariant: Invariant | None = None
    runtime: RunInfo | None = None
    artifacts: list[str] = Field(default_factory=list, description="files written under --out")


class SimulationCard(BaseModel):
    """The card: pass timeline, module × batch heatmap with dead modules, loss and max-grad lines, top feature
    predictions, quality flags with their rows, the margins histogram, sharpness against 2/η, the most harmful and
    helpful rows with LiSSA's convergence, the effective-LR map and the synthetic checkpoint."""

    name: str
    timeline: list[PassTiming]
    quality: QualityReport | None
    landscape: Landscape | None
    signals: list[Signal]
    sae: list[SaePrediction]
    preference: PreferenceReport | None
    sharpness: Sharpness | None = None
    influence: InfluenceReport | None = Field(None, description="without `scores` (every row pages via get_result)")
    delta: DeltaReport | None = None
    invariant: Invariant | None
