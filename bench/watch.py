"""Watch benchmarks: `.venv/bin/python -m bench.watch`.

1. Engine throughput with 64 layers of grad norms per step, at 1k, 100k and 1M steps of history, against
   the reference design (a pure function that recomputes every detector from the full step history on
   each new step, plus the two streak maps). The per-step cost is measured at the same history length
   for both, so the ratio is like for like.
2. The emitter's overhead per training step (StepLogger writing JSONL vs the same loop without it) on
   the tiny transformer used by the tests and on a 4-layer d_model 128 one, in thread CPU time so a
   busy machine does not skew it.
3. The size of one analysis checkpoint for a 0.5B-parameter (Qwen2-0.5B-shaped) model, built one
   tensor at a time from random tensors of the real shapes.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Iterator
from typing import Any

from tools.watch.engine import EngineConfig, SignalEngine, trend_change
from tools.watch.snapshot import Signal, StepSnapshot
from toolserver.contract import SEVERITY_RANK

LAYERS = 64


def _nonfinite_grad(snap: StepSnapshot) -> bool:
    values = [snap.max_grad, *(snap.grad_norms or {}).values()]
    return any(v is not None and not math.isfinite(v) for v in values)


class FullHistoryEngine:
    """The reference design, written for clarity: every step rescans the whole history; only what a
    lasting condition must remember (streaks, announced episodes, an ongoing spike or plateau, the
    cooldowns) is kept between steps. Same decisions as SignalEngine (see its module docstring), so both
    must fire identical signals, under either rule set."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        import re

        self.config = config or EngineConfig()
        self.episodes = not self.config.seed_rules
        self._attn = re.compile(self.config.attention_regex)
        self.history: list[StepSnapshot] = []
        self.attn_streaks: dict[str, int] = {}
        self.layer_streaks: dict[str, int] = {}
        self.low_since: dict[str, int] = {}
        self.announced: dict[str, dict[str, int]] = {"attention_head_dead": {}, "dead_layers": {}}
        self.plateau_on: tuple[int, float] | None = None
        self.spike: list[Any] | None = None
        self.last_fired: dict[str, int] = {}
        self.last_severity: dict[str, str] = {}

    def _ready(self, kind: str, step: int) -> bool:
        return kind not in self.last_fired or step - self.last_fired[kind] >= self.config.cooldown_steps

    def _may_fire(self, kind: str, step: int, severity: str) -> bool:
        return self._ready(kind, step) or SEVERITY_RANK[severity] < SEVERITY_RANK[self.last_severity[kind]]

    def _fire(
        self,
        out: list[Signal],
        kind: str,
        severity: str,
        step: int,
        value: float | None,
        threshold: float | None,
        layers: list[str] | None = None,
        *,
        end_of: int | None = None,
    ) -> None:
        if end_of is None:
            self.last_fired[kind], self.last_severity[kind] = step, severity
        lasting = self.episodes and kind in ("attention_head_dead", "dead_layers", "loss_plateau")
        out.append(
            Signal(
                type=kind,
                severity=severity,
                step=step,
                metric="-",
                value=value,  # type: ignore[arg-type]
                threshold=threshold,
                layers=layers or [],
                message="-",
                episode=("end" if end_of is not None else "start") if lasting else None,
                since_step=end_of,
                duration_steps=None if end_of is None else step - end_of,
            )
        )

    def observe(self, snap: StepSnapshot) -> list[Signal]:
        cfg, step = self.config, snap.step
        self.history.append(snap)
        out: list[Signal] = []
        finite = [(s.step, s.loss) for s in self.history if math.isfinite(s.loss)]
        loss_ok = math.isfinite(snap.loss)
        if not loss_ok and self._ready("loss_nonfinite", step):
            self._fire(out, "loss_nonfinite", "critical", step, None, None)
        if self.episodes and _nonfinite_grad(snap):
            self._grad_nonfinite(out, snap, loss_ok)
        if loss_ok and self.episodes:
            self._loss_spike(out, step, snap.loss, [loss for _, loss in finite[:-1]])
        if loss_ok:
            since_nonfinite: list[float] = []
            for s in self.history:
                if math.isfinite(s.loss):
                    since_nonfinite.append(s.loss)
                else:
                    since_nonfinite.clear()
            tail = since_nonfinite[-cfg.diverge_window :]
            rising = len(tail) == cfg.diverge_window and all(b >= a for a, b in itertools.pairwise(tail))
            if rising and tail[-1] - tail[0] > 0 and self._ready("loss_diverging", step):
                rise = tail[-1] - tail[0]
                crit = rise > cfg.diverge_critical_rise
                self._fire(
                    out,
                    "loss_diverging",
                    "critical" if crit else "warn",
                    step,
                    rise,
                    cfg.diverge_critical_rise if crit else 0.0,
                )
        g = snap.max_grad
        if g is not None and math.isfinite(g):
            prev = [s.max_grad for s in self.history[:-1] if s.max_grad is not None and math.isfinite(s.max_grad)]
            prev = prev[-cfg.spike_window :]
            if len(prev) == cfg.spike_window:
                base = sum(prev) / len(prev)
                ratio = g / base if base > 0 else math.inf
                if ratio > cfg.spike_ratio and g > cfg.spike_min_grad and self._ready("gradient_spike", step):
                    crit = ratio > cfg.spike_critical_ratio
                    self._fire(
                        out,
                        "gradient_spike",
                        "critical" if crit else "warn",
                        step,
                        g,
                        (cfg.spike_critical_ratio if crit else cfg.spike_ratio) * base,
                    )
        norms = snap.grad_norms or {}
        recovered: dict[str, list[str]] = {"attention_head_dead": [], "dead_layers": []}
        for name, norm in norms.items():
            kind = "attention_head_dead" if self._attn.search(name) else "dead_layers"
            streaks = self.attn_streaks if kind == "attention_head_dead" else self.layer_streaks
            if norm < cfg.dead_grad_norm:
                if name not in streaks:
                    self.low_since[name] = step
                streaks[name] = streaks.get(name, 0) + 1
            else:
                streaks.pop(name, None)
                if name in self.announced[kind]:
                    recovered[kind].append(name)
        for kind, streaks in (("attention_head_dead", self.attn_streaks), ("dead_layers", self.layer_streaks)):
            if self.episodes and recovered[kind]:
                since = {n: self.announced[kind].pop(n) for n in sorted(recovered[kind])}
                value = max((norms[n] for n in since if math.isfinite(norms[n])), default=None)
                self._fire(out, kind, "info", step, value, cfg.dead_grad_norm, list(since), end_of=min(since.values()))
            dead = sorted(n for n, c in streaks.items() if c >= cfg.dead_streak)
            if self.episodes:
                dead = [n for n in dead if n not in self.announced[kind]]
            if dead and self._ready(kind, step):
                if self.episodes:
                    self.announced[kind].update({n: self.low_since[n] for n in dead})
                value = max((norms[n] for n in dead if n in norms), default=0.0)
                self._fire(out, kind, "warn", step, value, cfg.dead_grad_norm, dead)
        window = finite[-cfg.plateau_window :]
        if loss_ok and len(window) == cfg.plateau_window:
            self._plateau(out, step, window)
        return out

    def _grad_nonfinite(self, out: list[Signal], snap: StepSnapshot, loss_ok: bool) -> None:
        cfg = self.config
        bad = sorted(n for n, v in (snap.grad_norms or {}).items() if not math.isfinite(v))
        values = [snap.max_grad, *(snap.grad_norms or {}).values()]
        nan = any(v is not None and math.isnan(v) for v in values)
        count = sum(_nonfinite_grad(s) for s in self.history[-cfg.overflow_window :])
        severity = "critical" if nan and loss_ok else "warn" if count >= cfg.overflow_repeat else "info"
        if self._may_fire("grad_nonfinite", snap.step, severity):
            threshold = float(cfg.overflow_repeat) if severity == "warn" else None
            self._fire(out, "grad_nonfinite", severity, snap.step, float(count), threshold, bad)

    def _loss_spike(self, out: list[Signal], step: int, loss: float, previous: list[float]) -> None:
        cfg = self.config
        if self.spike is not None:
            base, since, high, crit = self.spike
            if loss > cfg.loss_spike_ratio * base:
                self.spike = [base, since, high + 1, crit or high + 1 >= cfg.loss_spike_persist]
                if high + 1 >= cfg.loss_spike_persist and not crit and self._may_fire("loss_spike", step, "critical"):
                    self._fire(out, "loss_spike", "critical", step, loss / base, cfg.loss_spike_ratio)
                return
            self.spike = None
        window = previous[-cfg.loss_spike_window :]
        if len(window) < cfg.loss_spike_window:
            return
        base = math.fsum(window) / len(window)
        std = math.sqrt(math.fsum((x - base) ** 2 for x in window) / len(window))
        if base > 0 and loss > cfg.loss_spike_ratio * base and loss - base > cfg.loss_spike_sigmas * std:
            crit = loss / base > cfg.loss_spike_critical_ratio
            self.spike = [base, step, 1, crit]
            severity = "critical" if crit else "warn"
            if self._may_fire("loss_spike", step, severity):
                limit = cfg.loss_spike_critical_ratio if crit else cfg.loss_spike_ratio
                self._fire(out, "loss_spike", severity, step, loss / base, limit)

    def _plateau(self, out: list[Signal], step: int, window: list[tuple[int, float]]) -> None:
        cfg = self.config
        losses = [loss for _, loss in window]
        mean = math.fsum(losses) / len(losses)
        if self.episodes and self.plateau_on is not None:
            since, level = self.plateau_on
            if abs(mean - level) > cfg.plateau_exit * abs(level):
                self.plateau_on = None
                moved = (mean - level) / abs(level) if level else None
                self._fire(out, "loss_plateau", "info", step, moved, cfg.plateau_exit, end_of=since)
            return
        var = math.fsum((x - mean) ** 2 for x in losses) / len(losses)
        flat = var == 0.0 or (
            var < cfg.plateau_ratio * mean * mean
            and (not self.episodes or abs(trend_change(losses)) < cfg.plateau_trend * abs(mean))
        )
        if flat and self._ready("loss_plateau", step):
            self._fire(out, "loss_plateau", "info", step, var / (mean * mean) if mean else 0.0, cfg.plateau_ratio)
            if self.episodes:
                self.plateau_on = (window[0][0], mean)


