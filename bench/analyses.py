"""run_sae_diff and run_residual_drift against two bare forward passes over the same probes.

Model: the GPT-2-shaped 384×6 of bench/runtime.py and a "fine-tune" of it (every weight moved by 1% noise, saved
as a {step, state_dict} .pt); an SAE of 16 × 384 = 6,144 standard features at the last block's resid_post, so the
diff runs the whole depth. Probes: 256 texts of 64 tokens, batch 16 (the tools' default). Both models are loaded
into the cache first: loading is timed on its own.

- baseline: base and checkpoint forward passes, no hooks, on the same batches (what any comparison must pay);
- the tools through the runner, as a front door calls them. Targets: sae-diff ≤ 1.3×, residual-drift ≤ 1.15×.
- memory: peak anonymous RSS of sae-diff above the warm process, at 256 and 4,096 probes (the small fixtures
  GPT-2 so 4,096 probes stay quick), each in a fresh process with MALLOC_MMAP_THRESHOLD_ so freed batches show as
  freed; it must not grow with the probe count.

`python -m bench.analyses` (or `make bench`).
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
from bench.runtime import D_MODEL, LAYERS, TOKENS, build, probes

BATCH = 16
PROBES = 256
ROUNDS = 3


def finetune_copy(model_dir: Path, out: Path) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    state = AutoModelForCausalLM.from_pretrained(str(model_dir)).state_dict()
    moved = {k: v + 0.01 * v.std() * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"step": 1, "state_dict": moved}, out)
    return out


def sae_dir(out: Path, d_in: int, d_sae: int, hook: str) -> Path:
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(2)
    StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook))).save_model(out)
    return out


def write_probes(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in probes(n)))
    return path


def timed(model_dir: Path, ckpt: Path, sae: Path, probe_file: Path) -> dict[str, float]:
    from session import service
    from session.activations import token_batches
    from session.model_cache import ModelCache
    from session.models import load_pair
    from toolserver.registry import get_tool
    from toolserver.runner import invoke

    cache = ModelCache()
    session, _ = service.start_session("bench-analyses", str(model_dir))
    t = time.perf_counter()
    pair = load_pair(session, ckpt, cache)
    load_s = time.perf_counter() - t
    invoke(get_tool("load_sae"), {"sae": [str(sae)]}, models=cache)
    batches = list(token_batches(pair.base.tokenizer, probes(PROBES), batch_size=BATCH, max_length=TOKENS))

    def bare() -> None:
        with torch.no_grad():
            for b in batches:
                for model in (pair.base, pair.tuned):
                    model.model(b.input_ids, attention_mask=b.attention_mask, return_type=None)

    args = {"checkpoint": str(ckpt), "prompts": str(probe_file), "batch_size": BATCH, "max_length": TOKENS}

    def tool(name: str) -> Any:
        return lambda: invoke(get_tool(name), args, models=cache)

    runs: dict[str, list[float]] = {"bare": [], "drift": [], "sae": []}
    bare(), tool("run_sae_diff")(), tool("run_residual_drift")()  # warm-up
    for _ in range(ROUNDS):
        for name, fn in (("bare", bare), ("drift", tool("run_residual_drift")), ("sae", tool("run_sae_diff"))):
            t = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t)
    return {"load": load_s, **{k: statistics.median(v) for k, v in runs.items()}}


def rss_run(n: int, root: Path) -> dict[str, float]:
    from tools.fixtures.tiny_models import build_base
    from toolserver.registry import get_tool
    from toolserver.runner import invoke

    base = root / "tiny" if (root / "tiny" / "config.json").is_file() else build_base("gpt2", root / "tiny")
    ckpt = root / "tiny-ft.pt" if (root / "tiny-ft.pt").is_file() else finetune_copy(base, root / "tiny-ft.pt")
    sae = (
        root / "tiny-sae"
        if (root / "tiny-sae").is_dir()
        else sae_dir(root / "tiny-sae", 64, 4096, "blocks.1.hook_resid_post")
    )
    from session.model_cache import ModelCache

    cache = ModelCache()
    invoke(get_tool("start_session"), {"id": "rss", "model": str(base)}, models=cache)
    invoke(get_tool("load_sae"), {"sae": [str(sae)]}, models=cache)
    args = {"checkpoint": str(ckpt), "batch_size": BATCH, "max_length": TOKENS}
    invoke(get_tool("run_sae_diff"), {**args, "prompts": str(write_probes(root / "warm.jsonl", BATCH))}, models=cache)
    probe_file = write_probes(root / f"p{n}.jsonl", n)
    before = rss_anon_mb()
    with PeakAnon() as mem:
        invoke(get_tool("run_sae_diff"), {**args, "prompts": str(probe_file)}, models=cache)
    return {"probes": n, "above_warm_mb": mem.peak - before, "warm_mb": before}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.setdefault("TRAINSPECT_HOME", str(root / "home"))
        os.environ["TRAINSPECT_MIRROR_URL"] = ""
        model_dir = build(root)
        ckpt = finetune_copy(model_dir, root / "ft.pt")
        sae = sae_dir(root / "sae", D_MODEL, 16 * D_MODEL, f"blocks.{LAYERS - 1}.hook_resid_post")
        t = timed(model_dir, ckpt, sae, write_probes(root / "probes.jsonl", PROBES))
        print(
            f"{PROBES} probes × {TOKENS} tokens, batch {BATCH}, GPT-2 {D_MODEL}×{LAYERS}, SAE {16 * D_MODEL} "
            f"features "
            f"at layer {LAYERS - 1} ({torch.get_num_threads()} threads, median of {ROUNDS}):"
        )
        print(f"  loading base + checkpoint (once, cached after)   {t['load']:.2f} s")
        print(f"  baseline: two bare forward passes, no hooks      {t['bare']:.3f} s")
        print(
            f"  run_residual_drift                               {t['drift']:.3f} s  ({t['drift'] / t['bare']:.3f}×; "
            "target ≤ 1.15×)"
        )
        print(
            f"  run_sae_diff                                     {t['sae']:.3f} s  ({t['sae'] / t['bare']:.3f}×; "
            "target ≤ 1.3×)"
        )
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        rss = []
        for n in (PROBES, 4096):
            cmd = [sys.executable, "-m", "bench.analyses", "--rss", str(n), str(root)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            rss.append(json.loads(out.stdout.strip().splitlines()[-1]))
        for r in rss:
            print(
                f"  sae diff peak anon RSS at {r['probes']:>5} probes (tiny GPT-2, 4,096 features): "
                f"+{r['above_warm_mb']:.1f} MB above the warm process ({r['warm_mb']:.0f} MB)"
            )
        print(f"  4096 vs 256 probes: {rss[1]['above_warm_mb'] - rss[0]['above_warm_mb']:+.1f} MB")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--rss":
        print(json.dumps(rss_run(int(sys.argv[2]), Path(sys.argv[3]))))
    else:
        main()
