"""The default rules beyond the seed's five: loss_spike, grad_nonfinite, the plateau's trend test and
episodes for lasting conditions — each limit pinned at its edge (just below silent, just above fires) —
and the three real cases measured on main, rebuilt here in the same shapes: a trainer_state whose loss
jumps 7× in one step and stays there, one with a single `Infinity` grad norm, and a 10,000-step plateau.
`seed_rules` gives the seed's signals on each."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from watch_fixtures import ATTN, MLP, MLP2, steps, watch, write_jsonl, zigzag

from tools.watch.engine import EngineConfig, SignalEngine
from tools.watch.snapshot import Signal, StepSnapshot


def observe(rows: list[dict[str, Any]], **cfg: Any) -> list[Signal]:
    engine = SignalEngine(EngineConfig(**cfg))
    return [s for row in rows for s in engine.observe(StepSnapshot.model_validate(row))]


def of(signals: list[Signal], *types: str) -> list[tuple[str, str, int, str | None]]:
    return [(s.type, s.severity, s.step, s.episode) for s in signals if not types or s.type in types]


def flat_then(*tail: float, base: float = 1.0, n: int = 20) -> list[dict[str, Any]]:
    """n losses at `base` (steps 1..n), then the tail."""
    return steps(n, loss=base) + [{"step": n + 1 + i, "loss": x} for i, x in enumerate(tail)]


# ----- loss_spike ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "jump, want",
    [
        (2.0, []),  # exactly 2× the mean is not above it
        (2.0001, [("loss_spike", "warn", 21, None)]),
        (5.0, [("loss_spike", "warn", 21, None)]),  # exactly 5× is a warning
        (5.0001, [("loss_spike", "critical", 21, None)]),
    ],
)
def test_loss_spike_ratio_limits(jump: float, want: list) -> None:
    assert of(observe(flat_then(jump, 1.0)), "loss_spike") == want


@pytest.mark.parametrize("jump, fires", [(2.4, False), (2.5, False), (2.5001, True)])
def test_loss_spike_noise_gate(jump: float, fires: bool) -> None:
    # a baseline of 1.25, 0.75, …: mean 1, standard deviation 0.25, so the rise must exceed 6 × 0.25 = 1.5;
    # 2.4 is 2.4× the mean but only 5.6 standard deviations: noise for a loss this jittery
    rows = steps(20, loss=lambda i: 1.0 + 0.25 * (-1) ** i) + [{"step": 21, "loss": jump}]
    assert of(observe(rows), "loss_spike") == ([("loss_spike", "warn", 21, None)] if fires else [])


def test_loss_spike_baseline_excludes_the_spike_and_waits_for_a_full_window() -> None:
    # 2.1 against the 20 previous losses is 2.1×; with itself in the mean it would be 1.995×
    assert of(observe(flat_then(2.1)), "loss_spike") == [("loss_spike", "warn", 21, None)]
    assert of(observe(flat_then(9.0, n=19)), "loss_spike") == []  # 19 previous losses only
    assert of(observe(flat_then(1.0, 9.0, n=19)), "loss_spike") == [("loss_spike", "critical", 21, None)]


@pytest.mark.parametrize("stays, critical", [(9, False), (10, True)])
def test_a_spike_that_stays_up_turns_critical(stays: int, critical: bool) -> None:
    out = observe(flat_then(*[3.0] * stays, 1.0, 1.0))
    want = [("loss_spike", "warn", 21, None)] + ([("loss_spike", "critical", 30, None)] if critical else [])
    assert of(out, "loss_spike") == want
    if critical:
        assert out[-1].metric == "loss_ratio_sustained" and "no recovery" in out[-1].message


def test_a_recovered_spike_is_over_and_a_new_one_waits_for_the_cooldown_unless_worse() -> None:
    # 3.0 at 21 (warn), back to 1.0; 3.0 at 40 (warn, within the cooldown: held); 9.0 at 45 (critical: fires)
    tail = {21: 3.0, 40: 3.0, 45: 9.0}
    rows = steps(60, loss=lambda i: tail.get(i, 1.0))
    assert of(observe(rows), "loss_spike") == [("loss_spike", "warn", 21, None), ("loss_spike", "critical", 45, None)]


def test_the_first_loss_after_a_nonfinite_one_is_compared_with_the_level_before_it() -> None:
    out = observe(flat_then(math.nan, 3.0, 3.0))
    assert of(out, "loss_nonfinite", "loss_spike") == [
        ("loss_nonfinite", "critical", 21, None),
        ("loss_spike", "warn", 22, None),
    ]
    (spike,) = [s for s in out if s.type == "loss_spike"]
    assert "after the non-finite one at step 21" in spike.message
    assert of(observe(flat_then(math.inf, 1.0)), "loss_spike") == []  # recovered at the same level


def test_a_baseline_at_zero_has_no_ratio() -> None:
    assert of(observe(flat_then(5.0, base=0.0)), "loss_spike") == []


# ----- grad_nonfinite -----------------------------------------------------------------------------
def grads(bad: dict[int, float], n: int = 60, **kw: Any) -> list[dict[str, Any]]:
    return steps(n, max_grad=lambda i: bad.get(i, 1.0), **kw)


def test_an_isolated_overflow_is_info_and_names_the_layers() -> None:
    assert of(observe(grads({30: math.inf}))) == [("grad_nonfinite", "info", 30, None)]
    rows = steps(40, max_grad=1.0, grad_norms=lambda i: {ATTN: 0.5, MLP: math.inf if i == 30 else 0.5})
    (s,) = observe(rows)
    assert (s.type, s.severity, s.layers) == ("grad_nonfinite", "info", [MLP]) and MLP in s.message


@pytest.mark.parametrize(
    "third, want",
    [(24, [("grad_nonfinite", "info", 5, None), ("grad_nonfinite", "warn", 24, None)]), (25, [])],
)
def test_repeated_overflows_warn_within_the_window(third: int, want: list) -> None:
    # overflows at 5, 15 and `third`: the last 20 logged steps ending at 24 hold all three; ending at 25, two
    # (an info that repeats within the cooldown is held back; a warning is worse, so it is not)
    got = of(observe(grads({5: math.inf, 15: math.inf, third: math.inf})))
    assert got == (want or [("grad_nonfinite", "info", 5, None)])


def test_a_nan_gradient_with_a_finite_loss_is_critical() -> None:
    assert of(observe(grads({30: math.nan}))) == [("grad_nonfinite", "critical", 30, None)]
    rows = grads({30: math.nan})
    rows[29]["loss"] = math.nan  # the loss went with it: loss_nonfinite is the critical signal
    assert of(observe(rows)) == [("loss_nonfinite", "critical", 30, None), ("grad_nonfinite", "info", 30, None)]


def test_nonfinite_grads_never_enter_the_spike_baseline() -> None:
    (s,) = [s for s in observe(grads({21: math.inf, 22: 6.0})) if s.type == "gradient_spike"]
    assert (s.step, s.severity, s.threshold) == (22, "warn", 5.0)  # 5 × a baseline still exactly 1.0


def test_seed_rules_ignore_nonfinite_grads() -> None:
    assert observe(grads({30: math.inf, 31: math.nan}), seed_rules=True) == []


# ----- plateau: variance and trend ----------------------------------------------------------------
def descent(rel_change: float, n: int = 20, top: float = 2.0) -> list[dict[str, Any]]:
    """n losses falling linearly so the least-squares line drops by rel_change × the mean across them."""
    s = top * rel_change / ((n - 1) + (n - 1) / 2 * rel_change)
    return steps(n, loss=lambda i: top - s * (i - 1))


@pytest.mark.parametrize("rel, plateau", [(0.0099, True), (0.0101, False)])
def test_the_plateau_trend_limit(rel: float, plateau: bool) -> None:
    want = [("loss_plateau", "info", 20, "start")] if plateau else []
    assert of(observe(descent(rel)), "loss_plateau") == want
    assert of(observe(descent(rel), seed_rules=True), "loss_plateau") == [("loss_plateau", "info", 20, None)]


def test_a_steady_descent_is_not_a_plateau() -> None:
    # 10% lower every 20 logged steps: variance within the seed's limit in every window, trend never flat
    rows = steps(2000, loss=lambda i: 3.0 * 0.9 ** (i / 20))
    assert of(observe(rows), "loss_plateau") == []
    seed = of(observe(rows, seed_rules=True), "loss_plateau")
    assert len(seed) == len(range(20, 2001, 30))


def test_noise_inside_a_plateau_does_not_end_it() -> None:
    rng = random.Random(0)
    rows = steps(5000, loss=lambda i: 2.0 * (1 + rng.uniform(-0.03, 0.03)))
    out = observe(rows)
    assert [(s.episode, s.type) for s in out] == [("start", "loss_plateau")]
    assert len(observe(rows, seed_rules=True)) > 100


@pytest.mark.parametrize("level, ends", [(1.875, False), (1.87, True)])
def test_the_plateau_exit_limit(level: float, ends: bool) -> None:
    # flat at 2.0, then at `level` for 20 steps: the window mean moves by 1/16 exactly, or just more (and the
    # new level is a plateau of its own)
    rows = steps(40, loss=2.0) + steps(30, start=41, loss=level)
    out = of(observe(rows, plateau_exit=0.0625), "loss_plateau")
    again = [("loss_plateau", "info", 60, "end"), ("loss_plateau", "info", 61, "start")]
    assert out == [("loss_plateau", "info", 20, "start")] + (again if ends else [])


# ----- episodes: dead layers ----------------------------------------------------------------------
def norms(dead: dict[str, range], n: int) -> list[dict[str, Any]]:
    return steps(n, grad_norms=lambda i: {k: 0.0 if i in dead.get(k, ()) else 0.5 for k in (ATTN, MLP, MLP2)})


def test_a_dead_layer_starts_once_and_ends_when_it_recovers() -> None:
    rows = norms({MLP: range(1, 71)}, 90)
    out = observe(rows)
    assert of(out) == [("dead_layers", "warn", 5, "start"), ("dead_layers", "info", 71, "end")]
    end = out[-1]
    assert (end.since_step, end.duration_steps, end.layers) == (1, 70, [MLP])
    assert of(observe(rows, seed_rules=True)) == [("dead_layers", "warn", n, None) for n in (5, 35, 65)]


def test_a_layer_dying_during_the_cooldown_is_announced_when_it_ends() -> None:
    out = observe(norms({MLP: range(1, 100), MLP2: range(10, 100), ATTN: range(3, 9)}, 99))
    assert [(s.type, s.step, s.episode, s.layers) for s in out] == [
        ("dead_layers", 5, "start", [MLP]),
        ("attention_head_dead", 7, "start", [ATTN]),
        ("attention_head_dead", 9, "end", [ATTN]),
        ("dead_layers", 35, "start", [MLP2]),  # dead at 14, announced when the type's cooldown ends
    ]
    assert "since step 10" in out[-1].message and "2 dead in all" in out[-1].message


def test_ongoing_episodes_are_in_the_result_and_the_card(tmp_path: Path) -> None:
    result = watch(write_jsonl(tmp_path / "m.jsonl", norms({MLP: range(3, 41)}, 40)))
    assert [(e.type, e.since_step, e.layers) for e in result.ongoing] == [("dead_layers", 3, [MLP])]
    from tools.watch import SPEC

    assert SPEC.slim(result).ongoing == result.ongoing
    assert "ongoing    dead_layers since step 3" in SPEC.table(result)


# ----- the real cases, rebuilt --------------------------------------------------------------------
def trainer_state(path: Path, entries: list[dict[str, Any]]) -> Path:
    """A Hugging Face trainer_state.json as the Trainer writes it (json.dumps keeps NaN/Infinity tokens)."""
    state = {"global_step": entries[-1]["step"], "logging_steps": 1, "max_steps": entries[-1]["step"]}
    path.write_text(json.dumps({**state, "log_history": entries}, indent=2))
    return path


def test_a_one_step_jump_that_stays_up(tmp_path: Path) -> None:
    # QLoRA at a far too high learning rate: the loss falls 1.90 → 1.64, leaps to 11.81 and stays near 10.37
    rng = random.Random(1)
    losses = [1.9 - 0.26 * i / 59 + rng.uniform(-0.02, 0.02) for i in range(60)] + [11.81]
    losses += [10.37 + rng.uniform(-0.01, 0.01) for _ in range(139)]
    entries = [
        {"epoch": i / 200, "grad_norm": 0.8, "learning_rate": 5.0, "loss": round(x, 4), "step": i + 1}
        for i, x in enumerate(losses)
    ]
    path = trainer_state(tmp_path / "trainer_state.json", entries)
    result = watch(path, max_signals=1000)
    signals = sorted(result.signals, key=lambda s: s.step)
    assert of(signals, "loss_spike") == [("loss_spike", "critical", 61, None)]  # 7.1× its mean: critical at once
    assert signals[0].value == pytest.approx(11.81 / (sum(round(x, 4) for x in losses[40:60]) / 20))
    plateau = of(signals, "loss_plateau")
    assert len(plateau) == 1 and plateau[0][2] > 61 and plateau[0][3] == "start"  # the new level, once
    assert [(e.type, e.since_step > 61) for e in result.ongoing] == [("loss_plateau", True)]
    seed = watch(path, max_signals=1000, seed_rules=True)
    assert "loss_spike" not in seed.summary.signals_by_type
    assert seed.summary.signals_by_type["loss_plateau"] > 4  # re-fired every 30 steps: the seed's flood


def test_a_single_infinite_grad_norm(tmp_path: Path) -> None:
    # a Llama-2 fine-tune under fp16: one overflowed step, skipped by the scaler
    entries = [
        {
            "epoch": i / 100,
            "grad_norm": math.inf if i == 37 else 0.5,
            "learning_rate": 2e-4,
            "loss": zigzag(i, 2.0, 0.2),
        }
        | {"step": i}
        for i in range(1, 101)
    ]
    path = trainer_state(tmp_path / "trainer_state.json", entries)
    assert "Infinity" in path.read_text()
    result = watch(path)
    assert of(result.signals) == [("grad_nonfinite", "info", 37, None)]
    assert "overflow" in result.signals[0].message
    assert watch(path, seed_rules=True).signals == []


def test_a_ten_thousand_step_plateau(tmp_path: Path) -> None:
    # a fast drop, 10,000 logged steps flat around 2.0, then the learning-rate decay lowers the loss again
    rng = random.Random(2)

    def loss(i: int) -> float:
        if i <= 100:
            return 4.0 - 0.02 * i
        if i <= 10_100:
            return 2.0 + rng.uniform(-0.01, 0.01)
        return 2.0 * 0.99 ** (i - 10_100)

    path = write_jsonl(tmp_path / "metrics.jsonl", steps(10_400, loss=loss))
    result = watch(path, max_signals=1000)
    got = of(result.signals, "loss_plateau")
    assert [e for *_, e in got] == ["start", "end"]
    start, end = sorted(result.signals, key=lambda s: s.step)
    assert 100 <= start.step <= 140 and 10_100 < end.step < 10_200
    assert end.duration_steps == end.step - end.since_step and end.since_step <= start.step
    assert result.groups[0].count == 1 and result.groups[0].ended == 1 and not result.ongoing
    seed = watch(path, max_signals=1000, seed_rules=True)
    assert seed.summary.signals_by_type == {"loss_plateau": seed.signals_total} and seed.signals_total > 300


@pytest.mark.parametrize(
    "name, attention",
    [
        ("model.layers.1.self_attn.q_proj", True),
        ("transformer.h.0.attn.c_attn", True),
        ("bert.encoder.layer.0.attention.self.query", True),
        ("model.layers.1.post_attention_layernorm", False),  # a norm, named after the attention before it
        ("model.layers.1.input_layernorm", False),
        ("model.layers.1.mlp.down_proj", False),
    ],
)
def test_the_default_attention_regex(name: str, attention: bool) -> None:
    import re

    from tools.watch.engine import DEFAULT_ATTENTION_REGEX

    assert (re.search(DEFAULT_ATTENTION_REGEX, name) is not None) == attention
