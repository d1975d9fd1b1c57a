"""The watch tool: since_last cursors, follow mode against a live writer process, live events, the
card payload and terminal table, the CLI and MCP front doors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest
from mcp import Client
from watch_fixtures import ATTN, MLP, RecordingReporter, steps, watch, write_jsonl

from session.context import ToolContext
from tools.watch import SPEC
from tools.watch.models import WatchInput, WatchResult
from tools.watch.run import run
from toolserver.contract import SilentReporter
from toolserver.runner import invoke

BIN = Path(sys.executable).parent / "trainspect"


def spiky(n: int, start: int = 1, spikes: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    return steps(n, start=start, max_grad=lambda i: 10.0 if i in spikes else 1.0)


def append(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


# ----- since_last -------------------------------------------------------------------------------
def test_since_last_returns_only_what_is_new(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "run" / "metrics.jsonl", spiky(40, spikes=(31,)))
    first = watch(path, since_last=True)
    assert [(s.type, s.step) for s in first.signals] == [("gradient_spike", 31)] and not first.since_last
    append(path, spiky(40, start=41, spikes=(45, 70)))  # 45 is inside the cooldown of 31
    second = watch(path, since_last=True)
    assert second.since_last and second.new_steps == 40
    assert [(s.type, s.step) for s in second.signals] == [("gradient_spike", 70)]
    assert second.summary.steps_seen == 80 and second.summary.signals_by_type == {"gradient_spike": 2}
    assert second.series.step[-1] == 80
    third = watch(path, since_last=True)
    assert third.new_steps == 0 and third.signals == [] and third.summary.steps_seen == 80


def test_since_last_survives_a_half_written_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", spiky(30))
    with open(path, "a") as f:
        f.write('{"step": 31, "loss": 2.5, "maxG')
    assert watch(path, since_last=True).summary.steps_seen == 30
    with open(path, "a") as f:
        f.write('rad": 10.0}\n')
    again = watch(path, since_last=True)
    assert [(s.type, s.step) for s in again.signals] == [("gradient_spike", 31)] and again.summary.bad_lines == 0


def test_since_last_on_a_run_that_has_not_logged_yet(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "lo')  # the first line is still being written
    early = watch(path, since_last=True)
    assert early.new_steps == 0 and early.signals == [] and early.summary.bad_lines == 0
    with open(path, "a") as f:
        f.write('ss": 2.0}\n')
    assert watch(path, since_last=True).summary.steps_seen == 1


def test_full_replay_ignores_but_refreshes_the_cursor(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", spiky(40, spikes=(31,)))
    watch(path, since_last=True)
    assert [s.step for s in watch(path).signals] == [31]  # a plain call always reads everything
    assert watch(path, since_last=True).new_steps == 0


@pytest.mark.parametrize(
    "change, note",
    [
        ("replace", "replaced or truncated"),
        ("thresholds", "thresholds changed"),
    ],
)
def test_since_last_starts_over_when_the_cursor_no_longer_applies(tmp_path: Path, change: str, note: str) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", spiky(40, spikes=(31,)))
    watch(path, since_last=True)
    kw: dict[str, Any] = {}
    if change == "replace":
        write_jsonl(path, spiky(35, spikes=(25,)))
    else:
        kw["spike_ratio"] = 4.0
    again = watch(path, since_last=True, **kw)
    assert not again.since_last and any(note in n for n in again.notes)
    assert again.signals and again.summary.steps_seen == again.new_steps


# ----- follow mode against a live writer --------------------------------------------------------
WRITER = textwrap.dedent("""
    import json, sys, time
    path, n, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    with open(path, "a") as f:
        for i in range(1, n + 1):
            row = {"step": i, "loss": 3.0 + 0.5 * (-1) ** i, "maxGrad": 30.0 if i == 25 else 1.0,
                   "gradNorms": {"model.layers.0.mlp.up_proj": 0.0 if i >= 10 else 0.5}}
            line = json.dumps(row) + "\\n"
            f.write(line[:20]); f.flush(); time.sleep(delay / 2)   # a line lands in two writes
            f.write(line[20:]); f.flush(); time.sleep(delay / 2)
    print(time.monotonic(), flush=True)
