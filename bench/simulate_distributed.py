"""Sharded simulate benchmark: `.venv/bin/python -m bench.simulate_distributed`.

The same `trainspect simulate --passes 2,2b` command as one process (torch's default threads: every core) and
under `torchrun --nproc-per-node 2` (gloo, one thread per rank on 2 cores, session.distributed), wall time
of the whole command, alternated, best of two each; a one-process, one-thread run shows what the sharding itself
gains (2 ranks against 2 intra-op threads is the figure a user on this machine gets). The model is bench.simulate's
GPT-2 of d_model 256 × 4 layers on its 256 rows of ~40 tokens, batch 16, so the per-batch arithmetic (pass 2's
forward+backward, the HVPs of sharpness and LiSSA over 32 curvature rows, pass 2b's per-sample gradients over the
last block's 790k parameters) dominates the serial part (Lanczos and LiSSA on every rank, process start-up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPEATS = 2
BATCH, HESSIAN_ROWS, PARAMS = 16, 32, r"h\.3\."
ROOT = Path(__file__).resolve().parents[1]


def run(data: Path, out: Path, env: dict[str, str], ranks: int) -> tuple[float, dict[str, Any]]:
    """Wall seconds of one simulate command, and its JSON export."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks)] if ranks > 1 else []
    cmd = [*(launch or [sys.executable]), "-m", "toolserver.cli", "simulate", "--dataset", str(data)]
    cmd += ["--passes", "2,2b", "--batch-size", str(BATCH), "--hessian-rows", str(HESSIAN_ROWS)]
    cmd += ["--influence-params", PARAMS, "--out", str(out), "--output", "json"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"simulate ({ranks} process{'es' if ranks > 1 else ''}) failed:\n{proc.stderr[-2000:]}")
    return seconds, json.loads(proc.stdout)


def main() -> None:
    from bench.simulate import ROWS, build
    from toolserver.registry import get_tool
    from toolserver.runner import invoke

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["TRAINSPECT_HOME"] = str(root / "home")
        os.environ["TRAINSPECT_MIRROR_URL"] = ""
        model_dir, data, _ = build(root)
        invoke(get_tool("start_session"), {"id": "bench-dist", "model": str(model_dir)})
        base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        base.update(TRAINSPECT_SESSION="bench-dist", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        configs = {
            "1 process": (base, 1),
            "1 process, 1 thread": ({**base, "OMP_NUM_THREADS": "1"}, 1),
            "torchrun 2 ranks": (base, 2),
        }
        walls: dict[str, list[float]] = {k: [] for k in configs}
        last: dict[str, dict[str, Any]] = {}
        for i in range(REPEATS):
            for k, (name, (env, ranks)) in enumerate(configs.items()):
                seconds, last[name] = run(data, root / f"out-{i}-{k}", env, ranks)
                walls[name].append(seconds)
        a, b = (
            {s["row"]: s["score"] for s in last[k]["result"]["influence"]["scores"]}
            for k in ("1 process", "torchrun 2 ranks")
        )
        worst = max(abs(a[r] - b[r]) for r in a) / max(abs(x) for x in a.values())
        for name in configs:
            env = last[name]
            passes = ", ".join(f"{p['name']} {p['seconds']:.1f} s" for p in env["result"]["timeline"])
            print(f"{name:>20}: best {min(walls[name]):6.1f} s wall (tool {env['duration_s']:.1f} s: {passes})")
        one, thread, two = (min(walls[k]) for k in configs)
        print(
            f"simulate --passes 2,2b on {ROWS} rows (GPT-2 d_model 256 × 4 layers, batch {BATCH}, {HESSIAN_ROWS} "
            f"curvature rows, influence over {PARAMS}) on {os.cpu_count()} cores: torchrun 2 ranks {two:.1f} s vs 1 "
            f"process {one:.1f} s → {one / two:.2f}× speed-up ({thread / two:.2f}× over one thread); influence "
            f"scores agree to {worst:.1e} of the largest"
        )


if __name__ == "__main__":
    main()
