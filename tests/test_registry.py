"""One registration per tool: every registered tool is complete (lazy targets resolve, a renderer for its card,
a typed slim model), its follow-ups are calls an agent can make, and every field type reaches the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field
from tool_runs import follow_up_problems, run_every_tool

from toolserver.cli import build_parser
from toolserver.contract import FollowUp, Lazy, Outcome, ToolSpec
from toolserver.registry import all_tools, get_tool, live_families, mirror_contract

ROOT = Path(__file__).resolve().parents[1]
RENDERERS = ROOT / "web_mirror" / "static" / "cards"


def test_every_registration_is_complete() -> None:
    specs = all_tools()
    assert {"start_session", "load_sae", "session_status", "run_weight_diff", "watch"} <= {s.name for s in specs}
    for spec in specs:
        for part in (spec.run, spec.slim, spec.table):
            if isinstance(part, Lazy):
                assert callable(part.resolve()), f"{spec.name}: {part.target}"
        assert issubclass(spec.slim_model, BaseModel) and spec.slim_model is not BaseModel, spec.name
        assert (RENDERERS / f"{spec.card}.js").is_file(), f"{spec.name}: card {spec.card!r} has no renderer"
        assert "cost:" in spec.summary.lower(), f"{spec.name}: the summary must say what a call costs"
    for family in live_families():
        assert (RENDERERS / f"{family.card}.js").is_file(), (
            f"live family {family.prefix}: no renderer for {family.card}"
        )
    contract = mirror_contract()
    assert {s.card for s in specs} <= set(contract.cards)
    assert sorted(f.prefix for f in contract.families) == ["simulate", "training.watch"]
    build_parser(specs)  # every input model becomes flags


def test_lookup_by_name_or_command() -> None:
    assert get_tool("run_weight_diff") is get_tool("weight-diff")
    assert get_tool("session start").name == "start_session"
    with pytest.raises(KeyError):
        get_tool("run_nothing")


class _Out(BaseModel):
    x: int = 0


def _spec(input_model: type[BaseModel]) -> ToolSpec[Any, Any]:
    return ToolSpec(
        name="t",
        command="t",
        summary="-",
        card="t",
        input_model=input_model,
        output_model=_Out,
        slim_model=_Out,
        run=lambda c, a, r: Outcome(_Out()),
        slim=lambda r: r,
        table=str,
    )


def test_a_registration_refuses_a_field_no_front_door_can_pass() -> None:
    class Nested(BaseModel):
        rows: list[dict[str, int]] = Field(description="a list of tables: no CLI flag can say that")

    with pytest.raises(TypeError, match="tool t: input field 'rows'"):
        _spec(Nested)

    class Pairs(BaseModel):
        pairs: dict[int, list[str]] = Field(description="non-string keys")

    with pytest.raises(TypeError, match="input field 'pairs'"):
        _spec(Pairs)


def test_follow_up_checks_fail_on_unknown_tools_and_rejected_arguments() -> None:
    assert follow_up_problems(FollowUp(tool="run_nothing", args={}, why="-")) == ["run_nothing: no such tool"]
    assert follow_up_problems(
        FollowUp(tool="weight-diff", args={"checkpoint": "x"}, why="-")
    )  # a command, not the name
    assert follow_up_problems(FollowUp(tool="run_weight_diff", args={"checkpoint": "x", "top_k": 0}, why="-"))
    assert follow_up_problems(FollowUp(tool="run_weight_diff", args={}, why="pass a fine-tune"))  # checkpoint unnamed
    assert follow_up_problems(FollowUp(tool="run_weight_diff", args={}, why="pass checkpoint=PATH")) == []


def test_every_follow_up_of_every_tool_is_a_call_an_agent_can_make(tiny_gpt2: dict[str, Path], tmp_path: Path) -> None:
    runs = run_every_tool(tiny_gpt2, tmp_path)
    assert {spec.name for spec, _ in runs} == {s.name for s in all_tools()}  # every tool ran
    follow_ups = [fu for _, env in runs for fu in env.follow_ups]
    assert follow_ups  # the session tools suggest the next calls
    problems = [p for fu in follow_ups for p in follow_up_problems(fu)]
    assert problems == []
