"""Loading real weights: tiny LLMs through TransformerBridge against plain HF, the bundled encoder, sae-lens SAEs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from session_fixtures import D_MODEL, N_LAYERS, build_sae, fake_hub_cache, tiny_base

from session import service
from session.model_cache import ModelCache
from session.models import load_base
from session.sae import session_saes
from session.state import load_session
from toolserver.contract import ToolError
from toolserver.registry import get_tool
from toolserver.runner import invoke

PROMPTS = ["The model reads a sentence and predicts the next word.", "Dead layers receive almost no gradient."]

CACHE = ModelCache()  # one cache for the module, as a front door keeps one


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {arch: tiny_base(arch, tmp_path_factory) for arch in ("gpt2", "llama")}


@pytest.fixture(scope="module")
def sae_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("saes")
    return {
        "ok": build_sae(root / "ok"),
        "no_hook": build_sae(root / "no-hook", hook=None),
        "wide": build_sae(root / "wide", d_in=32),
        "deep": build_sae(root / "deep", hook="blocks.5.hook_resid_post"),
    }


def _hf_reference(model_dir: Path, tokens: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    with torch.no_grad():
        out = hf(tokens, output_hidden_states=True)
    return out.logits, out.hidden_states


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_llm_loads_through_the_bridge_and_matches_hf(arch: str, bases: dict[str, Path]) -> None:
    session, _ = service.start_session(f"tiny-{arch}", str(bases[arch]))
    loaded = load_base(session, CACHE)
    assert load_base(session, CACHE) is loaded  # cached for the process
    assert service.status(session, CACHE).model_in_memory
    assert (loaded.d_model, loaded.n_layers, loaded.device) == (D_MODEL, N_LAYERS, "cpu")
    tokens = loaded.tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits, cache = loaded.model.run_with_cache(tokens)
    ref_logits, hidden = _hf_reference(bases[arch], tokens)
    for layer in range(N_LAYERS):
        assert cache[f"blocks.{layer}.hook_resid_post"].shape == (1, tokens.shape[1], D_MODEL)
    # HF's hidden_states[L + 1] is block L's output before the final norm, except the last one
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], hidden[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    assert logits.abs().max() > 0.01  # a real forward pass, not zeros


def test_bundled_encoder_starts_an_embedding_session_offline() -> None:
    env = invoke(get_tool("start_session"), {"id": "minilm", "model": "all-minilm-l6-v2"})
    assert env.result.kind == "embedding" and env.result.d_model == 384 and env.result.n_layers == 6
    assert env.result.default_layer == 3
    loaded = load_base(load_session("minilm"), CACHE)
    assert type(loaded.model).__name__ == "BertModel"
    batch = loaded.tokenizer(
        ["a cat sits on the mat", "a cat is sitting on a mat", "stock prices fell sharply"],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = loaded.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    # the real trained model: paraphrases land closer than unrelated sentences
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_local_sae_loads_with_hook_and_encodes_like_the_formula(
    bases: dict[str, Path], sae_dirs: dict[str, Path]
) -> None:
    invoke(get_tool("start_session"), {"id": "sae-run", "model": str(bases["gpt2"])})
    env = invoke(get_tool("load_sae"), {"sae": [str(sae_dirs["ok"])]})
    [sae_info] = env.result.loaded
    assert (sae_info.hook, sae_info.layer, sae_info.d_in, sae_info.d_sae) == (
        "blocks.1.hook_resid_post",
        1,
        D_MODEL,
        128,
    )
    assert sae_info.architecture == "standard" and sae_info.source == "local" and not sae_info.hook_assumed
    assert [f.severity for f in env.findings] == ["info"]  # no centring or assumed-hook warning for this SAE
    stored = load_session("sae-run")
    [ref] = stored.saes
    assert (ref.spec, ref.hook, ref.layer, ref.d_sae) == (
        str(sae_dirs["ok"].resolve()),
        "blocks.1.hook_resid_post",
        1,
        128,
    )

    loaded = load_base(stored, CACHE)
    tokens = loaded.tokenizer(PROMPTS, padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        _, cache = loaded.model.run_with_cache(tokens, names_filter=ref.hook)
        acts = cache[ref.hook]
        [(sae, _)] = session_saes(stored, CACHE)
        features = sae.encode(acts)
    # independent reference: StandardSAE is ReLU((x - b_dec) W_enc + b_enc), weights read from the saved file
    from safetensors.torch import load_file

    w = load_file(str(sae_dirs["ok"] / "sae_weights.safetensors"))
    expected = torch.relu((acts - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    assert features.shape == (len(PROMPTS), tokens.shape[1], 128)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-4)
    assert 0 < (features > 0).float().mean() < 1

    status = invoke(get_tool("session_status"), {}).result
    assert [r.hook for r in status.saes] == ["blocks.1.hook_resid_post"] and status.calls == 2


def test_sae_without_hook_metadata_falls_back_to_the_default_layer(
    bases: dict[str, Path], sae_dirs: dict[str, Path]
) -> None:
    session, _ = service.start_session("fallback", str(bases["llama"]))
    _, [info], _ = service.load_saes(session, [str(sae_dirs["no_hook"])], CACHE)
    assert (info.layer, info.hook, info.hook_assumed) == (1, "blocks.1.hook_resid_post", True)  # middle of 2 layers
    assert (
        service.status(session, CACHE).saes_in_memory
        and not service.status(load_session("fallback"), ModelCache()).saes_in_memory
    )


def test_sae_errors_are_one_clear_line(bases: dict[str, Path], sae_dirs: dict[str, Path], tmp_path: Path) -> None:
    session, _ = service.start_session("errs", str(bases["gpt2"]))
    cases = {
        str(sae_dirs["wide"]): ("d_in 32", f"d_model {D_MODEL}"),
        str(sae_dirs["deep"]): ("layer 5", f"{N_LAYERS} layers"),
        "gpt2-small-res-jb/blocks.8.hook_resid_pre": ("gpt2-small-res-jb/blocks.8.hook_resid_pre", "offline"),
        "gpt2-small-res-jb/blocks.99.hook_resid_pre": ("blocks.99", "gpt2-small-res-jb"),
        "no-such-release/x": ("no-such-release", "registry"),
        str(tmp_path / "missing"): ("missing", "does not exist"),
        str(tmp_path): (str(tmp_path), "cfg.json"),
        "justaname": ("justaname", "release/sae_id"),
    }
    for spec, needles in cases.items():
        with pytest.raises(ToolError) as e:
            service.load_saes(session, [spec], CACHE)
        text = str(e.value)
        assert "\n" not in text and all(n in text for n in needles), text
    assert load_session("errs").saes == []  # nothing was persisted


def test_llm_the_bridge_cannot_load_is_one_clear_line(tmp_path: Path) -> None:
    model_dir = tmp_path / "biogpt"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        '{"model_type": "biogpt", "architectures": ["BioGptForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2}'
    )
    session, _ = service.start_session("biogpt", str(model_dir))
    assert session.kind == "llm"
    with pytest.raises(ToolError) as e:
        load_base(session, CACHE)
    text = str(e.value)
    assert "\n" not in text and "TransformerBridge" in text and "BioGptForCausalLM" in text and len(text) < 400, text


def test_pretrained_sae_loads_from_the_hf_cache_offline(
    bases: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """release/sae_id resolves through sae-lens' registry to the cached files, hub unreachable; its metadata
    says the model it was trained on had centred writing weights, which the result and a warning carry."""
    import huggingface_hub.constants

    files = build_sae(tmp_path / "files", hook="blocks.1.hook_resid_pre", model_kwargs={"center_writing_weights": True})
    fake_hub_cache(tmp_path / "hub", "jbloom/GPT2-Small-SAEs-Reformatted", files, subfolder="blocks.1.hook_resid_pre")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    invoke(get_tool("start_session"), {"id": "cached", "model": str(bases["gpt2"])})
    env = invoke(get_tool("load_sae"), {"sae": ["gpt2-small-res-jb/blocks.1.hook_resid_pre"]})
    [loaded] = env.result.loaded
    assert (loaded.source, loaded.hook, loaded.layer, loaded.d_in) == (
        "pretrained",
        "blocks.1.hook_resid_pre",
        1,
        D_MODEL,
    )
    assert loaded.model_kwargs == {"center_writing_weights": True}
    # HookedTransformer's defaults fill in the rest; only the processing that changes resid_pre is applied
    assert loaded.processing.endswith(
        "TransformerLens processing: center_writing_weights (fold_ln, center_unembed, "
        "fold_value_biases skipped: they do not change blocks.1.hook_resid_pre)"
    )
    assert any("center_writing_weights" in f.text for f in env.findings)
    assert [r.spec for r in load_session("cached").saes] == ["gpt2-small-res-jb/blocks.1.hook_resid_pre"]
    # an id of the same release that is not cached: one line saying so
    with pytest.raises(ToolError, match="not in the local HF cache and the hub is offline"):
        invoke(get_tool("load_sae"), {"sae": ["gpt2-small-res-jb/blocks.0.hook_resid_pre"]})


def test_centred_writing_weights_only_remove_each_residual_vectors_mean(bases: dict[str, Path]) -> None:
    """What the centring warning tells the user to do, checked against TransformerLens' own processing."""
    from transformer_lens.model_bridge import TransformerBridge

    session, _ = service.start_session("centred", str(bases["gpt2"]))
    raw = load_base(session, CACHE).model
    processed = TransformerBridge.boot_transformers(str(bases["gpt2"]), device="cpu")
    processed.enable_compatibility_mode(disable_warnings=True, center_writing_weights=True)
    tokens = raw.tokenizer(PROMPTS, padding=True, return_tensors="pt")["input_ids"]
    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"]
    with torch.no_grad():
        _, ours = raw.run_with_cache(tokens, names_filter=hooks)
        _, theirs = processed.eval().run_with_cache(tokens, names_filter=hooks)
    for hook in hooks:
        x = ours[hook]
        assert (x - theirs[hook]).abs().max() > 1e-3  # unprocessed activations differ ...
        torch.testing.assert_close(
            x - x.mean(-1, keepdim=True), theirs[hook], atol=1e-5, rtol=1e-4
        )  # ... by their mean only


