"""The SAE tools on real tensors: a planted feature found exactly, features recomputed independently from
transformers' hidden states and the SAE's raw weights, an adapter against its merged weights, an SAE trained with
sae-lens on the real MiniLM, alignment, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from minilm_fixtures import minilm_copies
from planted import linear_sae as planted_sae
from planted import orthonormal_basis, plant, planted_base
from safetensors.torch import load_file
from session_fixtures import build_sae
from transformers import AutoModelForCausalLM, AutoTokenizer

from session.sae import load_sae
from tools.fixtures.tiny_models import CORPUS
from toolserver.contract import ToolError
from toolserver.registry import get_tool
from toolserver.runner import invoke

PROBES = [
    "The model reads a sentence and predicts the next word.",
    "Dead layers",
    "A small learning rate keeps the update gentle, while a large one can make the loss jump around.",
    "Engineers compare the weights before and after.",
    "Attention layers decide which earlier words matter.",
]
LAYER, ALPHA, FEATURE = 1, 0.75, 5


def call(tool: str, **args: object) -> object:
    return invoke(get_tool(tool), args)


def session(model: Path, *saes: Path, id: str = "sae") -> None:
    call("start_session", id=id, model=str(model))
    if saes:
        call("load_sae", sae=[str(s) for s in saes])


def probes_file(tmp_path: Path, texts: list[str] = PROBES) -> Path:
    path = tmp_path / "probes.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in texts))
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, Path]]:
    root = tmp_path_factory.mktemp("planted-sae")
    basis = orthonormal_basis()
    out = {}
    for arch in ("gpt2", "llama"):
        base = planted_base(arch, root / arch)
        ckpt = plant(base, arch, LAYER, basis[FEATURE], ALPHA, root / f"{arch}.pt")
        out[arch] = (base, ckpt, planted_sae(root / f"{arch}-sae", basis, f"blocks.{LAYER}.hook_resid_post"))
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_planted_feature_is_the_only_one_that_changed_by_exactly_alpha(
    arch: str, planted: dict[str, tuple[Path, Path, Path]]
) -> None:
    base, ckpt, sae = planted[arch]
    session(base, sae)
    env = call("run_sae_diff", checkpoint=str(ckpt))
    [layer] = env.result.layers
    assert layer.n_changed == 1 and [f.feature for f in layer.changed] == [FEATURE]
    assert layer.changed[0].delta == pytest.approx(ALPHA, abs=1e-4)
    others = [
        abs(d - b)
        for i, (d, b) in enumerate(zip(layer.columns.tuned_mean, layer.columns.base_mean, strict=True))
        if i != FEATURE
    ]
    assert max(others) < 1e-4
    assert layer.unit == "tokens" and layer.probes_tested == 28 and "Benjamini–Hochberg" in layer.rule
    assert layer.transfer.ratio == pytest.approx(1.0, abs=1e-3) and layer.transfer.ok  # it fits both models alike
    assert env.findings[0].text.startswith(f"Layer {LAYER} changed most: 1/64 features")
    drift = call("run_residual_drift", checkpoint=str(ckpt)).result.layers
    assert [d.cos_max < 1e-6 for d in drift] == [True, True, False]  # embed, layer 0 untouched; layer 1 moved


def _hidden(model_dir: Path, state: dict[str, torch.Tensor] | None, text: str, layer: int) -> torch.Tensor:
    """transformers' own hidden_states[layer + 1] for one probe alone (layer < last: no final norm)."""
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    if state is not None:
        hf.load_state_dict(state)
    ids = AutoTokenizer.from_pretrained(str(model_dir))(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return hf(ids, output_hidden_states=True).hidden_states[layer + 1][0]


def _reference_features(sae_dir: Path, x: torch.Tensor) -> torch.Tensor:
    """The SAE's encoder from its raw safetensors and cfg.json, as its architecture defines it."""
    w = load_file(str(sae_dir / "sae_weights.safetensors"))
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "topk":
        values, index = pre.topk(cfg["k"], dim=-1)
        return torch.zeros_like(pre).scatter(-1, index, values.relu())
    assert cfg["architecture"] == "standard"
    return pre.relu()


def _topk_sae(out: Path, hook: str, k: int = 8) -> Path:
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(3)
    sae = TopKSAE(TopKSAEConfig(d_in=64, d_sae=96, k=k, metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(64) * 0.1)
        sae.b_enc.copy_(torch.randn(96) * 0.1)
    sae.save_model(out)
    return out


def test_features_equal_an_independent_computation_from_transformers_and_the_raw_weights(
    tiny_gpt2: dict[str, Path], tmp_path: Path
) -> None:
    hook = "blocks.0.hook_resid_post"
    standard, topk = build_sae(tmp_path / "standard", hook=hook), _topk_sae(tmp_path / "topk", hook)
    state = torch.load(tiny_gpt2["full"], weights_only=True)["state_dict"]
    for sae_dir in (standard, topk):
        session(tiny_gpt2["base"])
        env = call(
            "run_sae_diff",
            checkpoint=str(tiny_gpt2["full"]),
            sae=str(sae_dir),
            prompts=str(probes_file(tmp_path)),
            batch_size=3,
        )  # padding in every batch
        [layer] = env.result.layers
        for weights, mean_col, freq_col in (
            (None, "base_mean", "base_freq"),
            (state, "tuned_mean", "tuned_freq"),
        ):
            feats = torch.cat(
                [_reference_features(sae_dir, _hidden(tiny_gpt2["base"], weights, p, 0)[1:]) for p in PROBES]
            )  # every token after each probe's first
            assert layer.units == feats.shape[0]
            torch.testing.assert_close(
                torch.tensor(getattr(layer.columns, mean_col)), feats.mean(0), atol=1e-5, rtol=1e-4
            )
            torch.testing.assert_close(
                torch.tensor(getattr(layer.columns, freq_col)), (feats > 0).float().mean(0), atol=1e-5, rtol=0
            )
        assert (
            layer.max_abs_delta > 1e-3
            and layer.architecture == json.loads((sae_dir / "cfg.json").read_text())["architecture"]
        )


def test_an_adapter_gives_the_sae_diff_of_its_merged_weights(tiny_gpt2: dict[str, Path], tmp_path: Path) -> None:
    from peft import PeftModel

    merged = tmp_path / "merged"
    base = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2["base"]))
    PeftModel.from_pretrained(base, str(tiny_gpt2["lora"])).merge_and_unload().save_pretrained(merged)
    session(tiny_gpt2["base"], build_sae(tmp_path / "sae"))
    adapter, full = (call("run_sae_diff", checkpoint=str(c)).result.layers[0] for c in (tiny_gpt2["lora"], merged))
    for column in ("base_mean", "tuned_mean", "tuned_freq"):
        torch.testing.assert_close(
            torch.tensor(getattr(adapter.columns, column)),
            torch.tensor(getattr(full.columns, column)),
            atol=1e-5,
            rtol=1e-5,
        )
    assert [f.feature for f in adapter.changed] == [f.feature for f in full.changed]


