"""run_analysis_view's input, result and card models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from tools.watch.analysis_schema import Movement

MAX_CELLS = 16_384  # per heatmap in a result: an MCP client takes ~25k tokens


class AnalysisViewInput(BaseModel):
    dir: str = Field(description="folder of analysis_*.json checkpoints (StepLogger(..., analysis_dir=...))")
    steps: list[int] | None = Field(
        None,
        description="steps of the gradient waterfall (default: up to 6 spread over the run: the first, the last and "
        "triggered ones)",
    )
    tensor: str | None = Field(
        None,
        description="parameter whose sampled weight and gradient grids are shown (default: the gridded one "
        "that moved most)",
    )
    step: int | None = Field(None, description="checkpoint of those grids (default: the last)")
    grad_clip: float | None = Field(
        None, gt=0, description="the run's gradient clip norm (default: the one the checkpoints recorded)"
    )
    top: int = Field(15, ge=1, le=50, description="parameters in the movement ranking")
    columns: int = Field(
        32,
        ge=2,
        le=1000,
        description=f"checkpoints per over-time row (evenly spaced, first and last included); fewer where rows × "
        f"columns would pass {MAX_CELLS:,} cells",
    )
    vanishing_ratio: float = Field(
        100.0,
        gt=1,
        description="vanishing path: median per-layer grad norm of the last third of layers / that of the first "
        "third at or above this at a checkpoint",
    )
    pinch_drop: float = Field(
        10.0, gt=1, description="pinch: a layer's grad norm at least this many times below the next later layer's"
    )
    clip_fraction: float = Field(
        0.9,
        gt=0,
        le=1,
        description="clipping by one tensor: global grad norm above grad_clip in at least this share of checkpoints, "
        "the same parameter holding the largest share of the squared norm in at least this share of those",
    )
    collapse_fraction: float = Field(
        0.1, gt=0, lt=1, description="entropy collapse: a head's entropy at or below this share of its first value"
    )
    collapse_window: float = Field(
        0.25, gt=0, le=1, description="… within this leading share of the recorded step range"
    )
    still: float = Field(
        1e-6, ge=0, description="never moves: movement from the reference at or below this at every later checkpoint"
    )
    activation_growth: float = Field(
        10.0, gt=1, description="activation growth: a module's output std at least this many times its first"
    )


class Skipped(BaseModel):
    file: str
    reason: str = Field(description="one line: unreadable, another schema version, malformed, or a duplicate step")


class Trigger(BaseModel):
    step: int
    reasons: list[str]


class Timeline(BaseModel):
    """The run at the over-time columns."""

    steps: list[int]
    loss: list[float | None]
    grad_norm: list[float | None] = Field(description="global grad norm √Σ‖g_p‖² over every recorded gradient")


class NamedNorm(BaseModel):
    name: str
    norm: float | None


class WaterfallStep(BaseModel):
    step: int
    reasons: list[str]
    layers: list[float | None] = Field(
        description="grad norm per transformer block (index = block): √ of the sum of its parameters' squared grad "
        "norms; None where no gradient of the block was recorded (frozen or detached)"
    )
    outside: list[NamedNorm] = Field(description="parameters outside the blocks: embeddings, final norm, head")
    grad_norm: float | None = Field(description="global grad norm")


class Heatmap(BaseModel):
    rows: list[str]
    steps: list[int] = Field(description="the checkpoint of each column: evenly spaced, first and last included")
    values: list[list[float | None]] = Field(
        description=f"rows × columns, each cell that checkpoint's exact value (None: not recorded, or not finite); "
        f"at most {MAX_CELLS:,} cells"
    )


class MovedParam(BaseModel):
    name: str
    layer: int | None
    moved: float = Field(description="‖w − w_ref‖ / ‖w_ref‖ at the last checkpoint")
    exact: bool = Field(description="false: measured on the recorder's random sample of the tensor (an estimate)")
    grad_norm: float | None = Field(description="its grad norm at the last checkpoint")


class Grids(BaseModel):
    tensor: str
    step: int
    shape: list[int]
    weight: list[list[float]] = Field(description="≤ 32 evenly spaced rows × ≤ 32 evenly spaced columns (flattened)")
    gradient: list[list[float]] | None = Field(description="the same rows and columns of its gradient")
    moved: float | None
    gridded: list[str] = Field(description="every parameter with grids at this step")


class HeadValue(BaseModel):
    head: str
    value: float | None


class AttentionView(BaseModel):
    entropy: Heatmap = Field(description="rows L{layer}.h{head}: mean attention entropy (nats)")
    max_attn: list[HeadValue] = Field(description="mean largest attention weight per head at max_attn_step")
    max_attn_step: int


class ActivationSeries(BaseModel):
    module: str
    layer: int | None
    mean: list[float | None]
    std: list[float | None]
    sparsity: list[float | None] = Field(description="share of outputs with |x| ≤ 1e-6")


class Activations(BaseModel):
    steps: list[int] = Field(
        description=f"the checkpoint of each point: modules × 3 statistics × points stay within {MAX_CELLS // 8:,}"
    )
    modules: list[ActivationSeries] = Field(description="in depth order")


class Vanishing(BaseModel):
    """The checkpoint with the largest last/first-third ratio, and how many reach the threshold."""

    ratio: float | None = Field(
        description="the largest ratio, median of the last third's layer grad norms / the first third's; None: "
        "the first third's median is 0 (no gradient reaches it)"
    )
    step: int
    first_third: list[int]
    last_third: list[int]
    checkpoints: int = Field(description="checkpoints at or above the threshold: the rule fires when this is > 0")
    of: int = Field(description="checkpoints with gradients in two or more layers")
    steps: list[int] = Field(description="those checkpoints (the first 20)")


class Pinch(BaseModel):
    layer: int = Field(description="the earlier layer of the drop: flow from layer + 1 is blocked at this layer")
    drop: float | None = Field(description="grad norm of layer + 1 / that of layer at `step`; None: layer's is 0")
    step: int = Field(description="the checkpoint with the largest drop at this layer")
    above: float
    below: float
    checkpoints: int = Field(
        description="checkpoints whose largest drop reaches the threshold at this layer: the rule fires when > 0 "
        "(0: the largest drop seen, below the threshold)"
    )
    of: int


class Clipping(BaseModel):
    grad_clip: float
    source: Literal["input", "checkpoints"]
    clipped: int = Field(description="checkpoints with global grad norm > grad_clip")
    of: int
    at_clip: int = Field(description="checkpoints whose global grad norm is grad_clip to within 0.1%")
    post_clip: bool = Field(
        description="at_clip is at least half the checkpoints (and 2 or more): the gradients were recorded after "
        "clipping, so clipped steps cannot be counted and the rule does not apply"
    )
    top: str | None = Field(description="the parameter most often holding the largest share of the squared norm")
    top_count: int = Field(description="clipped checkpoints in which it does")
    top_share: float | None = Field(description="its mean share of the squared global norm in those")
    dominated: bool = Field(description="the rule (clip_fraction) holds")


class Collapse(BaseModel):
    head: str
    first: float = Field(description="entropy at the first checkpoint with attention (nats)")
    value: float = Field(description="the first entropy at or below collapse_fraction × first within the window")
    step: int
    window_end: float = Field(description="the last step of the window")


class Still(BaseModel):
    name: str
    layer: int | None
    largest: float = Field(description="its largest movement after the reference (relative, or RMS when ‖w_ref‖ = 0)")
    gradient: Literal["none", "zero", "nonzero"] = Field(
        description="none: no gradient ever recorded (detached or unused); zero: every recorded norm is 0"
    )
    exact: bool


class Growth(BaseModel):
    module: str
    first: float
    last: float
    ratio: float
    first_step: int
    last_step: int


class NonFinite(BaseModel):
    step: int
    params: list[str] = Field(description="parameters with a non-finite grad norm (the first 5)")
    count: int


class Rules(BaseModel):
    """Each finding's rule in words, with its threshold."""

    vanishing: str
    pinch: str
    clipping: str
    collapse: str
    still: str
    growth: str


