"""Second-order simulation benchmark: `.venv/bin/python -m bench.simulate_second`.

Against one real AdamW epoch of the same model, data and batches (bench.simulate's GPT-2 d_model 256 × 4 layers,
~40-token rows, batch 16), measured in the same process and alternated:
- passes 0, 1, 2, 3 (sharpness's λ_max and pass 3's HVP on the first --hessian-rows rows, the synthetic checkpoint
  written and reloaded): target ≤ 1.5×;
- passes 0, 1, 2, 2b, 3 (λ_min and LiSSA too, then every row's own gradient by vmap): target ≤ 3×;
- the HVP against one forward + backward of the same batch (the ratio every curvature cost scales by);
- 2b with --influence-params over the last block only (sharpness, LiSSA and per-row gradients over 0.8M of
  3.4M parameters), the usual way to scale influence down.
The curvature's cost is fixed by --hessian-rows and the HVP budgets, the epoch's grows with the rows, so the
ratios are printed at two dataset sizes."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from bench.simulate import BATCH, build, train_epoch

SIZES = (256, 1024)
LAST_BLOCK = r"^transformer\.h\.3\."  # influence over one block: 2b's usual scale-down


def rows_file(data: Path, n: int) -> Path:
    lines = data.read_text().splitlines()
    out = data.with_name(f"data-{n}.jsonl")
    out.write_text("".join(lines[i % len(lines)] + "\n" for i in range(n)))
    return out


def simulate(
    model_dir: Path, data: Path, sae: Path, passes: list[str], out: Path, **extra: object
) -> tuple[float, dict[str, float], str]:
    from session.model_cache import ModelCache
    from toolserver.registry import get_tool
    from toolserver.runner import invoke

    models = ModelCache()
    invoke(get_tool("start_session"), {"id": "bench-sim2", "model": str(model_dir)}, models=models)
    invoke(get_tool("load_sae"), {"sae": [str(sae)]}, session_id="bench-sim2", models=models)
    invoke(get_tool("run_simulation"), {"dataset": str(data), "passes": ["0"]}, session_id="bench-sim2", models=models)
    t = time.perf_counter()
    env = invoke(
        get_tool("run_simulation"),
        {"dataset": str(data), "passes": passes, "batch_size": BATCH, "out": str(out), **extra},
        session_id="bench-sim2",
        models=models,
    )
    r = env.result
    hvps = [f"Lanczos {r.sharpness.iterations} HVPs"] if r.sharpness else []
    hvps += [f"LiSSA {r.influence.lissa.iterations} HVPs"] if r.influence else []
    return time.perf_counter() - t, {p.name: p.seconds for p in r.timeline}, ", ".join(hvps)


def hvp_ratio(model_dir: Path, data: Path) -> tuple[float, float]:
    """Seconds per HVP and per forward + backward on one batch of 16 (best of 5 each)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tools.simulate.batches import batches
    from tools.simulate.curvature import causal_lm_loss, hvp, subset
    from tools.simulate.dataset import read_dataset

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    rows = read_dataset(data).rows[:BATCH]
    batch = next(batches(tok, [(r.prompt, r.response) for r in rows], [r.index for r in rows], BATCH, 512))
    names = [n for n, _ in model.named_parameters()]
    params = subset(model, names)
    v = [torch.randn_like(p) for p in params]
    fn = causal_lm_loss(model, names, batch)
    for p in model.parameters():
        p.requires_grad_(False)
    h = []
    for _ in range(5):
        t = time.perf_counter()
        hvp(fn, params, v)
        h.append(time.perf_counter() - t)
    for p in model.parameters():
        p.requires_grad_(True)
    b = []
    for _ in range(5):
        t = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss.backward()
        b.append(time.perf_counter() - t)
    return min(h), min(b)


def main() -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TRAINSPECT_HOME", str(Path(tmp) / "home"))
        os.environ["TRAINSPECT_MIRROR_URL"] = ""
        model_dir, data, sae = build(Path(tmp))
        h, b = hvp_ratio(model_dir, data)
        print(f"HVP {h * 1e3:.0f} ms vs forward + backward {b * 1e3:.0f} ms on one batch of {BATCH}: {h / b:.2f}×")
        show = lambda ps: ", ".join(f"{k} {v:.1f} s" for k, v in ps.items())  # noqa: E731
        for n in SIZES:
            d = rows_file(data, n)
            epoch = train_epoch(model_dir, d)
            no_2b, passes, _ = simulate(model_dir, d, sae, ["0", "1", "2", "3"], Path(tmp) / f"o3-{n}")
            with_2b, passes_2b, hvps = simulate(model_dir, d, sae, ["0", "1", "2", "2b", "3"], Path(tmp) / f"o2b-{n}")
            block, passes_block, hvps_block = simulate(
                model_dir, d, sae, ["0", "1", "2", "2b", "3"], Path(tmp) / f"ob-{n}", influence_params=LAST_BLOCK
            )
            epoch = min(epoch, train_epoch(model_dir, d))
            print(
                f"{n} rows: one AdamW epoch {epoch:.1f} s; passes 0–3 {no_2b:.1f} s = {no_2b / epoch:.2f}× (target ≤ "
                f"1.5×; {show(passes)}); with 2b {with_2b:.1f} s = {with_2b / epoch:.2f}× (target ≤ 3×; "
                f"{show(passes_2b)}; {hvps}); with 2b over the last block only {block:.1f} s = {block / epoch:.2f}× "
                f"({show(passes_block)}; {hvps_block})"
            )


if __name__ == "__main__":
    main()
