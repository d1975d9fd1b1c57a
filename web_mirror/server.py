"""`trainspect web`: run the orchestrator with uvicorn, refusing to expose it without a token."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import uvicorn

from toolserver.contract import MirrorContract, ToolError
from toolserver.contract import home as default_home
from web_mirror.app import create_app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname might resolve anywhere


def loopback_hosts(host: str) -> list[str]:
    """The Host header values a tokenless mirror bound to loopback `host` answers to."""
    return sorted({"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host})


def serve(
    host: str = "127.0.0.1",
    port: int = 8002,
    token: str | None = None,
    home: Path | None = None,
    contract: MirrorContract | None = None,
) -> None:
    """Serve until interrupted. Binding a non-loopback address needs a token, which every API call must then
    carry; without one, only requests addressed to a loopback name are answered (no DNS rebinding)."""
    if not is_loopback(host) and not token:
        raise ToolError(
            f"refusing to bind {host} without a token",
            "pass --token T (clients send it as a Bearer token), or bind 127.0.0.1",
        )
    root = home or default_home()
    app = create_app(root, contract=contract, token=token or None, hosts=None if token else loopback_hosts(host))
    print(f"trainspect web mirror on http://{host}:{port}  (data in {root})", flush=True)
    # a page holding its event stream open must not keep the server from stopping
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=1)
