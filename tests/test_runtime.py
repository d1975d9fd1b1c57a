"""The model runtime against `transformers` itself: activations at TransformerLens hook names, reductions over
padded batches, greedy generation, adapters merged or applied by peft, SAE weight processing, probe files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from session_fixtures import N_LAYERS, build_sae, tiny_base
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from session import service
from session.activations import run_probes, token_batches
from session.generation import greedy
from session.model_cache import ModelCache
from session.models import RAW, Processing, load_base, load_checkpoint, load_pair
from session.probes import DEFAULT_PROBES, read_probes
from session.sae import cached_sae, processing_for
from tools.fixtures.tiny_models import finetune, lora_finetune
from toolserver.contract import ToolError

PROBES = [
    "The model reads a sentence and predicts the next word.",
    "Dead layers",
    "A small learning rate keeps the update gentle, while a large one can make the loss jump around.",
    "Low-rank adapters add two thin matrices beside a frozen weight.",
    "Attention",
]
ATOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("runtime")
    out = {}
    for arch in ("gpt2", "llama"):
        base = tiny_base(arch, tmp_path_factory)
        out[arch] = {
            "base": base,
            "full": finetune(base, root / f"{arch}-ft.pt", steps=40, fmt="pt_step"),
            "lora": lora_finetune(base, root / f"{arch}-lora", steps=10),
        }
    return out


def _hf(model_dir: Path, checkpoint: Path | None = None) -> torch.nn.Module:
    """The model built independently of the runtime: transformers' own loading plus torch.load."""
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="eager")
    if checkpoint is not None:
        hf.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    return hf.eval()


def _reference(hf: torch.nn.Module, tok: object, text: str) -> tuple[torch.Tensor, ...]:
    """One probe alone (no padding at all): transformers' hidden states, [seq, d] per layer. hidden_states[L + 1]
    is block L's output, except the last, which has the final norm applied: that one is block L's output as a
    forward hook on transformers' own last layer sees it (checked to give hidden_states[-1] under the norm)."""
    ids = tok(text, return_tensors="pt")["input_ids"]
    layers = hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers
    final_norm = hf.transformer.ln_f if hasattr(hf, "transformer") else hf.model.norm
    seen: list[torch.Tensor] = []
    handle = layers[-1].register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        states = hf(ids, output_hidden_states=True).hidden_states
    handle.remove()
    torch.testing.assert_close(final_norm(seen[0]), states[-1])
    return (*(h[0] for h in states[:-1]), seen[0][0])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_resid_post_and_its_reductions_equal_transformers_hidden_states(
    arch: str, padding_side: str, runs: dict[str, dict[str, Path]]
) -> None:
    session, _ = service.start_session(f"rt-{arch}", str(runs[arch]["base"]))
    cache = ModelCache()
    pair = load_pair(session, runs[arch]["full"], cache)
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(N_LAYERS)]
    for model, hf in ((pair.base, _hf(runs[arch]["base"])), (pair.tuned, _hf(runs[arch]["base"], runs[arch]["full"]))):
        refs = [_reference(hf, model.tokenizer, text) for text in PROBES]
        for reduce in ("last", "mean", "tokens"):
            batches = token_batches(model.tokenizer, PROBES, batch_size=3, max_length=64, padding_side=padding_side)
            assert any(
                b.attention_mask.min() == 0 for b in token_batches(model.tokenizer, PROBES, batch_size=3, max_length=64)
            )
            got = {h: [] for h in hooks}
            for out in run_probes(model, batches, hooks, reduce, skip_first=reduce == "tokens"):
                for h in hooks:
                    got[h].append(out.acts[h])
            for layer, hook in enumerate(hooks):
                ours = torch.cat(got[hook])
                states = [r[layer + 1] for r in refs]
                expected = {
                    "last": torch.stack([s[-1] for s in states]),
                    "mean": torch.stack([s.mean(0) for s in states]),
                    "tokens": torch.cat([s[1:] for s in states]),  # every real token after each probe's first
                }[reduce]
                torch.testing.assert_close(ours, expected, atol=ATOL, rtol=1e-4)
    assert (pair.base.hf.lm_head.weight - pair.tuned.hf.lm_head.weight).abs().max() > 0  # two different models


