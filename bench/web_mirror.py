"""Web mirror throughput and latency: `.venv/bin/python -m bench.web_mirror`.

1. Ingest: events/s sustained over HTTP into SQLite while an SSE client streams the same session,
   counted when the stream has delivered the last event (end to end). Batched POSTs are how the
   client delivers a backlog; single-event POSTs are how it sends live. Baseline: the same events
   written straight into the Store (no HTTP, no stream) in this run.
2. Event-to-browser latency in headless Chromium: the page itself POSTs an event for a new card and a
   MutationObserver notes when that card is in the DOM (one clock). Baseline: the POST's own round
   trip. Measured idle and while another session ingests in the background.

3. The client's bounded spool while the mirror is down: appending a run of tool calls (start, progress,
   a ~145 KB result each) well past the default 64 MiB bound, where the stalest calls are dropped.
   Baseline: the same appends to an unbounded spool. Reported: the cost ratio and the longest single
   append (the pause a tool call sees when it triggers a drop).

4. `GET /api/sessions/{id}/cards` for a session holding one 100,000-step watch run: the first request after
   a (re)start (folds the whole log), then repeated requests (the per-session fold cache), then a request
   after another 100 steps arrive (folds only those). Baseline: re-folding the whole log in-process, which
   is what every request cost before the cache. Also reported: the card's point count and the reply size.

Targets (issue): ingest >= 2,000 events/s, p95 latency < 250 ms.
`.venv/bin/python -m bench.web_mirror cards` runs part 4 alone.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.web_fixtures import MirrorServer, browser_page, chromium_path
from toolserver.registry import mirror_contract
from web_mirror.cards import Folder
from web_mirror.client import SPOOL_MAX_DEFAULT, Spool
from web_mirror.events import Event
from web_mirror.store import Store
from web_mirror.wire import dumps

N_EVENTS = 20_000
BATCH = 500
N_SINGLE = 3_000
LATENCY_SAMPLES = 150


def _events(n: int, session: str) -> list[dict[str, Any]]:
    """A realistic mix: a training run's step events, with a tool call's start/progress/result now and then."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        if i % 50 == 0:
            out.append(
                {
                    "event_id": uuid.uuid4().hex,
                    "type": "tool.progress",
                    "session": session,
                    "call_id": f"call{i // 500}",
                    "ts": time.time(),
                    "data": {"fraction": (i % 500) / 500, "message": f"layer {i % 32}/32"},
                }
            )
        else:
            out.append(
                {
                    "event_id": uuid.uuid4().hex,
                    "type": "training.watch.step",
                    "session": session,
                    "call_id": "run-1",
                    "ts": time.time(),
                    "data": {
                        "run": "run-1",
                        "snapshot": {
                            "step": i,
                            "loss": 2.0 / (1 + i / 1000),
                            "maxGrad": 1.0,
                            "learning_rate": 1e-4,
                            "gradNorms": {f"blocks.{k}.mlp": 0.1 for k in range(4)},
                        },
                    },
                }
            )
    return out


