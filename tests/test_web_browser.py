"""The page in a real headless Chromium (Debian's, never a downloaded one): live cards, sync rows,
renderers, escaping of hostile text, reconnects."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect
from tool_runs import HOSTILE, run_every_tool
from web_fixtures import (
    MAX_POINTS,
    ROOT,
    MirrorServer,
    chromium,
    chromium_path,
    ev,
    fresh_page,
    long_run,
    mirror_server,
    tool_call,
)

from toolserver.registry import all_tools, get_tool
from toolserver.runner import invoke
from web_mirror.client import MirrorClient

pytestmark = pytest.mark.skipif(
    chromium_path() is None, reason="Debian chromium is not installed (make setup installs it)"
)

ARTIFACTS = ROOT / "test-artifacts"
XSS = [
    '<script>window.__xss = "script"</script>',
    "<img src=x onerror=\"window.__xss = 'img'\">",
    '"><svg onload="window.__xss=\'svg\'">',
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MirrorServer]:
    with mirror_server(tmp_path / "home") as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:  # one launch for the module; every test gets a fresh context
        yield b


@pytest.fixture
def page(server: MirrorServer, browser: Any) -> Iterator[Any]:
    with fresh_page(browser) as p:
        p.errors = []
        p.dialogs = []
        p.on("pageerror", lambda e: p.errors.append(str(e)))
        p.on("dialog", lambda d: (p.dialogs.append(d.message), d.dismiss()))
        yield p
    assert not p.errors, p.errors


def open_session(page: Any, server: MirrorServer, session: str) -> None:
    page.goto(f"{server.url}/#s={session}")
    page.wait_for_selector(".connection.live")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads


def card(page: Any, call_id: str, timeout: float = 10_000) -> Any:
    return page.wait_for_selector(f'article.card[data-call-id="{call_id}"]', timeout=timeout)


def test_a_real_weight_diff_from_the_cli_appears_live_with_its_sync_row(
    server: MirrorServer, page: Any, tmp_path: Path, tiny_gpt2: dict[str, Path]
) -> None:
    env = {**os.environ, "TRAINSPECT_HOME": str(tmp_path / "cli-home")}

    def cli(*argv: str) -> str:
        run = subprocess.run(
            [sys.executable, "-m", "toolserver.cli", *argv, "--mirror", server.url],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.rsplit("call_id ", 1)[1].split()[0]

    session_call = cli("session", "start", "--id", "live", "--model", str(tiny_gpt2["base"]))
    open_session(page, server, "live")
    card(page, session_call)
    call_id = cli("weight-diff", "--checkpoint", str(tiny_gpt2["full"]), "--name", "full <b>ft</b>")
    node = page.wait_for_selector(f'article.card[data-call-id="{call_id}"][data-status="ok"]')
    assert page.evaluate("window.__sameDocument") is True  # arrived over the stream, no reload
    assert page.eval_on_selector("#feed", "f => f.firstElementChild.dataset.callId") == call_id  # newest first

    # the body is the weightDiff renderer, fed by the tool's real slim payload
    full = server.get(f"/api/calls/{call_id}")
    slim_layers = sorted({r["layer"] for r in full["result"]["rows"]})
    assert node.query_selector(".wd canvas") is not None
    bars = page.evaluate(f"""() => {{
        const c = Chart.getChart(document.querySelector('article[data-call-id="{call_id}"] canvas'));
        return {{labels: c.data.labels, types: c.data.datasets.map(d => d.label), first: c.data.datasets[0].data}};
    }}""")
    assert bars["labels"] == [f"L{n}" for n in slim_layers]
    assert set(bars["types"]) == {r["matrix"] for r in full["result"]["rows"]}
    q_rows = {r["layer"]: r["fro_delta"] for r in full["result"]["rows"] if r["matrix"] == bars["types"][0]}
    assert bars["first"] == pytest.approx([q_rows[n] for n in slim_layers], rel=1e-3)
    rank_rows = node.query_selector_all(".wd-rank tbody tr")
    assert len(rank_rows) == len(slim_layers)
    top = node.query_selector(".wd-top").inner_text()
    assert full["result"]["top_changed"][0]["label"] in top
    assert "full <b>ft</b>" in node.inner_text()  # the label is text, not markup

    node.query_selector("summary.sync-line").click()
    sync = node.query_selector(".sync-body")
    sync.wait_for_element_state("visible")
    line = node.query_selector("summary.sync-line").inner_text()
    assert "Invoked" in line and "Completed" in line and call_id[:10] in line
    assert call_id in sync.inner_text() and "run_weight_diff" in sync.inner_text()
    node.query_selector(".full-btn").click()
    page.wait_for_selector(f'article[data-call-id="{call_id}"] .full-json:not([hidden])')
    assert f'"call_id": "{call_id}"' in node.query_selector(".full-json").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    node.query_selector("summary.sync-line").click()  # collapse again for a compact screenshot of the card
    node.screenshot(path=str(ARTIFACTS / "web-weight-diff-card.png"))
    node.query_selector("summary.sync-line").click()
    page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)


def test_hostile_text_is_shown_as_text_and_runs_nothing(server: MirrorServer, page: Any) -> None:
    open_session(page, server, "xss")
    a, b, c = XSS
    server.post(
        [
            ev("tool.start", "xss", "x1", tool=a, card="weightDiff", args={"name": b, "probes": [a, b]}),
            ev(
                "tool.result",
                "xss",
                "x1",
                tool=a,
                card="saeDiff",
                duration_s=1.0,
                findings=[{"text": b, "severity": "warn"}],
                slim={"layers": [{"layer": c, "name": b}], b: a},
                result={"x": a},
            ),
            ev("tool.start", "xss", "x2", tool="run_x", card=c, args={"checkpoint": f"/tmp/{a}"}),
            ev("tool.error", "xss", "x2", tool="run_x", card=c, duration_s=0.1, error=b, hint=a),
            ev(
                "training.watch.signal",
                "xss",
                "x3",
                run=a,
                signal={"type": b, "severity": "warn", "step": 1, "message": a, "layers": [b]},
            ),
            ev("training.watch.follow", "xss", "x4", run=b, note=a),
        ]
    )
    for cid in ("x1", "x2", "x3", "x4"):
        card(page, cid)
    page.click('article[data-call-id="x1"] summary.sync-line')
    page.click('article[data-call-id="x1"] .full-btn')
    page.wait_for_selector('article[data-call-id="x1"] .full-json:not([hidden])')
    page.reload()  # the snapshot path (server-side fold) must escape too
    for cid in ("x1", "x2", "x3", "x4"):
        card(page, cid)
    time.sleep(0.3)
    assert page.evaluate("window.__xss") is None and not page.dialogs
    injected = page.evaluate("""() => [...document.querySelectorAll('#feed *')].filter(n =>
        ['SCRIPT', 'IMG', 'IFRAME'].includes(n.tagName.toUpperCase())
        || [...n.attributes].some(a => a.name.startsWith('on'))).length""")
    assert injected == 0
    text = page.inner_text("#feed")
    for payload in (a, b):
        assert payload in text  # shown, literally

    # a session named in a hand-edited URL: not percent-decodable, hostile, still just a title
    page.goto(f"{server.url}/#s=%E0{b}")
    expect(page.locator("#session-title")).to_have_text(page.evaluate("location.hash.slice(3)"))  # as typed
    assert page.evaluate("window.__xss") is None


def test_the_watch_card_draws_sparklines_with_signal_markers_and_a_ranked_feed(server: MirrorServer, page: Any) -> None:
    open_session(page, server, "train")
    run = "run-1"
    steps = [
        ev(
            "training.watch.step",
            "train",
            run,
            run=run,
            snapshot={"step": i, "loss": 3 * math.exp(-i / 40), "maxGrad": 30.0 if i == 70 else 1.0},
        )
        for i in range(120)
    ]
    steps[100]["data"]["snapshot"]["loss"] = float("nan")
    signals = [
        {
            "type": "loss_plateau",
            "severity": "info",
            "step": 110,
            "metric": "loss_var",
            "value": 1e-4,
            "threshold": 1e-3,
            "layers": [],
            "message": "loss flat",
        },
        {
            "type": "gradient_spike",
            "severity": "critical",
            "step": 70,
            "metric": "maxGrad",
            "value": 30.0,
            "threshold": 20.0,
            "layers": [],
            "message": "spike",
        },
        {
            "type": "dead_layers",
            "severity": "warn",
            "step": 90,
            "metric": "gradNorm",
            "value": 0.0,
            "threshold": 1e-6,
            "layers": ["blocks.1.mlp"],
            "message": "dead",
        },
    ]
    body = json.dumps(
        steps + [ev("training.watch.signal", "train", run, run=run, signal=s) for s in signals]
    )  # NaN as Python writes it
    assert (
        httpx.post(f"{server.url}/api/events", content=body, headers={"content-type": "application/json"}).status_code
        == 200
    )
    node = card(page, run)
    page.wait_for_function(f"document.querySelectorAll('article[data-call-id=\"{run}\"] .signals li').length === 3")
    feed = [li.inner_text() for li in node.query_selector_all(".signals li")]
    assert [f.split()[0].lower() for f in feed] == ["critical", "warn", "info"]
    loss, grad = node.query_selector_all("svg.spark")
    assert len(loss.query_selector_all("line.marker")) == 2 and len(grad.query_selector_all("line.marker")) == 1
    assert len(loss.query_selector_all("line.nonfinite")) == 1  # the NaN step is marked, not drawn
    assert "blocks.1.mlp" in feed[1]
    node.screenshot(path=str(ARTIFACTS / "web-watch-card.png"))


def test_a_long_run_draws_the_same_bounded_series_live_as_after_a_reload(server: MirrorServer, page: Any) -> None:
    signal_steps = [
        5,
        1234,
        2499,
        4321,
        5998,
    ]  # 2499's signal arrives after the page has loaded the snapshot with its step
    batches = long_run("long", "run", 6_000, signal_steps)
    split = next(
        i
        for i, b in enumerate(batches)
        if any(e["type"] == "training.watch.signal" and e["data"]["signal"]["step"] == 2499 for e in b)
    )
    head = batches[split][
        : next(
            i
            for i, e in enumerate(batches[split])
            if e["type"] == "training.watch.signal" and e["data"]["signal"]["step"] == 2499
        )
    ]
    for batch in [*batches[:split], head]:
        server.post(batch)
    open_session(page, server, "long")
    card(page, "run")
    for batch in [batches[split][len(head) :], *batches[split + 1 :]]:
        server.post(batch)  # folded live by the page, on top of the server's fold of the first part
    w = server.get("/api/sessions/long/cards")["cards"][0]["live"]
    assert len(w["points"]) <= MAX_POINTS and w["points"][-1]["step"] == 5999
    assert [p["step"] for p in w["points"] if p["pinned"]] == signal_steps
    note = f"steps 0–5999 · {len(w['points'])} points"
    expect(page.locator('article[data-call-id="run"] .steps-note')).to_have_text(note)

    def drawn() -> dict[str, Any]:
        node = card(page, "run")
        grad = node.query_selector_all("svg.spark")[1]
        return {
            "d": grad.query_selector("path.line").get_attribute("d"),
            "note": node.query_selector(".steps-note").inner_text(),
            "markers": [m.get_attribute("x1") for m in grad.query_selector_all("line.marker")],
        }

    live = drawn()
    assert len(live["markers"]) == len(signal_steps)
    xs = {seg.split(",")[0] for seg in live["d"][1:].split("L")}
    assert all(f"{float(x):.1f}" in xs for x in live["markers"])  # every marker sits on a point of the line
    page.reload()
    expect(page.locator('article[data-call-id="run"] .steps-note')).to_have_text(note)
    assert page.evaluate("window.__sameDocument") is None and drawn() == live  # the page's fold equals the server's


def test_a_new_tool_kind_gets_the_generic_table_and_reload_shows_the_same_cards(
    server: MirrorServer, page: Any
) -> None:
    open_session(page, server, "gen")
    server.post(
        tool_call(
            "gen",
            "g1",
            tool="run_future_tool",
            card="futureCard",
            slim={"score": 0.731, "rows": [{"layer": 0, "drift": 0.12}, {"layer": 1, "drift": 0.34}]},
        )
    )
    server.post(
        [
            ev("tool.start", "gen", "g2", tool="run_slow", card="slowCard", args={"name": "half"}),
            ev("tool.progress", "gen", "g2", fraction=0.5, message="layer 1/2"),
        ]
    )
    server.post([ev("training.watch.note", "gen", "sim", run="sim", pass_index=1, name="sae baseline")])
    node = card(page, "g1")
    page.wait_for_selector('article[data-call-id="g2"] .progress .fill')
    page.wait_for_selector('article[data-call-id="sim"]')
    assert "0.731" in node.inner_text() and "0.34" in node.query_selector("table.rows").inner_text()
    live = page.inner_text("#feed")
    page.reload()
    card(page, "sim")
    assert page.inner_text("#feed") == live  # the page's fold of the stream equals the server's fold


def test_a_page_survives_a_server_restart_and_misses_nothing(server: MirrorServer, page: Any) -> None:
    server.post(tool_call("r", "before"))
    open_session(page, server, "r")
    card(page, "before")
    refusals: list[str] = []

    def refuse_once(route: Any) -> None:  # like a proxy's 502 while the mirror restarts: EventSource gives up on it
        if refusals:
            route.continue_()
        else:
            refusals.append(route.request.url)
            route.fulfill(status=502, body="bad gateway")

    page.route("**/api/sessions/r/stream?*", refuse_once)
    server.kill()
    page.wait_for_selector(".connection.down")
    server.start()
    server.post(tool_call("r", "after1"))
    server.post(tool_call("r", "after2"))
    card(page, "after2", timeout=15_000)
    assert page.evaluate("window.__sameDocument") is True
    ids = page.eval_on_selector_all("article.card", "ns => ns.map(n => n.dataset.callId)")
    assert ids == ["after2", "after1", "before"]
    assert len(refusals) == 1 and "after=" in refusals[0]
    assert page.eval_on_selector('article[data-call-id="after1"]', "n => n.dataset.status") == "ok"


def test_with_a_token_the_page_asks_for_it_and_then_works(tmp_path: Path, browser: Any) -> None:
    with mirror_server(tmp_path / "home", token="tok-123") as server, fresh_page(browser) as page:
        server.post(tool_call("t", "c1"))
        page.goto(server.url)
        page.wait_for_selector("#token-form:not([hidden])")
        page.goto(f"{server.url}/?token=tok-123")
        card(page, "c1")
        assert "token" not in page.url
        server.post(tool_call("t", "c2"))
        card(page, "c2")  # the stream authenticates too


def test_a_real_watch_run_from_the_cli_renders_its_slim_payload(
    server: MirrorServer, page: Any, tmp_path: Path
) -> None:
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.parent.mkdir()
    rows = [
        {"step": i, "loss": 2.5 * math.exp(-i / 60) + 0.3, "maxGrad": 40.0 if i == 50 else 1.0 + 0.01 * (i % 7)}
        for i in range(1, 121)
    ]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    open_session(page, server, "default")
    env = {**os.environ, "TRAINSPECT_HOME": str(tmp_path / "cli-home")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "toolserver.cli",
            "watch",
            "--metrics",
            str(metrics),
            "--run",
            "spiky",
            "--mirror",
            server.url,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    call_id = run.stdout.rsplit("call_id ", 1)[1].split()[0]
    node = page.wait_for_selector(f'article.card[data-call-id="{call_id}"][data-status="ok"]')
    result = server.get(f"/api/calls/{call_id}")["result"]
    spikes = [s for s in result["signals"] if s["type"] == "gradient_spike"]
    assert spikes and spikes[0]["step"] == 50
    loss, grad = node.query_selector_all("svg.spark")
    assert len(grad.query_selector_all("line.marker")) == len(spikes)
    feed = node.query_selector_all(".signals li")
    assert len(feed) == len(result["signals"]) and "step 50" in feed[0].inner_text()
    assert "spiky" in node.query_selector("h3").inner_text()
    node.screenshot(path=str(ARTIFACTS / "web-watch-cli-card.png"))


def test_the_watch_card_shows_a_loss_jump_an_overflow_and_episodes(
    server: MirrorServer, page: Any, tmp_path: Path
) -> None:
    """The default rules on the card: the jump and the overflow marked on their sparklines, a dead layer's
    start and its end with how long it lasted, and the plateau after the jump listed as ongoing."""
    mlp = "model.layers.1.mlp.down_proj"
    rows = [
        {
            "step": i,
            "loss": 2.5 * math.exp(-i / 30) + 0.3 + 0.05 * (-1) ** i if i < 80 else 7.5 + 0.001 * (-1) ** i,
            "maxGrad": "Infinity" if i == 40 else 1.0 + 0.01 * (i % 7),
            "gradNorms": {"model.layers.0.self_attn.q_proj": 0.4, mlp: 0.0 if 20 <= i < 50 else 0.3},
        }
        for i in range(1, 141)
    ]
    metrics = "".join(json.dumps(r).replace('"Infinity"', "Infinity") + "\n" for r in rows)
    path = tmp_path / "jump.jsonl"
    path.write_text(metrics)
    open_session(page, server, "default")
    mirror = MirrorClient(server.url)
    try:
        env = invoke(get_tool("watch"), {"metrics": str(path), "run": "jump"}, mirror=mirror, call_id="watch-jump")
    finally:
        mirror.close()
    by = {(s.type, s.episode): s for s in env.result.signals}
    assert by[("loss_spike", None)].step == 80 and by[("grad_nonfinite", None)].step == 40
    assert by[("dead_layers", "end")].duration_steps == 30
    node = card(page, "watch-jump")
    loss, grad = node.query_selector_all("svg.spark")
    assert loss.query_selector_all("line.marker") and len(grad.query_selector_all("line.marker")) == 1
    assert "ended · 30 steps" in node.inner_text()
    ongoing = node.query_selector_all(".ongoing li")
    assert len(ongoing) == 1 and "loss_plateau" in ongoing[0].inner_text() and "since step" in ongoing[0].inner_text()
    node.screenshot(path=str(ARTIFACTS / "web-watch-episodes.png"))


def test_every_registered_card_kind_draws_a_real_run_with_its_own_renderer(
    server: MirrorServer, page: Any, tiny_gpt2: dict[str, Path], tmp_path: Path
) -> None:
    """Every tool run for real, mirrored as the runner mirrors it; each card is drawn by the renderer of its kind
    (never the generic fallback, never a console error), and each is saved as a screenshot to look at."""
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    mirror = MirrorClient(server.url)
    try:
        runs = run_every_tool(tiny_gpt2, tmp_path, mirror=mirror, session="kinds")
    finally:
        mirror.close()
    open_session(page, server, "kinds")
    assert {spec.card for spec, _ in runs} == {spec.card for spec in all_tools()}
    for spec, env in runs:
        node = card(page, env.call_id)
        page.wait_for_selector(f'article.card[data-call-id="{env.call_id}"][data-status="ok"]')
        assert node.get_attribute("data-renderer") == spec.card, spec.name
        assert "[object" not in node.inner_text() and "undefined" not in node.inner_text(), spec.name
        node.screenshot(path=str(ARTIFACTS / f"card-{spec.card}-{spec.name}.png"))
    page.screenshot(path=str(ARTIFACTS / "web-every-kind.png"), full_page=True)
    assert console == []
    # the model-diff card's eval rows carry markup (tool_runs.hostile_eval): shown as text, never run
    md = next(env for spec, env in runs if spec.name == "run_model_diff")
    text = card(page, md.call_id).inner_text()
    assert HOSTILE in text and "<b>geo</b>" in text
    assert page.evaluate("window.__xss") is None
    assert page.eval_on_selector_all(f'article[data-call-id="{md.call_id}"] script, article b', "ns => ns.length") == 0