def test_the_encoder_pools_real_tokens_only_for_the_real_minilm() -> None:
    from session.resolve import resolve_model

    model_dir = resolve_model("all-minilm-l6-v2").path
    session, _ = service.start_session("minilm-rt", str(model_dir))
    model = load_base(session, ModelCache())
    assert (model.backend, model.kind) == ("transformers", "embedding")
    texts = ["a cat sits on the mat", "a considerably longer sentence about stock prices falling sharply today", "hi"]
    hf = AutoModel.from_pretrained(str(model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    hooks = ["blocks.2.hook_resid_post", "blocks.5.hook_resid_post"]
    batch = next(token_batches(model.tokenizer, texts, batch_size=3, max_length=128))
    assert batch.attention_mask.min() == 0  # padding is present
    out = next(run_probes(model, [batch], hooks, "mean"))
    for layer, hook in ((2, hooks[0]), (5, hooks[1])):
        expected = []
        for text in texts:  # hand-written masked mean over transformers' own hidden states
            enc = tok([text], return_tensors="pt", padding="max_length", max_length=batch.input_ids.shape[1])
            with torch.no_grad():
                h = hf(**enc, output_hidden_states=True).hidden_states[layer + 1][0]
            m = enc["attention_mask"][0].bool()
            expected.append(h[m].sum(0) / m.sum())
        torch.testing.assert_close(out.acts[hook], torch.stack(expected), atol=ATOL, rtol=1e-4)
        counting_pads = torch.stack(
            [
                hf(
                    **tok([t], return_tensors="pt", padding="max_length", max_length=batch.input_ids.shape[1]),
                    output_hidden_states=True,
                )
                .hidden_states[layer + 1][0]
                .mean(0)
                for t in texts
            ]
        ).detach()
        assert (out.acts[hook] - counting_pads).abs().max() > 1e-2  # the pad-counting mean is measurably different


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_greedy_generation_matches_transformers_generate_token_for_token(
    arch: str, runs: dict[str, dict[str, Path]]
) -> None:
    session, _ = service.start_session(f"gen-{arch}", str(runs[arch]["base"]))
    tuned = load_checkpoint(session, runs[arch]["full"], ModelCache())
    prompts = ["The model reads", "A small learning rate keeps the update gentle, while", "Dead", "Every checkpoint"]
    got = greedy(tuned, prompts, max_new_tokens=12, batch_size=3)  # batched with left padding
    hf = _hf(runs[arch]["base"], runs[arch]["full"])
    tok = AutoTokenizer.from_pretrained(str(runs[arch]["base"]))
    for prompt, gen in zip(prompts, got, strict=True):
        ids = tok(prompt, return_tensors="pt")
        ref = hf.generate(
            **ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id
        )  # KV cache, no padding
        expected = ref[0, ids["input_ids"].shape[1] :].tolist()
        assert gen.tokens == expected[: len(gen.tokens)] and (gen.stopped or len(gen.tokens) == 12), prompt
        assert gen.text == tok.decode(gen.tokens, skip_special_tokens=True)
    assert len({tuple(g.tokens) for g in got}) > 1  # a real fine-tune, not one repeated string


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_kv_cached_decoding_through_transformers_gives_the_bridges_tokens(
    arch: str, runs: dict[str, dict[str, Path]]
) -> None:
    """The peft-applied adapter decodes with transformers' KV cache; the merged one through the bridge without."""
    session, _ = service.start_session(f"kv-{arch}", str(runs[arch]["base"]))
    cache = ModelCache()
    applied = load_checkpoint(session, runs[arch]["lora"], cache, adapter="peft")
    merged = load_checkpoint(session, runs[arch]["lora"], cache, adapter="merged")
    assert (applied.backend, merged.backend) == ("transformers", "bridge")
    prompts = ["The model reads", "A small learning rate keeps the update gentle, while", "Dead", "Every checkpoint"]
    cached = greedy(applied, prompts, max_new_tokens=16, batch_size=3)
    full = greedy(merged, prompts, max_new_tokens=16, batch_size=3)
    assert [g.tokens for g in cached] == [g.tokens for g in full]
    assert sum(len(g.tokens) for g in cached) > 2 * len(prompts)
    # a full checkpoint loaded for transformers (model-diff's models) decodes the bridge's tokens too; the bridge's
    # own wrapped module would not: its cached decoding goes through the bridge's components
    plain = load_checkpoint(session, runs[arch]["full"], cache, backend="transformers")
    bridged = load_checkpoint(session, runs[arch]["full"], cache)
    assert plain.backend == "transformers" and plain.model is not bridged.hf
    got = greedy(plain, prompts, max_new_tokens=16, batch_size=3)
    assert [g.tokens for g in got] == [g.tokens for g in greedy(bridged, prompts, max_new_tokens=16, batch_size=3)]
    for g in got:
        assert all(lp <= 0 for lp in g.logprobs) and len(g.logprobs) == len(g.tokens)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_an_adapter_applied_by_peft_equals_its_merged_weights(arch: str, runs: dict[str, dict[str, Path]]) -> None:
    session, _ = service.start_session(f"peft-{arch}", str(runs[arch]["base"]))
    cache = ModelCache()
    merged = load_checkpoint(session, runs[arch]["lora"], cache, adapter="merged")
    applied = load_checkpoint(session, runs[arch]["lora"], cache, adapter="peft")
    base = load_base(session, cache)
    assert (merged.backend, merged.adapter, applied.backend, applied.adapter) == (
        "bridge",
        "merged",
        "transformers",
        "peft",
    )
    hooks = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", f"blocks.{N_LAYERS - 1}.hook_resid_post"]
    outs = []
    for model in (merged, applied, base):
        batches = token_batches(model.tokenizer, PROBES, batch_size=2, max_length=64)
        outs.append(torch.cat([b.acts[hooks[-1]] for b in run_probes(model, batches, hooks, "mean")]))
    torch.testing.assert_close(outs[0], outs[1], atol=ATOL, rtol=1e-4)
    assert (outs[0] - outs[2]).abs().max() > 1e-3  # the adapter changed the activations
    assert len(cache.models()) == 2  # never more than a base and one checkpoint


def test_an_sae_trained_on_centred_weights_runs_on_a_model_processed_to_match(
    runs: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    sae_dir = build_sae(
        tmp_path / "sae", hook="blocks.1.hook_resid_post", model_kwargs={"center_writing_weights": True}
    )
    _, info = cached_sae(str(sae_dir), ModelCache())
    processing, why = processing_for(info)
    assert processing == Processing(center_writing_weights=True) and "fold_ln" in why  # fold_ln etc. leave resid alone
    session, _ = service.start_session("centred-rt", str(runs["gpt2"]["base"]))
    cache = ModelCache()
    raw, centred = load_base(session, cache), load_base(session, cache, processing)
    assert raw is not centred and centred.info().processing.endswith("center_writing_weights")
    hook = ["blocks.1.hook_resid_post"]
    a = next(run_probes(raw, token_batches(raw.tokenizer, PROBES, batch_size=5, max_length=64), hook, "tokens")).acts[
        hook[0]
    ]
    b = next(run_probes(centred, token_batches(raw.tokenizer, PROBES, batch_size=5, max_length=64), hook, "tokens"))
    torch.testing.assert_close(b.acts[hook[0]], a - a.mean(-1, keepdim=True), atol=ATOL, rtol=1e-4)
    # no recorded kwargs: raw weights, said so; kwargs the runtime cannot reproduce: one line refusing
    assert processing_for(cached_sae(str(build_sae(tmp_path / "plain")), ModelCache())[1])[0] == RAW
    odd = build_sae(tmp_path / "odd", model_kwargs={"refactor_factored_attn_matrices": True})
    with pytest.raises(
        ToolError, match="refactor_factored_attn_matrices=True, which the model runtime cannot reproduce"
    ):
        processing_for(cached_sae(str(odd), ModelCache())[1])


def test_hooks_the_model_does_not_have_are_one_line(runs: dict[str, dict[str, Path]]) -> None:
    session, _ = service.start_session("hooks-rt", str(runs["llama"]["base"]))
    model = load_base(session, ModelCache())
    batches = list(token_batches(model.tokenizer, PROBES, batch_size=5, max_length=64))
    with pytest.raises(ToolError, match=r"names layer 7, but the model has 2 layers \(0–1\)"):
        next(run_probes(model, batches, ["blocks.7.hook_resid_post"], "last"))
    with pytest.raises(ToolError, match="has no hook 'blocks.0.hook_resid_sideways'"):
        next(run_probes(model, batches, ["blocks.0.hook_resid_sideways"], "last"))


def test_probes_longer_than_the_context_are_truncated_and_counted(runs: dict[str, dict[str, Path]]) -> None:
    tok = AutoTokenizer.from_pretrained(str(runs["gpt2"]["base"]))
    batches = list(token_batches(tok, [PROBES[2], PROBES[1]], batch_size=2, max_length=8))
    assert batches[0].input_ids.shape[1] == 8 and batches[0].truncated == 1 and batches[0].lengths[0] > 8


def test_a_bos_is_prepended_only_when_asked_and_only_where_missing(runs: dict[str, dict[str, Path]]) -> None:
    tok = AutoTokenizer.from_pretrained(str(runs["gpt2"]["base"]))  # like GPT-2's own, it adds no BOS

    def ids(text: str, prepend_bos: bool) -> list[int]:
        return (
            next(token_batches(tok, [text], batch_size=1, max_length=64, prepend_bos=prepend_bos)).input_ids[0].tolist()
        )

    plain = ids(PROBES[0], False)
    assert plain[0] != tok.bos_token_id and ids(PROBES[0], True) == [tok.bos_token_id, *plain]
    already = ids(tok.bos_token + PROBES[0], False)  # a probe that starts with the BOS itself
    assert already == [tok.bos_token_id, *plain] and ids(tok.bos_token + PROBES[0], True) == already


def test_probe_files_in_every_accepted_format(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(["one", {"instruction": "two", "response": "three"}]))
    (tmp_path / "b.jsonl").write_text('"one"\n\n{"instruction": "two", "response": "three"}\n{"prompt": "four"}\n')
    for name in ("a.json", "b.jsonl"):
        probes = read_probes(tmp_path / name)
        assert [p.text for p in probes.probes][:2] == ["one", "two\nthree"]
        assert probes.probes[1].prompt == "two" and probes.probes[1].response == "three"
    assert read_probes(None).source == "built-in" and len(read_probes(None).probes) == len(DEFAULT_PROBES)
    assert len({d for d, _ in DEFAULT_PROBES}) >= 8  # a few per domain


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('"fine"\n{"instruction": "ok"}\n{"instr": 3}\n', "line 3 has none of instruction, prompt or text"),
        ('"fine"\nnot json\n', "line 2 is not valid JSON"),
        ("", "holds no probes"),
        ('["a", 7]', "item 2 is a JSON int"),
        ('"   "\n', "line 1 is an empty probe"),
        ('{"instruction": "x", "response": 3}\n', "line 1: instruction and response must be strings"),
    ],
)
def test_bad_probe_files_are_one_line_naming_the_file_and_line(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "probes.jsonl"
    path.write_text(content)
    with pytest.raises(ToolError) as e:
        read_probes(path)
    assert needle in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