def _sentences() -> list[str]:
    """A few hundred short, varied texts from the fixtures' corpus (sentence halves, clause by clause)."""
    out = []
    for line in CORPUS.splitlines():
        words = line.split()
        out += [line, " ".join(words[: len(words) // 2]), " ".join(words[len(words) // 2 :])]
        out += [part.strip() for part in line.replace(";", ",").split(",") if len(part.split()) > 2]
        out += [" ".join(words[i : i + 6]) for i in range(0, len(words) - 5, 3)]
    return sorted(set(out))


def test_the_real_minilm_with_an_sae_trained_by_sae_lens_on_its_activations(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    paths = minilm_copies(tmp_path_factory)
    session(paths["base"], id="minilm-sae")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(_sentences()))
    trained = call(
        "run_sae_train", layer=3, dataset=str(texts), quick=True, d_sae=256, k=16, out=str(tmp_path / "minilm-sae")
    ).result
    assert (
        trained.activations == len(_sentences()) and trained.eval_fvu < 0.9 and Path(trained.out, "cfg.json").is_file()
    )
    loaded = call("load_sae", sae=[trained.out]).result.loaded[0]  # saved by sae-lens, loaded back through load sae
    assert (loaded.hook, loaded.d_in, loaded.d_sae, loaded.architecture) == (
        "blocks.3.hook_resid_post",
        384,
        256,
        "topk",
    )
    # the texts as probes too: a few hundred pooled probes give the paired test its power on three small steps
    changed = call("run_sae_diff", checkpoint=str(paths["contrastive"]), prompts=str(texts)).result.layers[0]
    assert changed.unit == "probes" and changed.n_changed > 0 and changed.changed[0].q_value < 1e-3
    untouched = call("run_sae_diff", checkpoint=str(paths["untouched"]), prompts=str(texts)).result.layers[0]
    assert untouched.n_changed == 0 and untouched.max_abs_delta == 0.0


def _permuted(src: Path, out: Path, perm: torch.Tensor) -> Path:
    sae, _ = load_sae(str(src))
    with torch.no_grad():
        sae.W_dec.copy_(sae.W_dec[perm])
        sae.W_enc.copy_(sae.W_enc[:, perm])
        sae.b_enc.copy_(sae.b_enc[perm])
    sae.save_model(out)
    return out


def test_align_matches_an_sae_with_itself_and_recovers_a_permutation(tmp_path: Path) -> None:
    a = build_sae(tmp_path / "a", d_sae=300)
    same = call("run_sae_align", a=str(a), b=str(a)).result
    assert same.mean_cos == pytest.approx(1.0, abs=1e-9) and all(m.best == m.feature and m.mutual for m in same.matches)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(1))
    b = _permuted(a, tmp_path / "b", perm)
    got = call("run_sae_align", a=str(a), b=str(b)).result
    inverse = torch.argsort(perm)  # B's feature j is A's feature perm[j]
    assert [m.best for m in got.matches] == inverse.tolist() and got.unmatched == 0 and got.mutual == 300
    other = call("run_sae_align", a=str(a), b=str(build_sae(tmp_path / "c", d_sae=300, seed=9))).result
    assert other.mean_cos < 0.9 and other.unmatched > 0  # unrelated random SAEs barely match


def test_bad_input_is_one_line_naming_what_is_wrong(tiny_gpt2: dict[str, Path], tmp_path: Path) -> None:
    sae = build_sae(tmp_path / "sae")
    session(tiny_gpt2["base"], sae)
    bad_probes = tmp_path / "bad.jsonl"
    bad_probes.write_text('"fine"\n{"instruction": 1}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    refused = build_sae(tmp_path / "refused", model_kwargs={"refactor_factored_attn_matrices": True})
    cases = [
        (dict(checkpoint=str(tiny_gpt2["full"]), layer=0), "no SAE at layer 0 (it has layer 1)"),
        (dict(checkpoint=str(tiny_gpt2["full"]), sae=str(build_sae(tmp_path / "wide", d_in=32))), "d_in 32"),
        (dict(checkpoint=str(tiny_gpt2["full"]), prompts=str(bad_probes)), f"{bad_probes} line 2"),
        (dict(checkpoint=str(tiny_gpt2["full"]), prompts=str(empty)), "holds no probes"),
        (dict(checkpoint=str(tiny_gpt2["full"]), sae=str(refused)), "runtime cannot reproduce"),
        (dict(checkpoint=str(tmp_path / "nope.pt")), "does not exist"),
    ]
    for args, needle in cases:
        with pytest.raises(ToolError) as e:
            call("run_sae_diff", **args)
        assert needle in str(e.value) and "\n" not in str(e.value), (args, str(e.value))
    with pytest.raises(ToolError, match=r"layer 7 is out of range: the model has 2 layers"):
        call("run_sae_train", layer=7)
    with pytest.raises(ToolError, match="quick and full: pick one"):
        call("run_sae_train", layer=1, quick=True, full=True)
    long = tmp_path / "long.json"
    long.write_text(json.dumps([" ".join(["word"] * 300), "short one"]))
    env = call("run_sae_diff", checkpoint=str(tiny_gpt2["full"]), prompts=str(long), max_length=32)
    assert env.result.probes.truncated == 1 and any("1 of 2 probes were longer than 32" in f.text for f in env.findings)
