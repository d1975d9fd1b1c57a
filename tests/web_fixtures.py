"""Helpers for the web mirror tests: a real server subprocess, event builders, and a headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tools.watch.snapshot import WATCH_EVENTS
from toolserver.registry import mirror_contract
from web_mirror.app import MAX_BATCH, create_app

CONTRACT = mirror_contract()  # what `trainspect web` serves: the registered tools' cards and live families
MAX_POINTS = WATCH_EVENTS.max_points

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS_DIR = ROOT / "test-artifacts"  # screenshots to look at
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def app_for(home: Path, **kw: Any) -> Any:
    """The mirror app as `trainspect web` builds it (the registry's contract), over `home`."""
    return create_app(home, contract=CONTRACT, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MirrorServer:
    """`trainspect web` (`python -m toolserver.cli web`) on a free loopback port, with its own home; restartable."""

    def __init__(self, home: Path, *, token: str | None = None, port: int | None = None) -> None:
        self.home = home
        self.token = token
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home.parent / f"mirror-{self.port}.log"

    def start(self) -> MirrorServer:
        cmd = [sys.executable, "-m", "toolserver.cli", "web", "--port", str(self.port), "--home", str(self.home)]
        if self.token:
            cmd += ["--token", self.token]
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=log, env={**os.environ, "TRAINSPECT_MIRROR_TOKEN": ""}
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mirror exited: {self.log.read_text()}")
            try:
                httpx.get(f"{self.url}/openapi.json", timeout=0.5)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"mirror did not start: {self.log.read_text()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path: str) -> Any:
        r = httpx.get(self.url + path, headers=self.headers(), timeout=5)
        r.raise_for_status()
        return r.json()

    def post(self, events: Any) -> Any:
        r = httpx.post(self.url + "/api/events", json=events, headers=self.headers(), timeout=5)
        r.raise_for_status()
        return r.json()


@contextmanager
def mirror_server(home: Path, **kw: Any) -> Iterator[MirrorServer]:
    server = MirrorServer(home, **kw).start()
    try:
        yield server
    finally:
        server.kill(signal.SIGTERM)


def sse_messages(
    url: str, headers: dict[str, str] | None = None, timeout: float = 10
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A mirror stream's messages as they arrive: (id, the message's events)."""
    with httpx.stream("GET", url, headers=headers or {}, timeout=timeout) as r:
        msg_id, events = "", None
        for line in r.iter_lines():
            if line.startswith("id:"):
                msg_id = line[3:].strip()
            elif line.startswith("data:"):
                events = json.loads(line[5:])
            elif line == "" and events is not None:
                yield msg_id, events
                msg_id, events = "", None


def stream_events(server: MirrorServer, session: str) -> list[dict[str, Any]]:
    """The session's whole event log, read through its SSE stream."""
    last = server.get(f"/api/sessions/{session}/cards")["last_seq"]
    out: list[dict[str, Any]] = []
    for _, events in sse_messages(f"{server.url}/api/sessions/{session}/stream", server.headers()):
        out += events
        if out[-1]["seq"] >= last:
            return out
    return out


def ev(type: str, session: str, call_id: str, **data: Any) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "type": type,
        "session": session,
        "call_id": call_id,
        "ts": time.time(),
        "data": data,
    }


def long_run(
    session: str, run: str, n_steps: int, signal_steps: list[int], dropped: int = 777
) -> list[list[dict[str, Any]]]:
    """A StepLogger's events for a long run, in POST-sized batches: each signal right after its step (as the
    emitter sends it), and step `dropped` missing (a full mirror queue drops steps, never signals)."""
    events = []
    for i in range(n_steps):
        if i != dropped:
            events.append(
                ev(
                    "training.watch.step",
                    session,
                    run,
                    run=run,
                    snapshot={"step": i, "loss": 1 / (1 + i), "maxGrad": 1.0},
                )
            )
        if i in signal_steps:
            events.append(
                ev(
                    "training.watch.signal",
                    session,
                    run,
                    run=run,
                    signal={"type": "gradient_spike", "severity": "warn", "step": i, "message": "spike"},
                )
            )
    return [events[k : k + MAX_BATCH] for k in range(0, len(events), MAX_BATCH)]


def tool_call(
    session: str, call_id: str, tool: str = "run_demo", card: str = "demo", slim: Any = None, **args: Any
) -> list[dict[str, Any]]:
    """The start/progress/result events the runner sends for one successful call."""
    envelope = {
        "schema_version": 1,
        "tool": tool,
        "call_id": call_id,
        "inputs": args,
        "result": {"slim": slim, "detail": list(range(50))},
    }
    return [
        ev("tool.start", session, call_id, tool=tool, card=card, args=args),
        ev("tool.progress", session, call_id, fraction=0.5, message="halfway"),
        ev(
            "tool.result",
            session,
            call_id,
            tool=tool,
            card=card,
            duration_s=0.25,
            slim=slim,
            findings=[{"text": "a finding", "severity": "warn"}],
            result=envelope,
        ),
    ]


def chromium_path() -> str | None:
    return shutil.which("chromium")


@contextmanager
def chromium() -> Iterator[Any]:
    """The system's headless Chromium (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def fresh_page(browser: Any, width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A page in its own context (no storage shared with other pages), closed afterwards."""
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        yield context.new_page()
    finally:
        context.close()


@contextmanager
def browser_page(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A page in a Chromium of its own."""
    with chromium() as browser, fresh_page(browser, width, height) as page:
        yield page
