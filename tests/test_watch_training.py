"""Real training runs on CPU, logged with StepLogger: a run with a blocked MLP path and a learning rate
pushed into divergence must name the layer and fire divergence; the healthy control fires nothing
critical. The watch tool replaying the written file agrees with what fired live."""

from __future__ import annotations

from pathlib import Path

import pytest
from watch_fixtures import tiny_lm, train, watch

from tools.watch import StepLogger
from tools.weight_diff.compute import single_thread  # a model this small only loses time to a second thread

BLOCKED = "transformer.h.1.mlp.c_fc"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list]]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    broken = tiny_lm()
    # block the gradient path into one MLP layer: its output is detached, so it never learns
    broken.transformer.h[1].mlp.c_fc.register_forward_hook(lambda module, args, output: output.detach())
    with single_thread(), StepLogger(broken, path=root / "broken" / "metrics.jsonl") as log:
        out["broken"] = (root / "broken" / "metrics.jsonl", train(broken, log, 300, ramp_from=150))
    healthy = tiny_lm()
    with single_thread(), StepLogger(healthy, path=root / "healthy" / "metrics.jsonl") as log:
        out["healthy"] = (root / "healthy" / "metrics.jsonl", train(healthy, log, 300))
    return out


def test_blocked_layer_is_named_dead(runs: dict) -> None:
    path, live = runs["broken"]
    dead = [s for s in live if s.type == "dead_layers"]
    assert dead and dead[0].step == 5 and BLOCKED in dead[0].layers
    assert not any(s.type == "attention_head_dead" for s in live)
    # everything it names really had no gradient: the block also starves the LayerNorm feeding only it
    assert set(dead[0].layers) <= {BLOCKED, "transformer.h.1.ln_2"}


def test_divergence_fires_after_the_learning_rate_ramp(runs: dict) -> None:
    path, live = runs["broken"]
    diverging = [s for s in live if s.type == "loss_diverging"]
    assert diverging and diverging[0].step > 150 and diverging[0].severity == "critical"
    assert diverging[0].value > 0.5


def test_healthy_control_fires_nothing_critical(runs: dict) -> None:
    path, live = runs["healthy"]
    assert not [s for s in live if s.severity == "critical"]
    assert not [s for s in live if s.type in ("dead_layers", "attention_head_dead", "loss_diverging")]
    summary = watch(path).summary
    assert summary.steps_seen == 300 and summary.loss_last < summary.loss_first / 2  # it really learned


@pytest.mark.parametrize("name", ["broken", "healthy"])
def test_replaying_the_file_gives_the_signals_that_fired_live(runs: dict, name: str) -> None:
    path, live = runs[name]
    result = watch(path, max_signals=1000)
    assert sorted((s.type, s.step, s.severity, tuple(s.layers)) for s in result.signals) == sorted(
        (s.type, s.step, s.severity, tuple(s.layers)) for s in live
    )
    assert result.summary.layers_reported == 15  # 16 modules, lm_head tied to wte
    assert result.summary.bad_lines == 0
