"""Analysis checkpoints: statistics against numpy, cadence, triggers, a real training run writing them,
and readers refusing unknown schema versions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from watch_fixtures import BATCH, sequences, tiny_lm

from tools.watch import StepLogger
from tools.watch.analysis_checkpoint import (
    PERCENTILES,
    AnalysisConfig,
    Triggers,
    attention_stats,
    read_analysis_checkpoint,
    sampled_grid,
    scheduled,
    tensor_stats,
)
from tools.weight_diff.compute import single_thread  # a model this small only loses time to a second thread
from toolserver.contract import ToolError


def sig4(x: float) -> float:
    return float(f"{x:.4g}")


def test_tensor_stats_match_numpy() -> None:
    torch.manual_seed(0)
    t = torch.randn(300, 70) * 0.05 + 0.01
    s = tensor_stats(t, AnalysisConfig(), grid=True)
    a = t.numpy().astype(np.float64)
    assert (s.mean, s.std, s.min, s.max) == pytest.approx((a.mean(), a.std(), a.min(), a.max()), rel=1e-3)
    assert s.norm == pytest.approx(np.linalg.norm(a), rel=1e-3)
    assert s.percentiles == pytest.approx(np.percentile(a, PERCENTILES).tolist(), rel=1e-3, abs=1e-6)
    counts, _ = np.histogram(a, bins=32, range=(a.min(), a.max()))
    assert np.abs(np.array(s.histogram.counts) - counts).sum() <= 2  # float32 vs float64 bin edges
    assert sum(s.histogram.counts) == t.numel()
    rows = np.round(np.linspace(0, 299, 32)).astype(int)
    cols = np.round(np.linspace(0, 69, 32)).astype(int)
    assert np.allclose(np.array(s.grid), a[rows][:, cols], rtol=1e-2, atol=1e-7)  # 3 significant digits
    g = tensor_stats(t, AnalysisConfig(), gradient=True)
    assert g.percentiles is None and g.grid is None and len(g.histogram.counts) == 16 and g.norm == s.norm


def test_large_tensor_percentiles_come_from_a_strided_sample() -> None:
    t = torch.arange(1_000_000, dtype=torch.float32)
    s = tensor_stats(t, AnalysisConfig(sample_size=10_000))
    assert s.percentiles[3] == pytest.approx(500_000, rel=1e-3) and s.max == 1_000_000  # 999 999 to 4 digits
    assert s.grid is None and sum(s.histogram.counts) == 1_000_000


def test_small_and_constant_tensors() -> None:
    s = tensor_stats(torch.full((5,), 2.0), AnalysisConfig())
    assert (s.min, s.max, s.std) == (2.0, 2.0, 0.0) and s.histogram.counts[0] == 5
    assert sampled_grid(torch.arange(6.0).reshape(2, 3)) == [[0, 1, 2], [3, 4, 5]]


def test_attention_entropy_per_head() -> None:
    uniform = torch.full((2, 1, 4, 8), 1 / 8)
    peaked = torch.zeros(2, 1, 4, 8)
    peaked[..., 3] = 1.0
    s = attention_stats(torch.cat([uniform, peaked], dim=1))
    assert s.entropy_per_head == pytest.approx([np.log(8), 0.0], rel=1e-3)
    assert s.max_attn_per_head == pytest.approx([0.125, 1.0])
    assert len(s.grid_per_head) == 2 and len(s.grid_per_head[0]) == 4 and len(s.grid_per_head[0][0]) == 8


def test_cadence() -> None:
    steps = [s for s in range(1, 12_001) if scheduled(s)]
    assert steps[:10] == list(range(10, 101, 10))
    assert [s for s in steps if 100 < s <= 1000] == list(range(150, 1001, 50))
    assert [s for s in steps if 1000 < s <= 10_000] == list(range(1200, 10_001, 200))
    assert [s for s in steps if s > 10_000] == [11_000, 12_000]


def test_triggers_fire_on_rising_edges() -> None:
    t = Triggers(AnalysisConfig(loss_window=5, grad_norm_threshold=10.0))
    ok = [1.0, 2.0]
    assert [t.check(1.0, ok) for _ in range(5)] == [[]] * 5
    assert t.check(2.5, ok) == ["loss_spike"]  # > 2 × the mean of the previous five
    assert t.check(3.0, ok) == []  # still spiking: no new checkpoint
    assert t.check(1.0, [30.0, 1.0]) == ["grad_norm"]
    assert t.check(1.0, [0.0, 1.0]) == ["dead_param"]
    assert t.check(1.0, [0.0, 1.0]) == []
    assert t.check(1.0, [0.0, 0.0]) == ["dead_param"]  # another parameter died


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("analysis")
    model = tiny_lm()
    model.config._attn_implementation = "eager"  # attention weights are returned only by eager attention
    model.transformer.h[1].mlp.c_fc.register_forward_hook(lambda module, args, output: output.detach())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = sequences(60 * BATCH)
    with single_thread(), StepLogger(model, path=out / "metrics.jsonl", analysis_dir=out) as log:
        for step in range(1, 61):
            x = data[(step - 1) * BATCH : step * BATCH]
            opt.zero_grad()
            outputs = model(input_ids=x, labels=x, output_attentions=True)
            outputs.loss.backward()
            log.step(step, outputs.loss, opt, attentions=outputs.attentions)
            opt.step()
    return out


def test_training_run_writes_scheduled_and_triggered_checkpoints(recorded: Path) -> None:
    files = sorted(recorded.glob("analysis_*.json"))
    steps = [int(f.stem.split("_")[1]) for f in files]
    assert steps == [1, 10, 20, 30, 40, 50, 60]  # step 1: the blocked layer's parameters are dead
    first = read_analysis_checkpoint(files[0])
    assert first.reasons == ["dead_param"] and "transformer.h.1.mlp.c_fc.weight" not in first.gradients
    ck = read_analysis_checkpoint(files[1])
    assert ck.reasons == ["scheduled"] and ck.step == 10
    assert set(ck.weights) == {n for n, _ in tiny_lm().named_parameters()}
    assert sum(1 for s in ck.weights.values() if s.grid is not None) == 5
    assert ck.gradients["transformer.h.0.attn.c_attn.weight"].norm > 0
    assert {"transformer.h.0", "transformer.h.0.attn", "transformer.h.1.mlp"} <= set(ck.activations)
    assert set(ck.attention) == {"layer.0", "layer.1"}
    heads = ck.attention["layer.0"].entropy_per_head
    assert len(heads) == 2 and all(0 <= h <= np.log(16) + 1e-6 for h in heads)


def test_checkpoint_weights_match_the_model_at_that_step(tmp_path: Path) -> None:
    model = tiny_lm()
    log = StepLogger(model, analysis_dir=tmp_path)
    x = sequences(4)
    model(input_ids=x, labels=x).loss.backward()
    log.step(10, 1.0)
    ck = read_analysis_checkpoint(tmp_path / "analysis_00000010.json")
    w = model.transformer.h[0].mlp.c_fc.weight.detach().numpy()
    s = ck.weights["transformer.h.0.mlp.c_fc.weight"]
    assert (s.mean, s.std) == pytest.approx((w.mean(), w.std()), rel=1e-3)
    g = model.transformer.h[0].mlp.c_fc.weight.grad.numpy()
    assert ck.gradients["transformer.h.0.mlp.c_fc.weight"].norm == pytest.approx(np.linalg.norm(g), rel=1e-3)
    assert ck.activations  # armed at construction: the first forward is summarised


def test_reader_refuses_unknown_versions(recorded: Path, tmp_path: Path) -> None:
    data = json.loads(next(recorded.glob("analysis_*.json")).read_text())
    data["schema_version"] = "trainspect.analysis.v2"
    future = tmp_path / "analysis_future.json"
    future.write_text(json.dumps(data))
    with pytest.raises(
        ToolError, match=r"schema_version 'trainspect.analysis.v2'; this trainspect reads 'trainspect.analysis.v1'"
    ):
        read_analysis_checkpoint(future)
    del data["schema_version"]
    future.write_text(json.dumps(data))
    with pytest.raises(ToolError, match="schema_version None"):
        read_analysis_checkpoint(future)
    data["schema_version"] = "trainspect.analysis.v1"
    del data["weights"]
    future.write_text(json.dumps(data))
    with pytest.raises(ToolError, match="malformed at weights"):
        read_analysis_checkpoint(future)
