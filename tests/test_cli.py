"""The CLI as a user runs it: separate processes sharing a session, tables, JSON, exports, one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from toolserver.cli import add_model_arguments
from toolserver.contract import front_door_type

BIN = Path(sys.executable).parent / "trainspect"


def trainspect(*args: str, home: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRAINSPECT_HOME": str(home), "TRAINSPECT_MIRROR_URL": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(BIN), *args], capture_output=True, text=True, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"trainspect {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_session_then_weight_diff_in_separate_processes(
    tiny_gpt2: dict[str, Path], isolated_home: Path, tmp_path: Path
) -> None:
    trainspect("session", "start", "--id", "my-run", "--model", str(tiny_gpt2["base"]), home=isolated_home)
    status = trainspect("session", "status", "--output", "json", home=isolated_home)
    assert json.loads(status.stdout)["session"] == "my-run"

    out = tmp_path / "export" / "diff.json"
    table = trainspect(
        "weight-diff", "--checkpoint", str(tiny_gpt2["full"]), "--name", "ft", "--save", str(out), home=isolated_home
    )
    assert "call_id" in table.stdout and "Findings" in table.stdout
    exported = json.loads(out.read_text())
    assert exported["schema_version"] == 1 and exported["tool"] == "run_weight_diff"
    assert exported["session"] == "my-run" and exported["inputs"]["name"] == "ft"

    as_json = json.loads(
        trainspect("weight-diff", "--checkpoint", str(tiny_gpt2["lora"]), "--output", "json", home=isolated_home).stdout
    )
    assert as_json["result"]["mode"] == "lora"
    history = json.loads(trainspect("session", "status", "--output", "json", home=isolated_home).stdout)
    assert history["result"]["calls"] >= 3


def test_errors_are_one_line(tiny_gpt2: dict[str, Path], isolated_home: Path, tmp_path: Path) -> None:
    assert_one_line_error(
        trainspect("weight-diff", "--checkpoint", "x.pt", home=isolated_home, check=False), "no session"
    )
    trainspect("session", "start", "--id", "r", "--model", str(tiny_gpt2["base"]), home=isolated_home)
    missing = tmp_path / "nope.safetensors"
    assert_one_line_error(
        trainspect("weight-diff", "--checkpoint", str(missing), home=isolated_home, check=False), str(missing)
    )
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes((tiny_gpt2["base"] / "model.safetensors").read_bytes()[:500])
    assert_one_line_error(
        trainspect("weight-diff", "--checkpoint", str(truncated), home=isolated_home, check=False), str(truncated)
    )
    assert_one_line_error(
        trainspect("session", "start", "--id", "../evil", "--model", "gpt2", home=isolated_home, check=False),
        "session id",
    )


class Every(BaseModel):
    spec: str = Field(description="positional", json_schema_extra={"positional": True})
    path: str = Field(description="a file")
    where: Path | None = Field(None, description="a directory")
    n: int = Field(3, description="a count")
    x: float = Field(0.5, description="a ratio")
    follow: bool = Field(False, description="a switch")
    mode: Literal["a", "b"] = Field("a", description="a choice")
    width: Literal[8, 16] = Field(8, description="a numeric choice")
    layers: list[int] | None = Field(None, description="numbers")
    names: list[str] = Field(default_factory=list, description="words")
    labels: dict[str, str] = Field(default_factory=dict, description="feature -> label")
    weights: dict[str, float] | None = Field(None, description="name -> weight")


def test_the_cli_passes_every_field_type_the_registrations_accept() -> None:
    assert {front_door_type(f.annotation) for f in Every.model_fields.values()} == {"scalar", "literal", "list", "json"}
    p = argparse.ArgumentParser()
    add_model_arguments(p, Every)
    argv = [
        "S",
        "--path",
        "f",
        "--where",
        "/tmp",
        "--n",
        "7",
        "--x",
        "0.25",
        "--follow",
        "--mode",
        "b",
        "--width",
        "16",
        "--layers",
        "1",
        "2",
        "--names",
        "a",
        "b",
        "--labels",
        '{"3": "negation"}',
        "--weights",
        '{"w": 2.5}',
    ]
    got = Every.model_validate(vars(p.parse_args(argv)))
    assert got == Every(
        spec="S",
        path="f",
        where=Path("/tmp"),
        n=7,
        x=0.25,
        follow=True,
        mode="b",
        width=16,
        layers=[1, 2],
        names=["a", "b"],
        labels={"3": "negation"},
        weights={"w": 2.5},
    )
    assert Every.model_validate(vars(p.parse_args(["S", "--path", "f"]))) == Every(spec="S", path="f")  # model defaults
    for bad in (
        ["S", "--path", "f", "--mode", "c"],
        ["S", "--path", "f", "--width", "12"],
        ["S", "--path", "f", "--labels", "{x"],
    ):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
