"""`make bench`: every benchmark in turn, each printing its figures against a baseline from the same run."""

from __future__ import annotations

import importlib
import sys

BENCHES = (
    "weight_diff",
    "watch",
    "web_mirror",
    "runtime",
    "analyses",
    "trajectory",
    "merge",
    "analysis_view",
    "simulate_quality",
    "simulate",
    "simulate_second",
    "simulate_distributed",
)


def main(names: list[str]) -> None:
    for name in names or BENCHES:
        print(f"\n===== bench.{name} =====", flush=True)
        importlib.import_module(f"bench.{name}").main()


if __name__ == "__main__":
    main(sys.argv[1:])
