"""Weight-diff benchmark: `.venv/bin/python -m bench.weight_diff [--dtype bf16|fp32] [--dir DIR]`.

1. Streaming diff of a ≥1.5 GB base / fine-tuned pair, in fp32 and in bf16 (a Llama-shaped HF state dict, safetensors,
   synthetic weights: base ~ N(0, 0.02²), fine-tune = base + a rank-8 update + small noise per matrix,
   a few changed embedding rows, nudged norms). Against the same run's baseline of merely reading both
   files once (every tensor read into memory once), both cold-ish (the files' pages are dropped from the
   page cache first): wall time ratio (target ≤ 2×) and peak anonymous memory above the interpreter's
   baseline, sampled from /proc/self/status RssAnon (file-backed mmap pages do not count), as a share of
   one checkpoint (target < 25%).
2. A zip-format `.pt` checkpoint (~0.8 GB fp32): reading every tensor through the loader, which checks each
   record's CRC-32 (torch does not), against torch.load(mmap=True) reading every tensor, both cold
   (target ≤ 1.3×).
3. LoRA stable rank at d=4096, r=16: through the QR of the factors vs a dense SVD of the formed product
   (target: same value within 1e-4 relative, ≥ 50× faster).
The files are written by a child process into a temporary directory (default under /tmp) and deleted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.memory import PeakAnon, rss_anon_mb

LLAMA = {"hidden": 2048, "intermediate": 5632, "heads": 16, "kv_heads": 4, "vocab": 32000}
LAYERS = {"bf16": 14, "fp32": 6}  # ≥ 1.5 GB per checkpoint either way
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
GB = 1e9


def llama_shapes(layers: int, dims: dict[str, int] = LLAMA) -> dict[str, tuple[int, ...]]:
    """A Llama checkpoint's tensor names and shapes, as save_pretrained writes them."""
    h, i, v = dims["hidden"], dims["intermediate"], dims["vocab"]
    kv = h // dims["heads"] * dims["kv_heads"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for n in range(layers):
        p = f"model.layers.{n}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
        }
    return shapes | {"model.norm.weight": (h,), "lm_head.weight": (v, h)}


def write_pair(out: Path, dtype_name: str) -> None:
    """Child process: write base/ (config.json + model.safetensors) and finetuned.safetensors."""
    from safetensors.torch import save_file

    dtype, layers = DTYPES[dtype_name], LAYERS[dtype_name]
    gen = torch.Generator().manual_seed(0)
    shapes = llama_shapes(layers)
    base = {
        k: (torch.ones(s) if len(s) == 1 else torch.randn(s, generator=gen) * 0.02).to(dtype) for k, s in shapes.items()
    }
    (out / "base").mkdir(parents=True)
    save_file(base, out / "base" / "model.safetensors")
    config = (
        '{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "tie_word_embeddings": false, '
        f'"hidden_size": {LLAMA["hidden"]}, "intermediate_size": {LLAMA["intermediate"]}, '
        f'"num_attention_heads": {LLAMA["heads"]}, "num_key_value_heads": {LLAMA["kv_heads"]}, '
        f'"num_hidden_layers": {layers}, "vocab_size": {LLAMA["vocab"]}}}'
    )
    (out / "base" / "config.json").write_text(config)
    for key in list(base):
        w = base.pop(key).float()
        if w.dim() == 1:
            w += 0.01 * torch.randn(w.shape, generator=gen)
        elif key.endswith(("embed_tokens.weight", "lm_head.weight")):
            rows = torch.randint(0, w.shape[0], (2000,), generator=gen)
            w[rows] += 1e-3 * torch.randn(len(rows), w.shape[1], generator=gen)
        else:
            u, v = torch.randn(w.shape[0], 8, generator=gen), torch.randn(8, w.shape[1], generator=gen)
            w += 1e-3 * (u @ v) / 8 + 1e-4 * torch.randn(w.shape, generator=gen)
        base[key] = w.to(dtype)
    save_file(base, out / "finetuned.safetensors")
    os.sync()


