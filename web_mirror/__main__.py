"""`python -m web_mirror [--host H] [--port P] [--token T] [--home DIR]`: the same server as `trainspect web`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from toolserver.registry import ToolError
from web_mirror.server import serve


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m web_mirror", description="serve the trainspect web mirror")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--token", default=os.environ.get("TRAINSPECT_MIRROR_TOKEN"), help="required to bind a non-loopback address")
    p.add_argument("--home", type=Path, help="state directory (default $TRAINSPECT_HOME or ~/.trainspect)")
    ns = p.parse_args()
    try:
        serve(ns.host, ns.port, ns.token, ns.home)
    except ToolError as e:
        print(f"error: {e.message} (hint: {e.hint})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
