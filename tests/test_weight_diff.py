"""run_weight_diff against independent dense references: svdvals on ΔW, peft's merge_and_unload for LoRA."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from weight_fixtures import merged_delta, session_for, tiny  # noqa: F401

from session.checkpoint_keys import normalise_key
from session.context import ToolContext
from tools.weight_diff import SPEC, compute
from tools.weight_diff.layout import place
from tools.weight_diff.models import WeightDiffResult
from tools.weight_diff.spectral import DenseOperator, lowrank_spectrum, sigma_max
from toolserver.contract import SilentReporter, ToolError

RTOL = 1e-4


def run(model_dir: Path, checkpoint: Path | str, **kw: object) -> tuple[WeightDiffResult, list[str], list[str]]:
    out = SPEC.run(
        ToolContext(session_for(model_dir)), SPEC.input_model(checkpoint=str(checkpoint), **kw), SilentReporter()
    )
    return out.result, [f.text for f in out.findings], [f.tool for f in out.follow_ups]


def dense_reference(delta: torch.Tensor, base: torch.Tensor) -> dict[str, float]:
    d = delta.double()
    sv = torch.linalg.svdvals(d)
    fro = float(d.norm())
    return {
        "fro": fro,
        "rel": fro / float(base.double().norm()),
        "sigma": float(sv[0]),
        "stable_rank": fro**2 / float(sv[0]) ** 2,
    }


def assert_row_matches(row: object, ref: dict[str, float]) -> None:
    assert row.fro_delta == pytest.approx(ref["fro"], rel=RTOL)
    assert row.rel_delta == pytest.approx(ref["rel"], rel=RTOL)
    assert row.sigma_max == pytest.approx(ref["sigma"], rel=RTOL)
    assert row.stable_rank == pytest.approx(ref["stable_rank"], rel=RTOL)


def hf_tensors(path: Path) -> dict[str, torch.Tensor]:
    """State dicts read without the project's loader, keyed by normalised name."""
    raw = load_file(path / "model.safetensors") if path.is_dir() else torch.load(path, weights_only=True)["state_dict"]
    return {normalise_key(k): v for k, v in raw.items()}


def column_slice(key: str, matrix: str, tensor: torch.Tensor) -> torch.Tensor:
    """GPT-2's c_attn holds [Q | K | V] side by side in its (d_in, 3·d) Conv1D weight."""
    if not key.endswith("attn.c_attn.weight"):
        return tensor
    d = tensor.shape[1] // 3
    i = "QKV".index(matrix)
    return tensor[:, i * d : (i + 1) * d]


# --- spectral routines ---------------------------------------------------------------------------


def _spectra() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    q1 = torch.linalg.qr(torch.randn(400, 400, generator=g))[0]
    q2 = torch.linalg.qr(torch.randn(300, 300, generator=g))[0]
    return {
        "gaussian": torch.randn(300, 500, generator=g),
        "low rank + noise": torch.randn(600, 6, generator=g) @ torch.randn(6, 350, generator=g)
        + 0.05 * torch.randn(600, 350, generator=g),
        "slow decay": q1[:, :300] * (1.0 / torch.arange(1, 301).float() ** 0.3) @ q2,
        "near-tie": q1[:, :300] * torch.cat([torch.tensor([1.0, 0.9999]), torch.full((298,), 0.5)]) @ q2,
        "rank one": torch.randn(257, 1, generator=g) @ torch.randn(1, 129, generator=g),
        "thin": torch.randn(20, 700, generator=g),
    }


@pytest.mark.parametrize("name", list(_spectra()))
def test_sigma_max_matches_svdvals(name: str) -> None:
    m = _spectra()[name]
    assert sigma_max(DenseOperator(m)) == pytest.approx(float(torch.linalg.svdvals(m.double())[0]), rel=RTOL)


def test_chunked_delta_operator_matches_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(2)
    old, new = torch.randn(513, 96, generator=g).bfloat16(), torch.randn(513, 96, generator=g)
    monkeypatch.setattr(compute, "CHUNK_ELEMENTS", 96 * 50)  # 11 row chunks
    op = compute.DeltaOperator(old, new, cols=(32, 64))
    assert op._kept is None  # every row changed: recomputed chunk by chunk
    ref = dense_reference((new - old.float())[:, 32:64], old.float()[:, 32:64])
    assert op.fro == pytest.approx(ref["fro"], rel=1e-6)
    assert op.base_fro == pytest.approx(float(old.double()[:, 32:64].norm()), rel=1e-6)
    assert sigma_max(op) == pytest.approx(ref["sigma"], rel=RTOL)
    assert compute.Workspace().norm(old[:, 32:64]) == pytest.approx(float(old.double()[:, 32:64].norm()), rel=1e-6)


