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
from web_fixtures import ROOT, free_port, mirror_server, stream_events

from web_mirror import client as client_mod
from web_mirror.client import Dropped, MirrorClient, Spool
from web_mirror.events import Event

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
        if self.mode == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if self.mode == "unreachable":
            raise httpx.ConnectTimeout("timed out connecting", request=request)
        try:
            events = json.loads(request.content)
        except ValueError:  # what the real server answers for a body that is not JSON
            return httpx.Response(422, json={"detail": [{"loc": ["body", 0], "msg": "JSON decode error"}]})
        if self.mode == "500":
            return httpx.Response(500, json={"detail": "boom"})
        if self.mode == "timeout":  # the server got it but answered too late
            self.received += [e["event_id"] for e in events]
            raise httpx.ReadTimeout("timed out", request=request)
        if any(e["data"].get("poison") for e in events):
            return httpx.Response(422, json={"detail": [{"loc": ["body", 0, "data"], "msg": "poisoned"}]})
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


def test_after_the_backoff_the_next_send_delivers_the_backlog_first(
    fake: FakeMirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    [rejected] = map(json.loads, client.spool.rejected.read_text().splitlines())
    assert rejected["event_id"] == batch[3].event_id and rejected["reason"] == "HTTP 422: body.0.data: poisoned"


def test_non_finite_numbers_and_undecodable_names_survive_the_wire(tmp_path: Path) -> None:
    seen: list[Any] = []
    client = MirrorClient(URL, spool_dir=tmp_path / "spool")
    with respx.mock() as router:
        router.post(f"{URL}/api/events").mock(
            side_effect=lambda r: (seen.append(json.loads(r.content)), httpx.Response(200, json={}))[1]
        )
        client.send(
            Event(
                type="training.watch.step",
                session="s",
                call_id="run",
                data={"snapshot": {"step": 1, "loss": float("nan"), "maxGrad": float("inf")}},
            )
        )
        client.send(
            Event(
                type="tool.start",
                session="s",
                call_id="c",
                data={"args": {"checkpoint": os.fsdecode(b"/runs/\xff.pt")}},
            )
        )
    assert seen[0][0]["data"]["snapshot"] == {"step": 1, "loss": "NaN", "maxGrad": "Infinity"}
    assert seen[1][0]["data"]["args"] == {"checkpoint": "/runs/\ufffd.pt"}  # a file name that is not UTF-8


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
        url = f"http://127.0.0.1:{hole.getsockname()[1]}"
        client = MirrorClient(url, spool_dir=tmp_path / "spool", timeout=0.5)
        t0 = time.perf_counter()
        for e in events(20):
            client.send(e)
        client.close()  # backing off: no second attempt on the way out
        elapsed = time.perf_counter() - t0
        assert 0.5 <= elapsed < 0.9, elapsed
        assert len(client.spool.pending()) == 20

        # a fresh process finding that backlog: close() tries once more, within its ~1 s budget even
        # though this client would wait 5 s per request
        later = MirrorClient(url, spool_dir=tmp_path / "spool", timeout=5.0)
        t0 = time.perf_counter()
        later.close()
        assert time.perf_counter() - t0 < client_mod.CLOSE_BUDGET + 0.4
    assert len(later.spool.pending()) == 20


def test_an_unreachable_mirror_costs_one_connect_timeout_per_call(
    fake: FakeMirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_mod, "BACKOFF_START", 0.0)  # the back-off alone would allow an attempt per event
    client = MirrorClient(URL, spool_dir=tmp_path / "spool")
    fake.mode = "unreachable"
    for e in events(10, call="a"):
        client.send(e)
    client.close()
    assert fake.attempts == 1
    other = MirrorClient(URL, spool_dir=tmp_path / "spool")
    for e in events(10, call="b"):  # the next call tries once, and only once
        other.send(e)
    assert fake.attempts == 2 and len(other.spool.pending()) == 20
    fake.mode = "up"
    for e in events(1, call="c"):  # and a call that finds it back delivers everything, in order
        other.send(e)
    assert fake.attempts == 3 and len(fake.received) == 21 and not other.spool.maybe_pending()


def call_events(call: str, result_bytes: int = 1000) -> list[Event]:
    """What the runner sends for one call: start, progress, and a result carrying the full envelope."""
    return [
        Event(type="tool.start", session="s", call_id=call, data={"args": {}}),
        *events(3, call=call),
        Event(type="tool.result", session="s", call_id=call, data={"slim": {}, "result": {"blob": "x" * result_bytes}}),
    ]


def test_the_spool_is_bounded_by_dropping_the_stalest_whole_calls(
    fake: FakeMirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(client_mod, "_drop_reported", threading.Event())
    monkeypatch.setenv("TRAINSPECT_SPOOL_MAX_BYTES", "20000")
    fake.mode = "refused"
    sent = {f"call{i}": call_events(f"call{i}") for i in range(40)}  # ~1.8 KB a call: ~70 KB in all
    for call in sent.values():
        client = MirrorClient(URL, spool_dir=tmp_path / "spool")  # one CLI process per call
        for e in call:
            client.send(e)
        client.close()
        assert client.spool.path.stat().st_size <= 20000
    kept = [json.loads(line)["call_id"] for line, _ in client.spool.pending()]
    survivors = list(dict.fromkeys(kept))
    assert 7 <= len(survivors) < 40 and survivors == list(sent)[-len(survivors) :]  # the newest calls, in order
    assert all(kept.count(c) == 5 for c in survivors)  # each whole
    [warning] = [
        r.getMessage() for r in caplog.records if "spool" in r.getMessage()
    ]  # once per process, though it dropped repeatedly
    assert (
        "TRAINSPECT_SPOOL_MAX_BYTES" in warning and "20000-byte bound" in warning and "dropped the stalest" in warning
    )

    fake.mode = "up"
    assert MirrorClient(URL, spool_dir=tmp_path / "spool").flush() is True
    assert fake.received == [e.event_id for c in survivors for e in sent[c]]


def test_a_call_bigger_than_the_spool_keeps_its_latest_events(fake: FakeMirror, tmp_path: Path) -> None:
    fake.mode = "refused"
    client = MirrorClient(URL, spool_dir=tmp_path / "spool", spool_max=5000)
    run = [
        Event(type="training.watch.step", session="s", call_id="run", data={"snapshot": {"step": i, "loss": 1.0}})
        for i in range(200)
    ]
    for e in (
        run[:100] + events(5, call="tool") + run[100:]
    ):  # a tool call while the run streams: the run is the live one
        client.send(e)
        assert json.loads(client.spool.pending()[-1][0])["event_id"] == e.event_id  # the newest event always stays
    kept = [json.loads(line) for line, _ in client.spool.pending()]
    assert client.spool.path.stat().st_size <= 5000
    assert [e["event_id"] for e in kept] == [
        e.event_id for e in run[-len(kept) :]
    ]  # a contiguous tail, nothing of "tool"
    assert len(kept) > 20


def test_the_spool_drops_the_call_whose_latest_event_is_oldest(tmp_path: Path) -> None:
    spool = Spool(tmp_path, URL, max_bytes=1000)

    def line(i: int, call: str) -> bytes:  # 100 bytes with its newline
        head = f'{{"event_id":"{i:03d}","type":"x","session":"s","call_id":"{call}","data":{{"pad":"'
        return (head + "p" * (96 - len(head)) + '"}}').encode()

    sent = [line(i, "tool" if i == 4 else "run") for i in range(11)]  # a tool call in the middle of a live run
    with spool.locked():
        assert [spool.append([x]) for x in sent[:10]] == [None] * 10  # 1000 bytes: at the bound, not past it
        assert spool.append([sent[10]]) == Dropped(events=4, calls=2, bytes=400)
        assert [x for x, _ in spool.pending()] == [
            sent[3],
            *sent[5:],
        ]  # the tool call went whole, the run kept its latest 3/4
        assert spool.path.stat().st_size == 700


def test_a_zero_bound_spools_nothing_and_a_bad_bound_falls_back(
    fake: FakeMirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake.mode = "refused"
    monkeypatch.setenv("TRAINSPECT_SPOOL_MAX_BYTES", "0")
    client = MirrorClient(URL, spool_dir=tmp_path / "spool")
    for e in call_events("c"):
        client.send(e)
    assert client.spool.pending() == [] and not client.spool.maybe_pending()
    for bad in ("lots", "-1"):
        monkeypatch.setenv("TRAINSPECT_SPOOL_MAX_BYTES", bad)
        assert client_mod.spool_max_bytes() == client_mod.SPOOL_MAX_DEFAULT
        assert f"TRAINSPECT_SPOOL_MAX_BYTES={bad!r} is not a whole number of bytes" in caplog.text


def test_a_line_torn_by_a_killed_writer_is_set_aside_and_the_rest_flow(fake: FakeMirror, tmp_path: Path) -> None:
    client = MirrorClient(URL, spool_dir=tmp_path / "spool")
    fake.mode = "refused"
    first = events(2)
    for e in first:
        client.send(e)
    with open(client.spool.path, "ab") as f:
        f.write(b'{"event_id":"torn","type":"tool.res')  # the process died here
    later = events(2)
    for e in later:
        client.send(e)
    fake.mode = "up"
    assert client.flush() is True
    assert fake.received == [e.event_id for e in first + later]
    [rejected] = map(json.loads, client.spool.rejected.read_text().splitlines())
    assert rejected["reason"].startswith("HTTP 422") and rejected["line"].startswith('{"event_id":"torn"')


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
    """Mirror down during a tool call: the call succeeds; the next call, mirror back, delivers both in order."""
    home = tmp_path / "home"
    env = {**os.environ, "TRAINSPECT_HOME": str(home)}
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "toolserver.cli", *argv, "--mirror", url],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

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
