"""run_residual_drift on real tensors: a planted change, an independent recomputation from transformers' own hidden
states, an adapter against its merged weights, the real MiniLM, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from minilm_fixtures import minilm_copies
from planted import D_MODEL, orthonormal_basis, plant, planted_base
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from toolserver.contract import ToolError
from toolserver.registry import get_tool
from toolserver.runner import invoke

PROBES = [
    "The model reads a sentence and predicts the next word.",
    "Dead layers",
    "A small learning rate keeps the update gentle, while a large one can make the loss jump around.",
    "Engineers compare the weights before and after.",
    "Attention",
]
PLANTED_LAYER, ALPHA = 1, 0.75


def drift(model: Path, checkpoint: Path, **args: object) -> object:
    invoke(get_tool("start_session"), {"id": "drift", "model": str(model)})
    return invoke(get_tool("run_residual_drift"), {"checkpoint": str(checkpoint), **args})


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("planted-drift")
    out = {}
    for arch in ("gpt2", "llama"):
        base = planted_base(arch, root / arch)
        out[arch] = (base, plant(base, arch, PLANTED_LAYER, orthonormal_basis()[5], ALPHA, root / f"{arch}.pt"))
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_planted_bias_drifts_exactly_from_its_layer_on(arch: str, planted: dict[str, tuple[Path, Path]]) -> None:
    env = drift(*planted[arch])
    layers = {d.layer: d for d in env.result.layers}
    assert list(layers) == ["embed", 0, 1]
    for before in ("embed", 0):  # untouched weights: bit-identical activations
        assert layers[before].cos_max < 1e-6 and layers[before].rel_norm_max < 1e-6
    assert layers[PLANTED_LAYER].cos_mean > 1e-4
    assert env.result.start_layer == env.result.peak_layer == PLANTED_LAYER
    assert env.findings[0].text.startswith(f"Drift starts at layer {PLANTED_LAYER}:")
    assert env.result.runtime.dtype == "float32" and env.result.probes.source == "built-in"


def _last_token_states(model: torch.nn.Module, tok: object, text: str) -> list[torch.Tensor]:
    """transformers' own per-layer vectors for one probe alone: hidden_states[0] and each block's output (the last
    block's read by a hook on it: hidden_states[-1] carries the final norm)."""
    ids = tok(text, return_tensors="pt")["input_ids"]
    seen: list[torch.Tensor] = []
    handle = model.transformer.h[-1].register_forward_hook(
        lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out)
    )
    with torch.no_grad():
        states = model(ids, output_hidden_states=True).hidden_states
    handle.remove()
    return [h[0, -1].double() for h in (*states[:-1], seen[0])]


def test_drift_equals_a_computation_from_transformers_hidden_states(tiny_gpt2: dict[str, Path], tmp_path: Path) -> None:
    probes = tmp_path / "probes.jsonl"
    probes.write_text("".join(json.dumps(p) + "\n" for p in PROBES))
    env = drift(tiny_gpt2["base"], tiny_gpt2["full"], prompts=str(probes), batch_size=3)  # padding in every batch
    base = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2["base"]), attn_implementation="eager").eval()
    tuned = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2["base"]), attn_implementation="eager").eval()
    tuned.load_state_dict(torch.load(tiny_gpt2["full"], weights_only=True)["state_dict"])
    tok = AutoTokenizer.from_pretrained(str(tiny_gpt2["base"]))
    pairs = [(_last_token_states(base, tok, p), _last_token_states(tuned, tok, p)) for p in PROBES]
    for i, layer in enumerate(env.result.layers):
        dist = torch.tensor([1 - torch.nn.functional.cosine_similarity(b[i], t[i], dim=0) for b, t in pairs])
        rel = torch.tensor([(t[i] - b[i]).norm() / b[i].norm() for b, t in pairs])
        assert layer.cos_mean == pytest.approx(float(dist.mean()), abs=1e-5)
        assert layer.cos_max == pytest.approx(float(dist.max()), abs=1e-5)
        assert layer.rel_norm_mean == pytest.approx(float(rel.mean()), abs=1e-5)
    assert env.result.layers[-1].cos_mean > 1e-3  # a real fine-tune moved the last layer


