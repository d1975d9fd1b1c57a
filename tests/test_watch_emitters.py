"""Emitters: per-module grad norms against a direct computation, line-atomic JSONL under a concurrent
reader, and the mirror path — never blocking training when the mirror is down or stalls, and
delivering step and signal events to a real running mirror."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from torch import nn
from watch_fixtures import tiny_lm
from web_fixtures import free_port

from tools.watch import StepLogger
from tools.watch.emitters import GradNormMeter, MirrorSink
from tools.watch.readers import JsonlReader
from tools.watch.snapshot import StepSnapshot

BIN = Path(sys.executable).parent / "trainspect"


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.block = nn.ModuleDict({"attn": nn.Linear(8, 8), "mlp": nn.Linear(8, 8), "unused": nn.Linear(8, 8)})
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.scale = nn.Parameter(torch.tensor(2.0))  # owned by the root module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = self.block["mlp"](torch.relu(self.block["attn"](h))) * self.scale
        return self.head(self.frozen(h))


def test_grad_norms_per_module_match_a_direct_computation() -> None:
    torch.manual_seed(0)
    net = Net()
    net(torch.randint(0, 10, (4, 5))).square().mean().backward()
    norms, max_grad, per_param = GradNormMeter(net).measure()
    assert set(norms) == {"Net", "embed", "block.attn", "block.mlp", "block.unused"}  # frozen: not reported

    def direct(*params: torch.Tensor) -> float:
        return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params if p.grad is not None))

    assert norms["block.attn"] == pytest.approx(direct(net.block["attn"].weight, net.block["attn"].bias), rel=1e-5)
    assert norms["embed"] == pytest.approx(direct(net.embed.weight), rel=1e-5)  # tied head counted once, here
    assert norms["Net"] == pytest.approx(abs(float(net.scale.grad)), rel=1e-5)
    assert norms["block.unused"] == 0.0  # trainable but no gradient reached it: a dead path
    every = [p for p in net.parameters() if p.grad is not None]
    assert max_grad == pytest.approx(max(direct(p) for p in every), rel=1e-5)
    assert per_param == pytest.approx([direct(p) for p in GradNormMeter(net).params], rel=1e-5)


@pytest.mark.parametrize("where", ["scale", "mlp"])  # the first parameter measured, and a later one
def test_an_overflowed_gradient_makes_max_grad_nonfinite_wherever_it_is(where: str) -> None:
    torch.manual_seed(0)
    net = Net()
    net(torch.randint(0, 10, (4, 5))).square().mean().backward()
    grad = net.scale.grad if where == "scale" else net.block["mlp"].weight.grad
    grad.view(-1)[0] = float("nan")
    norms, max_grad, _ = GradNormMeter(net).measure()
    assert math.isnan(max_grad) and math.isfinite(norms["block.attn"])


def test_before_any_backward_norms_are_zero_and_max_unknown() -> None:
    norms, max_grad, per_param = GradNormMeter(Net()).measure()
    assert max_grad is None and per_param is None and set(norms.values()) == {0.0}


def test_one_host_read_per_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Norms and loss come to the host in one copy; queuing the norms (the HF callback's per-step path)
    reads nothing. Counted on the CPU as calls that would each wait for a GPU."""
    reads: list[str] = []
    for name in ("tolist", "item", "cpu", "__float__", "numpy"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda self, *a, _f=original, _n=name, **k: reads.append(_n) or _f(self, *a, **k)
        )
    model = tiny_lm()
    x = torch.randint(0, 64, (2, 8))
    with StepLogger(model, path=tmp_path / "m.jsonl") as log:
        for step in (1, 2):
            model.zero_grad()
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            reads.clear()
            log.meter.on_device(loss)
            assert reads == []
            log.step(step, loss)
            assert reads == ["tolist"]


