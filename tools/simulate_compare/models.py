"""Input, result and card of compare_simulations: two saved simulations side by side (the MCP schema, CLI
arguments, JSON export, card payload and renderer all derive from these models)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

CARD_ROWS = 10  # entries per list on the card; the result keeps `top`


class CompareInput(BaseModel):
    a: str = Field(
        description="the earlier simulation: a directory written by simulate --out, or its simulation.json",
        json_schema_extra={"positional": True},
    )
    b: str = Field(
        description="the simulation to compare it with (e.g. the same data with rows removed)",
        json_schema_extra={"positional": True},
    )
    top: int = Field(20, ge=1, le=500, description="rows, features and tensors listed per change list")


class Change(BaseModel):
    """One number on both sides."""

    a: float | None
    b: float | None
    delta: float | None = Field(description="b − a (None when either side has no value)")


class FlagChange(BaseModel):
    """One yes/no on both sides."""

    a: bool
    b: bool
    changed: bool


class Side(BaseModel):
    """What one of the two simulations was."""

    path: str = Field(description="its simulation.json, resolved")
    name: str
    dataset: str
    format: str
    rows: int
    passes: list[str]
    lr: float
    steps: int = Field(description="T: optimizer steps simulated")
    max_len: int
    sections: list[str] = Field(
        description="what it holds of influence, features, delta, quality, sharpness and landscape"
    )


# ----- influence -------------------------------------------------------------------------------------------


class InfluenceTotals(BaseModel):
    """One side's influence over its training rows (IF > 0 harmful, < 0 helpful)."""

    test: str = Field(description="where its test gradient came from")
    test_rows: int
    train_rows: int
    total: float = Field(description="Σ IF over every training row")
    mean: float = Field(description="mean IF over every training row")
    harmful: int = Field(description="rows with IF > 0")
    predicted_removal: float = Field(description="Σ IF/n over the harmful rows: the predicted test-loss drop")
    test_loss: float = Field(description="mean test loss at the base weights")


class RowChange(BaseModel):
    """A row in both simulations (matched by its content hash) and its influence on each side."""

    hash: str
    row_a: int
    row_b: int
    line_a: int
    line_b: int
    a: float = Field(description="IF in A")
    b: float = Field(description="IF in B")
    delta: float = Field(description="b − a")
    flipped: Literal["to_harmful", "to_helpful"] | None = Field(
        description="the sign changed: helpful (IF < 0) in A and harmful (IF > 0) in B, or the reverse"
    )
    text: str | None = Field(None, description="the row's text, when either side ranked it")


class RowScore(BaseModel):
    """A row in one simulation only, with its influence there."""

    hash: str
    row: int
    line: int
    score: float = Field(description="IF on its own side")
    text: str | None = Field(None, description="the row's text, when its side ranked it")


class InfluenceCompare(BaseModel):
    convention: str = Field(description="A's sign convention (IF > 0 harmful)")
    comparable: bool = Field(
        description="the same test set on both sides (same description, row count and base test loss) and the same "
        "influence parameters: only then are the two sides' scores on one scale"
    )
    note: str | None = Field(description="why the scores are not directly comparable, when they are not")
    a: InfluenceTotals
    b: InfluenceTotals
    total: Change = Field(description="Σ IF")
    mean: Change = Field(description="mean IF")
    harmful: Change = Field(description="rows with IF > 0")
    predicted_removal: Change
    test_loss: Change
    matched: int = Field(description="rows in both (by content hash; repeated rows pair up in dataset order)")
    removed: int = Field(description="rows only in A")
    removed_harmful: int = Field(description="rows only in A that were harmful there (IF > 0)")
    removed_harmful_score: float = Field(description="Σ IF in A of those rows")
    added: int = Field(description="rows only in B")
    added_harmful: int = Field(description="rows only in B that are harmful there")
    flipped_to_harmful: int = Field(description="matched rows helpful in A and harmful in B")
    flipped_to_helpful: int = Field(description="matched rows harmful in A and helpful in B")
    changes: list[RowChange] = Field(description="matched rows with the largest |Δ IF| (top)")
    flipped: list[RowChange] = Field(description="matched rows whose sign changed, largest |Δ| first (top)")
    removed_rows: list[RowScore] = Field(description="rows only in A, most harmful first (top)")
    added_rows: list[RowScore] = Field(description="rows only in B, most harmful first (top)")


# ----- SAE feature predictions -----------------------------------------------------------------------------

ListName = Literal["strengthen", "suppress"]


class FeatureChange(BaseModel):
    feature: int
    label: str | None
    a: float = Field(description="score in A")
    b: float = Field(description="score in B")
    delta: float
    list_a: ListName
    list_b: ListName