class _StreamWatcher(threading.Thread):
    """Reads a session's SSE stream and remembers the highest seq delivered so far."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seen = 0
        self.ready = threading.Event()
        self.cond = threading.Condition()

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=None) as r:
                self.ready.set()
                for line in r.iter_lines():
                    if line.startswith("id:"):  # the seq of the last event in the message
                        with self.cond:
                            self.seen = int(line[3:])
                            self.cond.notify_all()
        except httpx.HTTPError:
            pass  # the server stopped at the end of the run

    def wait_for(self, seq: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.seen >= seq, timeout)


def _timed_ingest(server: MirrorServer, session: str, post: Any, events: list[dict[str, Any]]) -> float:
    """Seconds from the first POST until the SSE stream has delivered the last event."""
    watcher = _StreamWatcher(f"{server.url}/api/sessions/{session}/stream")
    watcher.start()
    watcher.ready.wait(10)
    t0 = time.perf_counter()
    last_seq = post(events)
    if not watcher.wait_for(last_seq, 120):
        raise RuntimeError("the stream did not deliver every event")
    return time.perf_counter() - t0


def bench_ingest(server: MirrorServer) -> dict[str, float]:
    http = httpx.Client(timeout=30)

    def post_batches(events: list[dict[str, Any]]) -> int:
        last = 0
        for i in range(0, len(events), BATCH):
            last = http.post(f"{server.url}/api/events", json=events[i : i + BATCH]).json()["last_seq"]
        return last

    def post_singles(events: list[dict[str, Any]], workers: int) -> int:
        clients = [httpx.Client(timeout=30) for _ in range(workers)]

        def one(i: int) -> int:
            return int(clients[i % workers].post(f"{server.url}/api/events", json=events[i]).json()["last_seq"])

        with ThreadPoolExecutor(workers) as pool:
            last = max(pool.map(one, range(len(events))))
        for c in clients:
            c.close()
        return last

    with tempfile.TemporaryDirectory() as tmp:  # baseline: the store alone, same events, same batches
        store = Store(Path(tmp) / "base.sqlite3")
        models = [Event.model_validate(e) for e in _events(N_EVENTS, "base")]
        t0 = time.perf_counter()
        for i in range(0, len(models), BATCH):
            store.ingest(models[i : i + BATCH])
        store_rate = N_EVENTS / (time.perf_counter() - t0)
        store.close()

    batched = N_EVENTS / _timed_ingest(server, "batched", post_batches, _events(N_EVENTS, "batched"))
    single1 = N_SINGLE / _timed_ingest(server, "single1", lambda ev: post_singles(ev, 1), _events(N_SINGLE, "single1"))
    single4 = N_SINGLE / _timed_ingest(server, "single4", lambda ev: post_singles(ev, 4), _events(N_SINGLE, "single4"))
    http.close()
    return {"store": store_rate, "batched": batched, "single1": single1, "single4": single4}


_MEASURE_JS = """async ([n, session]) => {
  const feed = document.getElementById('feed');
  const out = [];
  for (let i = 0; i < n; i++) {
    const id = 'lat-' + i + '-' + Math.random().toString(36).slice(2);
    const seen = new Promise((resolve) => {
      const obs = new MutationObserver(() => {
        if (feed.querySelector(`article[data-call-id="${id}"]`)) { obs.disconnect(); resolve(performance.now()); }
      });
      obs.observe(feed, {childList: true});
    });
    const t0 = performance.now();
    const r = await fetch('/api/events', {method: 'POST', headers: {'content-type': 'application/json'},
      body: JSON.stringify({type: 'tool.start', session, call_id: id,
                            data: {tool: 'run_latency', card: 'latency', args: {i}}})});
    const t1 = performance.now();
    await r.json();
    const t2 = await seen;
    out.push([t2 - t0, t1 - t0]);
    await new Promise((res) => setTimeout(res, 15));
  }
  return out;
}"""


def bench_latency(server: MirrorServer) -> dict[str, list[float]]:
    session = "latency"
    httpx.post(
        f"{server.url}/api/events",
        json={
            "type": "tool.start",
            "session": session,
            "call_id": "warm",
            "data": {"tool": "warm", "card": "x", "args": {}},
        },
    )
    results: dict[str, list[float]] = {}
    with browser_page() as page:
        page.goto(f"{server.url}/#s={session}")
        page.wait_for_selector(".connection.live")
        page.wait_for_selector('article[data-call-id="warm"]')
        idle = page.evaluate(_MEASURE_JS, [LATENCY_SAMPLES, session])
        results["idle"] = [a for a, _ in idle]
        results["post"] = [b for _, b in idle]

        stop = threading.Event()
        sent = [0]

        def background() -> None:  # another session ingesting ~1,000 events/s meanwhile
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    t = time.perf_counter()
                    http.post(f"{server.url}/api/events", json=_events(100, "background"))
                    sent[0] += 100
                    time.sleep(max(0.0, 0.1 - (time.perf_counter() - t)))

        bg = threading.Thread(target=background, daemon=True)
        t0 = time.perf_counter()
        bg.start()
        loaded = page.evaluate(_MEASURE_JS, [LATENCY_SAMPLES, session])
        stop.set()
        bg.join()
        results["loaded"] = [a for a, _ in loaded]
        results["bg_rate"] = [sent[0] / (time.perf_counter() - t0)]
    return results


SPOOL_WRITTEN = 160 * 1024 * 1024


def bench_spool() -> dict[str, float]:
    result = {
        "rows": [
            {"layer": i, "matrix": "Q", "fro_delta": 0.123456789, "rel_delta": 0.001, "stable_rank": 3.2}
            for i in range(2000)
        ]
    }
    template = [("tool.start", {"tool": "run_weight_diff", "args": {"checkpoint": "run/step_500.pt"}})]
    template += [("tool.progress", {"fraction": i / 20, "message": f"layer {i}/20"}) for i in range(20)]
    template += [("tool.result", {"tool": "run_weight_diff", "slim": {}, "result": result})]
    lines: list[bytes] = []
    for c in range(10_000):
        lines += [
            dumps(Event(type=t, session="s", call_id=f"call{c}", data=d).model_dump()).encode() for t, d in template
        ]
        if sum(map(len, lines)) > SPOOL_WRITTEN:
            break
    out: dict[str, float] = {}
    for name, bound in (("unbounded", 2**62), ("bounded", SPOOL_MAX_DEFAULT)):
        with tempfile.TemporaryDirectory() as tmp:
            spool = Spool(Path(tmp), "http://127.0.0.1:8002", max_bytes=bound)
            worst = 0.0
            t0 = time.perf_counter()
            with spool.locked():
                for line in lines:
                    t = time.perf_counter()
                    spool.append([line])
                    worst = max(worst, time.perf_counter() - t)
            out[name], out[f"{name}_worst"], out[f"{name}_size"] = (
                time.perf_counter() - t0,
                worst,
                spool.path.stat().st_size,
            )
    out["written"] = sum(map(len, lines))
    return out


CARDS_STEPS = 100_000


def _run_steps(first: int, n: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": uuid.uuid4().hex,
            "type": "training.watch.step",
            "session": "long",
            "call_id": "run-1",
            "ts": time.time(),
            "data": {
                "run": "run-1",
                "snapshot": {
                    "step": i,
                    "loss": 2.0 / (1 + i / 1000),
                    "maxGrad": 1.0,
                    "learning_rate": 1e-4,
                    "gradNorms": {f"blocks.{k}.mlp": 0.1 for k in range(4)},
                },
            },
        }
        for i in range(first, first + n)
    ]


def bench_cards(home: Path) -> dict[str, float]:
    """Latencies (s) of /cards over a 100k-step session: first after a start, cached, after 100 new steps."""
    server = MirrorServer(home).start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for i in range(0, CARDS_STEPS, 1000):
                http.post("/api/events", json=_run_steps(i, 1000)).raise_for_status()
            server.kill()
            server.start()  # a fresh process: nothing folded yet

            def get() -> tuple[float, httpx.Response]:
                t0 = time.perf_counter()
                r = http.get("/api/sessions/long/cards")
                r.raise_for_status()
                return time.perf_counter() - t0, r

            first, reply = get()
            cached = [get()[0] for _ in range(20)]
            http.post("/api/events", json=_run_steps(CARDS_STEPS, 100)).raise_for_status()
            after_new, _ = get()
    finally:
        server.kill()
    store = Store.in_home(home)
    t0 = time.perf_counter()
    Folder(mirror_contract().families).fold(store.events("long"))
    refold = time.perf_counter() - t0
    store.close()
    return {
        "first": first,
        "cached": statistics.median(cached),
        "after_new": after_new,
        "refold": refold,
        "points": len(reply.json()["cards"][0]["live"]["points"]),
        "bytes": len(reply.content),
    }


def _print_cards() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        c = bench_cards(Path(tmp) / "home")
    print(
        f"/cards, one {CARDS_STEPS}-step watch run ({c['points']} points, {c['bytes'] / 1024:.0f} KiB): first after "
        f"a start "
        f"{c['first'] * 1000:.0f} ms, cached p50 {c['cached'] * 1000:.1f} ms, after 100 new steps "
        f"{c['after_new'] * 1000:.1f} ms; "
        f"baseline re-fold of the whole log in-process {c['refold'] * 1000:.0f} ms (cached = "
        f"{c['cached'] / c['refold']:.3f}x the re-fold)"
    )


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    if sys.argv[1:] == ["cards"]:
        _print_cards()
        return
    _print_cards()
    sp = bench_spool()
    print(
        f"spool, {sp['written'] / 2**20:.0f} MiB appended with the mirror down: bounded at "
        f"{SPOOL_MAX_DEFAULT / 2**20:.0f} MiB "
        f"{sp['bounded']:.2f} s ({sp['bounded'] / sp['unbounded']:.2f}x the unbounded {sp['unbounded']:.2f} s), file "
        f"{sp['bounded_size'] / 2**20:.0f} MiB (unbounded {sp['unbounded_size'] / 2**20:.0f} MiB), longest append "
        f"{sp['bounded_worst'] * 1000:.0f} ms (unbounded {sp['unbounded_worst'] * 1000:.1f} ms)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        server = MirrorServer(Path(tmp) / "home").start()
        try:
            r = bench_ingest(server)
            print(
                f"ingest, {N_EVENTS} events in batches of {BATCH}, SSE attached: {r['batched']:8.0f} events/s "
                f"({r['batched'] / r['store']:.2f}x the bare Store at {r['store']:.0f} events/s)  target >= 2000: "
                f"{'met' if r['batched'] >= 2000 else 'MISSED'}"
            )
            print(
                f"ingest, one event per POST, 1 connection:   {r['single1']:8.0f} events/s "
                f"({r['single1'] / r['store']:.2f}x Store)"
            )
            print(
                f"ingest, one event per POST, 4 connections:  {r['single4']:8.0f} events/s "
                f"({r['single4'] / r['store']:.2f}x Store)"
            )
            if chromium_path() is None:
                print("latency: skipped (no Debian chromium)")
                return
            lat = bench_latency(server)
            post50 = _pct(lat["post"], 50)
            for name in ("idle", "loaded"):
                v = lat[name]
                extra = f", background ingest {lat['bg_rate'][0]:.0f} events/s" if name == "loaded" else ""
                print(
                    f"event -> card in Chromium DOM ({name}{extra}): p50 {_pct(v, 50):6.1f} ms  p95 "
                    f"{_pct(v, 95):6.1f} ms  "
                    f"max {max(v):6.1f} ms  ({_pct(v, 50) / post50:.1f}x the POST round trip p50 {post50:.1f} ms)  "
                    f"target p95 < 250 ms: {'met' if _pct(v, 95) < 250 else 'MISSED'}"
                )
        finally:
            server.kill()


if __name__ == "__main__":
    main()
