"""The runner: ids, events, stored results, history and one-line errors, with a recording mirror."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from session.state import Session, load_session
from toolserver.contract import Finding, LiveFamily, Outcome, ToolError, ToolSpec
from toolserver.runner import invoke, load_result
from web_mirror.events import Event


class EchoIn(BaseModel):
    text: str = Field(description="text to echo")
    times: int = Field(2, ge=1, description="repetitions")
    name: str | None = Field(None, description="label")


class EchoOut(BaseModel):
    echoed: list[str]


class EchoCard(BaseModel):
    n: int


ECHO_EVENTS = LiveFamily(prefix="echo.stream", card="echo", fields=("step",))


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def send(self, event: Event) -> None:
        self.events.append(event)


def _run(session: Session | None, args: EchoIn, reporter: Any) -> Outcome[EchoOut]:
    if args.text == "boom":
        raise ToolError("checkpoint /x/y.pt is truncated", "re-save it")
    if args.text == "bug":
        raise ZeroDivisionError("division by zero")
    if args.text == "stray":
        reporter.emit("training.watch.signal", {})  # a family it never declared
    for i in range(200):
        reporter.progress(i / 200, f"step {i}")
    reporter.emit("echo.stream.signal", {"run": "r", "signal": {"type": "loss_plateau"}}, text="plateau at 5")
    return Outcome(EchoOut(echoed=[args.text] * args.times), [Finding(text=f"echoed {args.times}×")])


ECHO = ToolSpec(
    name="echo",
    command="echo",
    card="echo",
    summary="Echo text. Cheap.",
    input_model=EchoIn,
    output_model=EchoOut,
    slim_model=EchoCard,
    run=_run,
    slim=lambda r: EchoCard(n=len(r.echoed)),
    table=lambda r: " ".join(r.echoed),
    live=(ECHO_EVENTS,),
)


@pytest.fixture
def session(tmp_path: Path) -> Session:
    s = Session(id="run-1", model="tiny", model_source=str(tmp_path), kind="llm")
    s.save()
    return s


def test_events_result_and_history(session: Session) -> None:
    mirror, progress, lines = Recorder(), [], []
    env = invoke(
        ECHO,
        {"text": "hi", "times": 3, "name": "lbl"},
        session=session,
        mirror=mirror,
        on_progress=lambda f, m: progress.append(f),
        on_emit=lambda t, d, text: lines.append(text),
    )
    assert env.result.echoed == ["hi"] * 3 and env.schema_version == 1 and env.session == "run-1"
    types = [e.type for e in mirror.events]
    assert types[0] == "tool.start" and types[-1] == "tool.result"
    assert "echo.stream.signal" in types
    # 200 progress reports are throttled to a handful of mirrored events, but every one reaches the caller
    assert len(progress) == 200 and 2 <= types.count("tool.progress") <= 25
    assert {e.call_id for e in mirror.events} == {env.call_id}
    result_event = mirror.events[-1]
    assert result_event.data["slim"] == {"n": 3} and result_event.data["result"]["call_id"] == env.call_id
    assert lines == ["plateau at 5"]
    assert load_result(env.call_id)["result"]["echoed"] == ["hi"] * 3
    history = load_session("run-1").history
    assert [(h.tool, h.ok, h.name) for h in history] == [("echo", True, "lbl")]


def test_tool_error_is_one_line_and_recorded(session: Session) -> None:
    mirror = Recorder()
    with pytest.raises(ToolError, match="truncated"):
        invoke(ECHO, {"text": "boom"}, session=session, mirror=mirror)
    assert mirror.events[-1].type == "tool.error"
    assert mirror.events[-1].data["error"] == "checkpoint /x/y.pt is truncated"
    assert [h.ok for h in load_session("run-1").history] == [False]


def test_unexpected_exception_becomes_tool_error_with_log(session: Session) -> None:
    with pytest.raises(ToolError) as info:
        invoke(ECHO, {"text": "bug"}, session=session)
    assert "ZeroDivisionError" in info.value.message and "\n" not in str(info.value)
    log = Path(info.value.hint.split("details in ")[1])
    assert "Traceback" in log.read_text()


def test_events_outside_the_declared_families_and_untyped_slims_are_bugs(session: Session) -> None:
    with pytest.raises(ToolError, match="outside the live families it declares"):
        invoke(ECHO, {"text": "stray"}, session=session)
    untyped = ToolSpec(
        name="echo2",
        command="echo2",
        card="echo",
        summary="-",
        input_model=EchoIn,
        output_model=EchoOut,
        slim_model=EchoCard,
        run=_run,
        slim=lambda r: {"n": 1},
        table=str,
        live=(ECHO_EVENTS,),
    )
    with pytest.raises(ToolError, match="slim\\(\\) returned dict, not its EchoCard"):
        invoke(untyped, {"text": "x"}, session=session)


def test_invalid_arguments_name_the_field(session: Session) -> None:
    with pytest.raises(ToolError, match=r"times: Input should be greater than or equal to 1"):
        invoke(ECHO, {"text": "x", "times": 0}, session=session)
    with pytest.raises(ToolError, match=r"text: Field required"):
        invoke(ECHO, {}, session=session)


def test_needs_session_without_one() -> None:
    with pytest.raises(ToolError, match="no session started"):
        invoke(ECHO, {"text": "x"})


def test_load_result_rejects_path_tricks() -> None:
    with pytest.raises(ToolError, match="invalid call_id"):
        load_result("../../etc/passwd")
