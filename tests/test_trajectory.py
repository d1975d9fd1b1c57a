"""trajectory-analysis on real Trainer runs (full and LoRA) and on hand-saved .pt files, every number checked
against a direct computation from the saved tensors, weight-diff, or peft's own merge."""

from __future__ import annotations

import math
import shutil
import statistics
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_cli import trainspect
from weight_fixtures import merged_delta

from session.checkpoint_keys import normalise_key
from tools.fixtures.tiny_models import build_base, trainer_run
from toolserver.contract import ToolError
from toolserver.registry import get_tool
from toolserver.runner import invoke


@cache
def _runs(root: Path) -> dict[str, Path]:
    base = build_base("gpt2", root / "base")
    return {
        "base": base,
        "full": trainer_run(base, root / "full", steps=8, save_steps=2, freeze=("transformer.h.0.",)),
        "lora": trainer_run(base, root / "lora", steps=8, save_steps=2, lora=True),
    }


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny GPT-2 and two real transformers.Trainer runs from it, saving checkpoint-2, -4, -6, -8."""
    return _runs(tmp_path_factory.getbasetemp() / "trainer-runs")


@pytest.fixture
def session(runs: dict[str, Path], isolated_home: Path) -> dict[str, Path]:
    invoke(get_tool("start_session"), {"id": "traj", "model": str(runs["base"])})
    return runs


def trajectory(**args: Any) -> Any:
    return invoke(get_tool("run_trajectory_analysis"), args)


def state(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors by normalised name, in float64 (the reference computations' precision)."""
    if path.is_dir():
        path = path / "model.safetensors"
    raw = load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    raw = raw.get("state_dict", raw)
    return {normalise_key(k): v.double() for k, v in raw.items() if v.is_floating_point()}


def reference(base: dict[str, torch.Tensor], ckpts: list[dict[str, torch.Tensor]]) -> list[dict[str, float]]:
    """‖ΔW‖, ‖ΔW‖/‖W‖, movement and the cosine of consecutive updates, straight from the tensors."""
    keys = [k for k in base if all(k in c for c in ckpts)]
    base2 = sum(float(base[k].square().sum()) for k in keys)
    out, prev, u_prev = [], base, None
    for c in ckpts:
        u = {k: c[k] - prev[k] for k in keys}
        move2 = sum(float(v.square().sum()) for v in u.values())
        fro2 = sum(float((c[k] - base[k]).square().sum()) for k in keys)
        dot = sum(float((u[k] * u_prev[k]).sum()) for k in keys) if u_prev else None
        prev_move2 = sum(float(v.square().sum()) for v in u_prev.values()) if u_prev else None
        out.append(
            {
                "fro": math.sqrt(fro2),
                "rel": math.sqrt(fro2 / base2),
                "movement": math.sqrt(move2),
                "cos": dot / math.sqrt(move2 * prev_move2) if dot is not None and prev_move2 else None,
            }
        )
        prev, u_prev = c, u
    return out


def assert_matches(points: list[Any], want: list[dict[str, float]], rel: float = 1e-6) -> None:
    assert len(points) == len(want)
    for p, w in zip(points, want, strict=True):
        assert p.fro_delta == pytest.approx(w["fro"], rel=rel)
        assert p.rel_delta == pytest.approx(w["rel"], rel=rel)
        assert p.movement == pytest.approx(w["movement"], rel=rel)
        if w["cos"] is None:
            assert p.update_cosine is None
        else:
            assert p.update_cosine == pytest.approx(w["cos"], abs=1e-6)


# ----- real Trainer runs -------------------------------------------------------------------------------------------
def test_a_trainer_run_matches_the_tensors_and_weight_diff(session: dict[str, Path]) -> None:
    res = trajectory(dir=str(session["full"])).result
    assert [(e.step, e.step_source, e.status) for e in res.entries] == [
        (s, "trainer_state", "analysed") for s in (2, 4, 6, 8)
    ]
    dirs = [session["full"] / f"checkpoint-{s}" for s in (2, 4, 6, 8)]
    base = state(session["base"])
    assert_matches(res.points, reference(base, [state(d) for d in dirs]))
    for p, d in zip(res.points, dirs, strict=True):
        wd = invoke(get_tool("run_weight_diff"), {"checkpoint": str(d)}).result
        assert p.fro_delta == pytest.approx(wd.totals.fro_delta, rel=1e-6)
        assert p.rel_delta == pytest.approx(wd.totals.rel_delta, rel=1e-6)
        ranks = [r.stable_rank for r in wd.rows if r.stable_rank is not None]
        assert p.median_stable_rank == pytest.approx(statistics.median(ranks), rel=1e-3)
        mlp_out = [r for r in wd.rows if r.matrix == "MLP out"]
        base2 = sum(float(base[r.keys[0]].square().sum()) for r in mlp_out)
        want = math.sqrt(sum(r.fro_delta**2 for r in mlp_out) / base2)
        assert p.by_type["MLP out"] == pytest.approx(want, rel=1e-6)
        assert p.top_changed == wd.top_changed[0].label
    assert res.never_moved == [0]  # h.0 was frozen in the run; h.1 moved
    assert res.points[-1].by_layer[0] == 0.0 and res.points[-1].by_layer[1] > 1e-3
    assert any(
        "never moved" in f.text
        for f in invoke(get_tool("run_trajectory_analysis"), {"dir": str(session["full"])}).findings
    )