class AnalysisViewResult(BaseModel):
    dir: str
    checkpoints: int = Field(description="checkpoints read")
    skipped: list[Skipped]
    first_step: int
    last_step: int
    n_layers: int
    triggered: list[Trigger] = Field(description="checkpoints written on a trigger (the first 50)")
    triggered_total: int
    movement: Movement | None = Field(description="what movement is measured against (None: not recorded)")
    grad_clip: float | None
    timeline: Timeline
    waterfall: list[WaterfallStep]
    grad_heatmap: Heatmap = Field(description="per-layer grad norm, layers × checkpoints")
    movement_top: list[MovedParam] = Field(description="the most moved parameters at the last checkpoint")
    movement_layers: Heatmap | None = Field(
        description="per layer √Σ‖Δw‖² / √Σ‖w_ref‖² over its tracked parameters, layers × checkpoints"
    )
    grids: Grids | None
    attention: AttentionView | None
    activations: Activations | None
    vanishing: Vanishing | None
    pinch: Pinch | None
    clipping: Clipping | None
    collapsed: list[Collapse]
    still: list[Still]
    grown: list[Growth]
    nonfinite: list[NonFinite]
    rules: Rules
    notes: list[str]


class AnalysisViewCard(BaseModel):
    """What the card draws: the result's views, the rules' hits for highlighting, and what was skipped."""

    dir: str
    checkpoints: int
    first_step: int
    last_step: int
    n_layers: int
    movement: Movement | None
    grad_clip: float | None
    timeline: Timeline
    waterfall: list[WaterfallStep]
    grad_heatmap: Heatmap
    movement_top: list[MovedParam]
    movement_layers: Heatmap | None
    grids: Grids | None
    attention: AttentionView | None
    activations: Activations | None
    pinch_layer: int | None
    vanishing_steps: list[int]
    collapsed: list[str] = Field(description="heads whose entropy collapsed early")
    still: list[str]
    skipped: list[Skipped] = Field(description="the first 10")
    skipped_total: int
