"""Inputs, outputs and cards of start_session, load_sae and session_status."""

from __future__ import annotations

from pydantic import BaseModel, Field

from session.catalog import CATALOG
from session.state import SaeRef


class StartSessionInput(BaseModel):
    id: str = Field(description="session id: letters, digits, '.', '_' or '-'; later calls default to this session")
    model: str = Field(
        description=f"catalog slug ({', '.join(CATALOG)}), Hugging Face id, or a local save_pretrained directory"
    )


class SessionStatusInput(BaseModel):
    pass


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
