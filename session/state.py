"""Session state that outlives one process: what model and SAE are loaded, what was called.

Persisted as one JSON file per session under $TRAINSPECT_HOME/sessions, plus a `current` pointer,
so `trainspect session start` and a later `trainspect weight-diff` in another process share it.
Several processes (CLI calls, MCP server threads) may save one session at once: `Session.save`
merges under a file lock instead of overwriting (see there). Loaded models are not session state:
they live in the front door's model cache (session.model_cache).
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator

from toolserver.contract import ToolError, atomic_write, home, locked, now_iso

SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # matched whole (fullmatch: no trailing newline)
MAX_HISTORY = 1000  # call records kept per session, oldest dropped first: the file is re-read on every call
MAX_RUNS = 500  # model-diff score runs kept per session, oldest dropped first


class CallRecord(BaseModel):
    call_id: str
    tool: str
    created_at: str
    ok: bool
    name: str | None = None


class ScoreRun(BaseModel):
    """One model-diff's scores, as the regression tracker keeps them (session.runs, oldest first)."""

    id: str
    created_at: str
    name: str
    checkpoint: str
    scores: dict[str, dict[str, float | None]] = Field(
        description="category -> {consistency, suppression, robustness} of the checkpoint; 'all' for the aggregates"
    )


class SaeRef(BaseModel):
    """An SAE attached to the session: where it loads from and what it reads."""

    spec: str = Field(description="local sae-lens directory (absolute) or release/sae_id")
    hook: str = Field(description="TransformerLens hook it reads")
    layer: int
    d_sae: int | None = Field(None, description="number of features (None for sessions saved before it was recorded)")


