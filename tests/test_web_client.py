"""The mirror client: prompt sends, spooling through outages, in-order exactly-once delivery afterwards."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from web_mirror import client as client_mod
from web_mirror.client import MirrorClient
from web_mirror.events import Event

from web_fixtures import ROOT, free_port, mirror_server, stream_events

URL = "http://mirror.test"


class FakeMirror:
    """A respx route with a switchable failure mode that records every event it accepted."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.mode = "up"
        self.received: list[str] = []
        self.attempts = 0
        router.post(f"{URL}/api/events").mock(side_effect=self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        events = json.loads(request.content)
        if self.mode == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if self.mode == "500":
            return httpx.Response(500, json={"detail": "boom"})
        if self.mode == "timeout":  # the server got it but answered too late
            self.received += [e["event_id"] for e in events]
            raise httpx.ReadTimeout("timed out", request=request)
        if any(e["data"].get("poison") for e in events):
            return httpx.Response(422, json={"detail": []})
        self.received += [e["event_id"] for e in events]
        return httpx.Response(200, json={"accepted": len(events), "duplicates": 0, "last_seq": 0})


@pytest.fixture
def fake() -> Any:
    with respx.mock(assert_all_called=False) as router:
        yield FakeMirror(router)


def events(n: int, call: str = "c", **data: Any) -> list[Event]:
    return [Event(type="tool.progress", session="s", call_id=call, data={"fraction": i / n, **data}) for i in range(n)]


def first_seen(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


@pytest.mark.parametrize("mode", ["refused", "500", "timeout"])
def test_outage_spools_promptly_then_delivers_in_order(fake: FakeMirror, tmp_path: Path, mode: str) -> None:
    client = MirrorClient(URL, spool_dir=tmp_path / "spool")
    sent = events(30)
    fake.mode = mode
    t0 = time.perf_counter()
    for e in sent:
        client.send(e)
    assert time.perf_counter() - t0 < 0.5
    assert fake.attempts == 1  # after one failure the client backs off instead of retrying per event
    assert len(client.spool.pending()) == 30

    fake.mode = "up"
    assert client.flush() is True
    ids = [e.event_id for e in sent]
    assert first_seen(fake.received) == ids
    # a timed-out post may have been stored already: the replay is what the server's event_id dedup absorbs
    assert len(fake.received) == 30 + (1 if mode == "timeout" else 0)
    assert not client.spool.maybe_pending()
    assert client.flush() is True and len(fake.received) == 30 + (mode == "timeout")


def test_after_the_backoff_the_next_send_delivers_the_backlog_first(fake: FakeMirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_mod, "BACKOFF_START", 0.05)
    client = MirrorClient(URL, spool_dir=tmp_path / "spool")
    fake.mode = "refused"
    old = events(5)
    for e in old:
        client.send(e)
    fake.mode = "up"
    time.sleep(0.1)
    new = events(1, call="next")[0]
    client.send(new)
    assert fake.received == [e.event_id for e in old] + [new.event_id]
    client.send(events(1)[0])  # spool empty again: straight through
    assert fake.attempts == 3


def test_a_refused_event_goes_to_the_rejected_file_and_the_rest_flow(fake: FakeMirror, tmp_path: Path) -> None:
    client = MirrorClient(URL, spool_dir=tmp_path / "spool")
    fake.mode = "refused"
    batch = events(3) + events(1, poison=True) + events(3)
    for e in batch:
        client.send(e)
    fake.mode = "up"
    assert client.flush() is True
    assert fake.received == [e.event_id for e in batch if not e.data.get("poison")]
    [rejected] = client.spool.rejected.read_text().splitlines()
    assert json.loads(json.loads(rejected)["event"])["event_id"] == batch[3].event_id


def test_non_finite_numbers_survive_the_wire(tmp_path: Path) -> None:
    seen: list[Any] = []
    client = MirrorClient(URL, spool_dir=tmp_path / "spool")
    with respx.mock() as router:
        router.post(f"{URL}/api/events").mock(side_effect=lambda r: (seen.append(json.loads(r.content)), httpx.Response(200, json={}))[1])
        client.send(Event(type="training.watch.step", session="s", call_id="run", data={"snapshot": {"step": 1, "loss": float("nan"), "maxGrad": float("inf")}}))
    assert seen[0][0]["data"]["snapshot"] == {"step": 1, "loss": "NaN", "maxGrad": "Infinity"}


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAINSPECT_MIRROR_URL")
    assert MirrorClient.from_env().url == "http://127.0.0.1:8002"
    monkeypatch.setenv("TRAINSPECT_MIRROR_URL", "http://10.0.0.2:9/")
    monkeypatch.setenv("TRAINSPECT_MIRROR_TOKEN", "tok")
    c = MirrorClient.from_env()
    assert c.url == "http://10.0.0.2:9" and c._http.headers["authorization"] == "Bearer tok"
    assert MirrorClient.from_env("http://h:1").url == "http://h:1"
    assert MirrorClient.from_env("") is None and MirrorClient.from_env(disabled=True) is None
    monkeypatch.setenv("TRAINSPECT_MIRROR_URL", "")
    assert MirrorClient.from_env() is None


def test_a_mirror_that_accepts_but_never_answers_costs_one_timeout(tmp_path: Path) -> None:
    with socket.socket() as hole:  # listens, never accepts: connects succeed, replies never come
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        client = MirrorClient(f"http://127.0.0.1:{hole.getsockname()[1]}", spool_dir=tmp_path / "spool", timeout=0.3)
        t0 = time.perf_counter()
        for e in events(20):
            client.send(e)
        client.close()
        elapsed = time.perf_counter() - t0
    assert elapsed < 1.5, elapsed  # one timeout for the sends, one for close's last attempt
    assert len(client.spool.pending()) == 20


def test_clients_sharing_a_spool_deliver_everything_once_each_in_its_order(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with mirror_server(tmp_path / "home") as server:
        server.kill()
        sent: dict[str, list[str]] = {}

        def produce(name: str) -> None:
            c = MirrorClient(server.url, spool_dir=spool)
            evs = events(40, call=name)
            sent[name] = [e.event_id for e in evs]
            for i, e in enumerate(evs):
                if name == "a" and i == 20:
                    server.start()  # the mirror comes back while the others are still spooling
                c.send(e)
            c.close()

        threads = [threading.Thread(target=produce, args=(n,)) for n in "abc"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert MirrorClient(server.url, spool_dir=spool).flush(timeout=10)
        logged = stream_events(server, "s")
        for name, ids in sent.items():
            assert [e["event_id"] for e in logged if e["call_id"] == name] == ids, name  # each once, in its order
        assert len(logged) == 120


def test_outage_during_a_real_cli_call(tmp_path: Path, tiny_gpt2: dict[str, Path]) -> None:
    """Mirror down during a tool call: the call succeeds; the next call, with the mirror back, delivers both in order."""
    home = tmp_path / "home"
    env = {**os.environ, "TRAINSPECT_HOME": str(home)}
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "toolserver.cli", *argv, "--mirror", url], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    t0 = time.perf_counter()
    first = cli("session", "start", "--id", "outage", "--model", str(tiny_gpt2["base"]))
    assert first.returncode == 0, first.stderr
    assert time.perf_counter() - t0 < 15
    spooled = [json.loads(line) for p in (home / "spool").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert [e["type"] for e in spooled][0] == "tool.start" and spooled[-1]["type"] == "tool.result"

    with mirror_server(home, port=port) as server:
        second = cli("session", "status")
        assert second.returncode == 0, second.stderr
        cards = server.get("/api/sessions/outage/cards")["cards"]
        assert [c["tool"] for c in cards] == ["session_status", "start_session"]  # newest first
        assert all(c["status"] == "ok" for c in cards)
        logged = stream_events(server, "outage")
        n = len(spooled)
        assert [e["event_id"] for e in logged[:n]] == [e["event_id"] for e in spooled]  # the backlog first, in order
        assert {e["call_id"] for e in logged[n:]} == {cards[0]["call_id"]}
        assert len({e["event_id"] for e in logged}) == len(logged)
        assert not any(p.stat().st_size for p in (home / "spool").glob("*.jsonl"))
