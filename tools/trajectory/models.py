"""run_trajectory_analysis's input, result and card models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

StepSource = Literal["file", "trainer_state", "name"]
Status = Literal["analysed", "duplicate", "unreadable", "no_step", "other_kind"]


class TrajectoryInput(BaseModel):
    checkpoints: str | None = Field(
        None, description="glob of checkpoints, quoted: 'run/step_*.pt', 'out/checkpoint-*' (files or directories)"
    )
    dir: str | None = Field(
        None,
        description="directory scanned recursively: Hugging Face Trainer checkpoint-N/ directories (full weights or "
        "a PEFT adapter) and .pt/.bin/.safetensors files (optimizer, scheduler and RNG state files are not weights)",
    )
    name: str | None = Field(None, description="prefix for step labels, e.g. 'lr3e-4' gives 'lr3e-4@500'")
    jump_factor: float = Field(
        3.0, gt=1, description="movement per step above this many times the median movement per step is a jump"
    )
    still_rel: float = Field(
        1e-6, ge=0, description="a layer whose ‖ΔW‖/‖W‖ stays at or below this at every checkpoint never moved"
    )
    slowed_fraction: float = Field(
        0.25, gt=0, lt=1, description="movement has slowed once movement per step stays below this share of its peak"
    )

    @model_validator(mode="after")
    def _one_source(self) -> TrajectoryInput:
        if (self.checkpoints is None) == (self.dir is None):
            raise ValueError("give exactly one of checkpoints (a glob) or dir (a directory)")
        return self


class Entry(BaseModel):
    """One candidate checkpoint found, analysed or not (and why not)."""

    path: str
    step: int | None = None
    step_source: StepSource | None = Field(
        None, description="file: the weights file's own step; trainer_state: trainer_state.json's global_step; name"
    )
    kind: Literal["full", "lora"] | None = None
    status: Status
    reason: str | None = None


class Point(BaseModel):
    """One analysed checkpoint: its change from the base and its movement from the checkpoint before."""

    label: str
    step: int
    path: str
    fro_delta: float = Field(description="‖W_k − W_base‖_F over every compared tensor")
    rel_delta: float = Field(description="‖W_k − W_base‖_F / ‖W_base‖_F over every compared tensor")
    by_type: dict[str, float | None] = Field(description="‖ΔW‖/‖W‖ per matrix type over the layers")
    by_layer: list[float | None] = Field(description="‖ΔW‖/‖W‖ per layer (index = layer)")
    median_stable_rank: float | None = Field(description="median stable rank of ΔW over the layer matrices")
    top_changed: str | None = Field(description="the layer matrix with the largest ‖ΔW‖/‖W‖")
    top_rel: float | None = None
    movement: float = Field(description="‖W_k − W_{k−1}‖_F (the first checkpoint: from the base)")
    movement_per_step: float = Field(description="movement / steps since the checkpoint before (or since step 0)")
    movement_by_type: dict[str, float] = Field(description="‖W_k − W_{k−1}‖_F per matrix type")
    update_cosine: float | None = Field(
        description="cos(W_k − W_{k−1}, W_{k−1} − W_{k−2}) over every compared tensor: 1 the same direction, "
        "< 0 turning back; None for the first checkpoint"
    )
    cosine_by_type: dict[str, float | None]


class Rules(BaseModel):
    """Each rule in words, with its threshold."""

    jump: str
    slowed: str
    never_moved: str
    cosine: str
    jump_factor: float
    slowed_fraction: float
    still_rel: float


class TrajectoryResult(BaseModel):
    source: str = Field(description="the glob or directory searched")
    base: str
    mode: Literal["full", "lora"]
    entries: list[Entry] = Field(description="every candidate found, in step order; status says what became of it")
    points: list[Point] = Field(description="the analysed checkpoints in step order")
    matrix_types: list[str]
    n_layers: int
    keys_compared: int = Field(description="tensors (or LoRA targets) present in the base and every checkpoint")
    keys_not_everywhere: list[str] = Field(description="tensors missing from some checkpoints, left out (first 20)")
    never_moved: list[int] = Field(description="layers at or below still_rel at every checkpoint")
    jumps: list[int] = Field(description="steps whose movement per step jumps (see rules.jump)")
    slowed_from: int | None = Field(description="the step from which movement per step stays slowed")
    peak_type: str | None = Field(description="the matrix type with the largest ‖ΔW‖/‖W‖ at the last checkpoint")
    rules: Rules
    stable_rank_rtol: float = Field(description="relative tolerance of σ_max in the stable ranks")


class PointCard(BaseModel):
    label: str
    step: int
    rel_delta: float
    movement_per_step: float
    update_cosine: float | None
    median_stable_rank: float | None
    top_changed: str | None
    by_type: dict[str, float | None]


class TrajectoryCard(BaseModel):
    source: str
    mode: str
    points: list[PointCard]
    matrix_types: list[str]
    entries: dict[str, int] = Field(description="entries per status")
    problems: list[Entry] = Field(description="entries not analysed (first 10)")
    never_moved: list[int]
    jumps: list[int]
    slowed_from: int | None