class FeatureListed(BaseModel):
    feature: int
    label: str | None
    score: float = Field(description="score on the side that lists it")
    list: ListName


class HookCompare(BaseModel):
    """One SAE hook on both sides: its features matched by index over the listed (top) predictions."""

    hook: str
    d_sae: int
    listed_a: int = Field(description="features in A's strengthen and suppress lists")
    listed_b: int
    resid_grad_norm: Change = Field(description="‖∇L_resid‖")
    matched: int = Field(description="features listed on both sides")
    crossed: int = Field(description="matched features that moved between strengthen and suppress")
    changes: list[FeatureChange] = Field(description="matched features with the largest |Δ score| (top)")
    new: list[FeatureListed] = Field(description="features in B's lists but not A's (top by |score|)")
    dropped: list[FeatureListed] = Field(description="features in A's lists but not B's (top by |score|)")


class FeatureCompare(BaseModel):
    convention: str = Field(description="the score's sign convention (positive = strengthen)")
    hooks: list[HookCompare]
    only_a: list[str] = Field(description="hooks only A predicted")
    only_b: list[str] = Field(description="hooks only B predicted")
    width_differs: list[str] = Field(
        description="hooks whose SAE has a different width on the two sides: features cannot be matched by index"
    )


# ----- effective-LR map ------------------------------------------------------------------------------------


class TensorChange(BaseModel):
    name: str
    eta_eff_a: float
    eta_eff_b: float
    ratio: float | None = Field(description="η_eff B / A (None when A's is 0)")
    curvature_a: float
    curvature_b: float
    delta_norm_a: float
    delta_norm_b: float
    clipped_a: bool
    clipped_b: bool


class DeltaCompare(BaseModel):
    rule_a: str = Field(description="the rule A wrote (quadratic or seed)")
    rule_b: str
    lr: Change
    steps: Change
    matched: int = Field(description="tensors in both (by name)")
    only_a: list[str]
    only_b: list[str]
    clipped: Change = Field(description="tensors whose delta was clipped")
    newly_clipped: list[str] = Field(description="clipped in B, not in A")
    unclipped: list[str] = Field(description="clipped in A, not in B")
    median_ratio: float | None = Field(description="median η_eff B / A over the matched tensors with A's > 0")
    tensors: list[TensorChange] = Field(description="the largest relative η_eff changes first, |ln(B/A)| (top)")


# ----- dataset quality -------------------------------------------------------------------------------------

FlagName = Literal["harmful", "assistant_speak", "too_long"]


class FlagCount(BaseModel):
    flag: str
    a: float | None
    b: float | None
    delta: float | None


class FlaggedRow(BaseModel):
    flag: FlagName
    hash: str
    row: int = Field(description="its row on the side that flags it")
    line: int
    detail: str = Field(description="the phrases that matched, or its length")


class QualityCompare(BaseModel):
    counts: list[FlagCount] = Field(description="per kind of flag: A, B and B − A")
    matched_by: Literal["hash", "none"] = Field(
        description="hash: flagged rows matched by content through the influence scores' row hashes; none: counts only"
    )
    note: str | None = Field(description="what the row-level lists cannot say")
    cleared: list[FlaggedRow] = Field(description="rows A flags whose content B does not flag (removed or fixed)")
    introduced: list[FlaggedRow] = Field(description="rows B flags whose content A did not flag")


# ----- sharpness and landscape -----------------------------------------------------------------------------


class SharpnessCompare(BaseModel):
    lambda_max: Change
    lambda_min: Change
    stability_limit: Change = Field(description="2/η of each side's learning rate")
    unstable: FlagChange = Field(description="λ_max > 2/η")
    ntk_unreliable: FlagChange = Field(description="λ_max > 10")
    converged: FlagChange
    changed: list[str] = Field(description="the flags that changed, as 'name: A → B'")


class LandscapeCompare(BaseModel):
    batches: Change
    loss_mean: Change
    max_grad_mean: Change
    dead: Change = Field(description="dead modules (mean grad norm < 1e-6)")
    dead_added: list[str] = Field(description="dead in B, not in A")
    dead_removed: list[str] = Field(description="dead in A, not in B")


class CompareResult(BaseModel):
    a: Side
    b: Side
    same_file: bool = Field(description="A and B are the same simulation.json")
    missing: list[str] = Field(description="sections not compared, and which side lacks their data")
    influence: InfluenceCompare | None = None
    features: FeatureCompare | None = None
    delta: DeltaCompare | None = None
    quality: QualityCompare | None = None
    sharpness: SharpnessCompare | None = None
    landscape: LandscapeCompare | None = None


class SimulationCompareCard(CompareResult):
    """The card: the result with every list cut to its first CARD_ROWS entries (counts stay whole)."""
