"""The checkpoint loader: every format gives the same tensors, only tensors are unpickled, bad input is one line."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from weight_fixtures import FORMATS, merged_delta, tiny  # noqa: F401

from session.checkpoint_keys import normalise_key
from session.checkpoint_lora import read_adapter_config
from session.checkpoints import align, apply_ties, open_checkpoint
from toolserver.contract import ToolError


def one_line_error(excinfo: pytest.ExceptionInfo[ToolError], *needles: str) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text
    return text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("transformer.h.0.attn.c_attn.weight", "h.0.attn.c_attn.weight"),
        ("h.0.attn.c_attn.weight", "h.0.attn.c_attn.weight"),
        ("module._orig_mod.transformer.wte.weight", "wte.weight"),
        ("base_model.model.model.layers.3.self_attn.q_proj.weight", "layers.3.self_attn.q_proj.weight"),
        ("model.layers.3.mlp.gate_proj.weight", "layers.3.mlp.gate_proj.weight"),
        ("bert.encoder.layer.1.attention.self.query.weight", "encoder.layer.1.attention.self.query.weight"),
        ("lm_head.weight", "lm_head.weight"),
        ("model._orig_mod.norm.weight", "norm.weight"),
    ],
)
def test_wrapper_prefixes_are_stripped(raw: str, expected: str) -> None:
    assert normalise_key(raw) == expected


def _hf_reference(model_dir: Path) -> dict[str, torch.Tensor]:
    """Independent reference: the tensors transformers itself loads from a save_pretrained directory."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    auto = AutoModelForMaskedLM if AutoConfig.from_pretrained(model_dir).model_type == "bert" else AutoModelForCausalLM
    return {normalise_key(k): v for k, v in auto.from_pretrained(model_dir, dtype=torch.float32).state_dict().items()}


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_every_format_gives_identical_tensors(arch: str, tiny: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    paths = tiny[arch]
    # three more ways people save the same weights: legacy (non-zip) torch.save, a DDP + torch.compile
    # wrapped state dict, and the bare backbone (no `transformer.` / `model.` / `bert.` prefix)
    state = torch.load(paths["pt"], weights_only=True)
    legacy, wrapped, bare = tmp_path / "legacy.pt", tmp_path / "wrapped.pt", tmp_path / "bare.safetensors"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    torch.save({"model_state_dict": {f"module._orig_mod.{k}": v for k, v in state.items()}, "global_step": 7}, wrapped)
    unique = {normalise_key(k): v.contiguous() for k, v in load_file(paths["safetensors"]).items()}
    save_file(unique, bare)

    base = open_checkpoint(paths["base"])
    readers = {fmt: open_checkpoint(paths[fmt]) for fmt in FORMATS}
    readers |= {"legacy": open_checkpoint(legacy), "wrapped": open_checkpoint(wrapped), "bare": open_checkpoint(bare)}
    apply_ties(base, *readers.values())
    reference = _hf_reference(paths["hf_dir"])
    expected_keys = set(readers["hf_dir"].keys())
    for fmt, reader in readers.items():
        assert reader.kind == "full"
        assert set(reader.keys()) == expected_keys, (fmt, set(reader.keys()) ^ expected_keys)
        for key in expected_keys:
            tensor = reader.get(key)
            assert tuple(tensor.shape) == reader.shape(key)
            assert torch.equal(tensor, reference[key]), (fmt, key)
    assert readers["pt_step"].step == 5 and readers["safetensors"].step == 5 and readers["wrapped"].step == 7
    assert readers["pt"].step is None
    # the fine-tune really changed the weights the base holds
    some = next(k for k in base.keys() if k.endswith("weight") and base.shape(k)[0] > 1 and k in expected_keys)
    assert not torch.equal(base.get(some), readers["hf_dir"].get(some))


def test_tied_output_embedding_is_not_counted_twice(tiny: dict[str, dict[str, Path]]) -> None:
    base = open_checkpoint(tiny["gpt2"]["base"])
    ckpt = open_checkpoint(tiny["gpt2"]["pt_step"])  # holds both transformer.wte.weight and lm_head.weight
    assert {"wte.weight", "lm_head.weight"} <= set(ckpt.keys())
    aligned = align(base, ckpt)
    assert "lm_head.weight" not in ckpt.keys() and aligned.tied == ["lm_head.weight"]
    assert not aligned.only_in_base and not aligned.only_in_checkpoint
    # Llama does not tie: its lm_head is a weight of its own on both sides
    llama = align(open_checkpoint(tiny["llama"]["base"]), open_checkpoint(tiny["llama"]["pt"]))
    assert "lm_head.weight" in llama.common and not llama.tied


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    class Payload:
        def __init__(self, marker: Path) -> None:
            self.marker = marker

        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {self.marker}",))

    control_marker, marker = tmp_path / "control-ran", tmp_path / "payload-ran"
    control, evil = tmp_path / "control.pt", tmp_path / "evil.pt"
    torch.save({"step": 1, "state_dict": {"w": torch.ones(2)}, "extra": Payload(control_marker)}, control)
    torch.save({"step": 1, "state_dict": {"w": torch.ones(2)}, "extra": Payload(marker)}, evil)
    legacy = tmp_path / "evil_legacy.pt"
    torch.save({"extra": Payload(marker)}, legacy, _use_new_zipfile_serialization=False)

    torch.load(control, weights_only=False)  # the payload is live: an unsafe load does run it
    assert control_marker.exists()

    for path in (evil, legacy):
        with pytest.raises(ToolError) as excinfo:
            open_checkpoint(path)
        one_line_error(excinfo, str(path), "refusing", "system")
    assert not marker.exists()


def test_bad_files_give_one_line_errors(tiny: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ToolError) as excinfo:
        open_checkpoint(missing)
    one_line_error(excinfo, str(missing), "does not exist")

    data = (tiny["gpt2"]["safetensors"]).read_bytes()
    for n, label in ((500, "header"), (len(data) - 1000, "data")):
        cut = tmp_path / f"cut_{label}.safetensors"
        cut.write_bytes(data[:n])
        with pytest.raises(ToolError) as excinfo:
            open_checkpoint(cut)
        one_line_error(excinfo, str(cut), "not a readable safetensors file")

    cut_pt = tmp_path / "cut.pt"
    cut_pt.write_bytes(tiny["gpt2"]["pt_step"].read_bytes()[:2000])
    with pytest.raises(ToolError) as excinfo:
        open_checkpoint(cut_pt)
    one_line_error(excinfo, str(cut_pt), "not a readable torch checkpoint")

    unknown = tmp_path / "weights.txt"
    unknown.write_text("hello")
    with pytest.raises(ToolError) as excinfo:
        open_checkpoint(unknown)
    one_line_error(excinfo, str(unknown), "unknown checkpoint format")

    with pytest.raises(ToolError) as excinfo:
        open_checkpoint(tmp_path)
    one_line_error(excinfo, str(tmp_path), "no model weights")

    not_a_dict = tmp_path / "list.pt"
    torch.save([torch.ones(2)], not_a_dict)
    with pytest.raises(ToolError) as excinfo:
        open_checkpoint(not_a_dict)
    one_line_error(excinfo, str(not_a_dict), "not a state dict")


def test_other_architecture_is_named(tiny: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    gpt2_base = open_checkpoint(tiny["gpt2"]["base"])
    with pytest.raises(ToolError) as excinfo:
        align(gpt2_base, open_checkpoint(tiny["llama"]["safetensors"]))
    one_line_error(excinfo, str(tiny["llama"]["safetensors"]), "shares few weight names", "layers.0.", "h.0.")

    # same architecture, other width: the offending keys and both shapes are named
    torch.manual_seed(0)
    wide = GPT2LMHeadModel(
        GPT2Config(vocab_size=640, n_positions=128, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    )
    other = tmp_path / "narrow.pt"
    torch.save(wide.state_dict(), other)
    with pytest.raises(ToolError) as excinfo:
        align(gpt2_base, open_checkpoint(other))
    one_line_error(excinfo, str(other), "28 shape mismatches", "wte.weight [640, 32] vs base [640, 64]")

    with pytest.raises(ToolError) as excinfo:
        align(gpt2_base, open_checkpoint(tiny["llama"]["lora"]))
    one_line_error(excinfo, "shares no weight names", "layers.0.")


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("adapter", ["lora", "rslora"])
def test_lora_pairs_match_peft_merge(arch: str, adapter: str, tiny: dict[str, dict[str, Path]]) -> None:
    """scale · left @ right, in the base's orientation, is exactly what peft merges into each weight."""
    base_dir, adapter_dir = tiny[arch]["base"], tiny[arch][adapter]
    base, ckpt = open_checkpoint(base_dir), open_checkpoint(adapter_dir)
    assert ckpt.kind == "lora" and ckpt.step is None
    align(base, ckpt)
    pairs = ckpt.lora_pairs()
    expected = {normalise_key(k): v for k, v in merged_delta(base_dir, adapter_dir).items()}
    assert set(pairs) == set(expected)
    for key, pair in pairs.items():
        r, alpha = (8, 4) if adapter == "rslora" else (4, 8)
        assert pair.scale == pytest.approx(alpha / math.sqrt(r) if adapter == "rslora" else alpha / r)
        delta = pair.scale * pair.left() @ pair.right()
        assert delta.shape == base.shape(key)
        torch.testing.assert_close(delta, expected[key], rtol=1e-4, atol=1e-6)


def test_rank_and_alpha_patterns_follow_peft(tiny: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    base_dir = tiny["llama"]["base"]
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"down_proj": 2, r"layers\.1\.self_attn\.q_proj": 6},
        alpha_pattern={"v_proj": 3},
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config)
    model.save_pretrained(tmp_path / "patterned")
    pairs = open_checkpoint(tmp_path / "patterned").lora_pairs()
    peft_scales = {
        normalise_key(name) + ".weight": m.scaling["default"]
        for name, m in model.base_model.model.named_modules()
        if isinstance(m, LoraLayer)
    }
    assert set(pairs) == set(peft_scales)
    for key, pair in pairs.items():
        assert pair.scale == pytest.approx(peft_scales[key]), key
    assert pairs["layers.1.self_attn.q_proj.weight"].rank == 6 and pairs["layers.0.self_attn.q_proj.weight"].rank == 4
    assert pairs["layers.0.mlp.down_proj.weight"].rank == 2


def test_adapter_config_mismatch_and_dora_are_refused(tiny: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    bad = tmp_path / "bad-rank"
    shutil.copytree(tiny["llama"]["lora"], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps(cfg | {"r": 16}))
    with pytest.raises(ToolError) as excinfo:
        open_checkpoint(bad)
    one_line_error(excinfo, "rank 4", "r=16")

    (bad / "adapter_config.json").write_text(json.dumps(cfg | {"use_dora": True}))
    with pytest.raises(ToolError) as excinfo:
        open_checkpoint(bad)
    one_line_error(excinfo, "DoRA")


def test_real_adapter_configs_parse(reallogs: Path) -> None:
    configs = sorted(reallogs.glob("*adapter_config.json"))
    assert configs
    for path in configs:
        raw = json.loads(path.read_text())
        cfg = read_adapter_config(path)
        assert cfg.r == raw["r"] and cfg.lora_alpha == raw["lora_alpha"]
        assert cfg.use_rslora == bool(raw.get("use_rslora")) and cfg.rank_pattern == (raw.get("rank_pattern") or {})
        r, alpha = cfg.rank_alpha("model.layers.0.self_attn.q_proj")
        assert (r, alpha) == (raw["r"], raw["lora_alpha"])
        assert cfg.scale(r, alpha) == pytest.approx(raw["lora_alpha"] / raw["r"])
