"""A fine-tuned model beside the base: checkpoint weights in the base architecture, checked against HF and peft."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from session_fixtures import tiny_base

from session import service
from session.model_cache import ModelCache
from session.models import load_base, load_checkpoint
from tools.fixtures.tiny_models import finetune, lora_finetune
from toolserver.contract import ToolError

PROMPT = "Attention layers decide which earlier words matter."

CACHE = ModelCache()  # one cache for the module, as a front door keeps one


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2: dict[str, Path]) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("ckpt-runs")
    llama = tiny_base("llama", tmp_path_factory)
    bert = tiny_base("bert", tmp_path_factory)
    return {
        "gpt2": tiny_gpt2,  # conftest's: base, a {step: 5, state_dict} .pt fine-tune and a LoRA adapter
        "llama": {
            "base": llama,
            "full": finetune(llama, root / "llama-step_5.pt", steps=5, fmt="pt_step"),
            "lora": lora_finetune(llama, root / "llama-lora", steps=5),
        },
        "bert": {"base": bert, "full": finetune(bert, root / "bert.safetensors", steps=5)},
    }


def _reference(base: Path, checkpoint: Path, kind: str) -> torch.nn.Module:
    """The fine-tuned model built independently: HF's own loading, plus torch.load or peft's merge."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(base), attn_implementation="eager")
    if kind == "full":
        hf.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    else:
        from peft import PeftModel

        hf = PeftModel.from_pretrained(hf, str(checkpoint)).merge_and_unload()
    return hf.eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_checkpoint_model_matches_an_independent_load(arch: str, kind: str, runs: dict[str, dict[str, Path]]) -> None:
    session, _ = service.start_session(f"{arch}-{kind}", str(runs[arch]["base"]))
    base = load_base(session, CACHE)
    tuned = load_checkpoint(session, runs[arch][kind], CACHE)
    assert load_checkpoint(session, runs[arch][kind], CACHE) is tuned  # cached
    assert tuned.step == (5 if kind == "full" else None)
    tokens = base.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base_logits = base.model(tokens)
        logits, cache = tuned.model.run_with_cache(tokens)
        ref = _reference(runs[arch]["base"], runs[arch][kind], kind)(tokens).logits
    assert cache["blocks.1.hook_resid_post"].shape == (1, tokens.shape[1], 64)
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
    assert (logits - base_logits).abs().max() > 1e-3  # the fine-tune really changed the model
    # the base model in the same session is untouched by loading the checkpoint
    with torch.no_grad():
        torch.testing.assert_close(load_base(session, CACHE).model(tokens), base_logits)


def test_encoder_checkpoint_from_a_masked_lm_fine_tune(runs: dict[str, dict[str, Path]]) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModel

    session, _ = service.start_session("bert-ft", str(runs["bert"]["base"]))
    tuned = load_checkpoint(session, runs["bert"]["full"], CACHE)
    ref = AutoModel.from_pretrained(str(runs["bert"]["base"]))
    weights = {k.removeprefix("bert."): v for k, v in load_file(str(runs["bert"]["full"])).items()}
    missing, _ = ref.load_state_dict(weights, strict=False)
    assert all(m.startswith("pooler.") for m in missing)  # BertForMaskedLM has no pooler: base one kept
    batch = tuned.tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(
            tuned.model(**batch).last_hidden_state, ref.eval()(**batch).last_hidden_state, atol=1e-5, rtol=1e-4
        )


def test_checkpoint_of_another_architecture_is_one_clear_line(runs: dict[str, dict[str, Path]]) -> None:
    session, _ = service.start_session("mismatch", str(runs["gpt2"]["base"]))
    for other in (runs["llama"]["full"], runs["llama"]["lora"]):
        with pytest.raises(ToolError) as e:
            load_checkpoint(session, other, CACHE)
        assert str(other) in str(e.value) and "\n" not in str(e.value)


def test_a_checkpoint_rewritten_in_place_is_reloaded(runs: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    """Rewriting adapter_model.safetensors in place (as torch.save or open(..., "wb") do) leaves the directory's
    mtime alone; the cache must still notice."""
    from safetensors.torch import load_file, save_file

    adapter = tmp_path / "adapter"
    shutil.copytree(runs["llama"]["lora"], adapter)
    session, _ = service.start_session("rewritten", str(runs["llama"]["base"]))
    first = load_checkpoint(session, adapter, CACHE)
    weights_file = adapter / "adapter_model.safetensors"
    weights = {k: v * 2 if "lora_B" in k else v for k, v in load_file(str(weights_file)).items()}
    dir_mtime = adapter.stat().st_mtime_ns
    save_file(weights, str(tmp_path / "new.safetensors"), metadata={"format": "pt"})
    weights_file.write_bytes((tmp_path / "new.safetensors").read_bytes())
    os.utime(weights_file, ns=(dir_mtime + 10**9, dir_mtime + 10**9))  # a later write, whatever the clock's resolution
    assert adapter.stat().st_mtime_ns == dir_mtime
    second = load_checkpoint(session, adapter, CACHE)
    assert second is not first
    tokens = first.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (second.model(tokens) - first.model(tokens)).abs().max() > 1e-4


def test_gpt2_adapter_orientation_follows_the_base_not_the_config_flag(
    runs: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    """GPT-2's Conv1D stores W as (in, out): a square c_proj update must be merged transposed even when
    an adapter's config says fan_in_fan_out=false (peft itself forces it true for Conv1D)."""
    import json

    flipped = tmp_path / "lora-flag-false"
    shutil.copytree(runs["gpt2"]["lora"], flipped)
    config = json.loads((flipped / "adapter_config.json").read_text())
    config["fan_in_fan_out"] = False
    (flipped / "adapter_config.json").write_text(json.dumps(config))
    session, _ = service.start_session("gpt2-flag", str(runs["gpt2"]["base"]))
    tokens = load_base(session, CACHE).tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = load_checkpoint(session, flipped, CACHE).model(tokens)
        ref = _reference(runs["gpt2"]["base"], runs["gpt2"]["lora"], "lora")(tokens).logits
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
