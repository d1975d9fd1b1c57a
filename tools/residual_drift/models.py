"""Input, output and card of run_residual_drift."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from session.probes import ProbeSummary
from session.run_info import RunInfo

DRIFT_FLOOR = 1e-6  # a layer drifts when its mean cosine distance exceeds this (float64 noise is ~1e-16)
GROWS_RHO = 0.8  # "drift grows with depth": Spearman ρ of mean distance against depth at least this


class ResidualDriftInput(BaseModel):
    checkpoint: str = Field(
        description="fine-tuned checkpoint to compare with the session's base: .pt/.bin, .safetensors, a "
        "save_pretrained "
        "directory or a PEFT LoRA adapter directory (merged into the base weights)"
    )
    prompts: str | None = Field(
        None,
        description="probes file: a JSON array or JSONL of strings, or JSONL of {instruction, response} rows "
        "(default: the built-in set of short prompts across domains)",
    )
    name: str | None = Field(None, description="label for the checkpoint in the output and the web card")
    batch_size: int = Field(16, ge=1, le=1024, description="probes per forward pass")
    max_length: int = Field(256, ge=2, description="tokens per probe at most (and at most the model's context)")


class LayerDrift(BaseModel):
    """One layer: base vs checkpoint on the same probes."""

    layer: int | Literal["embed"] = Field(description="block index, or embed for the embedding output")
    hook: str = Field(
        description="TransformerLens hook read (blocks.L.hook_resid_post; embed: blocks.0.hook_resid_pre)"
    )
    cos_mean: float = Field(description="mean over probes of the cosine distance 1 − cos(h_base, h_ft)")
    cos_max: float = Field(description="largest cosine distance over probes")
    rel_norm_mean: float = Field(description="mean over probes of ‖h_ft − h_base‖ / ‖h_base‖")
    rel_norm_max: float


class ResidualDriftResult(BaseModel):
    name: str
    checkpoint: str
    base: str
    kind: Literal["llm", "embedding"]
    reduction: str = Field(description="which vector per probe and layer was compared")
    probes: ProbeSummary
    layers: list[LayerDrift] = Field(description="embed first, then every block in depth order")
    drift_floor: float = Field(DRIFT_FLOOR, description="a layer drifts when its mean cosine distance exceeds this")
    start_layer: int | Literal["embed"] | None = Field(
        description="the first layer whose mean distance exceeds the floor"
    )
    peak_layer: int | Literal["embed"] | None = Field(description="the layer of the largest mean distance")
    depth_rho: float | None = Field(description="Spearman ρ of the blocks' mean distance against depth")
    grows_with_depth: bool = Field(description=f"depth_rho ≥ {GROWS_RHO} (and some layer drifts)")
    runtime: RunInfo


class DriftCell(BaseModel):
    layer: int | Literal["embed"]
    cos_mean: float
    cos_max: float
    rel_norm_mean: float


class ResidualDriftCard(BaseModel):
    """The residualDrift card: a per-layer line of the mean cosine distance, the max as a band above it."""

    name: str
    kind: str
    reduction: str
    probes: int
    truncated: int
    layers: list[DriftCell]
    start_layer: int | Literal["embed"] | None
    peak_layer: int | Literal["embed"] | None
    drift_floor: float
