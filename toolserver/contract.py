"""The contract every trainspect tool speaks, and the ground floor every layer stands on.

This module imports nothing of the project: `session`, `tools`, `toolserver` and `web_mirror` all build
on it, and import-linter holds it to that (pyproject.toml, tests/test_layers.py). It holds:

- a tool's registration (`ToolSpec`): its MCP name and CLI command, input and output models, its card
  (a kind and a typed slim model) and the live event families it emits (`LiveFamily`);
- what a tool returns (`Outcome`: result, `Finding`s, `FollowUp`s) and the `Envelope` every front door
  hands out (`SCHEMA_VERSION`);
- `ToolError`, the one-line failure, and `Reporter`, how a running tool reports progress and events;
- where state lives (`home()`), timestamps, the one atomic write and the one inter-process lock.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import os
import tempfile
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError

SCHEMA_VERSION = 1

Severity = Literal["info", "warn", "critical"]
SEVERITY_ORDER: tuple[Severity, ...] = ("critical", "warn", "info")  # most severe first, everywhere
SEVERITY_RANK: dict[str, int] = {s: i for i, s in enumerate(SEVERITY_ORDER)}

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


class ToolError(Exception):
    """A failure the user can act on: one line of cause, one line of hint. Never a traceback."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def first_line(e: BaseException) -> str:
    """An exception's first line (library messages can run to pages), or its type's name when it says nothing."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def validation_problems(e: ValidationError, limit: int = 5) -> str:
    """Pydantic's errors as one line, `field: what it expected` each — not its multi-line dump with docs URLs."""
    errors = e.errors()
    text = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}" for err in errors[:limit])
    return text + (f"; and {len(errors) - limit} more" if len(errors) > limit else "")


class Reporter(Protocol):
    """What a running tool tells the outside world while it works.

    progress: a stage, `fraction` in [0, 1] and increasing, `message` saying what is happening
              (MCP progress notifications, the CLI's progress bar, tool.progress mirror events).
    emit:     a live event of a family the tool declared (e.g. `training.watch.signal`): mirrored as that
              event type on this call's card; `text`, when given, is printed as a line by the CLI.
    """

    def progress(self, fraction: float, message: str) -> None: ...

    def emit(self, type: str, data: dict[str, Any], text: str | None = None) -> None: ...


class SilentReporter:
    """A Reporter that discards everything (library use, tests)."""

    def progress(self, fraction: float, message: str) -> None:
        pass

    def emit(self, type: str, data: dict[str, Any], text: str | None = None) -> None:
        pass


class Finding(BaseModel):
    """A ranked sentence-with-numbers an agent should read first."""

    text: str
    severity: Severity = "info"


class FollowUp(BaseModel):
    """A suggested next tool call, with arguments ready to pass (tests check both against the registry)."""

    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    why: str


@dataclass
class Outcome(Generic[Out]):
    """What a tool's run function returns: the typed result plus what to read first and do next."""

    result: Out
    findings: list[Finding] = field(default_factory=list)
    follow_ups: list[FollowUp] = field(default_factory=list)


class Envelope(BaseModel, Generic[R]):
    """Every tool result, as exported (--save), printed (--output json) and returned over MCP."""

    schema_version: Literal[1] = SCHEMA_VERSION
    tool: str
    call_id: str
    created_at: str = Field(description="ISO 8601 UTC time the call started")
    duration_s: float
    session: str | None
    inputs: dict[str, Any]
    result: R
    findings: list[Finding]
    follow_ups: list[FollowUp]
    truncated: dict[str, int] = Field(
        default_factory=dict,
        description="lists shortened for transport (MCP): dotted path -> full length; page the rest with "
        "get_result(call_id, section=path, offset)",
    )


class LiveFamily(BaseModel):
    """A family of live events a tool emits while it runs, `{prefix}.{suffix}`, and how the web mirror folds
    them into one bounded live-series card (watch's training steps; simulation's per-batch steps).

    An event `{prefix}.{point}` adds `data[point_key]` as a point (its `fields`, numbers only);
    `{prefix}.{marker}` records `data[marker_key]` and pins the kept point whose `x` equals the marker's;
    `{prefix}.{summary}` stores `data[summary_key]` and ends a stream that no tool call wraps. Any other
    suffix is kept as one of the card's latest raw events. The series keeps at most `max_points` points
    however long the stream: the stride doubles and the points off it go, never a pinned or the latest one.
    """

    prefix: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$", description="e.g. training.watch")
    card: str = Field(description="card kind of a stream that arrives without a tool call (a training script)")
    label_key: str = Field("run", description="data key naming the stream on its card")
    point: str = "step"
    point_key: str = "snapshot"
    fields: tuple[str, ...] = Field(description="numeric fields kept per point; the first is the x axis")
    marker: str = "signal"
    marker_key: str = "signal"
    summary: str = "summary"
    summary_key: str = "summary"
    max_points: int = Field(1000, ge=4)

    @property
    def x(self) -> str:
        return self.fields[0]

    def type(self, suffix: str) -> str:
        """The full event type of one of this family's events."""
        return f"{self.prefix}.{suffix}"

    def owns(self, event_type: str) -> bool:
        return event_type.startswith(self.prefix + ".") and len(event_type) > len(self.prefix) + 1


