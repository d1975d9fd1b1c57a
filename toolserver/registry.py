"""One registration per tool: the MCP schema, CLI flags, JSON export and web card all derive from it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from session.state import Session

SCHEMA_VERSION = 1

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


class Reporter(Protocol):
    """What a running tool tells the outside world while it works.

    progress: a stage, `fraction` in [0, 1] and increasing, `message` saying what is happening
              (MCP progress notifications, the CLI's progress bar, tool.progress mirror events).
    emit:     a live event of its own family (e.g. `training.watch.signal`): mirrored as that event
              type on this call's card; `text`, when given, is printed as a line by the CLI.
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
    severity: Literal["info", "warn", "critical"] = "info"


class FollowUp(BaseModel):
    """A suggested next tool call, with arguments ready to pass."""

    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    why: str


class ToolError(Exception):
    """A failure the user can act on: one line of cause, one line of hint. Never a traceback."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


@dataclass
class Outcome(Generic[Out]):
    """What a tool's run function returns: the typed result plus what to read first and do next."""

    result: Out
    findings: list[Finding] = field(default_factory=list)
    follow_ups: list[FollowUp] = field(default_factory=list)


@dataclass(frozen=True)
class ToolSpec(Generic[In, Out]):
    """Everything the front doors need to know about one tool.

    name     MCP tool name (run_weight_diff)
    command  CLI command words (weight-diff, or "sae diff" for a sub-command)
    card     web card kind (weightDiff)
    summary  when to use it, its cost, what to call next (MCP description and CLI help)
    run      (session, args, reporter) -> Outcome; pure computation with I/O at the edges;
             session is None for tools with needs_session=False
    slim     result -> the small dict the web card shows (the full result is fetched by call_id)
    table    result -> readable text for people at a terminal
    needs_session  False for tools that work without a model (watch)
    session_arg    the input field naming the session the call creates (start_session), so its
                   events and history land in that session
    """

    name: str
    command: str
    card: str
    summary: str
    input_model: type[In]
    output_model: type[Out]
    run: Callable[["Session | None", In, Reporter], Outcome[Out]]
    slim: Callable[[Out], dict[str, Any]]
    table: Callable[[Out], str]
    needs_session: bool = True
    session_arg: str | None = None


_REGISTRY: dict[str, ToolSpec[Any, Any]] = {}


def register(spec: ToolSpec[Any, Any]) -> ToolSpec[Any, Any]:
    if spec.name in _REGISTRY:
        raise ValueError(f"tool {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def all_tools() -> list[ToolSpec[Any, Any]]:
    """Every registered analysis tool, importing the tool modules on first use."""
    import tools.index  # noqa: F401  (registers every tool module)

    return list(_REGISTRY.values())


def get_tool(name: str) -> ToolSpec[Any, Any]:
    for spec in all_tools():
        if spec.name == name or spec.command == name:
            return spec
    raise KeyError(name)


R = TypeVar("R", bound=BaseModel)


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


def envelope_model(spec: ToolSpec[Any, Any]) -> type[Envelope[Any]]:
    return Envelope[spec.output_model]  # type: ignore[name-defined]
