"""`make demo`'s job end to end: models built, mirror started, every tool run, its cards in the page."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from web_fixtures import ARTIFACTS_DIR, browser_page, chromium_path, free_port


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    demo_dir = tmp_path / "demo"
    env = {
        **os.environ,
        "TRAINSPECT_DEMO_DIR": str(demo_dir),
        "TRAINSPECT_DEMO_PORT": str(port),
        "TRAINSPECT_HOME": str(tmp_path / "home"),
    }
    proc = subprocess.run([sys.executable, "-m", "tools.demo"], env=env, capture_output=True, text=True, timeout=600)
    pid = int((demo_dir / "web.pid").read_text()) if (demo_dir / "web.pid").exists() else None
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"web mirror: http://127.0.0.1:{port}" in proc.stdout
        for text in (
            "trainspect weight-diff",
            "top changed",
            "trainspect watch",
            "gradient_spike",
            "loss_spike",  # the learning-rate ramp's loss jump (the seed's five detectors miss it)
            "trainspect sae diff",
            "changed under the stated rule",
            "residual drift",
            "sae align",
            "trainspect merge-analysis",
            "VERDICT:",
            "trainspect trajectory-analysis",
            "trainer@16",
            "trainspect model-diff",
            "robustness",
            "trainspect regressions",
            "trainspect simulate",
            "no optimiser step",
            "trainspect simulate compare",
            "assistant-speak rows 1 → 0",
            "trainspect analysis",
            "gradient waterfall",
        ):
            assert text in proc.stdout, text
        cards = httpx.get(f"http://127.0.0.1:{port}/api/sessions/demo/cards", timeout=10).json()
        kinds = [c["kind"] for c in cards["cards"]]
        assert all(c["status"] == "ok" for c in cards["cards"]), [(c["kind"], c["error"]) for c in cards["cards"]]
        for kind, n in (
            ("weightDiff", 2),
            ("residualDrift", 2),
            ("saeTrain", 2),
            ("sae", 1),
            ("saeDiff", 2),
            ("saeAlign", 1),
            ("watch", 1),
            ("mergeAnalysis", 1),
            ("trajectoryAnalysis", 1),
            ("modelDiff", 2),
            ("regressions", 1),
            ("session", 2),
            ("simulation", 2),
            ("simulationCompare", 1),
            ("analysisView", 1),
        ):
            assert kinds.count(kind) == n, (kind, kinds)
        if chromium_path():  # the page as a user opens it: every card drawn by its own renderer
            with browser_page(height=1200) as page:
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"http://127.0.0.1:{port}/#s=demo")
                page.wait_for_selector(".connection.live")
                deadline = time.monotonic() + 20
                while len(
                    drawn := page.eval_on_selector_all("article.card", "ns => ns.map(n => n.dataset.renderer)")
                ) < len(kinds):
                    assert time.monotonic() < deadline, drawn
                    time.sleep(0.1)
                assert sorted(drawn) == sorted(kinds) and not errors, (drawn, errors)
                ARTIFACTS_DIR.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS_DIR / "demo-page.png"), full_page=True)
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
