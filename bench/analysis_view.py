"""Analysis-view benchmark: `.venv/bin/python -m bench.analysis_view [--checkpoints N] [--dir DIR]`.

A run of 1,000 analysis checkpoints of a Qwen2-0.5B-shaped model (24 layers, 290 tensors: bench.watch's shapes),
written as AnalysisRecorder writes them. 20 checkpoints come from the recorder's own summarise() on small random
tensors (every dimension capped at 64, so this takes seconds, not hours) whose recorded shapes are then set to the
real ones: the statistics, 32-bin weight and 16-bin gradient histograms, percentiles and 5 weight + gradient grids
are as large as a real file's; each of the 1,000 files is one of them with its own step (the cadence's), loss,
reasons (a trigger now and then), gradient norms (growing towards the output, larger early in the run), movement
from the first checkpoint and activation std (72 modules, activation_stats).
No attention: Hugging Face returns attention weights only under eager attention, and with 14 heads × 24 layers the
per-head grids add about 2 MB a file — the second measurement (100 checkpoints with them).

Against the same run's baseline — every file read and json.loads()'d, nothing else — the time to first card: the
tool's run on the folder through slim() (the card's payload), in-process with its modules imported, warm page cache
and cold (the files' pages dropped first); medians of 3. Also the whole CLI call as a user types it (interpreter
start and imports included), the peak anonymous memory of the run, and the sizes of the result, the card and the
MCP result.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.memory import PeakAnon, rss_anon_mb
from bench.watch import QWEN2_05B, qwen_like_shapes
from bench.weight_diff import drop_cache

CHECKPOINTS = 1000
HEADS = 14
CAP = 64  # each dimension of the small tensors summarised
BASES = 20  # distinct summarised checkpoints the files are made from


def _steps(n: int) -> list[int]:
    from tools.watch.analysis_checkpoint import scheduled

    out, step = [], 0
    while len(out) < n:
        step += 1
        if scheduled(step):
            out.append(step)
    return out


def write_run(out: Path, n: int, attention: bool) -> None:
    """n checkpoints into `out`: BASES of them summarised from random tensors, each file one of those with its own
    step, loss, reasons, gradient norms (growing towards the output, larger early), movement and activation std."""
    from tools.watch.analysis_checkpoint import AnalysisConfig, activation_stats, attention_stats, grid_picks, summarise
    from tools.watch.analysis_schema import Movement

    cfg = AnalysisConfig()
    shapes = qwen_like_shapes()
    grids = grid_picks([(name, len(shape)) for name, shape in shapes], cfg.max_grids)
    layers = QWEN2_05B["layers"]
    depth = {name: int(name.split(".")[2]) if ".layers." in name else layers for name, _ in shapes}
    modules = [f"model.layers.{i}{m}" for i in range(layers) for m in ("", ".self_attn", ".mlp")]
    g = torch.Generator().manual_seed(0)
    bases = []
    for _ in range(min(BASES, n)):
        tensors = [
            (name, torch.randn([min(s, CAP) for s in shape], generator=g) * 0.02,
             torch.randn([min(s, CAP) for s in shape], generator=g) * 1e-4 * (0.5 + depth[name] / layers))
            for name, shape in shapes
        ]  # fmt: skip
        ck = summarise(0, None, ["scheduled"], tensors, cfg, grids)  # type: ignore[arg-type]
        for name, shape in shapes:
            ck.weights[name].shape = ck.gradients[name].shape = list(shape)
        ck.activations = {m: activation_stats(torch.randn(4, 16, CAP, generator=g)) for m in modules}
        if attention:
            ck.attention = {
                f"layer.{i}": attention_stats(torch.softmax(torch.randn(1, HEADS, 32, 32, generator=g), -1))
                for i in range(layers)
            }
        norms = {name: ck.gradients[name].norm for name, _ in shapes}
        stds = {m: a.std for m, a in ck.activations.items()}
        bases.append((ck, norms, stds))
    steps = _steps(n)
    out.mkdir(parents=True, exist_ok=True)
    for k, step in enumerate(steps):
        ck, norms, stds = bases[k % BASES]
        decay = 1 + 2 * math.exp(-k / 50)
        ck.step, ck.loss = step, float(f"{2.0 + 1.0 / (1 + k / 100):.4g}")
        ck.reasons = ["scheduled"] + (["grad_norm"] if k % 97 == 13 else [])  # type: ignore[list-item]
        for i, (name, _) in enumerate(shapes):
            ck.gradients[name].norm = float(f"{norms[name] * decay:.4g}")
            ck.weights[name].moved = float(f"{0.002 * math.sqrt(k) * (1 + (i % 7) / 7):.5g}")
        for m, a in ck.activations.items():
            a.std = float(f"{stds[m] * (1 + k / n):.4g}")
        ck.movement = Movement(reference_step=steps[0], sample=cfg.movement_sample)
        (out / f"analysis_{step:08d}.json").write_text(ck.model_dump_json(exclude_none=True))


def _json_loads(files: list[Path]) -> float:
    t = time.perf_counter()
    for f in files:
        json.loads(f.read_bytes())
    return time.perf_counter() - t


def _first_card(folder: Path) -> tuple[float, object, object]:
    from tools.analysis_view import SPEC
    from toolserver.contract import SilentReporter

    t = time.perf_counter()
    res = SPEC.run(None, SPEC.input_model(dir=str(folder)), SilentReporter()).result
    card = SPEC.slim(res)
    return time.perf_counter() - t, res, card


def _mcp_size(res: object) -> int:
    from tools.analysis_view import SPEC
    from tools.analysis_view.report import findings
    from toolserver.contract import Envelope
    from toolserver.mcp_server import compact_result

    args = SPEC.input_model(dir=res.dir)  # type: ignore[attr-defined]
    env = Envelope[SPEC.output_model](  # type: ignore[name-defined]
        tool=SPEC.name, call_id="b", created_at="t", duration_s=0.0, session=None, inputs={}, result=res,
        findings=findings(res, args), follow_ups=[],  # type: ignore[arg-type]
    )  # fmt: skip
    compact = compact_result(SPEC, env)
    return len(json.dumps(compact.structured_content)) + sum(len(c.text) for c in compact.content)


def bench(folder: Path, label: str) -> None:
    files = sorted(folder.glob("analysis_*.json"))
    total = sum(f.stat().st_size for f in files)
    print(f"{label}: {len(files)} checkpoints, {total / 2**20:.0f} MB ({total / len(files) / 1024:.0f} KB a file)")
    _first_card(folder)  # imports and first-touch costs out of the timings
    for cold in (False, True):
        loads, cards = [], []
        for _ in range(3):
            if cold:
                drop_cache(*files)
            loads.append(_json_loads(files))
            if cold:
                drop_cache(*files)
            cards.append(_first_card(folder)[0])
        base, card_s = statistics.median(loads), statistics.median(cards)
        print(
            f"  {'cold' if cold else 'warm'}: json.loads of every file {base:6.2f} s  <- baseline;  time to first card "
            f"{card_s:6.2f} s = {card_s / base:.2f}× ({len(files) / card_s:,.0f} checkpoints/s)",
            flush=True,
        )
    _, res, card = _first_card(folder)
    child = [sys.executable, "-m", "bench.analysis_view", "--measure", str(folder)]
    peak = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)["peak_mb"]
    print(
        f"  peak anonymous memory of the run (its own process): {peak:.0f} MB; result "
        f"{len(res.model_dump_json()) / 1024:.0f} KB, card {len(card.model_dump_json()) / 1024:.0f} KB, "  # type: ignore[attr-defined]
        f"MCP result {_mcp_size(res) / 1000:.0f}k characters (a client may refuse ~100k)"
    )
    cmd = [sys.executable, "-m", "toolserver.cli", "analysis", "--dir", str(folder), "--no-mirror", "--output", "json"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"the CLI call failed: {proc.stderr.strip()}")
    print(f"  the CLI call (`trainspect analysis --dir …`, process start and imports included): "
          f"{time.perf_counter() - t:.2f} s")  # fmt: skip


def measure(folder: Path) -> None:
    """Child process: the run's peak anonymous memory above the interpreter with its modules imported."""
    import tools.analysis_view.run  # noqa: F401

    before = rss_anon_mb()
    with PeakAnon() as mem:
        _first_card(folder)
    print(json.dumps({"peak_mb": mem.peak - before}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.analysis_view")
    p.add_argument("--checkpoints", type=int, default=CHECKPOINTS)
    p.add_argument("--dir", type=Path, default=None, help="where to write the temporary checkpoints (default: /tmp)")
    p.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    ns = p.parse_args(argv or [])
    if ns.measure:
        measure(ns.measure)
        return
    with tempfile.TemporaryDirectory(dir=ns.dir) as tmp:
        root = Path(tmp)
        runs = (
            ("weights+grads+activations", ns.checkpoints, False),
            ("with attention (14 heads × 24 layers)", max(1, ns.checkpoints // 10), True),
        )
        for name, n, attention in runs:
            t = time.perf_counter()
            write_run(root / name, n, attention)
            print(f"wrote {n} checkpoints in {time.perf_counter() - t:.0f} s", flush=True)
            bench(root / name, name)


if __name__ == "__main__":
    main(sys.argv[1:])