def synthetic_snapshots(n: int, start: int = 0, seed: int = 0, layers: int = LAYERS) -> list[StepSnapshot]:
    """A noisy, slowly falling loss, occasional 40× gradient spikes, and one layer dead for 400 of every
    5000 steps. Grad-norm maps come from a small pool (building 64M random floats would dominate)."""
    rng = random.Random(seed + start)
    names = [f"model.layers.{i // 2}.{'self_attn.o_proj' if i % 2 else 'mlp.down_proj'}" for i in range(layers)]
    healthy = [{name: rng.uniform(0.01, 1.0) for name in names} for _ in range(97)]
    dead = [{**norms, names[6]: 0.0} for norms in healthy[:7]]
    out = []
    for step in range(start, start + n):
        norms = dead[step % 7] if step % 5000 < 400 else healthy[step % 97]
        spike = 40.0 if step % 997 == 0 else 1.0
        out.append(
            StepSnapshot.model_construct(
                step=step,
                loss=2.0 + 1.0 / (1 + step / 1000) + rng.gauss(0, 0.05),
                learning_rate=1e-4,
                max_grad=rng.uniform(0.5, 1.5) * spike,
                grad_norms=norms,
                dead_layers=None,
                epoch=step / 10000,
            )
        )
    return out


def engine_throughput(config: EngineConfig) -> dict[int, float]:
    """Per-step cost of the incremental engine at 1k, 100k and 1M steps of history, and of the
    full-history reference at 1k and 100k (timed over 100 steps after pre-filling its history). This
    thread's CPU time, so other processes on the machine do not show up as a per-step cost."""
    engine = SignalEngine(config)
    marks: dict[int, float] = {}
    done, fired, total_time = 0, 0, 0.0
    rules = "the seed's rules" if config.seed_rules else "the default rules"
    print(f"engine, {rules}, {LAYERS} layers of grad norms per step (CPU time)")
    while done < 1_000_000:
        n = 1_000 if done == 0 else min(99_000 if done == 1_000 else 100_000, 1_000_000 - done)
        snaps = synthetic_snapshots(n, start=done)
        t = time.thread_time()
        for snap in snaps:
            fired += len(engine.observe(snap))
        dt = time.thread_time() - t
        total_time += dt
        done += n
        if done in (1_000, 100_000, 1_000_000):
            marks[done] = dt / n
            print(
                f"  incremental   at {done:>9,} steps: {dt / n * 1e6:6.2f} µs/step ({n / dt:>9,.0f} steps/s over the "
                f"last {n:,})",
                flush=True,
            )
    print(f"  incremental   1M steps in {total_time:.2f} s: {1_000_000 / total_time:,.0f} steps/s, {fired:,} signals")
    for size in (1_000, 100_000):
        full = FullHistoryEngine(config)
        light = synthetic_snapshots(size - 100)
        full.history = [
            StepSnapshot.model_construct(
                step=s.step,
                loss=s.loss,
                max_grad=s.max_grad,
                grad_norms=None,
                learning_rate=None,
                dead_layers=None,
                epoch=None,
            )
            for s in light
        ]
        timed = synthetic_snapshots(100, start=size - 100)
        t = time.thread_time()
        for snap in timed:
            full.observe(snap)
        per = (time.thread_time() - t) / 100
        print(
            f"  full-history  at {size:>9,} steps: {per * 1e6:9.1f} µs/step  → incremental is "
            f"{per / marks[size]:,.0f}× faster",
            flush=True,
        )
    print(f"  incremental per-step cost, 1M vs 1k steps of history: {marks[1_000_000] / marks[1_000]:.2f}× (flat ≈ 1)")
    return marks


