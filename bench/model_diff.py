"""run_model_diff on 256 eval rows against the bare cost of its model work, in the same run.

Model: the GPT-2-shaped 384×6 of bench/runtime.py and a "fine-tune" of it (every weight moved by 1% noise), both
loaded into the cache first (loading is not what is measured). Rows: the built-in set's 30 rows, cycled with a
numbered prefix to 256 distinct prompts (short answers, multiple choice, paraphrases), 4 perturbations each.

- baseline, per model: greedy generation of every prompt (the same max_new_tokens and batch size, the runtime's
  KV-cached decoding through transformers, as model-diff runs) and one bare forward pass over every teacher-forced
  sequence model-diff scores, in the same padded batches — the model work any such comparison must do;
- model-diff through the runner, as a front door calls it. Target: ≤ 1.3× the baseline. Interleaved rounds, median.

`python -m bench.model_diff` (or `make bench`).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.analyses import finetune_copy
from bench.runtime import build

ROWS, BATCH, ROUNDS, NEW_TOKENS = 256, 16, 3, 24


def write_eval(path: Path) -> Path:
    from tools.model_diff.builtin import ROWS as BUILTIN

    rows = []
    for i in range(ROWS):
        r = dict(BUILTIN[i % len(BUILTIN)])
        r["prompt"] = f"Q{i}: {r['prompt']}"
        r["paraphrases"] = [f"Q{i}: {p}" for p in r.get("paraphrases", [])]
        rows.append(r)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def bare(pair: object, eval_path: Path) -> float:
    """Seconds for the same generations and the same forward passes, with nothing computed from them."""
    from session.generation import greedy, logits
    from tools.model_diff.evalset import read_eval
    from tools.model_diff.scoring import build_sequences, references

    rows = read_eval(eval_path).rows
    base, tuned = pair.base, pair.tuned  # type: ignore[attr-defined]
    tok = base.tokenizer
    t = time.perf_counter()
    gens = greedy(base, [r.prompt for r in rows], max_new_tokens=NEW_TOKENS, batch_size=BATCH)
    greedy(tuned, [r.prompt for r in rows], max_new_tokens=NEW_TOKENS, batch_size=BATCH)
    _, refs = references(tok, rows, gens)
    seqs = build_sequences(tok, rows, refs, 4, 0)
    for model in (base, tuned):
        for b in range(0, len(seqs), BATCH):
            batch = seqs[b : b + BATCH]
            width = max(len(s.context) + len(s.cont) for s in batch)
            ids = torch.full((len(batch), width), tok.pad_token_id)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(batch):
                ids[i, : len(s.context) + len(s.cont)] = torch.tensor(s.context + s.cont)
                mask[i, : len(s.context) + len(s.cont)] = 1
            logits(model, ids, mask)
    return time.perf_counter() - t


def main() -> None:
    from session.model_cache import ModelCache
    from session.models import load_pair
    from session.state import current_session
    from toolserver.registry import get_tool
    from toolserver.runner import invoke

    with tempfile.TemporaryDirectory(prefix="bench-model-diff-") as tmp:
        root = Path(tmp)
        os.environ["TRAINSPECT_HOME"] = str(root / "home")
        os.environ["TRAINSPECT_MIRROR_URL"] = ""
        base = build(root)
        ckpt = finetune_copy(base, root / "ft.pt")
        eval_path = write_eval(root / "eval.jsonl")
        invoke(get_tool("start_session"), {"id": "bench-md", "model": str(base)})
        cache = ModelCache()
        pair = load_pair(current_session(), ckpt, cache, backend="transformers")  # as model-diff loads them
        args = {"checkpoint": str(ckpt), "eval": str(eval_path), "batch_size": BATCH, "max_new_tokens": NEW_TOKENS}
        invoke(get_tool("run_model_diff"), args, models=cache)  # warm: first-call costs are not the comparison
        tool_s, bare_s = [], []
        for _ in range(ROUNDS):
            bare_s.append(bare(pair, eval_path))
            t = time.perf_counter()
            env = invoke(get_tool("run_model_diff"), args, models=cache)
            tool_s.append(time.perf_counter() - t)
        res = env.result
        a, b = statistics.median(bare_s), statistics.median(tool_s)
        o = res.overall
        print(f"{res.rows} rows; consistency {o.consistency.checkpoint:.3f}, suppression "
              f"{o.suppression.checkpoint:.3f}, robustness {o.robustness.checkpoint:.3f}")  # fmt: skip
        print(f"bare generations + forward passes, both models: {a:7.2f} s  <- baseline")
        print(f"model-diff:                                     {b:7.2f} s  ratio {b / a:.2f}× (target ≤ 1.3×) "
              f"{'OK' if b / a <= 1.3 else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    main()
