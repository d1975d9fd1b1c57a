"""The orchestrator's API and store: ingest, idempotency, folding into cards, auth, limits, SSE, restarts."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from web_fixtures import CONTRACT, MAX_POINTS, app_for, ev, long_run, mirror_server, sse_messages, tool_call

from toolserver.contract import ToolError
from web_mirror.app import RECONNECT_MS, Card
from web_mirror.cards import Folder
from web_mirror.events import Event
from web_mirror.server import is_loopback, loopback_hosts, serve
from web_mirror.store import Store


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(app_for(tmp_path / "home"))


def test_ingest_folds_a_tool_call_into_one_card_and_keeps_the_full_result_apart(client: TestClient) -> None:
    events = tool_call("s1", "c1", tool="run_weight_diff", card="weightDiff", slim={"layers": [1, 2]}, name="ft")
    assert client.post("/api/events", json=events).json() == {"accepted": 3, "duplicates": 0, "last_seq": 3}

    cards = client.get("/api/sessions/s1/cards").json()
    assert cards["last_seq"] == 3
    [card] = cards["cards"]
    assert card["kind"] == "weightDiff" and card["tool"] == "run_weight_diff" and card["status"] == "ok"
    assert card["args"] == {"name": "ft"} and card["slim"] == {"layers": [1, 2]}
    assert card["progress"] == {"fraction": 0.5, "message": "halfway"}
    assert card["duration_s"] == 0.25 and card["has_result"] is True
    assert card["findings"] == [{"text": "a finding", "severity": "warn"}]
    assert "result" not in json.dumps(card["slim"]) and "detail" not in json.dumps(cards)

    full = client.get("/api/calls/c1").json()
    assert full == events[2]["data"]["result"]
    assert client.get("/api/calls/nope").status_code == 404
    assert client.get("/api/sessions/nope/cards").status_code == 404


def test_a_replayed_event_is_stored_once(client: TestClient) -> None:
    events = tool_call("s1", "c1")
    client.post("/api/events", json=events[:2])
    reply = client.post("/api/events", json=events).json()
    assert reply == {"accepted": 1, "duplicates": 2, "last_seq": 3}
    assert client.get("/api/sessions").json()[0]["n_events"] == 3


def test_cards_are_newest_first_and_errors_carry_their_hint(client: TestClient) -> None:
    client.post("/api/events", json=tool_call("s", "first"))
    client.post(
        "/api/events",
        json=[
            ev("tool.start", "s", "second", tool="run_x", card="x", args={}),
            ev(
                "tool.error",
                "s",
                "second",
                tool="run_x",
                card="x",
                duration_s=0.1,
                error="bad checkpoint f.pt",
                hint="pass a .pt",
            ),
        ],
    )
    cards = client.get("/api/sessions/s/cards").json()["cards"]
    assert [c["call_id"] for c in cards] == ["second", "first"]
    assert (
        cards[0]["status"] == "error"
        and cards[0]["error"] == "bad checkpoint f.pt"
        and cards[0]["hint"] == "pass a .pt"
    )
    assert cards[0]["has_result"] is False


def test_training_watch_events_fold_into_one_watch_card_nan_loss_included(client: TestClient) -> None:
    run = "run-7"
    steps = [
        ev(
            "training.watch.step",
            "s",
            run,
            run=run,
            snapshot={"step": i, "loss": 2.0 - 0.1 * i, "maxGrad": 0.5, "gradNorms": {"a": 1}},
        )
        for i in range(5)
    ]
    steps.append(ev("training.watch.step", "s", run, run=run, snapshot={"step": 5, "loss": float("nan")}))
    signal_ = {
        "type": "gradient_spike",
        "severity": "critical",
        "step": 3,
        "metric": "maxGrad",
        "value": 30.0,
        "threshold": 5.0,
        "layers": [],
        "message": "spike",
    }
    body = [
        *steps,
        ev("training.watch.signal", "s", run, run=run, signal=signal_),
        ev("training.watch.summary", "s", run, run=run, summary={"steps": 6}),
    ]
    # what a Python emitter posting NaN produces on the wire (json.dumps allows it by default)
    r = client.post("/api/events", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    [card] = client.get("/api/sessions/s/cards").json()["cards"]
    assert card["kind"] == "watch" and card["status"] == "ok"
    w = card["live"]
    assert (
        w["family"] == "training.watch" and w["label"] == run and [s["step"] for s in w["points"]] == [0, 1, 2, 3, 4, 5]
    )
    assert w["points"][5]["loss"] == "NaN" and w["points"][0] == {
        "step": 0,
        "loss": 2.0,
        "maxGrad": 0.5,
        "learning_rate": None,
        "n": 0,
        "pinned": False,
    }
    assert w["markers"] == [signal_] and w["summary"] == {"steps": 6}
    assert [s["step"] for s in w["points"] if s["pinned"]] == [3] and (w["seen"], w["stride"], w["pinned"]) == (6, 1, 1)


LONG_SIGNALS = [5, 777, 1234, 5001, 13_333, 19_998]


def test_a_long_run_keeps_a_bounded_series_with_the_last_step_and_every_signal_step(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with TestClient(app_for(home)) as client:
        batches = long_run("long", "run", 20_000, LONG_SIGNALS)
        for batch in batches[:7]:
            assert client.post("/api/events", json=batch).status_code == 200
        early = client.get("/api/sessions/long/cards").json()  # folded once here, then only the new events
        for batch in batches[7:]:
            assert client.post("/api/events", json=batch).status_code == 200
        snapshot = client.get("/api/sessions/long/cards").json()
    [card] = snapshot["cards"]
    w = card["live"]
    steps = [p["step"] for p in w["points"]]
    assert len(steps) <= MAX_POINTS and steps == sorted(steps) and steps[-1] == 19_999
    assert w["seen"] == 19_999 and len(steps) > MAX_POINTS // 4
    assert [p["step"] for p in w["points"] if p["pinned"]] == [
        s for s in LONG_SIGNALS if s != 777
    ]  # 777's step was dropped
    assert all(p["n"] % w["stride"] == 0 for p in w["points"][:-1] if not p["pinned"])
    assert early["last_seq"] < snapshot["last_seq"] == card["last_seq"]
    # a cold fold of the same log (a restarted server) gives the same cards as the incremental one
    with TestClient(app_for(home)) as client:
        assert client.get("/api/sessions/long/cards").json() == snapshot
    stored = Store.in_home(home)
    assert [
        Card(**c).model_dump(mode="json") for c in Folder(CONTRACT.families).fold(stored.events("long"))
    ] == snapshot["cards"]
    stored.close()


def test_a_series_pinned_mostly_by_signals_still_thins_its_unpinned_points(client: TestClient) -> None:
    for batch in long_run("busy", "run", 6_000, list(range(0, 6_000, 8))):  # 750 signal steps, more than half the bound
        assert client.post("/api/events", json=batch).status_code == 200
    w = client.get("/api/sessions/busy/cards").json()["cards"][0]["live"]
    assert w["pinned"] == 750 and sum(p["pinned"] for p in w["points"]) == 750
    assert len(w["points"]) - w["pinned"] <= MAX_POINTS // 2


def test_malformed_family_data_degrades_the_card_not_the_server(client: TestClient) -> None:
    junk = [
        ev("tool.progress", "s", "c", fraction="lots", message=3),
        ev("tool.result", "s", "c", findings="none", duration_s=True, slim=[1, 2]),
        ev("training.watch.step", "s", "w", snapshot=[1]),
        ev("training.watch.pass", "s", "sim", run="r", pass_=2),
    ]
    assert client.post("/api/events", json=junk).status_code == 200
    cards = {c["call_id"]: c for c in client.get("/api/sessions/s/cards").json()["cards"]}
    assert cards["c"]["progress"] == {"fraction": None, "message": None} and cards["c"]["findings"] == []
    assert cards["w"]["live"]["points"] == [] and cards["sim"]["kind"] == "watch"
    assert cards["sim"]["extra"][0]["type"] == "training.watch.pass"


def test_unknown_event_types_and_oversized_batches_are_rejected(client: TestClient) -> None:
    assert client.post("/api/events", json=ev("tool.exploded", "s", "c")).status_code == 422
    assert client.post("/api/events", json=ev("training.watch.", "s", "c")).status_code == 422
    assert client.post("/api/events", json=[ev("tool.start", "s", "c")] * 1001).status_code == 422
    assert client.post("/api/events", json=[]).status_code == 422
    deep: list = []
    for _ in range(500):  # would exhaust the stack of anything walking it recursively
        deep = [deep]
    r = client.post("/api/events", json=ev("tool.start", "s", "c", args=deep))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "data" and "nested deeper than 64" in r.text


def test_text_utf8_cannot_carry_is_stored_as_u_fffd_or_refused_by_field_never_a_500(client: TestClient) -> None:
    raw = (
        b'{"type":"tool.start","session":"s","call_id":"c",'
        b'"data":{"tool":"t","args":{"path":"a\\ud800b","k\\udfff":1}}}'
    )
    assert client.post("/api/events", content=raw, headers={"content-type": "application/json"}).status_code == 200
    assert client.get("/api/sessions/s/cards").json()["cards"][0]["args"] == {"path": "a\ufffdb", "k\ufffd": 1}

    r = client.post(
        "/api/events",
        content=raw.replace(b'"session":"s"', b'"session":"s\\ud800"'),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "IngestEvent", "session"]


def test_a_refused_batch_is_not_echoed_back(client: TestClient) -> None:
    bad = [ev("tool.nope", "s", "c", blob="x" * 1000) for _ in range(1000)]
    r = client.post("/api/events", json=bad)
    assert r.status_code == 422 and len(r.content) < 5000
    detail = r.json()["detail"]
    assert len(detail) == 20 and detail[1]["loc"] == ["body", "list[IngestEvent]", 0, "type"]
    assert all(set(d) == {"type", "loc", "msg"} for d in detail)


def test_request_bodies_are_size_limited(tmp_path: Path) -> None:
    c = TestClient(app_for(tmp_path / "home", max_body=10_000))
    big = ev("tool.result", "s", "c", result={"blob": "x" * 20_000})
    assert c.post("/api/events", json=big).status_code == 413
    assert c.post("/api/events", json=ev("tool.start", "s", "c")).status_code == 200


def test_with_a_token_every_api_call_needs_it(tmp_path: Path) -> None:
    c = TestClient(app_for(tmp_path / "home", token="s3cret"))
    assert c.post("/api/events", json=tool_call("s", "c")).status_code == 401
    for path in ("/api/sessions", "/api/sessions/s/cards", "/api/calls/c", "/api/sessions/s/stream"):
        assert c.get(path).status_code == 401, path
        assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
    ok = {"Authorization": "Bearer s3cret"}
    assert c.post("/api/events", json=tool_call("s", "c"), headers=ok).status_code == 200
    assert c.get("/api/sessions", headers=ok).status_code == 200
    assert c.get("/api/calls/c?token=s3cret").status_code == 200
    page = c.get("/")
    assert page.status_code == 200  # the page itself holds no data; it asks for the token
    # escaped text is the first defence against hostile text, this the second: no inline or remote script
    assert (
        "script-src 'self';" in page.headers["content-security-policy"]
        and "unsafe" not in page.headers["content-security-policy"]
    )
    for r in (page, c.get("/api/sessions", headers=ok)):
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"


def test_non_loopback_bind_requires_a_token() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert loopback_hosts("::1") == ["127.0.0.1", "[::1]", "localhost"] and "127.0.0.2" in loopback_hosts("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    with pytest.raises(ToolError, match="without a token"):
        serve("0.0.0.0", 1, None)


def test_the_store_keeps_order_and_results_across_reopen(tmp_path: Path) -> None:
    store = Store.in_home(tmp_path)
    evs = [Event(type="tool.progress", session="s", call_id="c", data={"fraction": i / 10}) for i in range(10)]
    store.ingest(
        [*evs, Event(type="tool.result", session="s", call_id="c", data={"slim": 1, "result": {"full": [1, 2]}})]
    )
    store.close()
    again = Store.in_home(tmp_path)
    assert [e.data.get("fraction") for e in again.events("s")] == [i / 10 for i in range(10)] + [None]
    assert again.result("c") == {"full": [1, 2]} and again.events("s")[-1].data == {"slim": 1, "has_result": True}
    assert sqlite3.connect(again.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_two_servers_on_one_state_directory_share_one_log(tmp_path: Path) -> None:
    """Two mirrors on the same home (two ports, or a restart overlapping the old process) write by turns:
    the busy timeout makes the second writer wait instead of failing with "database is locked"."""
    stores = [Store.in_home(tmp_path), Store.in_home(tmp_path)]

    def write(k: int) -> None:
        for i in range(40):
            stores[k].ingest(
                [Event(type="tool.progress", session="s", call_id=f"c{k}", data={"i": i}) for _ in range(20)]
            )

    threads = [threading.Thread(target=write, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    logged = stores[0].events("s")
    assert len(logged) == 1600 and [e.seq for e in logged] == list(range(1, 1601))
    for k in (0, 1):
        assert [e.data["i"] for e in logged if e.call_id == f"c{k}"] == [i for i in range(40) for _ in range(20)]
    assert stores[1].sessions()[0].n_events == 1600


def test_an_unusable_state_directory_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ToolError, match=f"cannot open the mirror's database {tmp_path / 'file' / 'mirror.sqlite3'}"):
        app_for(tmp_path / "file")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "mirror.sqlite3").write_bytes(b"garbage, not SQLite" * 100)
    with pytest.raises(ToolError, match="mirror.sqlite3: file is not a database"):
        app_for(tmp_path / "home")


def _read_sse(url: str, headers: dict[str, str], n: int, out: list[dict]) -> None:
    """Collect SSE messages ({id, events}) until n events have arrived."""
    for msg_id, events in sse_messages(url, headers):
        out.append({"id": msg_id, "events": events})
        if sum(len(m["events"]) for m in out) >= n:
            return


def test_sse_stream_is_live_and_resumes_from_last_event_id(tmp_path: Path) -> None:
    with mirror_server(tmp_path / "home") as server:
        server.post(tool_call("s", "c1"))
        got: list[dict] = []
        reader = threading.Thread(target=_read_sse, args=(f"{server.url}/api/sessions/s/stream", {}, 5, got))
        reader.start()
        time.sleep(0.3)
        server.post(
            [
                ev("tool.start", "s", "c2", tool="t", card="x", args={}),
                ev("tool.start", "other", "c3", tool="t", card="x", args={}),
            ]
        )
        server.post(ev("tool.progress", "s", "c2", fraction=0.2, message="m"))
        reader.join(10)
        events = [e for m in got for e in m["events"]]
        assert [e["seq"] for e in events] == [1, 2, 3, 4, 6]  # seq 5 belongs to another session
        assert all(m["id"] == str(m["events"][-1]["seq"]) for m in got)  # the id a reconnect resumes after
        assert got[0]["id"] == "3"  # the backlog arrives as one message
        assert [e["type"] for e in events] == [
            "tool.start",
            "tool.progress",
            "tool.result",
            "tool.start",
            "tool.progress",
        ]
        assert "result" not in events[2]["data"] and events[2]["data"]["has_result"] is True
        assert events[2]["data"]["slim"] == tool_call("s", "c1")[2]["data"]["slim"]

        with httpx.stream("GET", f"{server.url}/api/sessions/s/stream", timeout=5) as r:
            lines = r.iter_lines()
            first = list(iter(lambda: next(lines), ""))
        assert f"retry: {RECONNECT_MS}" in first  # a page reconnects after 1 s, not the browser's 3

        resumed: list[dict] = []
        _read_sse(f"{server.url}/api/sessions/s/stream", {"Last-Event-ID": "3"}, 2, resumed)
        assert [e["seq"] for m in resumed for e in m["events"]] == [4, 6]
        resumed = []
        _read_sse(f"{server.url}/api/sessions/s/stream?after=4", {}, 1, resumed)
        assert [e["seq"] for m in resumed for e in m["events"]] == [6]


def test_a_killed_server_restarts_with_everything_still_listed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with mirror_server(home) as server:
        calls = [tool_call(f"s{i % 2}", f"call{i}", slim={"i": i}) for i in range(3)]
        for events in calls:
            server.post(events)
        before = (server.get("/api/sessions"), server.get("/api/sessions/s0/cards"), server.get("/api/calls/call2"))
        server.kill(signal.SIGKILL)
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/api/sessions")
        server.start()
        after = (server.get("/api/sessions"), server.get("/api/sessions/s0/cards"), server.get("/api/calls/call2"))
        assert after == before and len(after[0]) == 2 and len(after[1]["cards"]) == 2
        # the log continues after the restart, and a replay of old events is still deduplicated
        assert server.post(calls[0]) == {"accepted": 0, "duplicates": 3, "last_seq": 9}
        assert server.post(ev("tool.start", "s0", "call9"))["last_seq"] == 10
        # tokenless, it answers only to loopback names: a rebound attacker.example gets nothing
        assert httpx.get(f"http://localhost:{server.port}/api/sessions").status_code == 200
        assert (
            httpx.get(server.url + "/api/sessions", headers={"Host": f"attacker.example:{server.port}"}).status_code
            == 400
        )
