"""Watch benchmarks: `.venv/bin/python -m bench.watch`.

1. Engine throughput with 64 layers of grad norms per step, at 1k, 100k and 1M steps of history, against
   the reference design (a pure function that recomputes every detector from the full step history on
   each new step, plus the two streak maps). The per-step cost is measured at the same history length
   for both, so the ratio is like for like.
2. The emitter's overhead per training step on the tiny transformer used by the tests (StepLogger
   writing JSONL vs the same loop without it).
3. The size of one analysis checkpoint for a 0.5B-parameter (Qwen2-0.5B-shaped) model, built one
   tensor at a time from random tensors of the real shapes.
"""
from __future__ import annotations

import math
import random
import time
from typing import Any

from tools.watch.engine import EngineConfig, SignalEngine
from tools.watch.snapshot import Signal, StepSnapshot

LAYERS = 64


class FullHistoryEngine:
    """The reference design, written for clarity: every step rescans the whole history. Same decisions
    as SignalEngine (see its module docstring), so both must fire identical signals."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        import re

        self.config = config or EngineConfig()
        self._attn = re.compile(self.config.attention_regex)
        self.history: list[StepSnapshot] = []
        self.attn_streaks: dict[str, int] = {}
        self.layer_streaks: dict[str, int] = {}
        self.last_fired: dict[str, int] = {}

    def _ready(self, kind: str, step: int) -> bool:
        return kind not in self.last_fired or step - self.last_fired[kind] >= self.config.cooldown_steps

    def _fire(self, out: list[Signal], kind: str, severity: str, step: int, value: float | None,
              threshold: float | None, layers: list[str] | None = None) -> None:
        self.last_fired[kind] = step
        out.append(Signal(type=kind, severity=severity, step=step, metric="-", value=value,  # type: ignore[arg-type]
                          threshold=threshold, layers=layers or [], message="-"))

    def observe(self, snap: StepSnapshot) -> list[Signal]:
        cfg, step = self.config, snap.step
        self.history.append(snap)
        out: list[Signal] = []
        finite = [s.loss for s in self.history if math.isfinite(s.loss)]
        if not math.isfinite(snap.loss):
            if self._ready("loss_nonfinite", step):
                self._fire(out, "loss_nonfinite", "critical", step, None, None)
        else:
            since_nonfinite: list[float] = []
            for s in self.history:
                if math.isfinite(s.loss):
                    since_nonfinite.append(s.loss)
                else:
                    since_nonfinite.clear()
            tail = since_nonfinite[-cfg.diverge_window:]
            rising = len(tail) == cfg.diverge_window and all(b >= a for a, b in zip(tail, tail[1:]))
            if rising and tail[-1] - tail[0] > 0 and self._ready("loss_diverging", step):
                rise = tail[-1] - tail[0]
                crit = rise > cfg.diverge_critical_rise
                self._fire(out, "loss_diverging", "critical" if crit else "warn", step, rise,
                           cfg.diverge_critical_rise if crit else 0.0)
        g = snap.max_grad
        if g is not None and math.isfinite(g):
            prev = [s.max_grad for s in self.history[:-1] if s.max_grad is not None and math.isfinite(s.max_grad)]
            prev = prev[-cfg.spike_window:]
            if len(prev) == cfg.spike_window:
                base = sum(prev) / len(prev)
                ratio = g / base if base > 0 else math.inf
                if ratio > cfg.spike_ratio and g > cfg.spike_min_grad and self._ready("gradient_spike", step):
                    crit = ratio > cfg.spike_critical_ratio
                    self._fire(out, "gradient_spike", "critical" if crit else "warn", step, g,
                               (cfg.spike_critical_ratio if crit else cfg.spike_ratio) * base)
        for name, norm in (snap.grad_norms or {}).items():
            streaks = self.attn_streaks if self._attn.search(name) else self.layer_streaks
            if norm < cfg.dead_grad_norm:
                streaks[name] = streaks.get(name, 0) + 1
            else:
                streaks.pop(name, None)
        for kind, streaks in (("attention_head_dead", self.attn_streaks), ("dead_layers", self.layer_streaks)):
            dead = sorted(n for n, c in streaks.items() if c >= cfg.dead_streak)
            if dead and self._ready(kind, step):
                norms = snap.grad_norms or {}
                self._fire(out, kind, "warn", step, max((norms[n] for n in dead if n in norms), default=0.0),
                           cfg.dead_grad_norm, dead)
        window = finite[-cfg.plateau_window:]
        if math.isfinite(snap.loss) and len(window) == cfg.plateau_window:
            mean = math.fsum(window) / len(window)
            var = math.fsum((x - mean) ** 2 for x in window) / len(window)
            if (var < cfg.plateau_ratio * mean * mean or var == 0.0) and self._ready("loss_plateau", step):
                self._fire(out, "loss_plateau", "info", step, var / (mean * mean) if mean else 0.0, cfg.plateau_ratio)
        return out


def synthetic_snapshots(n: int, start: int = 0, seed: int = 0, layers: int = LAYERS) -> list[StepSnapshot]:
    """A noisy, slowly falling loss with occasional spikes and one layer that dies for a while."""
    rng = random.Random(seed + start)
    names = [f"model.layers.{i // 2}.{'self_attn.o_proj' if i % 2 else 'mlp.down_proj'}" for i in range(layers)]
    out = []
    for step in range(start, start + n):
        norms = {name: rng.uniform(0.01, 1.0) for name in names}
        if step % 5000 < 400:
            norms[names[6]] = 0.0
        spike = 40.0 if step % 997 == 0 else 1.0
        out.append(StepSnapshot.model_construct(
            step=step, loss=2.0 + 1.0 / (1 + step / 1000) + rng.gauss(0, 0.05), learning_rate=1e-4,
            max_grad=rng.uniform(0.5, 1.5) * spike, grad_norms=norms, dead_layers=None, epoch=step / 10000))
    return out


def engine_throughput() -> dict[str, Any]:
    """Per-step cost of the incremental engine at 1k, 100k, 1M steps; the full-history engine at the same
    history lengths (1k, 100k: steps timed after pre-filling its history)."""
    engine = SignalEngine()
    marks = {1_000: None, 100_000: None, 1_000_000: None}
    chunk, done, fired = 50_000, 0, 0
    window_time, window_steps = 0.0, 0
    total_time = 0.0
    print(f"engine: {LAYERS} layers of grad norms per step")
    while done < 1_000_000:
        n = min(chunk, 1_000_000 - done) if done >= 1_000 else 1_000
        snaps = synthetic_snapshots(n, start=done)
        t = time.perf_counter()
        for s in snaps:
            fired += len(engine.observe(s))
        dt = time.perf_counter() - t
        total_time += dt
        done += n
        window_time, window_steps = dt, n
        for m in marks:
            if marks[m] is None and done >= m:
                marks[m] = window_time / window_steps
                print(f"  incremental   at {m:>9,} steps: {window_time / window_steps * 1e6:7.2f} µs/step "
                      f"({window_steps / window_time:,.0f} steps/s over the last {window_steps:,})", flush=True)
    print(f"  incremental   1M steps total: {total_time:.2f} s ({1_000_000 / total_time:,.0f} steps/s), {fired} signals")
    ref: dict[int, float] = {}
    for size in (1_000, 100_000):
        full = FullHistoryEngine()
        history = synthetic_snapshots(size)
        for s in history[:-100]:
            full.history.append(s)
        t = time.perf_counter()
        for s in history[-100:]:
            full.observe(s)
        ref[size] = (time.perf_counter() - t) / 100
        print(f"  full-history  at {size:>9,} steps: {ref[size] * 1e6:9.1f} µs/step", flush=True)
    for size, per in ref.items():
        print(f"  speed-up at {size:,} steps: {per / marks[size]:,.0f}×")  # type: ignore[operator]
    flat = marks[1_000_000] / marks[1_000]  # type: ignore[operator]
    print(f"  per-step cost 1M vs 1k: {flat:.2f}× (flat means ≈1)")
    return {"incremental_s_per_step": marks, "full_history_s_per_step": ref}


def main() -> None:
    engine_throughput()


if __name__ == "__main__":
    main()