def test_lowrank_spectrum_matches_formed_product() -> None:
    g = torch.Generator().manual_seed(3)
    for d_out, d_in, r in ((512, 384, 16), (8, 300, 16), (200, 3, 4)):
        b, a = torch.randn(d_out, r, generator=g), torch.randn(r, d_in, generator=g)
        spec = lowrank_spectrum(b, a, 0.37)
        ref = dense_reference(0.37 * b.double() @ a.double(), torch.ones(1))
        assert spec.fro == pytest.approx(ref["fro"], rel=1e-9)
        assert spec.sigma_max == pytest.approx(ref["sigma"], rel=1e-9)
        assert spec.stable_rank == pytest.approx(ref["stable_rank"], rel=1e-9)


@pytest.mark.parametrize(
    ("key", "shape", "expected"),
    [
        ("h.3.attn.c_attn.weight", (64, 192), ("layer", 3, [("Q", (0, 64)), ("K", (64, 128)), ("V", (128, 192))])),
        ("h.3.attn.c_attn.weight", (192, 64), ("layer", 3, [("QKV", None)])),  # a Linear-style fused QKV: left whole
        ("h.0.attn.c_proj.weight", (64, 64), ("layer", 0, [("O", None)])),
        ("h.0.mlp.c_proj.weight", (256, 64), ("layer", 0, [("MLP out", None)])),
        ("layers.7.self_attn.k_proj.weight", (32, 64), ("layer", 7, [("K", None)])),
        ("layers.7.mlp.gate_proj.weight", (128, 64), ("layer", 7, [("MLP gate", None)])),
        ("layers.7.mlp.up_proj.weight", (128, 64), ("layer", 7, [("MLP in", None)])),
        ("encoder.layer.2.attention.output.dense.weight", (64, 64), ("layer", 2, [("O", None)])),
        ("encoder.layer.2.output.dense.weight", (64, 128), ("layer", 2, [("MLP out", None)])),
        ("encoder.layer.2.attention.output.LayerNorm.weight", (64,), ("norm", None, [])),
        ("layers.1.input_layernorm.weight", (64,), ("norm", None, [])),
        ("h.1.attn.c_attn.bias", (192,), ("bias", None, [])),
        ("embed_tokens.weight", (640, 64), ("embedding", None, [])),
        ("lm_head.weight", (640, 64), ("embedding", None, [])),
        ("pooler.dense.weight", (64, 64), ("other", None, [])),
    ],
)
def test_layout_places_tensors(key: str, shape: tuple[int, ...], expected: tuple[str, int | None, list]) -> None:
    p = place(key, shape)
    assert (p.section, p.layer, [(part.matrix, part.cols) for part in p.parts]) == expected


# --- full fine-tunes ------------------------------------------------------------------------------

EXPECTED_TYPES = {
    "gpt2": ["Q", "K", "V", "O", "MLP in", "MLP out"],
    "llama": ["Q", "K", "V", "O", "MLP gate", "MLP in", "MLP out"],
}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_full_finetune_rows_match_dense_svd(arch: str, tiny: dict[str, dict[str, Path]]) -> None:
    paths = tiny[arch]
    res, texts, follow = run(paths["base"], paths["pt_step"], name="ft")
    base, ft = hf_tensors(paths["base"]), hf_tensors(paths["pt_step"])
    assert res.mode == "full" and res.step == 5 and res.name == "ft" and res.n_layers == 2
    for layer in (0, 1):
        assert [r.matrix for r in res.rows if r.layer == layer] == EXPECTED_TYPES[arch]
    for row in res.rows:
        key = row.keys[0]
        ref = dense_reference(
            column_slice(key, row.matrix, ft[key] - base[key]), column_slice(key, row.matrix, base[key])
        )
        assert_row_matches(row, ref)
    if arch == "llama":  # grouped-query attention: K and V project to 2 kv heads × 16
        assert {tuple(r.shape) for r in res.rows if r.matrix in ("K", "V")} == {(32, 64)}
        assert [e.key for e in res.embeddings] == ["embed_tokens.weight", "lm_head.weight"]
    else:  # lm_head is tied to wte: reported once
        assert [e.key for e in res.embeddings] == ["wte.weight", "wpe.weight"] and res.totals.tied == ["lm_head.weight"]
    for emb in res.embeddings:
        ref = dense_reference(ft[emb.key] - base[emb.key], base[emb.key])
        assert emb.fro_delta == pytest.approx(ref["fro"], rel=RTOL) and emb.stable_rank == pytest.approx(
            ref["stable_rank"], rel=RTOL
        )
    norms = {n.key: n for n in res.norms}
    assert norms and all(n.stable_rank is None for n in norms.values())
    ln = next(k for k in norms if "norm" in k or "ln_" in k)
    assert norms[ln].fro_delta == pytest.approx(float((ft[ln] - base[ln]).norm()), rel=RTOL)
    assert not any("norm" in r.keys[0] or r.keys[0].endswith("bias") for r in res.rows)
    compared = len([k for k in base if k in ft])
    assert res.totals.tensors_compared == compared and res.totals.unchanged == 0
    all_rel = sorted([r.rel_delta for r in res.rows] + [e.rel_delta for e in res.embeddings], reverse=True)
    assert [t.rel_delta for t in res.top_changed] == pytest.approx(all_rel[:10])
    top = max(res.rows, key=lambda r: r.rel_delta)
    assert texts[0].startswith(f"Layer {top.layer} {top.matrix} changed most: ‖ΔW‖/‖W‖ = {top.rel_delta:.3g}")