""")


def _writer(path: Path, n: int, delay: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(n), str(delay)], stdout=subprocess.PIPE, text=True
    )


def test_follow_reports_signals_before_the_writer_ends(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    reporter = RecordingReporter()
    out: dict[str, WatchResult] = {}
    thread = threading.Thread(
        target=lambda: out.setdefault("r", watch(path, reporter, follow=True, idle_timeout_s=1.5))
    )
    thread.start()  # before the file exists: follow waits for it
    time.sleep(0.3)
    writer = _writer(path, 60, 0.04)
    writer_end = float(writer.communicate(timeout=60)[0])
    thread.join(timeout=30)
    signals = [
        (t, d["signal"]["type"], d["signal"]["step"], text)
        for t, typ, d, text in reporter.events
        if typ == "training.watch.signal"
    ]
    assert [(k, s) for _, k, s, _ in signals] == [("dead_layers", 14), ("gradient_spike", 25)]  # dead once: an episode
    assert all(t < writer_end for t, *_ in signals)
    assert all(text and "step" in text for *_, text in signals)  # terminal lines while following
    steps_events = reporter.of("training.watch.step")
    assert steps_events and {e["snapshot"]["step"] for e in steps_events} >= {14, 25}
    result = out["r"]
    assert result.summary.steps_seen == 60 and result.summary.bad_lines == 0


def test_cli_follow_prints_signals_while_the_writer_runs(tmp_path: Path, isolated_home: Path) -> None:
    path = tmp_path / "live.jsonl"
    path.touch()
    env = {**os.environ, "TRAINSPECT_HOME": str(isolated_home), "TRAINSPECT_MIRROR_URL": ""}
    cli = subprocess.Popen(
        [str(BIN), "watch", "--metrics", str(path), "--follow", "--idle-timeout-s", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    seen: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: seen.extend((time.monotonic(), line) for line in cli.stdout))  # type: ignore[union-attr]
    reader.start()
    deadline = time.monotonic() + 60
    while not any(line.startswith("following ") for _, line in seen):  # the CLI has imported and is tailing
        assert time.monotonic() < deadline and cli.poll() is None
        time.sleep(0.05)
    writer_end = float(_writer(path, 60, 0.04).communicate(timeout=60)[0])
    assert cli.wait(timeout=60) == 0, cli.stderr.read()  # type: ignore[union-attr]
    reader.join(timeout=10)
    live = [(t, line) for t, line in seen if "gradient_spike" in line and "step" in line]
    assert live and live[0][0] < writer_end
    assert any(line.startswith("steps ") and "60" in line for _, line in seen)  # the closing summary


# ----- live events, card payload, table ---------------------------------------------------------
class Mirror:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def send(self, event: Any) -> None:
        self.events.append(event)


def test_runner_events_and_card_payload(tmp_path: Path) -> None:
    rows = steps(
        10_000,
        max_grad=lambda i: 50.0 if i == 5003 else 1.0,
        grad_norms=lambda i: {ATTN: 0.0 if 100 <= i < 110 else 0.3, MLP: 0.4},
    )
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    mirror, progress = Mirror(), []
    env = invoke(
        SPEC, {"metrics": str(path), "run": "exp-1"}, mirror=mirror, on_progress=lambda f, m: progress.append(f)
    )
    types = [e.type for e in mirror.events]
    assert types[0] == "tool.start" and types[-1] == "tool.result"
    signal_events = [e.data for e in mirror.events if e.type == "training.watch.signal"]
    assert {(d["run"], d["signal"]["type"], d["signal"]["step"], d["signal"]["episode"]) for d in signal_events} == {
        ("exp-1", "attention_head_dead", 104, "start"),
        ("exp-1", "attention_head_dead", 110, "end"),
        ("exp-1", "gradient_spike", 5003, None),
    }
    assert "training.watch.step" not in types  # a replay sends the series once, in the card
    assert "training.watch.summary" in types and progress and progress[-1] == 1.0
    slim = mirror.events[-1].data["slim"]
    assert set(slim) == {"run", "series", "signals", "ongoing", "summary"} and slim["run"] == "exp-1"
    series = slim["series"]
    assert set(series) == {"step", "loss", "maxGrad"} and 150 <= len(series["step"]) <= 300
    assert len(series["loss"]) == len(series["maxGrad"]) == len(series["step"]) and series["step"][-1] == 10_000
    assert max(series["maxGrad"]) == 50.0  # a bucket keeps its largest maxGrad: the spike survives
    assert series["loss"][0] == pytest.approx(3.0, abs=0.02)
    assert [(s["type"], s["episode"]) for s in slim["signals"]] == [
        ("gradient_spike", None),
        ("attention_head_dead", "start"),
        ("attention_head_dead", "end"),
    ]
    end = slim["signals"][-1]
    assert (end["since_step"], end["duration_steps"], end["layers"]) == (100, 10, [ATTN]) and not slim["ongoing"]
    json.dumps(slim, allow_nan=False)
    assert env.findings[0].text.startswith("gradient_spike ×1")


def test_findings_quote_each_types_most_telling_signal(tmp_path: Path) -> None:
    rows = spiky(140) + steps(30, start=141, loss=lambda i: 2.0 + 0.01 * i)  # a slow rise fires a warning at 150
    for step, g in ((31, 6.0), (70, 15.0), (110, 8.0)):
        rows[step - 1]["maxGrad"] = g
    outcome = run(ToolContext(None), WatchInput(metrics=str(write_jsonl(tmp_path / "m.jsonl", rows))), SilentReporter())
    diverging, spike = outcome.findings[:2]  # both warnings: in the engine's priority order
    assert spike.text.startswith("gradient_spike ×3 (steps 31–110): max grad norm 15 ") and spike.text.endswith(
        "[step 70]"
    )
    assert diverging.text.startswith("loss_diverging ×1 (step 150)")


def test_nonfinite_values_keep_the_card_strict_json(tmp_path: Path) -> None:
    rows = [json.dumps(r) for r in steps(5)] + ['{"step": 6, "loss": NaN, "maxGrad": Infinity}']
    result = watch(write_jsonl(tmp_path / "m.jsonl", rows))
    json.dumps(SPEC.slim(result).model_dump(mode="json"), allow_nan=False)
    json.loads(result.model_dump_json())


def test_table_lists_signals_and_summary(tmp_path: Path) -> None:
    result = watch(write_jsonl(tmp_path / "m.jsonl", spiky(70, spikes=(31,)) + ['{"step": 71, "loss": oops}']))
    text = SPEC.table(result)
    assert "gradient_spike" in text and "31" in text
    assert "steps      70 (1–70)" in text and "bad lines  1: line 71: invalid JSON" in text


def test_a_long_signal_stream_is_capped_without_hiding_a_rarer_signal(tmp_path: Path) -> None:
    # under the seed's rules a layer dead the whole run fires every 30 steps; one late spike of the same severity
    rows = steps(20_000, grad_norms={MLP: 0.0}, max_grad=lambda i: 10.0 if i == 19_000 else 1.0)
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    default = watch(path)
    assert [(s.type, s.step, s.episode) for s in default.signals] == [
        ("dead_layers", 5, "start"),
        ("gradient_spike", 19_000, None),
    ]
    assert [(e.type, e.since_step, e.layers) for e in default.ongoing] == [("dead_layers", 1, [MLP])]
    reporter = RecordingReporter()
    result = watch(path, reporter, max_signals=10, seed_rules=True)
    dead = len(range(5, 20_001, 30))
    assert result.signals_total == dead + 1 and result.summary.signals_by_type["dead_layers"] == dead
    assert len(result.signals) == 10 and len(reporter.of("training.watch.signal")) == 200
    assert [(s.type, s.step) for s in result.signals if s.type == "gradient_spike"] == [("gradient_spike", 19_000)]
    assert [(g.type, g.count, g.first_step, g.last_step) for g in result.groups] == [
        ("gradient_spike", 1, 19_000, 19_000),
        ("dead_layers", dead, 5, 19_985),
    ]
    text = SPEC.table(result)
    assert sum(line.startswith("warn") and " dead_layers " in line for line in text.splitlines()) == 3  # then one line
    assert f"… dead_layers ×{dead - 3} more, steps 5–19985" in text


# ----- MCP: an agent asks again and gets only what is new ---------------------------------------
def test_mcp_since_last(tmp_path: Path) -> None:
    from toolserver.mcp_server import build_server

    path = write_jsonl(tmp_path / "m.jsonl", spiky(40, spikes=(31,)))

    async def main() -> None:
        async with Client(build_server()) as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
            first = await client.call_tool("watch", {"metrics": str(path), "since_last": True})
            assert not first.is_error, first.content
            jsonschema.validate(first.structured_content, listed["watch"].output_schema)
            assert [s["step"] for s in first.structured_content["result"]["signals"]] == [31]
            append(path, spiky(40, start=41, spikes=(75,)))
            second = (await client.call_tool("watch", {"metrics": str(path), "since_last": True})).structured_content
            assert second["result"]["since_last"] and [s["step"] for s in second["result"]["signals"]] == [75]
            assert second["follow_ups"][0]["args"] == {"metrics": str(path), "since_last": True}
            bad = await client.call_tool("watch", {"metrics": str(tmp_path / "nope.jsonl")})
            assert bad.is_error and "no metrics file" in bad.content[0].text

    anyio.run(main)