def test_an_adapter_drifts_as_its_merged_weights(tiny_gpt2: dict[str, Path], tmp_path: Path) -> None:
    from peft import PeftModel

    merged = tmp_path / "merged"
    base = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2["base"]))
    PeftModel.from_pretrained(base, str(tiny_gpt2["lora"])).merge_and_unload().save_pretrained(merged)
    adapter = drift(tiny_gpt2["base"], tiny_gpt2["lora"]).result
    full = drift(tiny_gpt2["base"], merged).result
    for a, m in zip(adapter.layers, full.layers, strict=True):
        assert (a.layer, a.cos_mean, a.cos_max) == pytest.approx((m.layer, m.cos_mean, m.cos_max), abs=1e-5)
    assert adapter.start_layer == full.start_layer is not None


def test_the_real_minilm_drifts_after_contrastive_steps_and_not_when_untouched(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    paths = minilm_copies(tmp_path_factory)
    trained = drift(paths["base"], paths["contrastive"])
    assert trained.result.kind == "embedding" and "mean of the layer's hidden state" in trained.result.reduction
    assert len(trained.result.layers) == 7 and trained.result.layers[-1].cos_mean > 1e-4
    untouched = drift(paths["base"], paths["untouched"])
    assert untouched.result.start_layer is None and max(d.cos_max for d in untouched.result.layers) < 1e-6
    assert untouched.findings[0].severity == "warn" and untouched.findings[0].text.startswith("No layer drifts")
    # independently: transformers' own last hidden state of each built-in probe alone, mean over its tokens
    from session.probes import default_probes

    tok = AutoTokenizer.from_pretrained(str(paths["base"]))
    models = [AutoModel.from_pretrained(str(paths[k])).eval() for k in ("base", "contrastive")]
    dists = []
    for text in default_probes().texts:
        ids = tok(text, return_tensors="pt")
        with torch.no_grad():
            b, t = (m(**ids).last_hidden_state[0].double().mean(0) for m in models)
        dists.append(float(1 - torch.nn.functional.cosine_similarity(b, t, dim=0)))
    assert trained.result.layers[-1].cos_mean == pytest.approx(sum(dists) / len(dists), abs=1e-5)
    assert trained.result.layers[-1].cos_max == pytest.approx(max(dists), abs=1e-5)
    assert models[0].config.hidden_size == 384 != D_MODEL  # the real model, not a tiny one


def test_probes_longer_than_the_context_are_cut_and_said(tiny_gpt2: dict[str, Path], tmp_path: Path) -> None:
    probes = tmp_path / "long.json"
    probes.write_text(json.dumps([" ".join(["word"] * 300), "short"]))
    env = drift(tiny_gpt2["base"], tiny_gpt2["full"], prompts=str(probes), max_length=64)
    assert env.result.probes.truncated == 1 and env.result.probes.max_length == 64
    assert any("1 of 2 probes were longer than 64 tokens" in f.text for f in env.findings)
    capped = drift(tiny_gpt2["base"], tiny_gpt2["full"], prompts=str(probes), max_length=100_000).result.probes
    assert capped.max_length == 128  # the model's context


@pytest.mark.parametrize(
    ("content", "needle"), [("", "holds no probes"), ('"ok"\n{"text": 3}\n', "line 2: instruction and response")]
)
def test_bad_probes_are_one_line(tiny_gpt2: dict[str, Path], tmp_path: Path, content: str, needle: str) -> None:
    probes = tmp_path / "bad.jsonl"
    probes.write_text(content)
    with pytest.raises(ToolError) as e:
        drift(tiny_gpt2["base"], tiny_gpt2["full"], prompts=str(probes))
    assert needle in str(e.value) and str(probes) in str(e.value) and "\n" not in str(e.value)
