"""Helpers for the watch tests: hand-built step logs, running the tool on a file, a tiny transformer."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from session.context import ToolContext
from tools.watch.models import WatchInput, WatchResult
from tools.watch.run import run
from toolserver.contract import SilentReporter

ATTN = "model.layers.0.self_attn.q_proj"
MLP = "model.layers.0.mlp.up_proj"
MLP2 = "model.layers.1.mlp.down_proj"


def zigzag(i: int, centre: float = 3.0, amp: float = 0.5) -> float:
    """A loss that neither rises 10 times in a row nor plateaus (variance 0.25 ≫ 0.001 × 9)."""
    return centre + amp * (-1) ** i


def steps(
    n: int,
    *,
    start: int = 1,
    loss: Any = zigzag,
    max_grad: Any = None,
    grad_norms: Any = None,
    epoch: float | None = None,
    **extra: Any,
) -> list[dict[str, Any]]:
    """Rows for steps start..start+n-1; loss/max_grad/grad_norms may be constants or functions of the step."""

    def value(f: Any, i: int) -> Any:
        return f(i) if callable(f) else f

    rows = []
    for i in range(start, start + n):
        row: dict[str, Any] = {"step": i, "loss": value(loss, i)}
        if max_grad is not None:
            row["maxGrad"] = value(max_grad, i)
        if grad_norms is not None:
            row["gradNorms"] = value(grad_norms, i)
        if epoch is not None:
            row["epoch"] = epoch
        row.update(extra)
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: Iterable[dict[str, Any] | str], newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + newline)
    return path


def watch(path: Path, reporter: Any = None, **kw: Any) -> WatchResult:
    return run(ToolContext(None), WatchInput(metrics=str(path), **kw), reporter or SilentReporter()).result


class RecordingReporter:
    """Keeps every progress call and live event, with the time it arrived."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, dict[str, Any], str | None]] = []
        self.progress_calls: list[tuple[float, str]] = []

    def progress(self, fraction: float, message: str) -> None:
        self.progress_calls.append((fraction, message))

    def emit(self, type: str, data: dict[str, Any], text: str | None = None) -> None:
        import time

        self.events.append((time.monotonic(), type, data, text))

    def of(self, type: str) -> list[dict[str, Any]]:
        return [d for _, t, d, _ in self.events if t == type]


# ----- a tiny transformer and a training loop ---------------------------------------------------
VOCAB, SEQ, BATCH = 64, 16, 16


def tiny_lm(seed: int = 0, n_layer: int = 2) -> Any:
    """A GPT-2 (d_model 32, 2 layers unless told) with the framework's real module names."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=n_layer, n_head=2, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(cfg)


def sequences(n: int, seed: int = 1) -> Any:
    """Arithmetic progressions mod VOCAB: learnable, so a healthy run's loss falls."""
    import torch

    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    stride = torch.randint(1, 4, (n, 1), generator=g)
    return (start + stride * torch.arange(SEQ)) % VOCAB


def train(
    model: Any,
    logger: Any,
    n_steps: int,
    *,
    lr: float = 3e-3,
    ramp_from: int | None = None,
    ramp: float = 1.1,
    stop_after_nonfinite: int = 3,
) -> list[Any]:
    """AdamW on fresh batches; from `ramp_from` on the learning rate grows ×`ramp` per step (a run pushed
    into divergence). Stops a few steps after the loss stops being finite. Returns the signals fired."""
    import math

    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    data = sequences(n_steps * BATCH)
    fired, nonfinite = [], 0
    for step in range(1, n_steps + 1):
        if ramp_from is not None and step > ramp_from:
            for group in opt.param_groups:
                group["lr"] *= ramp
        x = data[(step - 1) * BATCH : step * BATCH]
        opt.zero_grad()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        fired += logger.step(step, loss, opt, epoch=step / 100)
        opt.step()
        nonfinite += not math.isfinite(loss.item())
        if nonfinite >= stop_after_nonfinite:
            break
    return fired