def test_a_repeated_step_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with StepLogger(path=tmp_path / "m.jsonl") as log:
        for step in (1, 2, 2, 1, 3):
            log.record(StepSnapshot(step=step, loss=1.0))
    assert log.skipped == 2 and len(caplog.records) == 1 and "step 2 is not after step 2" in caplog.text
    assert [json.loads(line)["step"] for line in (tmp_path / "m.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_jsonl_lines_are_whole_for_a_concurrent_reader(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    names = [f"model.layers.{i}.mlp.down_proj" for i in range(300)]  # ~12 KB lines
    log = StepLogger(path=path)
    reader, seen, bad, done = JsonlReader(path), [], [], threading.Event()

    def tail(final: bool) -> None:
        while True:
            batch = reader.read(final=final)
            seen.extend(s.step for _, s in batch.snapshots)
            bad.extend(batch.bad)
            if done.is_set() and not reader.pending():
                return

    thread = threading.Thread(target=tail, args=(False,))
    thread.start()
    for step in range(1, 1001):
        log.record(StepSnapshot(step=step, loss=1.0 + step % 7, grad_norms=dict.fromkeys(names, 0.5)))
    done.set()
    thread.join(timeout=30)
    log.close()
    tail(final=True)  # what the tailing reader had not reached yet
    assert not bad and seen == list(range(1, 1001))


def test_new_logger_truncates_unless_appending(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    model = tiny_lm()
    x = torch.randint(0, 64, (2, 8))
    for append, start, expected in ((False, 1, 2), (False, 1, 2), (True, 3, 4)):
        with StepLogger(model, path=path, append=append) as log:
            for step in (start, start + 1):
                model.zero_grad()
                model(input_ids=x, labels=x).loss.backward()
                log.step(step, 1.0)
        assert len(path.read_text().splitlines()) == expected


class StalledClient:
    """A MirrorClient whose every send blocks for `delay` s, like a black-holed mirror."""

    delay = 0.5

    def __init__(self, url: str, **kw: object) -> None:
        self.sent: list = []

    def send(self, event: object) -> None:
        time.sleep(self.delay)
        self.sent.append(event)

    def flush(self, timeout: float = 2.0) -> bool:
        return False

    def close(self) -> None:
        pass


def test_a_stalled_mirror_never_blocks_the_training_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import web_mirror.client

    monkeypatch.setattr(web_mirror.client, "MirrorClient", StalledClient)
    log = StepLogger(url="http://10.255.255.1:9", run="stalled")
    longest = 0.0
    for step in range(1, 41):
        t = time.perf_counter()
        log.record(StepSnapshot(step=step, loss=2.0, max_grad=50.0 if step == 30 else 1.0))
        longest = max(longest, time.perf_counter() - t)
    t = time.perf_counter()
    log.close()
    assert longest < 0.25  # each send takes 0.5 s in the background; the loop never waits for one
    assert time.perf_counter() - t < 5.0  # close gives up after its timeouts instead of hanging


def test_a_full_mirror_queue_drops_steps_but_keeps_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    import web_mirror.client

    monkeypatch.setattr(web_mirror.client, "MirrorClient", StalledClient)
    monkeypatch.setattr(StalledClient, "delay", 0.2)
    sink = MirrorSink("http://10.255.255.1:9", run="slow", session="s", token=None, max_queue=8, reserve=3)
    for step in range(1, 41):
        sink.send("training.watch.step", "snapshot", lambda step=step: {"step": step}, droppable=True)
    sink.send("training.watch.signal", "signal", lambda: {"type": "gradient_spike"}, droppable=False)
    sink.close()
    sent = [(e.type, e.data) for e in sink.client.sent]
    steps_sent = [d["snapshot"]["step"] for t, d in sent if t == "training.watch.step"]
    assert 5 <= len(steps_sent) <= 7 and sink.dropped == 40 - len(steps_sent)  # 5 queued, 1 or 2 taken meanwhile
    assert sent[-1] == ("training.watch.signal", {"run": "slow", "signal": {"type": "gradient_spike"}})


def test_mirror_down_spools_and_raises_nothing(tmp_path: Path, isolated_home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    model = tiny_lm()
    x = torch.randint(0, 64, (2, 8))
    with StepLogger(model, url=f"http://127.0.0.1:{port}", run="offline") as log:
        for step in range(1, 6):
            model.zero_grad()
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            log.step(step, loss)
    spooled = "".join(p.read_text() for p in (isolated_home / "spool").glob("*.jsonl"))
    assert spooled.count('"training.watch.step"') == 5 and '"training.watch.summary"' in spooled


def test_steps_and_signals_reach_a_running_mirror(tmp_path: Path, isolated_home: Path) -> None:
    port = free_port()
    env = {**os.environ, "TRAINSPECT_HOME": str(isolated_home)}
    server = subprocess.Popen(
        [str(BIN), "web", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/sessions", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline and server.poll() is None, server.stderr.read() if server.stderr else ""
            time.sleep(0.2)
        with StepLogger(url=url, run="live-run", session="watch-e2e") as log:
            for step in range(1, 41):
                log.record(StepSnapshot(step=step, loss=3.0 + 0.5 * (-1) ** step, max_grad=40.0 if step == 30 else 1.0))
        cards = httpx.get(f"{url}/api/sessions/watch-e2e/cards", timeout=5).json()["cards"]
        (card,) = [c for c in cards if c["call_id"] == "live-run"]
        watch = card["live"]
        assert [s["step"] for s in watch["points"]] == list(range(1, 41))
        assert [(s["type"], s["step"]) for s in watch["markers"]] == [("gradient_spike", 30)]
        assert watch["summary"]["steps_seen"] == 40
    finally:
        server.terminate()
        server.wait(timeout=10)
