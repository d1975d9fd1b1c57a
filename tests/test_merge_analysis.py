"""merge-analysis on adapters trained for real with peft (tiny GPT-2 and Llama), broken in the ways merges break:
each verdict is checked, and the fidelity and KL numbers against a recomputation with transformers and peft."""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import anyio
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_cli import trainspect
from test_mcp import BIN, _env

from tools.fixtures.tiny_models import build_base, lora_finetune
from toolserver.registry import get_tool
from toolserver.runner import invoke

ADAPTER = "adapter_model.safetensors"


@cache
def _models(root: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for arch in ("gpt2", "llama"):
        base = build_base(arch, root / arch / "base")
        out[f"{arch}-base"] = base
        out[f"{arch}-lora"] = lora_finetune(base, root / arch / "lora", steps=5, lr=1e-3)
    bf16 = root / "gpt2" / "base-bf16"
    shutil.copytree(out["gpt2-base"], bf16)
    weights = load_file(bf16 / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, bf16 / "model.safetensors")
    config = json.loads((bf16 / "config.json").read_text())
    (bf16 / "config.json").write_text(json.dumps({**config, "torch_dtype": "bfloat16"}))
    out["gpt2-bf16"] = bf16
    bert = build_base("bert", root / "bert" / "base")
    out["bert-base"], out["bert-lora"] = bert, lora_finetune(bert, root / "bert" / "lora", steps=5, lr=1e-3)
    return out


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny GPT-2, Llama and BERT bases, each with a LoRA trained by peft for 5 steps; a bf16 copy of the GPT-2."""
    return _models(tmp_path_factory.getbasetemp() / "merge-models")


def start(models: dict[str, Path], base: str) -> None:
    invoke(get_tool("start_session"), {"id": f"merge-{base}", "model": str(models[base])})


def gate(**args: Any) -> Any:
    return invoke(get_tool("run_merge_analysis"), args)


def checks(env: Any) -> dict[str, Any]:
    return {c.name: c for c in env.result.checks}


def edited(src: Path, dst: Path, edit: Any) -> Path:
    """A copy of an adapter with its tensors changed by edit(name, tensor) -> tensor."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / ADAPTER)
    save_file({k: edit(k, v) for k, v in tensors.items()}, dst / ADAPTER)
    return dst


def reference_logits(base: Path, adapter: Path, texts: list[str]) -> dict[str, torch.Tensor]:
    """Independently of the tool: base, peft unmerged (float32) and peft's merge in the base file's dtype."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    out: dict[str, list[torch.Tensor]] = {"base": [], "unmerged": [], "merged": []}
    dtype = next(iter(load_file(base / "model.safetensors").values())).dtype
    fp32 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()
    saved = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), adapter)
    merged = saved.merge_and_unload().float().eval()
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt").input_ids
            with fp32.disable_adapter():
                out["base"].append(fp32(input_ids=ids).logits[0].double())
            out["unmerged"].append(fp32(input_ids=ids).logits[0].double())
            out["merged"].append(merged(input_ids=ids).logits[0].double())
    return {k: torch.cat(v) for k, v in out.items()}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_healthy_adapter_passes(models: dict[str, Path], isolated_home: Path, arch: str) -> None:
    start(models, f"{arch}-base")
    env = gate(checkpoint=str(models[f"{arch}-lora"]))
    c = checks(env)
    assert env.result.verdict == "pass", [(x.name, x.status, x.why) for x in env.result.checks]
    assert {n for n, x in c.items() if x.status == "skipped"} == set()
    assert c["fidelity"].value < 1e-4 and env.result.fidelity.save_dtype == "float32"
    assert env.result.fidelity.effect_mean_abs > 1e-4  # the adapter really acts on the unmerged model
    assert c["next_token_kl"].value < 0.5 and env.result.behaviour.generations
    assert env.findings[0].text.startswith("merge verdict PASS")
    assert {f.tool for f in env.follow_ups} <= {"run_weight_diff", "run_residual_drift"}


def test_fidelity_and_kl_equal_a_recomputation_with_peft(models: dict[str, Path], isolated_home: Path) -> None:
    """bf16 base: the merge's rounding, measured by the tool, equals peft's own merge in bf16 run by transformers."""
    from session.probes import default_probes

    start(models, "gpt2-bf16")
    env = gate(checkpoint=str(models["gpt2-lora"]), batch_size=1)
    f, b = env.result.fidelity, env.result.behaviour
    ref = reference_logits(models["gpt2-bf16"], models["gpt2-lora"], default_probes().texts)
    diff = (ref["merged"] - ref["unmerged"]).abs()
    assert f.save_dtype == "bfloat16" and f.positions == ref["merged"].shape[0]
    assert f.max_abs == pytest.approx(float(diff.max()), rel=1e-4)
    assert f.mean_abs == pytest.approx(float(diff.mean()), rel=1e-4)
    assert f.effect_mean_abs == pytest.approx(float((ref["unmerged"] - ref["base"]).abs().mean()), rel=1e-4)
    lb, lm = torch.log_softmax(ref["base"], -1), torch.log_softmax(ref["merged"], -1)
    assert b.kl_mean == pytest.approx(float((lb.exp() * (lb - lm)).sum(-1).mean()), rel=1e-4)
    # the rounding is real (the float32 merge is exact to ~1e-7) and judged by the stated tolerance
    assert f.share_of_effect > 1e-3
    c = checks(env)["fidelity"]
    assert c.status == ("pass" if f.share_of_effect < 0.05 else "warn" if f.share_of_effect < 0.25 else "fail")
    assert c.warn_at == 0.05 and c.fail_at == 0.25


def test_b_zeroed_is_a_no_op_and_fails(models: dict[str, Path], isolated_home: Path, tmp_path: Path) -> None:
    start(models, "llama-base")
    zeroed = edited(models["llama-lora"], tmp_path / "zeroed", lambda k, v: v * 0 if "lora_B" in k else v)
    env = gate(checkpoint=str(zeroed), no_behavioral=True)
    c = checks(env)
    assert env.result.verdict == "fail" and c["no_op"].status == "fail"
    assert c["no_op"].value == c["no_op"].fail_at == env.result.adapted > 0
    assert len(c["no_op"].items) == env.result.adapted and all(i.startswith("layers.") for i in c["no_op"].items)
    assert c["fidelity"].status == "pass" and env.result.fidelity.effect_mean_abs == 0
    assert c["degenerate"].status == "skipped" and "--no-behavioral" in c["degenerate"].why


def test_one_nan_factor_fails_and_is_named(models: dict[str, Path], isolated_home: Path, tmp_path: Path) -> None:
    start(models, "gpt2-base")
    target = next(k for k in load_file(models["gpt2-lora"] / ADAPTER) if "lora_A" in k)
    broken = edited(models["gpt2-lora"], tmp_path / "nan", lambda k, v: v.fill_(float("nan")) if k == target else v)
    env = gate(checkpoint=str(broken))
    c = checks(env)
    assert env.result.verdict == "fail" and c["non_finite"].status == "fail"
    module = target.split(".lora_A")[0].removeprefix("base_model.model.transformer.")
    assert len(c["non_finite"].items) == 1 and module in c["non_finite"].items[0]
    assert c["fidelity"].status == "skipped" and "NaN" in c["fidelity"].why


def test_an_overgrown_adapter_fails(models: dict[str, Path], isolated_home: Path, tmp_path: Path) -> None:
    start(models, "gpt2-base")
    grown = edited(models["gpt2-lora"], tmp_path / "grown", lambda k, v: v * 200 if "lora_B" in k else v)
    env = gate(checkpoint=str(grown))
    c = checks(env)
    assert env.result.verdict == "fail"
    assert c["rank"].status == "fail" and c["rank"].value >= 1
    # the tiny random model's final norm and small tied head keep its outputs near uniform whatever the blocks
    # do, so here it is the rank check that fails; behaviour is still measured and reported
    assert c["next_token_kl"].status != "skipped" and env.result.behaviour.kl_mean > 0
    assert env.result.flagged and env.result.flagged[0].reason == "dwarfs weight"
    assert "run_weight_diff" in {f.tool for f in env.follow_ups}


def test_an_overgrown_adapter_on_a_model_that_knows_its_facts_degenerates_and_fails_on_behaviour(
    tmp_path_factory: pytest.TempPathFactory, isolated_home: Path
) -> None:
    """On the model trained to answer the built-in rows (test_model_diff's), B × 200 turns answers into loops."""
    from test_model_diff import _models as fact_models

    facts = fact_models(tmp_path_factory.getbasetemp() / "facts")
    lora = lora_finetune(facts["base"], tmp_path_factory.mktemp("facts-lora") / "lora", steps=5, lr=1e-3)
    invoke(get_tool("start_session"), {"id": "merge-facts", "model": str(facts["base"])})
    assert gate(checkpoint=str(lora)).result.verdict == "pass"
    grown = edited(lora, lora.parent / "grown", lambda k, v: v * 200 if "lora_B" in k else v)
    env = gate(checkpoint=str(grown))
    c = checks(env)
    assert c["degenerate"].status == "fail" and c["next_token_kl"].status == "fail" and c["rank"].status == "fail"
    b = env.result.behaviour
    assert b.merged_degenerate - b.base_degenerate >= 0.3 and c["degenerate"].items  # fail_at, by default
    assert "run_residual_drift" in {f.tool for f in env.follow_ups}


def test_a_resized_vocabulary_and_a_broken_tie_fail(
    models: dict[str, Path], isolated_home: Path, tmp_path: Path
) -> None:
    start(models, "gpt2-base")
    state = load_file(models["gpt2-base"] / "model.safetensors")
    wte = next(k for k in state if k.endswith("wte.weight"))
    resized = {**state, wte: torch.cat([state[wte], torch.zeros(8, state[wte].shape[1])])}
    torch.save({"state_dict": resized}, tmp_path / "resized.pt")
    env = gate(checkpoint=str(tmp_path / "resized.pt"), no_behavioral=True)
    c = checks(env)["vocab_tying"]
    vocab = state[wte].shape[0]
    assert c.status == "fail" and f"[{vocab + 8}, " in c.items[0] and f"vs base [{vocab}, " in c.items[0]
    untied = {**state, "lm_head.weight": state[wte] + 0.01}
    torch.save({"state_dict": untied}, tmp_path / "untied.pt")
    c = checks(gate(checkpoint=str(tmp_path / "untied.pt"), no_behavioral=True))["vocab_tying"]
    assert c.status == "fail" and "lm_head.weight differs" in c.items[0]


def test_an_adapter_for_modules_the_base_lacks_fails(
    models: dict[str, Path], isolated_home: Path, tmp_path: Path
) -> None:
    start(models, "llama-base")
    src = models["llama-lora"]
    moved = tmp_path / "moved"
    shutil.copytree(src, moved)
    tensors = load_file(moved / ADAPTER)
    save_file({k.replace("layers.1.", "layers.9."): v for k, v in tensors.items()}, moved / ADAPTER)
    env = gate(checkpoint=str(moved), no_behavioral=True)
    c = checks(env)["no_op"]
    assert c.status == "warn" and env.result.verdict == "warn"  # half the targets are missing
    missing = [i for i in c.items if "not in the base" in i]
    assert missing and all("layers.9." in i for i in missing) and c.value == len(missing)
    assert checks(env)["fidelity"].status == "skipped"


def test_an_encoder_gets_weight_checks_and_fidelity(models: dict[str, Path], isolated_home: Path) -> None:
    start(models, "bert-base")
    env = gate(checkpoint=str(models["bert-lora"]))
    c = checks(env)
    assert env.result.kind == "embedding" and env.result.fidelity.output == "pooled hidden"
    assert c["fidelity"].status == "pass" and c["degenerate"].status == "skipped" and "encoder" in c["degenerate"].why
    # the adapter was saved from BertForMaskedLM (`bert.` in its keys) and applied to BertModel: it must act
    assert env.result.fidelity.effect_mean_abs > 1e-4 and env.result.fidelity.share_of_effect < 1e-3
    assert env.result.verdict == "pass"


def test_a_full_checkpoint_is_judged_on_weights_and_behaviour(tiny_gpt2: dict[str, Path], isolated_home: Path) -> None:
    invoke(get_tool("start_session"), {"id": "merge-full", "model": str(tiny_gpt2["base"])})
    env = gate(checkpoint=str(tiny_gpt2["full"]))
    c = checks(env)
    assert env.result.mode == "full" and c["fidelity"].status == "skipped"
    assert c["next_token_kl"].status != "skipped" and env.result.behaviour.generations
    assert c["no_op"].status == "pass"


def test_the_cli_exits_2_on_fail_and_mcp_returns_the_verdict(
    models: dict[str, Path], isolated_home: Path, tmp_path: Path
) -> None:
    zeroed = edited(models["gpt2-lora"], tmp_path / "zeroed", lambda k, v: v * 0 if "lora_B" in k else v)
    trainspect("session", "start", "--id", "cli-merge", "--model", str(models["gpt2-base"]), home=isolated_home)
    ok = trainspect("merge-analysis", "--checkpoint", str(models["gpt2-lora"]), "--no-behavioral", home=isolated_home)
    assert "VERDICT: PASS" in ok.stdout
    bad = trainspect("merge-analysis", "--checkpoint", str(zeroed), "--no-behavioral", home=isolated_home, check=False)
    assert bad.returncode == 2 and "VERDICT: FAIL" in bad.stdout and "no_op" in bad.stdout, bad.stderr
    usage = trainspect(
        "merge-analysis", "--checkpoint", str(zeroed), "--rel-warn", "lots", home=isolated_home, check=False
    )
    assert usage.returncode == 1 and "--rel-warn" in usage.stderr  # a mistyped flag is not a failing gate
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(command=str(BIN), args=["mcp", "--no-mirror"], env=_env(isolated_home))

    async def main() -> dict[str, Any]:
        async with Client(params, read_timeout_seconds=120) as client:
            out = await client.call_tool("run_merge_analysis", {"checkpoint": str(zeroed), "no_behavioral": True})
            assert not out.is_error
            return out.structured_content or {}

    structured = anyio.run(main)
    assert structured["result"]["verdict"] == "fail"
    assert {c["name"]: c["status"] for c in structured["result"]["checks"]}["no_op"] == "fail"


def test_bad_arguments_are_one_line(models: dict[str, Path], isolated_home: Path, tmp_path: Path) -> None:
    from toolserver.contract import ToolError

    start(models, "gpt2-base")
    with pytest.raises(ToolError) as e:
        gate(checkpoint=str(tmp_path / "nothing"))
    assert "nothing" in e.value.message and "\n" not in e.value.message
    (tmp_path / "p.jsonl").write_text('"fine"\n{broken\n')
    with pytest.raises(ToolError) as e:
        gate(checkpoint=str(models["gpt2-lora"]), prompts=str(tmp_path / "p.jsonl"))
    assert "line 2" in e.value.message
