"""The runner wraps every tool call the same way, whichever front door it came through.

It validates arguments, resolves the session, gives the call an id, times it, forwards progress
and live events, mirrors `tool.*` events to the web mirror, stores the full result for
`get_result`, and records the call in the session history.

A call with `writer=False` (a torch.distributed rank other than 0, which runs the same tool on its share of the
work) does all of that except the writing: no stored result, no history record, no mirror events, no crash log
file (the traceback goes to stderr), so the ranks together leave exactly one call behind, rank 0's.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from session.context import ToolContext
from session.model_cache import ModelCache
from session.state import CallRecord, Session, current_session, load_session
from toolserver.contract import (
    Envelope,
    Outcome,
    ToolError,
    ToolSpec,
    atomic_write,
    first_line,
    home,
    now_iso,
    validation_problems,
)
from web_mirror.events import Event

log = logging.getLogger("trainspect")

DEFAULT_SESSION = "default"
ProgressSink = Callable[[float, str], None]
EmitSink = Callable[[str, dict[str, Any], "str | None"], None]


def results_dir() -> Path:
    return home() / "results"


def validate_args(spec: ToolSpec[Any, Any], args: dict[str, Any] | BaseModel) -> BaseModel:
    """Arguments → the tool's input model, with a one-line error naming the bad fields."""
    if isinstance(args, spec.input_model):
        return args
    raw = args.model_dump() if isinstance(args, BaseModel) else args
    try:
        return spec.input_model.model_validate(raw)
    except ValidationError as e:
        raise ToolError(f"invalid arguments for {spec.name}: {validation_problems(e)}") from None


class _Reporter:
    """Forwards a tool's progress and live events to the caller's sinks and to the mirror."""

    def __init__(self, call: _Call, on_progress: ProgressSink | None, on_emit: EmitSink | None) -> None:
        self._call = call
        self._on_progress = on_progress
        self._on_emit = on_emit
        self._last_sent = (-1.0, 0.0)  # (fraction, time) of the last mirrored progress event

    def progress(self, fraction: float, message: str) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        if self._on_progress:
            self._on_progress(fraction, message)
        last_fraction, last_time = self._last_sent
        now = time.monotonic()
        # throttle mirrored progress: a diff over thousands of tensors must not send thousands of events
        if fraction >= 1.0 or fraction - last_fraction >= 0.05 or now - last_time >= 0.5:
            self._last_sent = (fraction, now)
            self._call.send("tool.progress", {"fraction": fraction, "message": message})

    def emit(self, type: str, data: dict[str, Any], text: str | None = None) -> None:
        if not any(family.owns(type) for family in self._call.spec.live):
            raise TypeError(f"tool {self._call.spec.name} emitted {type!r}, outside the live families it declares")
        self._call.send(type, data)
        if self._on_emit:
            self._on_emit(type, data, text)


class _Call:
    def __init__(self, spec: ToolSpec[Any, Any], session_id: str, mirror: Any | None, call_id: str | None) -> None:
        self.spec = spec
        self.session_id = session_id
        self.call_id = call_id or uuid.uuid4().hex
        self.mirror = mirror

    def send(self, type: str, data: dict[str, Any]) -> None:
        if self.mirror is not None:
            self.mirror.send(Event(type=type, session=self.session_id, call_id=self.call_id, data=data))


def _resolve_session(spec: ToolSpec[Any, Any], session: Session | None, session_id: str | None) -> Session | None:
    if session is not None:
        return session
    if spec.needs_session:
        return current_session(session_id)
    try:
        return current_session(session_id)
    except ToolError:
        return None


