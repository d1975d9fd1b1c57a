"""Input and output of run_weight_diff (the MCP schema, CLI flags and JSON export derive from these)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class WeightDiffInput(BaseModel):
    checkpoint: str = Field(
        description="Fine-tuned checkpoint to compare with the session's base model: a .pt/.bin file "
        "({step, state_dict} or a state dict), a .safetensors file, a save_pretrained directory "
        "(sharded too) or a PEFT LoRA adapter directory",
    )
    name: str | None = Field(
        None, description="Label for the checkpoint in the output and web card (default: file name without suffix)"
    )
    top_k: int = Field(10, ge=1, le=200, description="How many of the most changed matrices (by ‖ΔW‖/‖W‖) to list")


class MatrixRow(BaseModel):
    """One weight matrix of one layer."""

    layer: int
    matrix: str = Field(description="Q, K, V, O, MLP gate, MLP in, MLP out, QKV (fused, unsplit) or other")
    keys: list[str] = Field(description="normalised tensor names the row comes from")
    shape: list[int] = Field(description="shape of this matrix as stored (GPT-2 Conv1D: d_in × d_out)")
    fro_delta: float = Field(description="‖ΔW‖_F")
    rel_delta: float | None = Field(description="‖ΔW‖_F / ‖W_base‖_F; None when W_base = 0")
    stable_rank: float | None = Field(description="‖ΔW‖_F² / σ_max²; 1 = a single direction; None when ΔW = 0")
    sigma_max: float = Field(description="largest singular value of ΔW")
    lora_rank: int | None = Field(None, description="r of the LoRA pair (LoRA mode)")


class TensorRow(BaseModel):
    """A tensor outside the per-layer table: embeddings, norm weights, biases, other matrices."""

    key: str
    group: Literal["embedding", "norm", "bias", "other"]
    shape: list[int]
    fro_delta: float
    rel_delta: float | None = Field(
        description="‖ΔW‖_F / ‖W_base‖_F; None when W_base = 0 (e.g. a zero-initialised bias)"
    )
    stable_rank: float | None = Field(None, description="matrices only; None for vectors or ΔW = 0")
    sigma_max: float | None = None


class NonFiniteTensor(BaseModel):
    """A tensor with NaN or inf values: named, counted, and left out of every norm."""

    key: str
    numel: int = Field(description="elements of the checkpoint's tensor (LoRA: of both factors)")
    checkpoint: int = Field(description="NaN/inf elements in the checkpoint's tensor (LoRA: in its factors)")
    base: int = Field(description="NaN/inf elements in the base's tensor")
    note: str | None = Field(None, description="e.g. a non-finite LoRA scale from the adapter config")


class TopChange(BaseModel):
    label: str = Field(description="e.g. 'layer 3 MLP out' or the tensor name outside layers")
    key: str
    rel_delta: float
    fro_delta: float
    stable_rank: float | None


class Totals(BaseModel):
    tensors_compared: int
    unchanged: int = Field(description="compared tensors (or LoRA pairs) whose ΔW is exactly zero")
    fro_delta: float = Field(description="‖ΔW‖_F over every compared tensor")
    rel_delta: float = Field(description="‖ΔW‖_F / ‖W_base‖_F over every compared tensor")
    only_in_base: int
    only_in_checkpoint: int
    only_in_base_keys: list[str] = Field(description="first 20")
    only_in_checkpoint_keys: list[str] = Field(description="first 20")
    tied: list[str] = Field(description="output embeddings tied to the input embedding, counted once")
    skipped_non_float: list[str] = Field(description="integer/bool buffers, not compared")
    nonfinite: int = Field(
        0, description="tensors holding NaN/inf, left out of every norm (see the result's nonfinite)"
    )


class WeightDiffResult(BaseModel):
    name: str
    checkpoint: str
    base: str
    mode: Literal["full", "lora"]
    step: int | None = Field(description="training step stored with the checkpoint, when it has one")
    n_layers: int
    rows: list[MatrixRow] = Field(description="per layer and matrix type")
    embeddings: list[TensorRow]
    norms: list[TensorRow] = Field(description="norm weights and biases (all 1-D tensors)")
    other: list[TensorRow] = Field(description="matrices outside the layers (pooler, heads)")
    top_changed: list[TopChange]
    nonfinite: list[NonFiniteTensor] = Field(default_factory=list, description="tensors with NaN/inf values")
    totals: Totals


class LayerCells(BaseModel):
    layer: int
    fro: dict[str, float | None] = Field(description="matrix type -> ‖ΔW‖_F (fused parts combined)")
    stable_rank: dict[str, float | None] = Field(description="matrix type -> the largest stable rank among its parts")


class TopCell(BaseModel):
    label: str
    rel_delta: float | None
    stable_rank: float | None


class EmbeddingCell(BaseModel):
    key: str
    rel_delta: float | None


class TotalsCell(BaseModel):
    tensors_compared: int
    unchanged: int
    rel_delta: float | None


class WeightDiffCard(BaseModel):
    """The weightDiff card: per-layer ‖ΔW‖ bars by matrix type, a stable-rank column, the top changes."""

    name: str
    mode: Literal["full", "lora"]
    step: int | None
    n_layers: int
    matrix_types: list[str]
    layers: list[LayerCells]
    top_changed: list[TopCell]
    embeddings: list[EmbeddingCell]
    norms_changed: int
    totals: TotalsCell
