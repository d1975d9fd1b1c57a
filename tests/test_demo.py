"""`make demo`'s job end to end: models built, mirror started, tools run, cards already in the page's API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from web_fixtures import free_port


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
        for text in ("trainspect weight-diff", "top changed", "trainspect watch", "gradient_spike"):
            assert text in proc.stdout, text
        cards = httpx.get(f"http://127.0.0.1:{port}/api/sessions/demo/cards", timeout=10).json()
        kinds = sorted(c["kind"] for c in cards["cards"])
        assert kinds.count("weightDiff") == 2 and "watch" in kinds and "session" in kinds
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