class Session(BaseModel):
    id: str
    model: str = Field(description="the model spec as the user gave it (slug, HF id or directory)")
    model_source: str = Field(description="local directory or HF id the weights load from")
    kind: Literal["llm", "embedding"]
    saes: list[SaeRef] = Field(default_factory=list, description="SAEs attached, one per hook, in layer order")
    created_at: str = Field(default_factory=now_iso)
    history: list[CallRecord] = Field(
        default_factory=list, description=f"tool calls, oldest first; the last {MAX_HISTORY} are kept"
    )
    runs: list[ScoreRun] = Field(
        default_factory=list, description=f"model-diff scores per run, oldest first; the last {MAX_RUNS} are kept"
    )

    _as_read: dict[str, Any] | None = PrivateAttr(default=None)  # the file's content when last read or written

    @model_validator(mode="before")
    @classmethod
    def _one_sae_files(cls, data: Any) -> Any:
        """Session files written before several SAEs could be attached name one as sae, sae_hook, sae_layer."""
        if isinstance(data, dict) and "sae" in data:
            data = dict(data)
            spec, hook, layer = data.pop("sae"), data.pop("sae_hook", None), data.pop("sae_layer", None)
            if spec and hook is not None and layer is not None and "saes" not in data:
                data["saes"] = [{"spec": spec, "hook": hook, "layer": layer}]
        return data

    def attach(self, refs: list[SaeRef]) -> list[SaeRef]:
        """Attach SAEs, each replacing one already at its hook; returns the replaced ones."""
        hooks = {r.hook for r in refs}
        replaced = [r for r in self.saes if r.hook in hooks]
        self.saes = sorted([r for r in self.saes if r.hook not in hooks] + refs, key=lambda r: (r.layer, r.hook))
        return replaced

    def save(self) -> None:
        """Write the session, merged with whatever another process saved since this copy was read.

        Under an exclusive lock: call records are the file's plus the ones this copy added (the last
        MAX_HISTORY kept), and so are score runs when this copy was read from the file (a fresh session for
        another model starts without them); every other field takes this copy's value where this copy
        changed it, else the file's. So concurrent calls never lose each other's history or settings. This object is
        updated to what was written.
        """
        path = session_path(self.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        mine = self.model_dump(mode="json")
        with locked(path):
            merged = _merge(_read(path).model_dump(mode="json"), mine, self._as_read) if path.exists() else mine
            merged["history"] = merged["history"][-MAX_HISTORY:]
            merged["runs"] = merged["runs"][-MAX_RUNS:]
            saved = Session.model_validate(merged)
            atomic_write(path, saved.model_dump_json(indent=2))
        for name in Session.model_fields:
            setattr(self, name, getattr(saved, name))
        self._as_read = merged


def _merge(disk: dict[str, Any], mine: dict[str, Any], as_read: dict[str, Any] | None) -> dict[str, Any]:
    base = as_read or {}
    merged = {k: disk[k] if k in base and mine[k] == base[k] else v for k, v in mine.items()}
    known = {r["call_id"] for r in base.get("history", [])} | {r["call_id"] for r in disk["history"]}
    merged["history"] = disk["history"] + [r for r in mine["history"] if r["call_id"] not in known]
    if as_read is not None:
        disk_runs = disk.get("runs", [])
        seen = {r["id"] for r in base.get("runs", [])} | {r["id"] for r in disk_runs}
        merged["runs"] = disk_runs + [r for r in mine["runs"] if r["id"] not in seen]
    return merged


def session_path(session_id: str) -> Path:
    return home() / "sessions" / f"{check_id(session_id)}.json"  # checked: an id never names a path elsewhere


def check_id(session_id: str) -> str:
    """The one rule for session ids, wherever one arrives (flag, env, pointer file, MCP argument)."""
    if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
        raise ToolError(
            f"invalid session id {session_id!r}",
            "use letters, digits, '.', '_' or '-' (at most 128 characters)",
        )
    return session_id


def _read(path: Path) -> Session:
    try:
        session = Session.model_validate_json(path.read_text())
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ToolError(
            f"session file {path} is unreadable: {where + ': ' if where else ''}{first['msg']}",
            f"fix it, or run session start --id {path.stem} --model SPEC, which keeps it as {path.name}.<time>.corrupt",
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ToolError(f"session file {path} is unreadable: {e}", "check the file's permissions") from None
    session._as_read = session.model_dump(mode="json")
    return session


def load_session(session_id: str) -> Session:
    path = session_path(session_id)
    if not path.exists():
        raise ToolError(
            f"no session {session_id!r} in {path.parent}", "start one: trainspect session start --id ID --model SPEC"
        )
    return _read(path)


def set_aside(session_id: str) -> Path | None:
    """Rename an unreadable session file out of the way (kept, never overwritten); None when readable or absent."""
    path = session_path(session_id)
    if not path.exists():
        return None
    with locked(path):
        try:
            _read(path)
            return None
        except ToolError:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            kept = path.with_name(f"{path.name}.{stamp}.corrupt")
            os.replace(path, kept)
            return kept


def _pointer() -> Path:
    return home() / "current"


def set_current(session_id: str) -> None:
    """Point at the session; a pointer that is not a file (a directory in its place) is renamed aside first."""
    path = _pointer()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_file():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        os.replace(path, path.with_name(f"current.{stamp}.corrupt"))
    atomic_write(path, check_id(session_id))


def current_session(session_id: str | None = None) -> Session:
    """The named session, else $TRAINSPECT_SESSION, else the last one started."""
    sid = session_id or os.environ.get("TRAINSPECT_SESSION")
    if not sid:
        p = _pointer()
        if not p.exists():
            raise ToolError("no session started", "run: trainspect session start --id ID --model SPEC")
        hint = "run: trainspect session start --id ID --model SPEC, which rewrites it"
        try:
            sid = p.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            why = "a directory" if p.is_dir() else f"not text ({type(e).__name__})"
            raise ToolError(f"the current-session pointer {p} is unreadable: {why}", hint) from None
        if not SESSION_ID.fullmatch(sid):
            raise ToolError(f"the current-session pointer {p} names no valid session id ({sid[:40]!r})", hint)
    return load_session(check_id(sid))


def list_sessions() -> list[str]:
    d = home() / "sessions"
    return sorted(p.stem for p in d.glob("*.json")) if d.exists() else []


RECENT_CALLS = 5


class SessionStatus(BaseModel):
    id: str
    model: str = Field(description="the model spec as given")
    model_source: str = Field(description="local directory the weights load from")
    kind: str = Field(description="llm (causal LM) or embedding (encoder)")
    d_model: int
    n_layers: int
    default_layer: int = Field(description="layer analyses use when none is given (catalog, else the middle block)")
    saes: list[SaeRef] = Field(description="SAEs attached to the session, one per hook")
    created_at: str
    calls: int = Field(description=f"tool calls recorded in this session (the last {MAX_HISTORY} are kept)")
    recent_calls: list[CallRecord] = Field(description=f"the last {RECENT_CALLS} calls, oldest first")
    model_in_memory: bool = Field(description="the model is loaded in this process (MCP server) and reused")
    saes_in_memory: int = Field(description="how many of the session's SAEs this process holds")
    other_sessions: list[str] = Field(description="other session ids in this state directory")