def test_chunked_run_equals_whole_run(tiny: dict[str, dict[str, Path]], monkeypatch: pytest.MonkeyPatch) -> None:
    whole, _, _ = run(tiny["gpt2"]["base"], tiny["gpt2"]["safetensors"])
    monkeypatch.setattr(compute, "CHUNK_ELEMENTS", 1000)
    chunked, _, _ = run(tiny["gpt2"]["base"], tiny["gpt2"]["safetensors"])
    for a, b in zip(whole.rows + whole.embeddings, chunked.rows + chunked.embeddings, strict=True):
        assert a.fro_delta == pytest.approx(b.fro_delta, rel=1e-5) and a.stable_rank == pytest.approx(
            b.stable_rank, rel=RTOL
        )


# --- LoRA -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "adapter"), [("gpt2", "lora"), ("llama", "lora"), ("gpt2", "rslora"), ("llama", "rslora")]
)
def test_lora_rows_match_peft_merge(
    arch: str, adapter: str, tiny: dict[str, dict[str, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_dense(*_: object, **__: object) -> None:
        raise AssertionError("a LoRA pair was diffed densely")

    monkeypatch.setattr(compute, "DeltaOperator", no_dense)  # the factor route only
    paths = tiny[arch]
    res, texts, _ = run(paths["base"], paths[adapter])
    merged = {normalise_key(k): v for k, v in merged_delta(paths["base"], paths[adapter]).items()}
    base = hf_tensors(paths["base"])
    assert res.mode == "lora" and res.totals.tensors_compared == len(merged)
    assert len(res.rows) == 2 * len(EXPECTED_TYPES[arch])
    for row in res.rows:
        key = row.keys[0]
        ref = dense_reference(column_slice(key, row.matrix, merged[key]), column_slice(key, row.matrix, base[key]))
        assert_row_matches(row, ref)
        assert row.stable_rank <= row.lora_rank + 1e-6
    assert not res.embeddings and "unchanged" in texts[-1]


# --- errors, progress, card -----------------------------------------------------------------------


def test_errors_are_tool_errors(tiny: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="does not exist"):
        run(tiny["gpt2"]["base"], tmp_path / "missing.pt")
    with pytest.raises(ToolError) as excinfo:
        run(tiny["gpt2"]["base"], tiny["llama"]["pt_step"])
    assert "layers.0." in str(excinfo.value) and "\n" not in str(excinfo.value)
    with pytest.raises(ToolError, match="not a local directory"):
        run(tmp_path / "no-such-base", tiny["gpt2"]["pt_step"])


def test_identical_checkpoint_is_flagged(tiny: dict[str, dict[str, Path]]) -> None:
    res, texts, _ = run(tiny["llama"]["base"], tiny["llama"]["base"] / "model.safetensors")
    assert res.totals.unchanged == res.totals.tensors_compared > 0
    assert all(r.fro_delta == 0 and r.stable_rank is None for r in res.rows)
    assert texts == [
        f"The checkpoint is identical to the base: all {res.totals.tensors_compared} compared tensors are unchanged."
    ]


def test_progress_card_and_table(tiny: dict[str, dict[str, Path]]) -> None:
    seen: list[float] = []

    class Recorder(SilentReporter):
        def progress(self, fraction: float, message: str) -> None:
            seen.append(fraction)

    out = SPEC.run(
        ToolContext(session_for(tiny["gpt2"]["base"])),
        SPEC.input_model(checkpoint=str(tiny["gpt2"]["hf_sharded"])),
        Recorder(),
    )
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 10
    card = SPEC.slim(out.result).model_dump(mode="json")
    assert len(json.dumps(card)) < 4000
    assert card["matrix_types"] == EXPECTED_TYPES["gpt2"] and [c["layer"] for c in card["layers"]] == [0, 1]
    q0 = next(r for r in out.result.rows if r.layer == 0 and r.matrix == "Q")
    assert card["layers"][0]["fro"]["Q"] == pytest.approx(q0.fro_delta, rel=1e-3)
    text = SPEC.table(out.result)
    assert len([line for line in text.splitlines() if line.strip().startswith(("0 ", "1 "))]) == len(out.result.rows)
    assert math.isfinite(out.result.totals.rel_delta) and out.result.totals.rel_delta > 0


def test_frobenius_sums_stay_accurate_on_large_matrices() -> None:
    """‖ΔW‖_F² of a 11.5M-element matrix within 1e-6 of float64: one float32 reduction on one thread is ~1e-3 off."""
    from tools.weight_diff.compute import sum_squares, torch_threads

    delta = torch.randn(5632, 2048, generator=torch.Generator().manual_seed(0)) * 1e-3
    exact = float(delta.double().square().sum())
    with torch_threads(1):
        assert abs(sum_squares(delta) - exact) / exact < 1e-6