def invoke(
    spec: ToolSpec[Any, Any],
    args: dict[str, Any] | BaseModel,
    *,
    session: Session | None = None,
    session_id: str | None = None,
    models: ModelCache | None = None,
    mirror: Any | None = None,
    on_progress: ProgressSink | None = None,
    on_emit: EmitSink | None = None,
    call_id: str | None = None,
    writer: bool = True,
) -> Envelope[Any]:
    """Run one tool call end to end. Raises ToolError (one line + hint) on any failure.

    `models` is the calling front door's model cache (the MCP server's lives as long as the server); without
    one the call gets a cache of its own, dropped when it returns. `writer=False`: see the module doc.
    """
    inputs = validate_args(spec, args)
    if spec.session_arg:
        session_id = getattr(inputs, spec.session_arg)
    sess = _resolve_session(spec, session, session_id)
    call = _Call(spec, session_id or (sess.id if sess else DEFAULT_SESSION), mirror if writer else None, call_id)
    created_at = now_iso()
    call.send("tool.start", {"tool": spec.name, "card": spec.card, "args": inputs.model_dump(mode="json")})
    reporter = _Reporter(call, on_progress, on_emit)
    started = time.perf_counter()
    try:
        outcome: Outcome[Any] = spec.run(ToolContext(sess, models or ModelCache()), inputs, reporter)
        slim = spec.slim(outcome.result)
        if not isinstance(slim, spec.slim_model):
            raise TypeError(f"{spec.name}'s slim() returned {type(slim).__name__}, not its {spec.slim_model.__name__}")
        envelope = Envelope[spec.output_model](  # type: ignore[name-defined]
            tool=spec.name,
            call_id=call.call_id,
            created_at=created_at,
            duration_s=round(time.perf_counter() - started, 4),
            session=session_id if spec.session_arg else (sess.id if sess else None),
            inputs=inputs.model_dump(mode="json"),
            result=outcome.result,
            findings=outcome.findings,
            follow_ups=outcome.follow_ups,
        )
        full = envelope.model_dump(mode="json")
        if writer:
            _store_result(call.call_id, full)
    except ToolError as e:
        _fail(call, spec, sess if writer else None, created_at, started, e)
        raise
    except Exception as e:  # a bug, not bad input: one line for the user, the traceback in the log file
        where = f"details in {_log_crash(call)}" if writer else _crash_to_stderr()
        err = ToolError(f"{spec.name} failed unexpectedly: {type(e).__name__}: {first_line(e)}", where)
        _fail(call, spec, sess if writer else None, created_at, started, err)
        raise err from None
    call.send(
        "tool.result",
        {
            "tool": spec.name,
            "card": spec.card,
            "duration_s": envelope.duration_s,
            "slim": slim.model_dump(mode="json"),
            "findings": [f.model_dump() for f in outcome.findings],
            "result": full,
        },
    )
    _record(
        (sess or _created_session(spec, session_id)) if writer else None,
        spec,
        call.call_id,
        created_at,
        ok=True,
        name=getattr(inputs, "name", None),
    )
    return envelope


def _fail(
    call: _Call, spec: ToolSpec[Any, Any], sess: Session | None, created_at: str, started: float, err: ToolError
) -> None:
    call.send(
        "tool.error",
        {
            "tool": spec.name,
            "card": spec.card,
            "duration_s": round(time.perf_counter() - started, 4),
            "error": err.message,
            "hint": err.hint,
        },
    )
    _record(sess, spec, call.call_id, created_at, ok=False)


def _record(
    sess: Session | None, spec: ToolSpec[Any, Any], call_id: str, created_at: str, *, ok: bool, name: Any = None
) -> None:
    """Append to the session history, re-reading the file first so concurrent callers don't clobber it."""
    if sess is None:
        return
    try:
        _append(sess, spec, call_id, created_at, ok=ok, name=name)
    except (
        OSError,
        ToolError,
    ) as e:  # the call itself is done and stored: a history it cannot write is said, not fatal
        log.warning("trainspect: call %s not recorded in session %s's history (%s)", call_id, sess.id, e)


def _append(sess: Session, spec: ToolSpec[Any, Any], call_id: str, created_at: str, *, ok: bool, name: Any) -> None:
    try:
        fresh = load_session(sess.id)
    except ToolError:
        return  # the session was removed (or never persisted) meanwhile: nothing to record into
    record = CallRecord(
        call_id=call_id, tool=spec.name, created_at=created_at, ok=ok, name=name if isinstance(name, str) else None
    )
    fresh.history.append(record)
    fresh.save()
    sess.history = fresh.history


def _created_session(spec: ToolSpec[Any, Any], session_id: str | None) -> Session | None:
    if not (spec.session_arg and session_id):
        return None
    try:
        return load_session(session_id)
    except ToolError:
        return None


def _store_result(call_id: str, full: dict[str, Any]) -> None:
    d = results_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        atomic_write(d / f"{call_id}.json", json.dumps(full))
    except OSError as e:
        raise ToolError(
            f"cannot store the result in {d}: {e.strerror or e}", "check $TRAINSPECT_HOME is writable"
        ) from None


def load_result(call_id: str) -> dict[str, Any]:
    if not call_id.isalnum():
        raise ToolError(f"invalid call_id {call_id!r}", "call ids are the hex strings returned by tool calls")
    path = results_dir() / f"{call_id}.json"
    if not path.exists():
        raise ToolError(f"no stored result for call {call_id}", f"results live in {results_dir()}")
    return json.loads(path.read_text())


def _log_crash(call: _Call) -> Path:
    path = home() / "logs" / f"{call.call_id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(traceback.format_exc())
    return path


def _crash_to_stderr() -> str:
    """A non-writing call's crash: the traceback on stderr instead of a log file."""
    traceback.print_exc(file=sys.stderr)
    return "the traceback is on stderr"
