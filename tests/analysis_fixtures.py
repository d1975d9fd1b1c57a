"""Helpers for the analysis-view tests: real tiny training runs that write analysis checkpoints (with the model's
own weights and gradients kept at every checkpoint, to check the viewer's numbers against), hand-built
checkpoints from the recorder's own summarise(), and a large synthetic run for the size and render tests."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.analysis_view.frames import Frame, Run
from tools.analysis_view.models import AnalysisViewInput, AnalysisViewResult
from tools.analysis_view.run import run
from tools.watch.analysis_schema import Movement
from toolserver.contract import SilentReporter


@dataclass
class Kept:
    """The model's weights and gradients as the recorder saw them at one checkpoint."""

    weights: dict[str, Any]
    grads: dict[str, Any]


def _scaled(out: Any, factor: float) -> Any:
    """A block's output with its hidden state scaled (a tensor, or a tuple led by one in older transformers)."""
    return (out[0] * factor, *out[1:]) if isinstance(out, tuple) else out * factor


def train(
    out: Path,
    *,
    n_layer: int = 6,
    steps: int = 40,
    block: int | None = None,
    detach: str | None = None,
    zero: str | None = None,
    weight_decay: float = 0.01,
    config: Any = None,
) -> dict[int, Kept]:
    """AdamW on the tiny GPT-2 (watch_fixtures) with StepLogger writing analysis checkpoints into `out`. `block`: that
    block's output hidden state is scaled by 1e-3 (a norm bottleneck); `detach`: that module's output is detached (no
    gradient reaches its parameters); `zero`: that parameter's gradient is zeroed. Returns step → what was recorded."""
    import torch
    from watch_fixtures import BATCH, sequences, tiny_lm

    from tools.watch import StepLogger
    from tools.weight_diff.compute import single_thread

    model = tiny_lm(n_layer=n_layer)
    model.config._attn_implementation = "eager"  # attention weights are returned only by eager attention
    if block is not None:
        model.transformer.h[block].register_forward_hook(lambda m, args, out: _scaled(out, 1e-3))
    if detach is not None:
        model.get_submodule(detach).register_forward_hook(lambda m, args, out: out.detach())
    if zero is not None:
        model.get_parameter(zero).register_hook(torch.zeros_like)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=weight_decay)
    data = sequences(steps * BATCH)
    kept: dict[int, Kept] = {}
    with single_thread(), StepLogger(model, analysis_dir=out, analysis=config) as log:
        for step in range(1, steps + 1):
            x = data[(step - 1) * BATCH : step * BATCH]
            opt.zero_grad()
            outputs = model(input_ids=x, labels=x, output_attentions=True)
            outputs.loss.backward()
            written = len(log.analysis.written)
            log.step(step, outputs.loss, opt, attentions=outputs.attentions)
            if len(log.analysis.written) > written:
                kept[step] = Kept(
                    weights={n: p.detach().clone() for n, p in model.named_parameters()},
                    grads={n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                )
            opt.step()
    return kept


def view(directory: Path, **kw: Any) -> Any:
    """The tool's run on a folder: the outcome (result, findings, follow-ups)."""
    return run(None, AnalysisViewInput(dir=str(directory), **kw), SilentReporter())  # type: ignore[arg-type]


def result(directory: Path, **kw: Any) -> AnalysisViewResult:
    return view(directory, **kw).result


def write_checkpoint(
    directory: Path,
    step: int,
    tensors: list[tuple[str, Any, Any]],
    *,
    attention: dict[str, Any] | None = None,
    grad_clip: float | None = None,
    reasons: list[str] | None = None,
) -> Path:
    """A checkpoint from (name, weight, grad) tensors and attention patterns through the recorder's summarise()
    and attention_stats(), written as AnalysisRecorder writes it."""
    from tools.watch.analysis_checkpoint import AnalysisConfig, attention_stats, summarise

    cfg = AnalysisConfig(grad_clip=grad_clip)
    ck = summarise(step, 1.0, reasons or ["scheduled"], tensors, cfg, set())  # type: ignore[arg-type]
    ck.attention = {key: attention_stats(p) for key, p in (attention or {}).items()}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"analysis_{step:08d}.json"
    path.write_text(ck.model_dump_json(exclude_none=True))
    return path


def synthetic_run(layers: int, heads: int, checkpoints: int, seed: int = 0) -> Run:
    """Frames of a run of `layers` blocks (Qwen2-style names: 7 matrices and 2 norms a block, embeddings and a final
    norm), `heads` heads a layer and 3 activation modules a layer, at the recorder's cadence: realistic sizes, values
    from a seeded generator. No files: for the result-size and render tests."""
    rng = random.Random(seed)
    names = ["model.embed_tokens.weight"]
    for i in range(layers):
        p = f"model.layers.{i}"
        names += [f"{p}.self_attn.{m}.weight" for m in ("q_proj", "k_proj", "v_proj", "o_proj")]
        names += [f"{p}.mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")]
        names += [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"]
    names.append("model.norm.weight")
    shapes = {n: [896, 896] if "proj" in n or "embed" in n else [896] for n in names}
    depth = {n: int(n.split(".")[2]) + 1 if n.startswith("model.layers.") else layers // 2 for n in names}
    scale = {n: 1e-3 * 2 ** (depth[n] / 16) for n in names}  # gradients grow towards the output
    modules = [f"model.layers.{i}{m}" for i in range(layers) for m in ("", ".self_attn", ".mlp")]
    frames = []
    for k in range(checkpoints):
        step = 10 * (k + 1)
        decay = math.exp(-k / checkpoints)
        frames.append(
            Frame(
                step=step,
                loss=2.0 + decay + rng.gauss(0, 0.02),
                reasons=["scheduled"] if k % 97 else ["scheduled", "grad_norm"],
                path=Path(f"analysis_{step:08d}.json"),
                grad={n: scale[n] * rng.uniform(0.8, 1.2) for n in names},
                moved={n: 0.01 * math.sqrt(k) * rng.uniform(0.5, 1.5) for n in names},
                moved_rms={},
                activations={m: (rng.gauss(0, 0.1), 1 + 0.01 * k * rng.random(), rng.random() * 0.1) for m in modules},
                entropy={f"layer.{i}": [rng.uniform(0.5, 3.0) for _ in range(heads)] for i in range(layers)},
                max_attn={f"layer.{i}": [rng.uniform(0.1, 0.9) for _ in range(heads)] for i in range(layers)},
            )
        )
    return Run(
        dir=Path("/synthetic/run/analysis"),
        frames=frames,
        shapes=shapes,
        movement=Movement(reference_step=10, sample=65_536),
        reference_norms={n: 1.0 for n in names},
        grad_clip=1.0,
    )
