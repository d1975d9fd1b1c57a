"""Inputs, outputs and cards of start_session, load_sae and session_status."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from session.catalog import CATALOG
from session.state import SaeRef


class StartSessionInput(BaseModel):
    id: str = Field(description="session id: letters, digits, '.', '_' or '-'; later calls default to this session")
    model: str = Field(
        description=f"catalog slug ({', '.join(CATALOG)}), Hugging Face id, or a local save_pretrained directory"
    )


class LoadSaeInput(BaseModel):
    sae: list[str] = Field(
        description="one or more SAEs, one per layer: local sae-lens directories (written by sae.save_model) or "
        "release/sae_id from sae-lens' registry, e.g. gpt2-small-res-jb/blocks.8.hook_resid_pre; each replaces the "
        "session's SAE at the same hook",
        json_schema_extra={"positional": True},
        min_length=1,
    )


class SessionStatusInput(BaseModel):
    pass


class LoadedSae(BaseModel):
    sae: str = Field(description="the SAE spec as stored (local directories made absolute)")
    source: str = Field(description="local or pretrained")
    hook: str = Field(description="TransformerLens hook the SAE reads, from its metadata")
    hook_assumed: bool = Field(
        description="the SAE's metadata names no hook, so `hook` is the default layer's resid_post, a guess"
    )
    layer: int
    d_in: int
    d_sae: int = Field(description="number of SAE features")
    architecture: str
    model_kwargs: dict[str, Any] = Field(
        description="how sae-lens loaded the model the SAE was trained on (HookedTransformer.from_pretrained "
        "kwargs, from its metadata)"
    )
    processing: str = Field(description="the weight processing analyses run the model with to match the SAE, and why")


class LoadSaeResult(BaseModel):
    session: str
    loaded: list[LoadedSae]
    replaced: list[str] = Field(description="SAEs the session had at the same hooks, no longer attached")
    attached: list[SaeRef] = Field(description="every SAE attached to the session now, in layer order")


class SessionCard(BaseModel):
    """The session card: what the session holds now."""

    id: str
    model: str
    kind: str
    d_model: int
    n_layers: int
    saes: list[SaeRef]
    calls: int
    model_in_memory: bool


class SaeCardRow(BaseModel):
    sae: str
    hook: str
    layer: int
    d_in: int
    d_sae: int
    architecture: str
    processing: str


class SaeCard(BaseModel):
    """The card of a load_sae call: the SAEs loaded, and what the session holds now."""

    loaded: list[SaeCardRow]
    replaced: list[str]
    attached: list[SaeRef]