def test_a_lora_trainer_run_matches_peft_merges(session: dict[str, Path]) -> None:
    res = trajectory(checkpoints=str(session["lora"] / "checkpoint-*")).result
    assert res.mode == "lora" and [p.step for p in res.points] == [2, 4, 6, 8]
    base = state(session["base"])
    deltas = [merged_delta(session["base"], session["lora"] / f"checkpoint-{s}") for s in (2, 4, 6, 8)]
    adapted = [{normalise_key(k): base[normalise_key(k)] + d.double() for k, d in delta.items()} for delta in deltas]
    targets = {k: base[k] for k in adapted[0]}
    assert_matches(res.points, reference(targets, adapted), rel=1e-5)


def test_matrices_too_large_to_hold_whole_give_the_same_numbers(session: dict[str, Path], monkeypatch: Any) -> None:
    import tools.trajectory.compute as compute

    whole = trajectory(dir=str(session["full"])).result
    monkeypatch.setattr(compute, "WHOLE", 500)  # every matrix goes by row chunks, σ_max by recomputed products
    rows = trajectory(dir=str(session["full"])).result
    for a, b in zip(whole.points, rows.points, strict=True):
        assert b.fro_delta == pytest.approx(a.fro_delta, rel=1e-6) and b.movement == pytest.approx(a.movement, rel=1e-6)
        assert b.update_cosine == pytest.approx(a.update_cosine, abs=1e-6)
        assert b.median_stable_rank == pytest.approx(a.median_stable_rank, rel=1e-3)


