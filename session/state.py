"""Session state that outlives one process: what model and SAE are loaded, what was called.

Persisted as one JSON file per session under $TRAINSPECT_HOME/sessions, plus a `current` pointer,
so `trainspect session start` and a later `trainspect weight-diff` in another process share it.
Loaded models live only in memory (`Session.cache`), for the MCP server's lifetime.
"""
from __future__ import annotations

import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from toolserver.registry import ToolError

SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def home() -> Path:
    return Path(os.environ.get("TRAINSPECT_HOME") or Path.home() / ".trainspect")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CallRecord(BaseModel):
    call_id: str
    tool: str
    created_at: str
    ok: bool
    name: str | None = None


class Session(BaseModel):
    id: str
    model: str = Field(description="the model spec as the user gave it (slug, HF id or directory)")
    model_source: str = Field(description="local directory or HF id the weights load from")
    kind: Literal["llm", "embedding"]
    sae: str | None = None
    sae_hook: str | None = None
    sae_layer: int | None = None
    created_at: str = Field(default_factory=now_iso)
    history: list[CallRecord] = Field(default_factory=list)
    regressions: dict[str, list[float]] = Field(default_factory=dict)

    _cache: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def cache(self) -> dict[str, Any]:
        """Loaded models/SAEs for this process only; never persisted."""
        return self._cache

    def save(self) -> None:
        path = session_path(self.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        # write-then-rename so a crash never leaves a half-written session behind
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{self.id}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(self.model_dump_json(indent=2))
        os.replace(tmp, path)


def session_path(session_id: str) -> Path:
    return home() / "sessions" / f"{session_id}.json"


def check_id(session_id: str) -> str:
    if not SESSION_ID.match(session_id):
        raise ToolError(
            f"invalid session id {session_id!r}",
            "use letters, digits, '.', '_' or '-' (at most 128 characters)",
        )
    return session_id


def load_session(session_id: str) -> Session:
    path = session_path(check_id(session_id))
    if not path.exists():
        raise ToolError(f"no session {session_id!r} in {path.parent}", "start one: trainspect session start --id ID --model SPEC")
    try:
        return Session.model_validate_json(path.read_text())
    except (ValidationError, ValueError) as e:
        raise ToolError(f"session file {path} is unreadable: {str(e).splitlines()[0]}", "start the session again") from None


def set_current(session_id: str) -> None:
    p = home() / "current"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(session_id)


def current_session(session_id: str | None = None) -> Session:
    """The named session, else $TRAINSPECT_SESSION, else the last one started."""
    sid = session_id or os.environ.get("TRAINSPECT_SESSION")
    if not sid:
        p = home() / "current"
        if not p.exists():
            raise ToolError("no session started", "run: trainspect session start --id ID --model SPEC")
        sid = p.read_text().strip()
    return load_session(sid)


def list_sessions() -> list[str]:
    d = home() / "sessions"
    return sorted(p.stem for p in d.glob("*.json")) if d.exists() else []