class MirrorContract(BaseModel):
    """What the web mirror must know of the registered tools, handed to it by the front door that starts it
    (it never imports a tool): the card kinds that have renderers and the live families to accept."""

    cards: list[str] = Field(default_factory=list, description="registered card kinds")
    families: list[LiveFamily] = Field(default_factory=list)
    severities: tuple[Severity, ...] = SEVERITY_ORDER


class Lazy:
    """A function named "package.module:attribute", imported on its first call.

    Registrations name their run/slim/table functions this way, so importing every registration (to
    build `trainspect --help`, the MCP tool list or the mirror's contract) loads no torch.
    """

    def __init__(self, target: str) -> None:
        module, sep, attr = target.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"lazy target {target!r} is not 'package.module:attribute'")
        self.target = target
        self._fn: Callable[..., Any] | None = None

    def resolve(self) -> Callable[..., Any]:
        if self._fn is None:
            module, _, attr = self.target.partition(":")
            self._fn = getattr(importlib.import_module(module), attr)
        return self._fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"lazy({self.target!r})"


def lazy(target: str) -> Lazy:
    return Lazy(target)


_SCALARS = (str, int, float, bool)


def front_door_type(annotation: Any) -> str:
    """How every front door passes a field of this type: 'scalar', 'literal', 'list' (of scalars), 'json' (a dict
    or model, given as JSON on the CLI). Anything else is a TypeError: a registration whose input the CLI cannot
    express is refused when it is made, not when a user first tries the flag."""
    inner = unwrap_optional(annotation)
    origin = get_origin(inner)
    if inner in _SCALARS or inner is Path:
        return "scalar"
    if origin is Literal and all(isinstance(a, _SCALARS) for a in get_args(inner)):
        return "literal"
    if origin in (list, tuple, set):
        args = [a for a in get_args(inner) if a is not Ellipsis]
        if len(args) == 1 and unwrap_optional(args[0]) in _SCALARS:
            return "list"
    if origin is dict:
        key, value = (get_args(inner) or (str, Any))[:2]
        if key is str and (value is Any or unwrap_optional(value) in _SCALARS):
            return "json"
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return "json"
    raise TypeError(f"unsupported front-door field type {annotation!r}")


def unwrap_optional(annotation: Any) -> Any:
    """`X | None` → X; anything else unchanged."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


@dataclass(frozen=True)
class ToolSpec(Generic[In, Out]):
    """Everything the front doors need to know about one tool: its one registration.

    name       MCP tool name (run_weight_diff)
    command    CLI command words (weight-diff, or "sae diff" for a sub-command)
    summary    when to use it, its cost, what to call next (MCP description and CLI help)
    card       web card kind (weightDiff): web_mirror/static/cards/<card>.js renders it
    run        (context, args, reporter) -> Outcome; context is session.context.ToolContext (the session, or
               None for tools with needs_session=False, and the process's model cache)
    slim       result -> an instance of slim_model: the small payload the web card draws (the full result is
               fetched by call_id)
    table      result -> readable text for people at a terminal
    needs_session  False for tools that work without a model (watch)
    session_arg    the input field naming the session the call creates (start_session), so its events and
                   history land in that session
    live       the live event families the tool emits (the mirror accepts exactly the declared ones)
    exit_status  result -> the CLI's exit code (a gate's fail is 2); None: 0 for every result
    distributed    the tool shards its work over torch.distributed ranks (session.distributed): under torchrun
                   the CLI runs it on every rank, rank 0 writing; any other tool refuses there
    """

    name: str
    command: str
    summary: str
    card: str
    input_model: type[In]
    output_model: type[Out]
    slim_model: type[BaseModel]
    run: Callable[[Any, In, Reporter], Outcome[Out]]
    slim: Callable[[Out], BaseModel]
    table: Callable[[Out], str]
    needs_session: bool = True
    session_arg: str | None = None
    live: tuple[LiveFamily, ...] = ()
    exit_status: Callable[[Out], int] | None = None
    distributed: bool = False

    def __post_init__(self) -> None:
        for name, f in self.input_model.model_fields.items():
            try:
                front_door_type(f.annotation)
            except TypeError as e:
                raise TypeError(f"tool {self.name}: input field {name!r}: {e}") from None
        if self.session_arg is not None and self.session_arg not in self.input_model.model_fields:
            raise TypeError(f"tool {self.name}: session_arg {self.session_arg!r} is not an input field")


def envelope_model(spec: ToolSpec[Any, Any]) -> type[Envelope[Any]]:
    return Envelope[spec.output_model]  # type: ignore[name-defined]


# ----- the ground floor: where state lives, and writing it safely ------------------------------------------


def home() -> Path:
    """trainspect's state directory: $TRAINSPECT_HOME, else ~/.trainspect."""
    return Path(os.environ.get("TRAINSPECT_HOME") or Path.home() / ".trainspect").expanduser().absolute()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def missing(path: Path) -> str:
    """Why a path that `exists()` denies is not there, for an error line: a symlink loop or a dangling
    symlink says so rather than "does not exist"."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 reports a loop this way
            return "is a symlink loop"
        except OSError as e:
            if e.errno == errno.ELOOP:
                return "is a symlink loop"
            return f"is a symlink to {os.readlink(path)}, which does not exist"
    return "does not exist"


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write-then-rename in the same directory, so a reader or a crash never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(
            fd, "wb" if isinstance(data, bytes) else "w", encoding=None if isinstance(data, bytes) else "utf-8"
        ) as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `.{name}.lock` beside `path`: processes and threads (flock locks per open file)
    take turns; released when the block ends, or by the OS when the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
