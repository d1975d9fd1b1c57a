"""MCP through the SDK's real client, over stdio and over streamable HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import jsonschema
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from web_fixtures import free_port

BIN = Path(sys.executable).parent / "trainspect"
EXPECTED = {
    "start_session",
    "load_sae",
    "session_status",
    "run_weight_diff",
    "watch",
    "run_residual_drift",
    "run_sae_diff",
    "run_sae_train",
    "run_sae_align",
    "run_merge_analysis",
    "run_trajectory_analysis",
    "run_analysis_view",
    "run_model_diff",
    "get_regressions",
    "run_simulation",
    "compare_simulations",
    "start_tool",
    "get_result",
}


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "TRAINSPECT_HOME": str(home), "TRAINSPECT_MIRROR_URL": "", "HF_HUB_OFFLINE": "1"}


async def _exercise(client: Client, models: dict[str, Path]) -> None:
    listed = {t.name: t for t in (await client.list_tools()).tools}
    assert EXPECTED <= set(listed)
    for tool in listed.values():
        assert tool.description and tool.output_schema, tool.name

    started = await client.call_tool("start_session", {"id": "mcp-run", "model": str(models["base"])})
    assert not started.is_error, started.content

    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, message))

    result = await client.call_tool(
        "run_weight_diff", {"checkpoint": str(models["full"]), "name": "ft"}, progress_callback=on_progress
    )
    assert not result.is_error, result.content
    structured: dict[str, Any] = result.structured_content or {}
    jsonschema.validate(structured, listed["run_weight_diff"].output_schema)
    assert structured["tool"] == "run_weight_diff" and structured["session"] == "mcp-run"
    assert structured["findings"] and structured["result"]["rows"] and structured["truncated"] == {}
    assert "Findings:" in result.content[0].text and "layer" in result.content[0].text
    values = [v for v, _ in progress]
    assert values and values == sorted(values)

    page = await client.call_tool(
        "get_result", {"call_id": structured["call_id"], "section": "result.rows", "limit": 2}
    )
    assert page.structured_content["total"] == len(structured["result"]["rows"])
    assert len(page.structured_content["data"]) == 2

    bad = await client.call_tool("run_weight_diff", {"checkpoint": "/does/not/exist.pt"})
    assert bad.is_error and "/does/not/exist.pt" in bad.content[0].text

    wrong = {"checkpoint": 3, "top_k": "many"}  # both front doors: one line naming each field and what it expected
    direct = await client.call_tool("run_weight_diff", wrong)
    started_bad = await client.call_tool("start_tool", {"tool": "run_weight_diff", "args": wrong})
    for answer in (direct, started_bad):
        text = answer.content[0].text
        assert answer.is_error and "\n" not in text and "pydantic" not in text, text
        assert "invalid arguments for run_weight_diff: checkpoint: Input should be a valid string; top_k: " in text

    job = await client.call_tool("start_tool", {"tool": "run_weight_diff", "args": {"checkpoint": str(models["lora"])}})
    call_id = job.structured_content["call_id"]
    for _ in range(600):
        polled = (await client.call_tool("get_result", {"call_id": call_id})).structured_content
        if polled["status"] != "running":
            break
        await anyio.sleep(0.1)
    assert polled["status"] == "done", polled
    assert polled["data"]["result"]["mode"] == "lora"


def test_stdio(tiny_gpt2: dict[str, Path], isolated_home: Path) -> None:
    params = StdioServerParameters(command=str(BIN), args=["mcp", "--no-mirror"], env=_env(isolated_home))

    async def main() -> None:
        async with Client(params, read_timeout_seconds=120) as client:
            await _exercise(client, tiny_gpt2)

    anyio.run(main)


def test_streamable_http(tiny_gpt2: dict[str, Path], isolated_home: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN), "mcp", "--http", "--port", str(port), "--no-mirror"],
        env=_env(isolated_home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.2)

        async def main() -> None:
            async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=120) as client:
                await _exercise(client, tiny_gpt2)

        anyio.run(main)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_http_refuses_public_bind(isolated_home: Path) -> None:
    proc = subprocess.run(
        [str(BIN), "mcp", "--http", "--host", "0.0.0.0"],
        env=_env(isolated_home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "refusing to serve MCP on 0.0.0.0" in proc.stderr


def test_long_lists_are_cut_with_their_paths_recorded() -> None:
    from pydantic import BaseModel

    from toolserver.contract import Envelope, Finding, ToolSpec
    from toolserver.mcp_server import compact_result

    class Out(BaseModel):
        rows: list[dict[str, int]]
        nested: dict[str, list[int]]

    spec = ToolSpec(
        name="t",
        command="t",
        card="t",
        summary="s",
        input_model=BaseModel,
        output_model=Out,
        slim_model=BaseModel,
        run=lambda *a: None,
        slim=lambda r: BaseModel(),
        table=lambda r: f"{len(r.rows)} rows",
    )
    env = Envelope[Out](
        tool="t",
        call_id="c",
        created_at="now",
        duration_s=0.1,
        session=None,
        inputs={},
        result=Out(rows=[{"i": i} for i in range(120)], nested={"xs": list(range(7))}),
        findings=[Finding(text="f")],
        follow_ups=[],
    )
    out = compact_result(spec, env, limit=5)
    assert out.structured_content["truncated"] == {"result.rows": 120, "result.nested.xs": 7}
    assert out.structured_content["result"]["rows"] == [{"i": i} for i in range(5)]
    assert "120 rows" in out.content[0].text and "result.rows (120 items)" in out.content[0].text
    Envelope[Out].model_validate(out.structured_content)


def test_sae_diff_and_residual_drift_over_stdio_stay_small_with_a_16k_feature_sae(
    tiny_gpt2: dict[str, Path], isolated_home: Path, tmp_path: Path
) -> None:
    import json

    from session_fixtures import build_sae

    sae = build_sae(tmp_path / "sae-16k", d_sae=16_384)
    params = StdioServerParameters(command=str(BIN), args=["mcp", "--no-mirror"], env=_env(isolated_home))

    async def main() -> None:
        async with Client(params, read_timeout_seconds=300) as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
            assert not (
                await client.call_tool("start_session", {"id": "big", "model": str(tiny_gpt2["base"])})
            ).is_error
            assert not (await client.call_tool("load_sae", {"sae": [str(sae)]})).is_error
            diff = await client.call_tool("run_sae_diff", {"checkpoint": str(tiny_gpt2["full"])})
            assert not diff.is_error, diff.content
            structured = diff.structured_content or {}
            jsonschema.validate(structured, listed["run_sae_diff"].output_schema)
            size = len(json.dumps(structured)) + sum(len(c.text) for c in diff.content)
            assert size < 100_000, size  # an MCP client may refuse ~25k tokens
            layer = structured["result"]["layers"][0]
            assert layer["d_sae"] == 16_384 and len(layer["top"]) == 20
            assert structured["truncated"]["result.layers.0.columns.tuned_mean"] == 16_384
            page = await client.call_tool(
                "get_result",
                {
                    "call_id": structured["call_id"],
                    "limit": 200,
                    "offset": 16_300,
                    "section": "result.layers.0.columns.tuned_mean",
                },
            )
            assert page.structured_content["total"] == 16_384 and len(page.structured_content["data"]) == 84
            drift = await client.call_tool("run_residual_drift", {"checkpoint": str(tiny_gpt2["lora"])})
            assert not drift.is_error, drift.content
            jsonschema.validate(drift.structured_content, listed["run_residual_drift"].output_schema)
            assert [d["layer"] for d in drift.structured_content["result"]["layers"]] == ["embed", 0, 1]

    anyio.run(main)


def test_a_crash_outside_the_runner_ends_a_started_call_with_its_cause(isolated_home: Path, monkeypatch: Any) -> None:
    import toolserver.mcp_server as mcp_server

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mcp_server, "invoke", crash)

    async def main() -> None:
        async with Client(mcp_server.build_server()) as client:
            direct = await client.call_tool("session_status", {})
            assert direct.is_error and "failed unexpectedly: OSError" in direct.content[0].text
            assert "No space left on device" in direct.content[0].text
            job = await client.call_tool("start_tool", {"tool": "session_status", "args": {}})
            call_id = job.structured_content["call_id"]
            with anyio.fail_after(10):  # a job that stays "running" fails the test here
                while (polled := (await client.call_tool("get_result", {"call_id": call_id})).structured_content)[
                    "status"
                ] == "running":
                    await anyio.sleep(0.05)
            assert polled["status"] == "error" and "No space left on device" in polled["message"]

    anyio.run(main)