def test_several_saes_attach_one_per_hook(bases: dict[str, Path], tmp_path: Path) -> None:
    invoke(get_tool("start_session"), {"id": "multi", "model": str(bases["gpt2"])})
    l0, l1 = build_sae(tmp_path / "l0", hook="blocks.0.hook_resid_post"), build_sae(tmp_path / "l1", seed=1)
    env = invoke(get_tool("load_sae"), {"sae": [str(l1), str(l0)]})
    assert [r.layer for r in env.result.attached] == [0, 1] and env.result.replaced == []
    again = build_sae(tmp_path / "l1-again", seed=2)  # the same hook as l1
    env = invoke(get_tool("load_sae"), {"sae": [str(again)]})
    assert env.result.replaced == [str(l1.resolve())]
    assert [(r.layer, r.spec) for r in load_session("multi").saes] == [
        (0, str(l0.resolve())),
        (1, str(again.resolve())),
    ]
    assert any(f.text.startswith("Replaced ") for f in env.findings)
    with pytest.raises(ToolError, match="both read blocks.1.hook_resid_post"):
        invoke(get_tool("load_sae"), {"sae": [str(l1), str(again)]})
    assert [r.spec for r in load_session("multi").saes] == [str(l0.resolve()), str(again.resolve())]  # unchanged


def test_a_session_file_from_before_several_saes_still_reads(bases: dict[str, Path], isolated_home: Path) -> None:
    import json

    service.start_session("old", str(bases["gpt2"]))
    path = isolated_home / "sessions" / "old.json"
    data = json.loads(path.read_text())
    data.pop("saes")
    data.update(sae="/x/sae", sae_hook="blocks.1.hook_resid_post", sae_layer=1)
    path.write_text(json.dumps(data))
    [ref] = load_session("old").saes
    assert (ref.spec, ref.hook, ref.layer, ref.d_sae) == ("/x/sae", "blocks.1.hook_resid_post", 1, None)
