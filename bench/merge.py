"""run_merge_analysis without behaviour against run_weight_diff on the same adapter.

Model: a Llama-shaped base (d_model 1024, MLP 2816, 8 layers, GQA 16/4 heads, the fixtures' tokenizer; 0.37 GB
fp32) and a rank-16 LoRA on every linear layer (q/k/v/o/gate/up/down) whose B is filled as training would leave
it (peft's init, then B ~ N(0, 0.01)), saved by peft. Probes: the built-in set (28 prompts).

Both tools run through the runner as a front door calls them, each call with a fresh model cache (a CLI command's),
on warm files (read once before the first round), interleaved rounds, median. weight-diff reads the base matrices
the adapter targets and measures the factors; merge-analysis does the same, loads the model once, applies the
adapter with peft, and runs the probes three times (base, unmerged, merged as saved). Target: ≤ 1.5×.

`python -m bench.merge` (or `make bench`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

ROUNDS = 3
DIMS = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16}


def build(root: Path) -> tuple[Path, Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from tools.fixtures.tiny_models import build_tokenizer

    base, adapter = root / "llama-1024x8", root / "lora-r16"
    tok = build_tokenizer(base)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **DIMS,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(base))
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets, lora_dropout=0.0))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    peft_model.save_pretrained(str(adapter))
    return base, adapter


def forward_floor(base: Path) -> float:
    """What fidelity cannot avoid: load the base with transformers and run three bare forward passes over the
    probes in the tool's batches (base, unmerged, merged). Seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from session.activations import token_batches
    from session.probes import default_probes

    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(base))
    batches = list(token_batches(tok, default_probes().texts, batch_size=16, max_length=128))
    with torch.no_grad():
        for _ in range(3):
            for b in batches:
                model(input_ids=b.input_ids, attention_mask=b.attention_mask)
    return time.perf_counter() - t


def main() -> None:
    from session.model_cache import ModelCache
    from toolserver.registry import get_tool
    from toolserver.runner import invoke

    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        root = Path(tmp)
        import os

        os.environ["TRAINSPECT_HOME"] = str(root / "home")
        os.environ["TRAINSPECT_MIRROR_URL"] = ""
        print("building a Llama-shaped base (1024×8) and a rank-16 LoRA on every linear layer …")
        base, adapter = build(root)
        size = sum(f.stat().st_size for f in base.glob("*.safetensors"))
        adapter_mb = (adapter / "adapter_model.safetensors").stat().st_size / 2**20
        print(f"base {size / 2**30:.2f} GB; adapter {adapter_mb:.1f} MB")
        invoke(get_tool("start_session"), {"id": "bench-merge", "model": str(base)})
        for f in [*base.glob("*"), *adapter.glob("*")]:
            f.read_bytes()  # warm: both tools read the same files from the page cache
        calls = {
            "weight-diff": ("run_weight_diff", {"checkpoint": str(adapter)}),
            "merge-analysis --no-behavioral": (
                "run_merge_analysis",
                {"checkpoint": str(adapter), "no_behavioral": True},
            ),
            "merge-analysis (with behaviour)": ("run_merge_analysis", {"checkpoint": str(adapter)}),
        }
        times: dict[str, list[float]] = {k: [] for k in calls}
        floor: list[float] = []
        verdict = None
        for _ in range(ROUNDS):
            floor.append(forward_floor(base))
            for label, (tool, args) in calls.items():
                t = time.perf_counter()
                env = invoke(get_tool(tool), args, models=ModelCache())
                times[label].append(time.perf_counter() - t)
                if tool == "run_merge_analysis" and args.get("no_behavioral"):
                    verdict = env.result.verdict, env.result.fidelity
        med = {k: statistics.median(v) for k, v in times.items()}
        baseline = med["weight-diff"]
        print(f"merge verdict {verdict[0]}; fidelity mean |Δ logit| {verdict[1].mean_abs:.3g}")
        gate = med["merge-analysis --no-behavioral"]
        bare = baseline + statistics.median(floor)
        print(f"weight-diff + transformers load + 3 bare forward passes: {bare:.2f} s; merge-analysis "
              f"--no-behavioral is {gate / bare:.2f}× that (what fidelity on the probes cannot avoid)")  # fmt: skip
        for label, s in med.items():
            ratio = s / baseline
            note = "  <- baseline" if label == "weight-diff" else f"  {ratio:.2f}×"
            if label == "merge-analysis --no-behavioral":
                note += " (target ≤ 1.5×) " + ("OK" if ratio <= 1.5 else "MISSED")
            print(f"{label:<34} {s:7.2f} s{note}")


if __name__ == "__main__":
    main()
