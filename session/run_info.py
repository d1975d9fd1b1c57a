"""How a result's models were run, as every result that ran a model states it (light: no torch, so tool
registrations can name it in their output models)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Backend = Literal["bridge", "transformers"]


class RunInfo(BaseModel):
    """How the models of a result were run (every result that ran a model carries it)."""

    device: str
    dtype: str
    backend: Backend = Field(
        description="bridge: TransformerLens TransformerBridge; transformers: the HF module itself"
    )
    adapter: Literal["none", "merged", "peft"] = Field(description="how a LoRA checkpoint was applied")
    processing: str = Field(description="weight processing the activations were read under")
