"""The signal engine under the seed's rules (`seed_rules=True`): each of the five detectors fires at a known
step with a known severity on a hand-built metrics file, its near miss does not, cooldown and same-step
signals behave as designed; and under either rule set the incremental engine agrees with the full-history
reference design on random streams. The default rules' additions are in test_watch_rules.py."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from watch_fixtures import ATTN, MLP, MLP2, steps, write_jsonl, zigzag
from watch_fixtures import watch as watch_default

from bench.watch import FullHistoryEngine
from tools.watch.engine import EngineConfig, SignalEngine
from tools.watch.models import WatchResult
from tools.watch.snapshot import Signal, StepSnapshot

SEED = EngineConfig(seed_rules=True)


def watch(path: Path, **kw) -> WatchResult:
    return watch_default(path, **{"seed_rules": True, **kw})


def fired(tmp_path: Path, rows: list[dict], **kw) -> list[tuple[str, str, int]]:
    result = watch(write_jsonl(tmp_path / "m.jsonl", rows), max_signals=1000, **kw)
    return sorted((s.type, s.severity, s.step) for s in result.signals)


def rising(n: int, per_step: float, start: int = 21, base: float = 2.0) -> list[dict]:
    """20 zigzag steps, then n steps rising by per_step from `base` (below the last zigzag value)."""
    return steps(20) + steps(n, start=start, loss=lambda i: base + per_step * (i - start))


# ----- loss_diverging ---------------------------------------------------------------------------
def test_divergence_critical_when_rise_above_half(tmp_path: Path) -> None:
    # steps 21..30 rise 0.1 each: 10 non-decreasing losses end at step 30, rise 0.9
    assert fired(tmp_path, rising(10, 0.1)) == [("loss_diverging", "critical", 30)]


def test_divergence_warn_when_rise_small(tmp_path: Path) -> None:
    result = watch(write_jsonl(tmp_path / "m.jsonl", rising(10, 0.02)))
    (s,) = result.signals
    assert (s.type, s.severity, s.step, s.metric) == ("loss_diverging", "warn", 30, "loss_rise")
    assert s.value == pytest.approx(0.18)


def test_nine_rising_steps_do_not_diverge(tmp_path: Path) -> None:
    rows = rising(9, 0.1) + steps(1, start=30, loss=1.0)
    assert fired(tmp_path, rows) == []


@pytest.mark.parametrize("last, severity", [(2.5, "warn"), (2.51, "critical")])
def test_divergence_counts_equal_losses_and_is_critical_only_above_half(
    tmp_path: Path, last: float, severity: str
) -> None:
    # steps 21..30: equal neighbours still count as "each >= the one before"; rise exactly 0.5 is not > 0.5
    tail = [2.0, 2.0, 2.0, 2.0, 2.0, 2.25, 2.25, 2.5, 2.5, last]
    result = watch(write_jsonl(tmp_path / "m.jsonl", steps(20) + steps(10, start=21, loss=lambda i: tail[i - 21])))
    (s,) = result.signals
    assert (s.type, s.severity, s.step) == ("loss_diverging", severity, 30)
    assert s.value == pytest.approx(last - 2.0)


def test_flat_line_is_a_plateau_not_a_divergence(tmp_path: Path) -> None:
    assert fired(tmp_path, steps(20, loss=2.0, epoch=3)) == [("loss_plateau", "info", 20)]


# ----- gradient_spike ---------------------------------------------------------------------------
def grads(spikes: dict[int, float], n: int = 70):
    return steps(n, max_grad=lambda i: spikes.get(i, 1.0 + 0.1 * (-1) ** i))


def test_spike_warn(tmp_path: Path) -> None:
    result = watch(write_jsonl(tmp_path / "m.jsonl", grads({31: 6.0})))
    (s,) = result.signals
    assert (s.type, s.severity, s.step, s.value) == ("gradient_spike", "warn", 31, 6.0)
    assert s.threshold == pytest.approx(5.0)  # 5 × the mean of the previous 20 (exactly 1.0)


def test_spike_critical_above_twenty_times(tmp_path: Path) -> None:
    assert fired(tmp_path, grads({31: 25.0})) == [("gradient_spike", "critical", 31)]


def test_spike_near_misses(tmp_path: Path) -> None:
    assert fired(tmp_path, grads({31: 4.9})) == []  # 4.9× the baseline
    low = steps(40, max_grad=lambda i: 0.9 if i == 31 else 0.1)  # 9× but not above 1.0
    assert fired(tmp_path, low) == []


def test_spike_baseline_is_exactly_the_previous_twenty_values(tmp_path: Path) -> None:
    # steps 1-10 log 10.0, 11-30 log 1.0: only a baseline of exactly steps 11..30 makes 5.5 at step 31 a
    # 5.5× spike (21 values: 3.85×; the whole history: 1.4×; counting step 31 itself: 4.5×)
    rows = steps(31, max_grad=lambda i: 10.0 if i <= 10 else 5.5 if i == 31 else 1.0)
    assert fired(tmp_path, rows) == [("gradient_spike", "warn", 31)]


@pytest.mark.parametrize(
    "base, spike, want",
    [
        (1.0, 5.0, []),  # exactly 5× is not above 5×
        (1.0, 20.0, [("gradient_spike", "warn", 31)]),  # exactly 20× is a warning, not critical
        (1.0, 20.5, [("gradient_spike", "critical", 31)]),
        (0.1, 1.0, []),  # 10× the baseline but not above 1.0
        (0.1, 1.01, [("gradient_spike", "warn", 31)]),
    ],
)
def test_spike_limits_are_strict(tmp_path: Path, base: float, spike: float, want: list) -> None:
    assert fired(tmp_path, steps(40, max_grad=lambda i: spike if i == 31 else base)) == want


def test_spike_waits_for_a_full_baseline(tmp_path: Path) -> None:
    assert fired(tmp_path, grads({20: 50.0})) == []  # only 19 previous values at step 20
    assert fired(tmp_path, grads({21: 50.0})) == [("gradient_spike", "critical", 21)]


def test_cooldown_is_thirty_steps(tmp_path: Path) -> None:
    assert fired(tmp_path, grads({31: 10.0, 60: 10.0})) == [("gradient_spike", "warn", 31)]
    assert fired(tmp_path, grads({31: 10.0, 61: 10.0})) == [
        ("gradient_spike", "warn", 31),
        ("gradient_spike", "warn", 61),
    ]


def test_cooldown_counts_steps_not_events(tmp_path: Path) -> None:
    # logged every 10 steps: the spike 30 steps (3 events) after the first fires again
    rows = [{"step": 10 * i, "loss": zigzag(i), "maxGrad": 10.0 if i in (25, 28) else 1.0} for i in range(1, 40)]
    assert fired(tmp_path, rows) == [("gradient_spike", "warn", 250), ("gradient_spike", "warn", 280)]


# ----- attention_head_dead / dead_layers --------------------------------------------------------
def norms(dead: dict[str, range], n: int = 25):
    return steps(
        n, grad_norms=lambda i: {name: (0.0 if i in dead.get(name, ()) else 0.5) for name in (ATTN, MLP, MLP2)}
    )


def test_attention_head_dead_on_fifth_step(tmp_path: Path) -> None:
    result = watch(write_jsonl(tmp_path / "m.jsonl", norms({ATTN: range(11, 30)})))
    (s,) = result.signals
    assert (s.type, s.severity, s.step, s.layers) == ("attention_head_dead", "warn", 15, [ATTN])
    assert s.threshold == 1e-6


def test_dead_layers_names_every_dead_layer(tmp_path: Path) -> None:
    result = watch(write_jsonl(tmp_path / "m.jsonl", norms({MLP: range(20, 60), MLP2: range(9, 60)}, n=50)))
    got = sorted((s.step, s.type, s.severity, tuple(s.layers)) for s in result.signals)
    assert got == [(13, "dead_layers", "warn", (MLP2,)), (43, "dead_layers", "warn", tuple(sorted([MLP, MLP2])))]


def test_a_layer_that_stays_dead_is_named_again_once_per_cooldown(tmp_path: Path) -> None:
    result = watch(write_jsonl(tmp_path / "m.jsonl", norms({MLP: range(1, 71)}, n=70)))
    assert [(s.type, s.step, s.layers) for s in result.signals] == [("dead_layers", n, [MLP]) for n in (5, 35, 65)]
    assert [s.message.endswith(f"{MLP} ({n} steps)") for s, n in zip(result.signals, (5, 35, 65), strict=True)] == [
        True
    ] * 3


def test_a_recovered_layer_starts_a_new_streak(tmp_path: Path) -> None:
    # dead 1-33 (fires at 5), one healthy step at 34, dead again from 35: the cooldown is over at 35 but
    # the new streak only reaches 5 at step 39
    dead = [n for n in range(1, 60) if n != 34]
    assert fired(tmp_path, norms({MLP: dead}, n=59)) == [("dead_layers", "warn", 5), ("dead_layers", "warn", 39)]


def test_dead_streak_of_four_does_not_fire(tmp_path: Path) -> None:
    assert fired(tmp_path, norms({ATTN: range(11, 15), MLP: range(3, 7)})) == []


def test_dead_threshold_is_strict(tmp_path: Path) -> None:
    at = steps(10, grad_norms={MLP: 1e-6})
    below = steps(10, grad_norms={MLP: 9e-7})
    assert fired(tmp_path, at) == []
    assert fired(tmp_path, below) == [("dead_layers", "warn", 5)]


def test_attention_regex_is_configurable(tmp_path: Path) -> None:
    rows = steps(10, grad_norms={"blocks.0.mixer": 0.0})
    assert fired(tmp_path, rows) == [("dead_layers", "warn", 5)]
    assert fired(tmp_path, rows, attention_regex=r"mixer") == [("attention_head_dead", "warn", 5)]


def test_missing_layer_keeps_its_streak(tmp_path: Path) -> None:
    rows = (
        steps(3, grad_norms={MLP: 0.0})
        + steps(2, start=4, grad_norms={ATTN: 1.0})
        + steps(2, start=6, grad_norms={MLP: 0.0})
    )
    assert fired(tmp_path, rows) == [("dead_layers", "warn", 7)]


# ----- loss_plateau / non-finite loss -----------------------------------------------------------
def test_plateau_fires_with_epoch(tmp_path: Path) -> None:
    result = watch(write_jsonl(tmp_path / "m.jsonl", steps(25, loss=lambda i: zigzag(i, 2.0, 0.01), epoch=1.5)))
    (s,) = result.signals
    assert (s.type, s.severity, s.step) == ("loss_plateau", "info", 20)
    assert "epoch 1.5" in s.message
    assert s.value == pytest.approx(0.0001 / 4.0)


def test_plateau_near_miss(tmp_path: Path) -> None:
    # variance 0.0049 against 0.001 × mean² = 0.004
    assert fired(tmp_path, steps(25, loss=lambda i: zigzag(i, 2.0, 0.07))) == []


def test_plateau_uses_population_variance() -> None:
    # population variance 0.00399 < 0.004 fires; the sample variance (0.0042) would not
    engine = SignalEngine(SEED)
    amp = math.sqrt(0.00399)
    out = [s for i in range(1, 21) for s in engine.observe(StepSnapshot(step=i, loss=2.0 + amp * (-1) ** i))]
    assert [(s.type, s.step) for s in out] == [("loss_plateau", 20)]


@pytest.mark.parametrize("ratio, want", [(0.25, []), (0.2501, [("loss_plateau", 20)])])
def test_plateau_limit_is_strict(ratio: float, want: list) -> None:
    # losses 3, 1, 3, 1…: mean 2, population variance exactly 1 = 0.25 × mean², not below it
    engine = SignalEngine(EngineConfig(plateau_ratio=ratio, seed_rules=True))
    assert [
        (s.type, s.step) for i in range(1, 21) for s in engine.observe(StepSnapshot(step=i, loss=2.0 + (-1) ** i))
    ] == want


def test_all_zero_loss_is_a_plateau(tmp_path: Path) -> None:
    assert fired(tmp_path, steps(20, loss=-0.0)) == [("loss_plateau", "info", 20)]


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_nonfinite_loss_is_critical(tmp_path: Path, bad: str) -> None:
    rows = (
        [json.dumps(r) for r in steps(6)]
        + [f'{{"step": 7, "loss": {bad}}}']
        + [json.dumps(r) for r in steps(3, start=8)]
    )
    result = watch(write_jsonl(tmp_path / "m.jsonl", rows))
    (s,) = result.signals
    assert (s.type, s.severity, s.step, s.value) == ("loss_nonfinite", "critical", 7, None)
    assert result.summary.nonfinite_losses == 1 and result.summary.loss_min == 2.5


def test_nan_breaks_a_rising_run_but_not_the_plateau_window(tmp_path: Path) -> None:
    rows = rising(10, 0.1)
    rows[25]["loss"] = float("nan")  # step 26, mid-rise
    assert [t for t, _, _ in fired(tmp_path, rows)] == ["loss_nonfinite"]
    flat = steps(25, loss=2.0)
    flat[9]["loss"] = float("nan")  # step 10
    assert fired(tmp_path, flat) == [("loss_nonfinite", "critical", 10), ("loss_plateau", "info", 21)]


def test_a_nonfinite_step_is_not_a_plateau_step(tmp_path: Path) -> None:
    # plateau at 20; when its cooldown ends at step 50 the loss is inf: the plateau waits for step 51
    flat = steps(55, loss=2.0)
    flat[49]["loss"] = float("inf")
    assert fired(tmp_path, flat) == [
        ("loss_nonfinite", "critical", 50),
        ("loss_plateau", "info", 20),
        ("loss_plateau", "info", 51),
    ]


# ----- several signals on one step --------------------------------------------------------------
def test_simultaneous_signals_all_emitted_in_priority_order() -> None:
    engine = SignalEngine(SEED)
    out: list[Signal] = []
    for i in range(1, 32):
        gn = {MLP: 0.0 if i >= 27 else 0.5, ATTN: 0.5}
        out += engine.observe(StepSnapshot(step=i, loss=zigzag(i), max_grad=30.0 if i == 31 else 1.0, grad_norms=gn))
    assert [(s.type, s.step) for s in out] == [("gradient_spike", 31), ("dead_layers", 31)]


def test_every_detector_on_one_step_keeps_priority_order() -> None:
    cfg = EngineConfig(plateau_ratio=10.0, cooldown_steps=0, seed_rules=True)  # a rising window also counts as flat
    engine = SignalEngine(cfg)
    out: list[Signal] = []
    for i in range(1, 31):
        dead = i >= 26
        out = engine.observe(
            StepSnapshot(
                step=i,
                loss=2.0 + 0.001 * i,
                max_grad=50.0 if i == 30 else 1.0,
                grad_norms={ATTN: 0.0 if dead else 1.0, MLP: 0.0 if dead else 1.0},
            )
        )
    assert [s.type for s in out] == [
        "loss_diverging",
        "gradient_spike",
        "attention_head_dead",
        "dead_layers",
        "loss_plateau",
    ]


# ----- incremental vs the reference design ------------------------------------------------------
def _random_stream(seed: int, n: int = 2500) -> list[StepSnapshot]:
    """A random walk with jumps (loss × 1.5–8 that may stay up), flat stretches, NaN/inf losses, inf/NaN
    gradient norms (global and per layer) and layers flickering dead: every detector of both rule sets."""
    rng = random.Random(seed)
    loss, out = 2.0, []
    for i in range(n):
        r = rng.random()
        loss = loss + rng.uniform(0, 0.1) if r < 0.35 else loss - rng.uniform(0, 0.1) if r < 0.65 else loss
        if rng.random() < 0.01:
            loss *= rng.uniform(1.5, 8.0)  # a jump; the walk may stay up or fall back
        elif rng.random() < 0.01:
            loss = 2.0
        bad = rng.random()
        value = float("nan") if bad < 0.01 else float("inf") if bad < 0.02 else loss
        g = rng.choice([None, rng.uniform(0.1, 1), rng.uniform(0.1, 1), rng.uniform(5, 30), float("inf")])
        if rng.random() < 0.01:
            g = float("nan")
        gn = {f"l{j}.{'attn' if j % 2 else 'mlp'}": (0.0 if rng.random() < 0.45 else 1.0) for j in range(4)}
        if rng.random() < 0.01:
            gn["l0.mlp"] = rng.choice([float("inf"), float("nan")])
        out.append(
            StepSnapshot(
                step=i * 2, loss=value, max_grad=g, grad_norms=gn if rng.random() < 0.9 else None, epoch=i / 100
            )
        )
    return out


def _key(s: Signal) -> tuple:
    r = lambda x: None if x is None else round(x, 9)  # noqa: E731
    return s.type, s.severity, s.step, r(s.value), r(s.threshold), tuple(s.layers), s.episode, s.since_step


ALL_TYPES = {"loss_nonfinite", "loss_diverging", "gradient_spike", "attention_head_dead", "dead_layers", "loss_plateau"}


@pytest.mark.parametrize("seed_rules", [True, False], ids=["seed-rules", "default"])
@pytest.mark.parametrize("seed", range(4))
def test_incremental_engine_matches_full_history_reference(seed: int, seed_rules: bool) -> None:
    stream = _random_stream(seed)
    cfg = EngineConfig(seed_rules=seed_rules)
    fast, ref = SignalEngine(cfg), FullHistoryEngine(cfg)
    got = [_key(s) for snap in stream for s in fast.observe(snap)]
    want = [_key(s) for snap in stream for s in ref.observe(snap)]
    assert got == want
    kinds = {(k[0], k[1]) for k in got}
    if seed_rules:
        assert {k for k, _ in kinds} == ALL_TYPES
    else:  # every new type at every severity, and both ends of every kind of episode
        assert {k for k, _ in kinds} == ALL_TYPES | {"loss_spike", "grad_nonfinite"}
        assert {sev for k, sev in kinds if k in ("loss_spike", "grad_nonfinite")} == {"warn", "critical", "info"}
        assert {(k[0], k[6]) for k in got if k[6]} == {
            (t, e) for t in ("attention_head_dead", "dead_layers", "loss_plateau") for e in ("start", "end")
        }


@pytest.mark.parametrize("seed_rules", [True, False], ids=["seed-rules", "default"])
def test_state_round_trip_continues_identically(seed_rules: bool) -> None:
    stream = _random_stream(7, 1200)
    cfg = EngineConfig(seed_rules=seed_rules)
    whole = SignalEngine(cfg)
    want = [_key(s) for snap in stream for s in whole.observe(snap)]
    first = SignalEngine(cfg)
    got = [_key(s) for snap in stream[:600] for s in first.observe(snap)]
    resumed = SignalEngine.from_state(json.loads(json.dumps(first.state())))
    got += [_key(s) for snap in stream[600:] for s in resumed.observe(snap)]
    assert got == want


def test_rolling_sums_do_not_drift() -> None:
    engine = SignalEngine()
    for i in range(50_000):
        engine.observe(StepSnapshot(step=i, loss=1e4 if i < 25_000 else 0.01 + 1e-4 * (i % 3), max_grad=1.0))
    w = engine._plateau
    exact_mean = sum(w.values) / len(w.values)
    assert w.mean() == pytest.approx(exact_mean, rel=1e-12)
    assert w.variance() == pytest.approx(sum((x - exact_mean) ** 2 for x in w.values) / len(w.values), rel=1e-6)
    assert w.change() == pytest.approx(w.exact_change(), rel=1e-6, abs=1e-12)