def test_bf16_checkpoints_are_measured_exactly(session: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "bf16"
    for s in (2, 4, 6, 8):
        d = shutil.copytree(session["full"] / f"checkpoint-{s}", run / f"checkpoint-{s}")
        save_file(
            {k: v.to(torch.bfloat16) for k, v in load_file(d / "model.safetensors").items()}, d / "model.safetensors"
        )
    res = trajectory(dir=str(run)).result
    assert_matches(
        res.points, reference(state(session["base"]), [state(run / f"checkpoint-{s}") for s in (2, 4, 6, 8)])
    )


# ----- ordering, duplicates, damage ----------------------------------------------------------------------------------
def test_steps_come_from_the_file_and_names_that_sort_differently(session: dict[str, Path], tmp_path: Path) -> None:
    sds = [load_file(session["full"] / f"checkpoint-{s}" / "model.safetensors") for s in (2, 4, 6)]
    run = tmp_path / "pt"
    run.mkdir()
    for name, step, sd in (("zeta.pt", 2, sds[0]), ("alpha.pt", 6, sds[2]), ("mid.pt", 4, sds[1])):
        torch.save({"step": step, "state_dict": sd}, run / name)
    res = trajectory(checkpoints=str(run / "*.pt")).result
    assert [(Path(e.path).name, e.step, e.step_source) for e in res.entries] == [
        ("zeta.pt", 2, "file"),
        ("mid.pt", 4, "file"),
        ("alpha.pt", 6, "file"),
    ]
    bare = tmp_path / "bare"
    bare.mkdir()
    torch.save(sds[1], bare / "step_10.pt")  # sorts before step_9 as text
    torch.save(sds[0], bare / "step_9.pt")
    res = trajectory(dir=str(bare), name="<b>run</b>").result
    assert [(p.step, p.label) for p in res.points] == [(9, "<b>run</b>@9"), (10, "<b>run</b>@10")]
    assert {e.step_source for e in res.entries} == {"name"}


def test_a_damaged_checkpoint_in_the_middle_is_reported_and_the_rest_analysed(
    session: dict[str, Path], tmp_path: Path
) -> None:
    run = shutil.copytree(session["full"], tmp_path / "run")
    weights = run / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # refused when opened
    shutil.copytree(run / "checkpoint-6", run / "copies" / "checkpoint-6")  # the same step twice
    res = trajectory(dir=str(run)).result
    status = {(Path(e.path).parent.name, Path(e.path).name): e.status for e in res.entries}
    assert status[("run", "checkpoint-4")] == "unreadable" and status[("copies", "checkpoint-6")] == "duplicate"
    assert [p.step for p in res.points] == [2, 6, 8]
    assert_matches(res.points, reference(state(session["base"]), [state(run / f"checkpoint-{s}") for s in (2, 6, 8)]))

    pts = tmp_path / "pts"
    pts.mkdir()
    for s in (2, 4, 6, 8):
        torch.save(
            {"step": s, "state_dict": load_file(session["full"] / f"checkpoint-{s}" / "model.safetensors")},
            pts / f"s{s}.pt",
        )
    import zipfile

    raw = bytearray((pts / "s4.pt").read_bytes())  # a flipped bit inside a tensor: found when the tensor is read
    with zipfile.ZipFile(pts / "s4.pt") as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw[info.header_offset + 200] ^= 0x04
    (pts / "s4.pt").write_bytes(raw)
    res = trajectory(dir=str(pts)).result
    [bad] = [e for e in res.entries if e.status != "analysed"]
    assert bad.path.endswith("s4.pt") and "CRC-32" in (bad.reason or "")
    assert_matches(res.points, reference(state(session["base"]), [state(pts / f"s{s}.pt") for s in (2, 6, 8)]))


# ----- the rules -----------------------------------------------------------------------------------------------------
def synthetic(base: Path, out: Path, coefficients: list[float], steps: list[int]) -> Path:
    """Checkpoints W_k = W_0 + c_k · D for one fixed random direction D: movements and cosines known exactly."""
    w0 = load_file(base / "model.safetensors")
    gen = torch.Generator().manual_seed(1)
    d = {k: 1e-3 * torch.randn(v.shape, generator=gen) for k, v in w0.items()}
    out.mkdir()
    for c, s in zip(coefficients, steps, strict=True):
        torch.save({"step": s, "state_dict": {k: v + c * d[k] for k, v in w0.items()}}, out / f"step_{s}.pt")
    return out


def test_a_jump_and_slowing_are_found_by_the_stated_rules(session: dict[str, Path], tmp_path: Path) -> None:
    coeffs = [1, 2, 3, 4, 12, 13, 13.1, 13.15]  # equal steps of 1, one of 8, then slowing to 0.1 and 0.05
    env = trajectory(dir=str(synthetic(session["base"], tmp_path / "jump", coeffs, [10 * i for i in range(1, 9)])))
    res = env.result
    assert res.jumps == [50] and res.slowed_from == 70
    assert all(p.update_cosine == pytest.approx(1.0, abs=1e-6) for p in res.points[1:])
    moves = [p.movement for p in res.points]
    assert moves[4] / moves[3] == pytest.approx(8.0, rel=1e-5)
    texts = [f.text for f in env.findings]
    assert any("jumps at step 50" in t and "8.0× the median" in t for t in texts)
    assert any("keeps one direction" in t for t in texts)


def test_oscillating_updates_are_called_out(session: dict[str, Path], tmp_path: Path) -> None:
    env = trajectory(dir=str(synthetic(session["base"], tmp_path / "osc", [1, -1, 1, -1], [1, 2, 3, 4])))
    assert all(p.update_cosine == pytest.approx(-1.0, abs=1e-6) for p in env.result.points[1:])
    assert any(f.severity == "warn" and "turn back" in f.text for f in env.findings)


def test_bad_arguments_are_one_line(session: dict[str, Path], tmp_path: Path) -> None:
    for args, needle in (
        ({}, "exactly one of checkpoints"),
        ({"dir": str(tmp_path), "checkpoints": "x"}, "exactly one of checkpoints"),
        ({"checkpoints": str(tmp_path / "nothing*.pt")}, "no checkpoints match"),
        ({"dir": str(tmp_path / "absent")}, "does not exist"),
        ({"dir": str(tmp_path)}, "no checkpoints under"),
    ):
        with pytest.raises(ToolError, match=needle) as e:
            trajectory(**args)
        assert "\n" not in str(e.value)


def test_the_cli_prints_the_table_and_json(session: dict[str, Path], isolated_home: Path) -> None:
    out = trainspect("trajectory-analysis", "--checkpoints", str(session["full"] / "checkpoint-*"), home=isolated_home)
    assert "step 8" in out.stdout and "never moved" in out.stdout and "Findings" in out.stdout
