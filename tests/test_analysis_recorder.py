"""What the analysis recorder added for the viewer, against torch on real runs: movement from the first checkpoint
(exact for tensors that fit its reference, a strided-sample estimate beyond), gradient grids of the weights' rows
and columns, the run's clip norm, non-finite gradients that still read back, and older v1 files that still read."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from analysis_fixtures import train
from watch_fixtures import sequences, tiny_lm

from tools.watch import StepLogger
from tools.watch.analysis_checkpoint import (
    AnalysisConfig,
    MovementReference,
    movement_sample,
    read_analysis_checkpoint,
)
from tools.watch.analysis_schema import AnalysisCheckpoint


def rel_move(w: torch.Tensor, ref: torch.Tensor) -> float:
    w, ref = w.double().reshape(-1), ref.double().reshape(-1)
    return float(torch.linalg.vector_norm(w - ref) / torch.linalg.vector_norm(ref))


def on_sample(t: torch.Tensor, k: int) -> torch.Tensor:
    flat = t.reshape(-1)
    return flat[movement_sample(flat.numel(), k)]


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("exact")
    return out, train(out, n_layer=2, steps=30, config=AnalysisConfig(grad_clip=0.75))


def test_movement_is_exact_for_tensors_within_the_reference(exact_run: tuple[Path, dict]) -> None:
    out, kept = exact_run
    files = sorted(out.glob("analysis_*.json"))
    first = read_analysis_checkpoint(files[0])
    assert first.movement is not None and first.movement.reference_step == first.step == min(kept)
    assert first.movement.sample == 65_536 and first.grad_clip == 0.75
    ref = kept[first.step].weights
    assert all(w.moved == 0.0 for w in first.weights.values())  # the reference itself
    checked = 0
    for path in files[1:]:
        ck = read_analysis_checkpoint(path)
        assert ck.movement == first.movement and ck.grad_clip == 0.75
        for name, w in kept[ck.step].weights.items():
            assert w.numel() <= 65_536  # every tensor of the tiny model fits: exact
            assert ck.weights[name].moved == pytest.approx(rel_move(w, ref[name]), rel=1e-4), (ck.step, name)
            checked += 1
    assert checked == len(ref) * (len(files) - 1) and any(w.moved > 0.01 for w in ck.weights.values())


def test_large_tensors_move_on_a_random_sample_and_zero_keeps_every_element(tmp_path: Path) -> None:
    """movement_sample=300 on the tiny model (its embeddings have 2,048 elements, its MLP matrices 4,096): each value
    is exact on the sample and an estimate of the whole tensor's, bounded here at 15% (over the tensors larger than
    the sample). movement_sample=0 keeps every element and is exact."""
    kept = train(tmp_path / "s", n_layer=2, steps=20, config=AnalysisConfig(movement_sample=300))
    train(tmp_path / "all", n_layer=2, steps=20, config=AnalysisConfig(movement_sample=0))
    ref_step, last = min(kept), max(kept)
    sampled = read_analysis_checkpoint(tmp_path / "s" / f"analysis_{last:08d}.json")
    full = read_analysis_checkpoint(tmp_path / "all" / f"analysis_{last:08d}.json")
    assert sampled.movement.sample == 300 and full.movement.sample == 0
    big = [n for n, w in kept[last].weights.items() if w.numel() > 300]
    assert "transformer.wte.weight" in big and "transformer.h.0.mlp.c_fc.weight" in big
    for name in big:
        w, ref = kept[last].weights[name], kept[ref_step].weights[name]
        assert sampled.weights[name].moved == pytest.approx(rel_move(on_sample(w, 300), on_sample(ref, 300)), rel=1e-4)
        assert sampled.weights[name].moved == pytest.approx(rel_move(w, ref), rel=0.15), name
        assert full.weights[name].moved == pytest.approx(rel_move(w, ref), rel=1e-4), name  # same seed, same run
    small = [n for n, w in kept[last].weights.items() if w.numel() <= 300]
    assert small and all(sampled.weights[n].moved == full.weights[n].moved for n in small)


def test_a_random_sample_does_not_alias_with_the_row_length() -> None:
    """A 64 × 64 matrix that moved in 8 of its columns only: an even stride of 16 (256 of 4,096 positions) never
    sees those columns and would read no movement at all; the recorder's uniform sample sees about 32 moved
    positions and lands near the true value."""
    torch.manual_seed(0)
    ref = torch.randn(64, 64)
    w = ref.clone()
    w[:, 1:64:8] += 0.5 * torch.randn(64, 8)
    stride = torch.arange(0, 4096, 16)
    assert rel_move(w.reshape(-1)[stride], ref.reshape(-1)[stride]) == 0.0
    reference = MovementReference(0, 256, [("m", ref)])
    got, _ = reference.moved("m", w)
    assert got == pytest.approx(rel_move(w, ref), rel=0.35)
    assert movement_sample(4096, 256).equal(movement_sample(4096, 256))  # the same positions every checkpoint


def one_step(directory: Path, tamper: Callable[[Any], None] | None = None) -> tuple[Any, AnalysisCheckpoint]:
    """The tiny model after one backward (its gradients then `tamper`ed with), logged as step 10: the model and
    the checkpoint written."""
    model = tiny_lm()
    log = StepLogger(model, analysis_dir=directory)
    x = sequences(4)
    model(input_ids=x, labels=x).loss.backward()
    if tamper is not None:
        tamper(model)
    log.step(10, 1.0)
    return model, read_analysis_checkpoint(directory / "analysis_00000010.json")


def test_gradient_grids_sample_the_weight_grids_rows_and_columns(tmp_path: Path) -> None:
    model, ck = one_step(tmp_path)
    gridded = [n for n, w in ck.weights.items() if w.grid is not None]
    assert len(gridded) == 5
    for name in gridded:
        g = model.get_parameter(name).grad
        m = g.reshape(g.shape[0], -1)
        rows = torch.linspace(0, m.shape[0] - 1, min(m.shape[0], 32), dtype=torch.float64).round().long()
        cols = torch.linspace(0, m.shape[1] - 1, min(m.shape[1], 32), dtype=torch.float64).round().long()
        expected = m[rows][:, cols]
        got = torch.tensor(ck.gradients[name].grid)
        assert got.shape == expected.shape == torch.Size([len(ck.weights[name].grid), len(ck.weights[name].grid[0])])
        assert torch.allclose(got, expected, rtol=1e-2, atol=1e-9)  # grid cells keep 3 significant digits
    assert all(ck.gradients[n].grid is None for n in ck.gradients if n not in gridded)


def test_a_non_finite_gradient_is_written_and_reads_back(tmp_path: Path) -> None:
    def overflow(model: Any) -> None:
        model.transformer.h[0].mlp.c_fc.weight.grad[0, 0] = float("nan")
        model.transformer.h[1].mlp.c_fc.bias.grad[0] = float("inf")

    _, ck = one_step(tmp_path, overflow)
    assert ck.gradients["transformer.h.0.mlp.c_fc.weight"].norm != ck.gradients["transformer.h.0.mlp.c_fc.weight"].norm
    assert ck.gradients["transformer.h.1.mlp.c_fc.bias"].norm == float("inf")
    digest = read_analysis_checkpoint(tmp_path / "analysis_00000010.json", digest=True)
    assert digest["gradients"]["transformer.h.1.mlp.c_fc.bias"]["norm"] == float("inf")


def test_a_v1_file_without_the_new_fields_still_reads(exact_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = exact_run
    data = json.loads(sorted(out.glob("analysis_*.json"))[-1].read_text())
    for key in ("grad_clip", "movement"):
        del data[key]
    for stats in data["weights"].values():
        del stats["moved"]
    for stats in data["gradients"].values():
        stats.pop("grid", None)
    old = tmp_path / "analysis_00000030.json"
    old.write_text(json.dumps(data))
    ck = read_analysis_checkpoint(old)
    assert ck.movement is None and ck.grad_clip is None and all(w.moved is None for w in ck.weights.values())
    digest = read_analysis_checkpoint(old, digest=True)
    assert digest["weights"].keys() == ck.weights.keys() and "movement" not in digest
