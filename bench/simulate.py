"""Simulation benchmark: `.venv/bin/python -m bench.simulate`.

simulate with passes 0, 1 and 2 (an SAE loaded: pass 1 rides on pass 2's forward) on a dataset, against one real
training epoch of the same model on the same data, batch size and optimiser (AdamW, the loss a training step
takes: the same sequences, labels and masking), measured in the same process and alternated, best of three
each. Target: ≤ 1.3× (pass 2 is an epoch of forward + backward without optimiser steps). The model is a GPT-2
of d_model 256 × 4 layers so the arithmetic, not Python, dominates; 256 rows of ~40 tokens, batch 16.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch

ROWS, BATCH, REPEATS = 256, 16, 3


def build(root: Path) -> tuple[Path, Path, Path]:
    from transformers import GPT2Config, GPT2LMHeadModel

    from tools.fixtures.tiny_models import CORPUS, build_tokenizer

    tok = build_tokenizer(root / "model")
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=128,
        n_embd=256,
        n_layer=4,
        n_head=4,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(root / "model")
    sentences = [s.strip() + "." for line in CORPUS.splitlines() for s in line.split(".") if s.strip()]
    rows = []
    for i in range(ROWS):
        words = " ".join(sentences[(i + k) % len(sentences)] for k in range(2)).split()
        rows.append({"instruction": " ".join(words[:6]), "response": " " + " ".join(words[6:])})
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = StandardSAE(
        StandardSAEConfig(d_in=256, d_sae=1024, metadata=SAEMetadata(hook_name="blocks.2.hook_resid_post"))
    )
    sae.save_model(root / "sae")
    return root / "model", data, root / "sae"


def train_epoch(model_dir: Path, data: Path) -> float:
    """One real epoch: AdamW steps on the batches simulate differentiates."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tools.simulate.batches import batches
    from tools.simulate.dataset import read_dataset

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = read_dataset(data).rows
    t = time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    for b in batches(tok, [(r.prompt, r.response) for r in rows], [r.index for r in rows], BATCH, 512):
        opt.zero_grad(set_to_none=True)
        model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss.backward()
        opt.step()
    return time.perf_counter() - t


def simulate(model_dir: Path, data: Path, sae: Path) -> tuple[float, dict[str, float]]:
    from session.model_cache import ModelCache
    from toolserver.registry import get_tool
    from toolserver.runner import invoke

    models = ModelCache()
    invoke(get_tool("start_session"), {"id": "bench-sim", "model": str(model_dir)}, models=models)
    invoke(get_tool("load_sae"), {"sae": [str(sae)]}, session_id="bench-sim", models=models)
    # the model and SAE are loaded once, as an MCP server holds them; the timed call is the simulation itself
    invoke(get_tool("run_simulation"), {"dataset": str(data), "passes": ["0"]}, session_id="bench-sim", models=models)
    t = time.perf_counter()
    env = invoke(
        get_tool("run_simulation"),
        {"dataset": str(data), "passes": ["0", "1", "2"], "batch_size": BATCH},
        session_id="bench-sim",
        models=models,
    )
    return time.perf_counter() - t, {p.name: p.seconds for p in env.result.timeline}


def main() -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TRAINSPECT_HOME", str(Path(tmp) / "home"))
        os.environ["TRAINSPECT_MIRROR_URL"] = ""
        model_dir, data, sae = build(Path(tmp))
        train, sim, passes = [], [], {}
        for _ in range(REPEATS):
            train.append(train_epoch(model_dir, data))
            s, passes = simulate(model_dir, data, sae)
            sim.append(s)
        print(
            f"simulate passes 0+1+2 on {ROWS} rows (GPT-2 d_model 256 × 4 layers, batch {BATCH}): best {min(sim):.2f} "
            "s "
            f"(passes: {', '.join(f'{k} {v:.2f} s' for k, v in passes.items())}); one AdamW epoch of the same model, "
            f"data and batches: best {min(train):.2f} s → {min(sim) / min(train):.2f}× (target ≤ 1.3×)"
        )


if __name__ == "__main__":
    main()
