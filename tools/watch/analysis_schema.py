"""The analysis checkpoint file (`trainspect.analysis.v1`) and its one reader, without torch: a viewer reads
a thousand of these without paying for the recorder's imports.

Fields added after the first files were written are optional (`grad_clip`, `movement`, a weight's `moved` /
`moved_rms`, gradient grids), so every v1 file still reads. A reader may ask for a light view of the same file
(`CheckpointDigest`: norms, movement, activations, attention as plain dicts, no histograms or grids): the JSON is
validated straight into it, so what it leaves out never becomes Python objects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, NotRequired, overload

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic needs this TypedDict before Python 3.12

from toolserver.contract import ToolError, now_iso

SCHEMA_VERSION = "trainspect.analysis.v1"
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
GRID = 32
Reason = Literal["scheduled", "loss_spike", "grad_norm", "dead_param"]

_MOVED = (
    "‖w − w_ref‖ / ‖w_ref‖ from the reference checkpoint (movement.reference_step) over the reference elements: "
    "every element of a tensor with at most movement.sample elements (or when sample is 0), else that many positions "
    "drawn uniformly at random, the same at every checkpoint (an estimate); trainable parameters only; absent when "
    "‖w_ref‖ = 0"
)


class FileModel(BaseModel):
    """Non-finite statistics (a NaN gradient is what a checkpoint is for) are written as NaN / Infinity, which
    json and pydantic read back, rather than as null, which a float field refuses."""

    model_config = ConfigDict(ser_json_inf_nan="constants")


class Histogram(FileModel):
    lo: float
    hi: float
    counts: list[int] = Field(
        description="equal-width bins over [lo, hi], the finite elements' range (a tensor with NaN/inf: its finite "
        "elements)"
    )


class Moments(FileModel):
    """What every summarised tensor records; the subclasses add their own fields after these."""

    shape: list[int]
    mean: float
    std: float
    min: float
    max: float


class TensorStats(Moments):
    norm: float = Field(description="L2 norm")
    percentiles: list[float] | None = Field(None, description=f"at {list(PERCENTILES)} (weights only)")
    histogram: Histogram
    grid: list[list[float]] | None = Field(
        None,
        description="evenly spaced rows × columns, at most 32×32; a gradient's grid samples the same rows and "
        "columns as its weight's",
    )
    moved: float | None = Field(None, description=_MOVED)
    moved_rms: float | None = Field(
        None, description="RMS of w − w_ref over the reference elements, written instead of moved when ‖w_ref‖ = 0"
    )


class ActivationStats(Moments):
    sparsity: float = Field(description="fraction of elements with |x| <= 1e-6")


class AttentionStats(FileModel):
    entropy_per_head: list[float] = Field(description="mean over batch and queries of −Σ p log p (nats)")
    max_attn_per_head: list[float] = Field(description="mean over batch and queries of the largest weight")
    grid_per_head: list[list[list[float]]] = Field(
        description="first sequence's pattern per head, sampled to at most 32×32"
    )


class Movement(FileModel):
    """What the weights' `moved` values are measured against."""

    reference_step: int = Field(description="the checkpoint whose weights are the reference (the recorder's first)")
    sample: int = Field(
        description="reference elements kept per tensor: tensors with more are compared on this many positions "
        "drawn uniformly at random (an estimate); 0: every element of every tensor (exact)"
    )


class AnalysisCheckpoint(FileModel):
    schema_version: Literal["trainspect.analysis.v1"] = SCHEMA_VERSION
    step: int
    loss: float | None = None
    reasons: list[Reason]
    created_at: str = Field(default_factory=now_iso)
    n_params: int
    grad_clip: float | None = Field(None, description="the run's gradient clip norm, as the training script stated it")
    movement: Movement | None = None
    weights: dict[str, TensorStats]
    gradients: dict[str, TensorStats]
    activations: dict[str, ActivationStats] = Field(default_factory=dict)
    attention: dict[str, AttentionStats] = Field(default_factory=dict)


class WeightDigest(TypedDict):
    shape: list[int]
    norm: float
    moved: NotRequired[float]
    moved_rms: NotRequired[float]


class GradientDigest(TypedDict):
    norm: float


class ActivationDigest(TypedDict):
    mean: float
    std: float
    sparsity: float


class AttentionDigest(TypedDict):
    entropy_per_head: list[float]
    max_attn_per_head: list[float]


class MovementDigest(TypedDict):
    reference_step: int
    sample: int


class CheckpointDigest(TypedDict):
    """A checkpoint without its histograms, percentiles and grids, as plain dicts: what a viewer needs from every
    file, validated from the file's bytes in about a third of the CPU time json.loads() takes."""

    schema_version: Literal["trainspect.analysis.v1"]
    step: int
    loss: NotRequired[float | None]
    reasons: list[Reason]
    grad_clip: NotRequired[float | None]
    movement: NotRequired[MovementDigest]
    weights: dict[str, WeightDigest]
    gradients: dict[str, GradientDigest]
    activations: NotRequired[dict[str, ActivationDigest]]
    attention: NotRequired[dict[str, AttentionDigest]]


_DIGEST = TypeAdapter(CheckpointDigest)


@overload
def read_analysis_checkpoint(path: str | Path, digest: Literal[False] = False) -> AnalysisCheckpoint: ...


@overload
def read_analysis_checkpoint(path: str | Path, digest: Literal[True]) -> CheckpointDigest: ...


def read_analysis_checkpoint(path: str | Path, digest: bool = False) -> AnalysisCheckpoint | CheckpointDigest:
    """Load one checkpoint (with digest=True: its CheckpointDigest), refusing schema versions this code does not
    know. A good file is validated from its bytes in one pass; only a file that fails is parsed again to say why."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ToolError(f"cannot read analysis checkpoint {path}: {e}", "expected an analysis_*.json file") from None
    try:
        if digest:
            return _DIGEST.validate_json(raw)  # schema_version is required there
        checkpoint = AnalysisCheckpoint.model_validate_json(raw)
        if "schema_version" in checkpoint.model_fields_set:  # a file without one is refused below, not defaulted
            return checkpoint
    except ValidationError:
        pass
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ToolError(f"cannot read analysis checkpoint {path}: {e}", "expected an analysis_*.json file") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise ToolError(
            f"analysis checkpoint {path} has schema_version {version!r}; this trainspect reads {SCHEMA_VERSION!r}",
            "re-record it with this version of trainspect, or read it with the version that wrote it",
        )
    try:
        return _DIGEST.validate_python(data) if digest else AnalysisCheckpoint.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ToolError(f"analysis checkpoint {path} is malformed at {where}: {err['msg']}", "re-record it") from None
