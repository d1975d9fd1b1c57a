"""The model runtime's probe pass against the same model's bare forward pass.

Model: a GPT-2-shaped model (d_model 384, 6 layers, random weights, the fixtures' tokenizer) through the
TransformerBridge, as every LLM session loads it. Probes: 256 texts cut to exactly 64 tokens, batch size 32.

- time: `run_probes` with hooks on every layer's blocks.L.hook_resid_post and the masked-mean reduction,
  against the bridge's forward on the same batches with no hook (and, for reference, the transformers
  module underneath it); interleaved rounds, median. Target: hooks and reductions ≤ 10% over the bare pass.
- memory: peak anonymous RSS above the warm model while streaming 256 and 2,048 probes at batch 32, and 256 at
  batch 128, each in a fresh process; it must follow the batch size, not the number of probes. Run with
  MALLOC_MMAP_THRESHOLD_=131072, so freed batch buffers go back to the OS and RSS shows live memory (glibc's
  arenas otherwise keep ±100 MB of freed blocks, which the peak of a longer run samples more of).

`python -m bench.runtime` (or `make bench`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.memory import PeakAnon, rss_anon_mb

D_MODEL, LAYERS, HEADS = 384, 6, 6
TOKENS, PROBES, BATCH = 64, 256, 32
ROUNDS = 7


def build(root: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    from tools.fixtures.tiny_models import build_tokenizer

    model_dir = root / "gpt2-384x6"
    if (model_dir / "config.json").is_file():
        return model_dir
    tok = build_tokenizer(model_dir)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=128,
        n_embd=D_MODEL,
        n_layer=LAYERS,
        n_head=HEADS,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    GPT2LMHeadModel(cfg).save_pretrained(str(model_dir))
    return model_dir


def probes(n: int) -> list[str]:
    """n texts of at least TOKENS tokens (cut to TOKENS by the runtime), no two alike."""
    from tools.fixtures.tiny_models import CORPUS

    lines = CORPUS.splitlines()
    return [" ".join(lines[(i + k) % len(lines)] for k in range(4)) + f" ({i})" for i in range(n)]


def load(model_dir: Path) -> Any:
    from session import service
    from session.model_cache import ModelCache
    from session.models import load_base

    session, _ = service.start_session("bench-runtime", str(model_dir))
    return load_base(session, ModelCache())


def timed(model_dir: Path) -> dict[str, float]:
    from session.activations import run_probes, token_batches

    model = load(model_dir)
    texts = probes(PROBES)
    batches = list(token_batches(model.tokenizer, texts, batch_size=BATCH, max_length=TOKENS))
    assert all(b.input_ids.shape == (BATCH, TOKENS) for b in batches)
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(LAYERS)]

    def hooked() -> None:
        for out in run_probes(model, batches, hooks, "mean"):
            assert out.acts[hooks[-1]].shape == (BATCH, D_MODEL)

    def bare() -> None:
        with torch.no_grad():
            for b in batches:
                model.model(b.input_ids, attention_mask=b.attention_mask, return_type=None)

    def transformers_module() -> None:
        with torch.no_grad():
            for b in batches:
                model.hf(input_ids=b.input_ids, attention_mask=b.attention_mask)

    wall: dict[str, list[float]] = {"hooked": [], "bare": [], "transformers": []}
    cpu: dict[str, list[float]] = {k: [] for k in wall}
    hooked(), bare()  # warm-up
    for _ in range(ROUNDS):
        for name, fn in (("bare", bare), ("hooked", hooked), ("transformers", transformers_module)):
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    return {
        **{k: statistics.median(v) for k, v in wall.items()},
        **{f"{k}_cpu": statistics.median(v) for k, v in cpu.items()},
    }


def peak_rss(model_dir: Path, n: int, batch: int) -> dict[str, float]:
    """In this process: load, warm up on one batch, then stream n probes; peak anonymous RSS above the warm state."""
    from session.activations import run_probes, token_batches

    model = load(model_dir)
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(LAYERS)]
    texts = probes(n)
    sums = torch.zeros(LAYERS, D_MODEL)

    def stream(texts: list[str]) -> None:
        nonlocal sums
        for out in run_probes(
            model, token_batches(model.tokenizer, texts, batch_size=batch, max_length=TOKENS), hooks, "mean"
        ):
            sums += torch.stack([out.acts[h].sum(0) for h in hooks])

    stream(texts[:batch])
    before = rss_anon_mb()
    with PeakAnon() as mem:
        stream(texts)
    return {"probes": n, "batch": batch, "above_warm_mb": mem.peak - before, "warm_mb": before}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TRAINSPECT_HOME", str(Path(tmp) / "home"))
        model_dir = build(Path(tmp))
        t = timed(model_dir)
        print(
            f"probe pass, {PROBES} probes × {TOKENS} tokens, batch {BATCH}, GPT-2 {D_MODEL}×{LAYERS} "
            f"(bridge, {torch.get_num_threads()} threads, median of {ROUNDS} interleaved rounds):"
        )
        for label, key in (
            ("bare bridge forward, no hooks", "bare"),
            (f"hooks on {LAYERS} resid_post + mean", "hooked"),
            ("the transformers module underneath", "transformers"),
        ):
            print(f"  {label:<36} wall {t[key]:.3f} s, CPU {t[key + '_cpu']:.3f} s")
        print(
            f"  hooks and reductions: {t['hooked'] / t['bare']:.3f}× the bare pass in wall time, "
            f"{t['hooked_cpu'] / t['bare_cpu']:.3f}× in CPU time (target ≤ 1.10×); the bridge itself costs "
            f"{t['bare'] / t['transformers']:.3f}× the transformers module"
        )
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        rss = []
        for n, batch in ((PROBES, BATCH), (2048, BATCH), (PROBES, 4 * BATCH)):
            cmd = [sys.executable, "-m", "bench.runtime", "--rss", str(n), str(batch), str(model_dir)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            rss.append(json.loads(out.stdout.strip().splitlines()[-1]))
        for r in rss:
            print(
                f"  peak anon RSS streaming {r['probes']:>5} probes at batch {r['batch']:>3}: "
                f"+{r['above_warm_mb']:.1f} MB above the warm model ({r['warm_mb']:.0f} MB)"
            )
        print(
            f"  2048 vs 256 probes: {rss[1]['above_warm_mb'] - rss[0]['above_warm_mb']:+.1f} MB; "
            f"batch 128 vs 32: {rss[2]['above_warm_mb'] - rss[0]['above_warm_mb']:+.1f} MB"
        )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--rss":
        print(json.dumps(peak_rss(Path(sys.argv[4]), int(sys.argv[2]), int(sys.argv[3]))))
    else:
        main()