def emitter_overhead(n_embd: int = 32, n_layer: int = 2, steps: int = 1000) -> None:
    """A small GPT-2 (by default the tests' tiny one: d_model 32, 2 layers; batch 16×16, AdamW, one
    thread). Steps with and without StepLogger (JSONL) alternate one by one and are timed in this
    thread's CPU time, so other processes on a busy machine slow neither side (wall time is shown too);
    medians. The logger's own call is also timed directly."""
    import statistics
    import tempfile
    from pathlib import Path

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from tools.watch.emitters import StepLogger

    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=64, n_positions=32, n_embd=n_embd, n_layer=n_layer, n_head=2, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 64, (16, 16))
    cpu: dict[str, list[float]] = {"without": [], "with": [], "logger": []}
    wall: dict[str, list[float]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as tmp, StepLogger(model, path=Path(tmp) / "m.jsonl") as log:
        for step in range(1, 2 * steps + 1):
            mode = "with" if step % 2 else "without"
            t, w = time.thread_time(), time.perf_counter()
            opt.zero_grad()
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            if mode == "with":
                t_log = time.thread_time()
                log.step(step, loss, opt, epoch=1.0)
                cpu["logger"].append(time.thread_time() - t_log)
            else:
                loss.item()  # a loop without the logger still reads its loss
            opt.step()
            cpu[mode].append(time.thread_time() - t)
            wall[mode].append(time.perf_counter() - w)
    med = {k: statistics.median(v[20:]) for k, v in cpu.items()}
    wmed = {k: statistics.median(v[20:]) for k, v in wall.items()}
    print(
        f"emitter, GPT-2 d_model {n_embd} × {n_layer} layers ({len(log.meter.params)} parameter tensors), CPU time per "
        f"step (median of {steps} each, interleaved): {med['without'] * 1e3:.2f} ms without, {med['with'] * 1e3:.2f} "
        f"ms "
        f"with StepLogger: {(med['with'] - med['without']) / med['without']:+.1%}; the log.step() call itself: "
        f"{med['logger'] * 1e6:.0f} µs = {med['logger'] / med['without']:.1%} of a step "
        f"(wall time: {(wmed['with'] - wmed['without']) / wmed['without']:+.1%})",
        flush=True,
    )


QWEN2_05B = {"hidden": 896, "intermediate": 4864, "layers": 24, "kv": 128, "vocab": 151_936}


def qwen_like_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """Every parameter of a Qwen2-0.5B-shaped model (tied embeddings): 290 tensors, 494M parameters."""
    h, i, kv = QWEN2_05B["hidden"], QWEN2_05B["intermediate"], QWEN2_05B["kv"]
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (QWEN2_05B["vocab"], h))]
    for layer in range(QWEN2_05B["layers"]):
        p = f"model.layers.{layer}"
        shapes += [
            (f"{p}.self_attn.q_proj.weight", (h, h)),
            (f"{p}.self_attn.q_proj.bias", (h,)),
            (f"{p}.self_attn.k_proj.weight", (kv, h)),
            (f"{p}.self_attn.k_proj.bias", (kv,)),
            (f"{p}.self_attn.v_proj.weight", (kv, h)),
            (f"{p}.self_attn.v_proj.bias", (kv,)),
            (f"{p}.self_attn.o_proj.weight", (h, h)),
            (f"{p}.mlp.gate_proj.weight", (i, h)),
            (f"{p}.mlp.up_proj.weight", (i, h)),
            (f"{p}.mlp.down_proj.weight", (h, i)),
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.post_attention_layernorm.weight", (h,)),
        ]
    return shapes + [("model.norm.weight", (h,))]


