"""Trajectory benchmark: `.venv/bin/python -m bench.trajectory [--dtype fp32|bf16|both] [--dir DIR]`.

A Llama-shaped base (HF dir, safetensors) and 8 checkpoints of ≥ 0.5 GB each along a synthetic run (each step adds a
rank-8 drift in a fixed direction plus fresh noise per matrix, a few embedding rows, nudged norms), in fp32 and bf16.
Against the same run's baseline of reading the base once and every checkpoint once (every tensor read into memory,
all cold: the files' pages are dropped from the page cache first), the trajectory over all 8, cold: wall time
ratio (target ≤ 1.3×) and peak anonymous memory above the interpreter's baseline as a share of one checkpoint
(target ≤ 25%), for 4 and for 8 checkpoints (flat: the same within a few MB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.memory import PeakAnon, rss_anon_mb
from bench.weight_diff import GB, drop_cache, llama_shapes, read_every_tensor

DIMS = {"hidden": 1024, "intermediate": 2816, "heads": 16, "kv_heads": 4, "vocab": 32000}
LAYERS = {"fp32": 6, "bf16": 17}  # ≥ 0.5 GB per checkpoint either way
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
CHECKPOINTS = 8


def shapes(layers: int) -> dict[str, tuple[int, ...]]:
    return llama_shapes(layers, DIMS)


def write_run(out: Path, dtype_name: str) -> None:
    """Child process: base/ (config.json + model.safetensors) and run/checkpoint-{100..800}/model.safetensors."""
    from safetensors.torch import save_file

    dtype, layers = DTYPES[dtype_name], LAYERS[dtype_name]
    gen = torch.Generator().manual_seed(0)
    base = {
        k: torch.ones(s) if len(s) == 1 else torch.randn(s, generator=gen) * 0.02 for k, s in shapes(layers).items()
    }
    (out / "base").mkdir(parents=True)
    save_file({k: v.to(dtype) for k, v in base.items()}, out / "base" / "model.safetensors")
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "tie_word_embeddings": False,
        "hidden_size": DIMS["hidden"], "intermediate_size": DIMS["intermediate"],
        "num_attention_heads": DIMS["heads"], "num_key_value_heads": DIMS["kv_heads"],
        "num_hidden_layers": layers, "vocab_size": DIMS["vocab"],
    }  # fmt: skip
    (out / "base" / "config.json").write_text(json.dumps(config))
    drift = {k: (torch.randn(s[0], 8, generator=gen), torch.randn(8, s[1], generator=gen)) for k, s in
             shapes(layers).items() if len(s) == 2 and "embed" not in k and "lm_head" not in k}  # fmt: skip
    current = {k: v.clone() for k, v in base.items()}
    for c in range(1, CHECKPOINTS + 1):
        for k, w in current.items():
            if w.dim() == 1:
                w += 1e-3 * torch.randn(w.shape, generator=gen)
            elif k in drift:
                u, v = drift[k]
                w += 2e-4 * (u @ v) / 8 + 2e-5 * torch.randn(w.shape, generator=gen)
            else:
                rows = torch.randint(0, w.shape[0], (500,), generator=gen)
                w[rows] += 1e-3 * torch.randn(len(rows), w.shape[1], generator=gen)
        d = out / "run" / f"checkpoint-{100 * c}"
        d.mkdir(parents=True)
        save_file(
            {k: v.to(dtype) for k, v in current.items()}, d / "model.safetensors", metadata={"step": str(100 * c)}
        )
    os.sync()


def bench(work: Path, dtype_name: str) -> None:
    print(f"writing a Llama-shaped base and {CHECKPOINTS} checkpoints ({dtype_name}, {LAYERS[dtype_name]} layers) …")
    subprocess.run([sys.executable, "-m", "bench.trajectory", "--write", str(work), "--dtype", dtype_name], check=True)
    base_file = work / "base" / "model.safetensors"
    ckpts = sorted(
        (work / "run").glob("checkpoint-*/model.safetensors"), key=lambda p: int(p.parent.name.split("-")[1])
    )
    size = ckpts[0].stat().st_size
    print(
        f"checkpoint size {size / GB:.2f} GB; base + {len(ckpts)} checkpoints = {(len(ckpts) + 1) * size / GB:.1f} GB"
    )

    drop_cache(base_file, *ckpts)
    t = time.perf_counter()
    read_every_tensor(base_file, *ckpts)
    read_s = time.perf_counter() - t

    runs = {}
    for n in (4, CHECKPOINTS):  # each in a fresh process: its peak anonymous memory is its own
        drop_cache(base_file, *ckpts)
        cmd = [sys.executable, "-m", "bench.trajectory", "--measure", str(work), "--n", str(n)]
        runs[n] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    traj_s, res = runs[CHECKPOINTS]["elapsed"], runs[CHECKPOINTS]
    peaks = {n: r["peak_mb"] for n, r in runs.items()}
    print(f"{res['points']} checkpoints measured; last: ‖ΔW‖/‖W‖ {res['rel_delta']:.4g}, median stable rank "
          f"{res['median_stable_rank']:.4g}, mean update cosine {res['mean_cosine']:.3f}")  # fmt: skip
    print(f"read base once + every checkpoint once (cold): {read_s:7.2f} s  <- baseline")
    ratio = traj_s / read_s
    verdict = "(target ≤ 1.3×) " + ("OK" if ratio <= 1.3 else "MISSED")
    print(f"trajectory over {CHECKPOINTS} checkpoints (cold):        {traj_s:7.2f} s  ratio {ratio:.2f}× {verdict}")
    for n, peak in peaks.items():
        share = peak * 2**20 / size
        print(f"peak anonymous memory, {n} checkpoints: {peak:.0f} MB = {share:.1%} of one checkpoint (target ≤ 25%) "
              f"{'OK' if share <= 0.25 else 'MISSED'}")  # fmt: skip
    print(f"flat in the number of checkpoints: {peaks[CHECKPOINTS] - peaks[4]:+.0f} MB from 4 to {CHECKPOINTS}")


def measure(work: Path, n: int) -> None:
    """Child process: the trajectory over the first n checkpoints, cold; prints time, peak memory and a summary.
    Its modules are imported before the clock starts (1.6 s here, a cost of the process, not of the pass)."""
    import tools.trajectory.run  # noqa: F401
    from session.context import ToolContext
    from session.state import Session
    from tools.trajectory import SPEC
    from toolserver.contract import SilentReporter

    ctx = ToolContext(Session(id="bench", model=str(work / "base"), model_source=str(work / "base"), kind="llm"))
    args = SPEC.input_model(checkpoints=str(work / "run" / "checkpoint-[0-9]*") if n == CHECKPOINTS else None,
                            dir=None if n == CHECKPOINTS else str(_subset(work, n)))  # fmt: skip
    baseline = rss_anon_mb()
    with PeakAnon() as mem:
        t = time.perf_counter()
        res = SPEC.run(ctx, args, SilentReporter()).result
        elapsed = time.perf_counter() - t
    cosines = [p.update_cosine or 0.0 for p in res.points[1:]]
    print(json.dumps({
        "elapsed": elapsed, "peak_mb": mem.peak - baseline, "points": len(res.points),
        "rel_delta": res.points[-1].rel_delta, "median_stable_rank": res.points[-1].median_stable_rank,
        "mean_cosine": sum(cosines) / max(1, len(cosines)),
    }))  # fmt: skip


def _subset(work: Path, n: int) -> Path:
    """A directory of links to the first n checkpoints (the same files, so the same page cache)."""
    sub = work / f"first-{n}"
    sub.mkdir(exist_ok=True)
    for c in range(1, n + 1):
        link = sub / f"checkpoint-{100 * c}"
        if not link.exists():
            link.mkdir()
            for f in (work / "run" / f"checkpoint-{100 * c}").iterdir():
                os.link(f, link / f.name)
    return sub


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.trajectory")
    p.add_argument("--dtype", choices=[*sorted(DTYPES), "both"], default="both")
    p.add_argument("--dir", type=Path, default=None, help="where to write the temporary checkpoints (default: /tmp)")
    p.add_argument("--write", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=CHECKPOINTS, help=argparse.SUPPRESS)
    ns = p.parse_args(argv or [])
    if ns.measure:
        measure(ns.measure, ns.n)
        return
    if ns.write:
        write_run(ns.write, ns.dtype)
        return
    for dtype_name in sorted(DTYPES, reverse=True) if ns.dtype == "both" else [ns.dtype]:
        work = Path(tempfile.mkdtemp(prefix="bench-trajectory-", dir=ns.dir))
        try:
            bench(work, dtype_name)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