def drop_cache(*paths: Path) -> None:
    """Evict the files' pages from the page cache (they are clean after os.sync), so the next read is cold."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_every_tensor(*files: Path) -> int:
    """The baseline: read every tensor of both files into memory once (and drop it)."""
    from safetensors import safe_open

    n = 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                n += f.get_tensor(key).clone().numel()
    return n


def raw_read(*files: Path) -> int:
    n = 0
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(1 << 24):
                n += len(chunk)
    return n


def bench_stream(work: Path, dtype_name: str) -> None:
    from session.context import ToolContext
    from session.state import Session
    from tools.weight_diff import SPEC
    from toolserver.contract import SilentReporter

    print(
        f"writing a Llama-shaped base/fine-tune pair ({dtype_name}, {LAYERS[dtype_name]} layers) to {work} …",
        flush=True,
    )
    subprocess.run([sys.executable, "-m", "bench.weight_diff", "--write", str(work), "--dtype", dtype_name], check=True)
    base_file, ft_file = work / "base" / "model.safetensors", work / "finetuned.safetensors"
    size = ft_file.stat().st_size
    print(f"checkpoint size: base {base_file.stat().st_size / GB:.2f} GB, fine-tune {size / GB:.2f} GB")

    drop_cache(base_file, ft_file)
    t = time.perf_counter()
    raw_read(base_file, ft_file)
    raw_s = time.perf_counter() - t

    drop_cache(base_file, ft_file)
    t = time.perf_counter()
    read_every_tensor(base_file, ft_file)
    read_s = time.perf_counter() - t

    session = ToolContext(Session(id="bench", model=str(work / "base"), model_source=str(work / "base"), kind="llm"))
    args = SPEC.input_model(checkpoint=str(ft_file))
    drop_cache(base_file, ft_file)
    baseline = rss_anon_mb()
    with PeakAnon() as mem:
        t = time.perf_counter()
        out = SPEC.run(session, args, SilentReporter())
        diff_s = time.perf_counter() - t
    peak_mb = mem.peak - baseline
    t = time.perf_counter()
    SPEC.run(session, args, SilentReporter())
    warm_s = time.perf_counter() - t

    res = out.result
    print(
        f"compared {res.totals.tensors_compared} tensors; top change {res.top_changed[0].label} "
        f"rel {res.top_changed[0].rel_delta:.3g}, stable rank {res.top_changed[0].stable_rank:.3g}"
    )
    print(f"raw sequential read of both files (cold):    {raw_s:7.2f} s  ({2 * size / GB / raw_s:.2f} GB/s)")
    print(f"read every tensor of both files once (cold): {read_s:7.2f} s  <- baseline")
    print(
        f"weight diff (cold):                          {diff_s:7.2f} s  ratio {diff_s / read_s:.2f}× (target ≤ 2×) "
        f"{'OK' if diff_s <= 2 * read_s else 'MISSED'}"
    )
    print(f"weight diff (warm page cache):               {warm_s:7.2f} s  ratio {warm_s / read_s:.2f}×")
    share = peak_mb * 2**20 / size
    print(
        f"peak anonymous memory above baseline: {peak_mb:.0f} MB = {share:.1%} of one checkpoint "
        f"(target < 25%) {'OK' if share < 0.25 else 'MISSED'}"
    )


def bench_torch_file(work: Path, params: int = 200_000_000) -> None:
    from session.checkpoints import open_checkpoint

    gen = torch.Generator().manual_seed(0)
    rows = 4096
    path = work / "ft.pt"
    state = {f"layers.{i}.weight": torch.randn(rows, 2048, generator=gen) for i in range(params // (rows * 2048))}
    torch.save({"step": 1, "state_dict": state}, path)
    del state
    os.sync()

    def plain() -> int:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
        return sum(t.clone().numel() for t in sd.values())

    def checked() -> int:
        with open_checkpoint(path) as reader:
            return sum(reader.get(k).clone().numel() for k in reader.keys())

    times = {}
    for name, fn in (("plain", plain), ("checked", checked)):
        drop_cache(path)
        t = time.perf_counter()
        fn()
        times[name] = time.perf_counter() - t
    ratio = times["checked"] / times["plain"]
    print(f".pt checkpoint {path.stat().st_size / GB:.2f} GB, every tensor read (cold):")
    print(f"  torch.load(mmap=True), no check:  {times['plain']:6.2f} s  <- baseline")
    print(
        f"  loader with CRC-32 per record:    {times['checked']:6.2f} s  ratio {ratio:.2f}× (target ≤ 1.3×) "
        f"{'OK' if ratio <= 1.3 else 'MISSED'}"
    )


def bench_lora(d: int = 4096, r: int = 16, repeats: int = 20) -> None:
    from tools.weight_diff.spectral import lowrank_spectrum

    gen = torch.Generator().manual_seed(0)
    b, a, scale = torch.randn(d, r, generator=gen) * 0.01, torch.randn(r, d, generator=gen) * 0.01, 2.0
    t = time.perf_counter()
    for _ in range(repeats):
        spec = lowrank_spectrum(b, a, scale)
    factor_s = (time.perf_counter() - t) / repeats
    t = time.perf_counter()
    sv = torch.linalg.svdvals(scale * b @ a)
    dense_s = time.perf_counter() - t
    dense_rank = float(sv.square().sum() / sv[0] ** 2)
    rel = abs(spec.stable_rank - dense_rank) / dense_rank
    print(
        f"LoRA d={d} r={r}: stable rank via factors {spec.stable_rank:.6f} in {factor_s * 1e3:.2f} ms; "
        f"dense SVD of the formed product {dense_rank:.6f} in {dense_s:.2f} s"
    )
    print(
        f"  relative difference {rel:.1e} (target ≤ 1e-4) {'OK' if rel <= 1e-4 else 'MISSED'}; "
        f"speed-up {dense_s / factor_s:.0f}× (target ≥ 50×) {'OK' if dense_s / factor_s >= 50 else 'MISSED'}"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.weight_diff")
    p.add_argument(
        "--dtype",
        choices=[*sorted(DTYPES), "both"],
        default="both",
        help="checkpoint dtype: fp32 (402M parameters) and/or bf16 (762M parameters), both ≥ 1.5 GB",
    )
    p.add_argument("--dir", type=Path, default=None, help="where to write the temporary checkpoints (default: /tmp)")
    p.add_argument("--write", type=Path, help=argparse.SUPPRESS)  # child process: write the pair and exit
    ns = p.parse_args(argv or [])
    if ns.write:
        write_pair(ns.write, ns.dtype)
        return
    for dtype_name in sorted(DTYPES, reverse=True) if ns.dtype == "both" else [ns.dtype]:
        work = Path(tempfile.mkdtemp(prefix="bench-weight-diff-", dir=ns.dir))
        try:
            bench_stream(work, dtype_name)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print()
    work = Path(tempfile.mkdtemp(prefix="bench-weight-diff-", dir=ns.dir))
    try:
        bench_torch_file(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    bench_lora()


if __name__ == "__main__":
    main(sys.argv[1:])