def qwen_like_tensors(seed: int = 0) -> Iterator[tuple[str, Any, Any]]:
    """(name, weight, grad) with random values of realistic scale, generated one tensor at a time."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for name, shape in qwen_like_shapes():
        yield name, torch.randn(shape, generator=g) * 0.02, torch.randn(shape, generator=g) * 1e-4


def checkpoint_size() -> None:
    from tools.watch.analysis_checkpoint import AnalysisConfig, grid_picks, summarise

    cfg = AnalysisConfig()
    names = [(n, len(shape)) for n, shape in qwen_like_shapes()]
    t = time.perf_counter()
    ck = summarise(500, 2.34, ["scheduled"], qwen_like_tensors(), cfg, grid_picks(names, cfg.max_grids))
    dt = time.perf_counter() - t
    size = len(ck.model_dump_json(exclude_none=True))  # as AnalysisRecorder writes it
    print(
        f"analysis checkpoint, Qwen2-0.5B shapes ({ck.n_params / 1e6:.0f}M parameters, {len(ck.weights)} tensors, "
        f"weights + grads, {cfg.max_grids} grids): {size / 1024:.0f} KB, built in {dt:.1f} s "
        f"(raw float32 weights + grads: {ck.n_params * 8 / 2**30:.1f} GiB)"
    )


def main() -> None:
    seed = engine_throughput(EngineConfig(seed_rules=True))
    default = engine_throughput(EngineConfig())
    print(
        "  the default rules (loss_spike, grad_nonfinite, plateau trend, episodes) against the seed's, per step: "
        + ", ".join(f"{default[n] / seed[n]:.2f}× at {n:,}" for n in (1_000, 100_000, 1_000_000))
    )
    emitter_overhead()  # the tests' model: the smallest step, so the largest share
    emitter_overhead(n_embd=128, n_layer=4, steps=300)
    checkpoint_size()


if __name__ == "__main__":
    main()
