"""model-diff on a tiny GPT-2 trained for real on the built-in eval set's facts, then fine-tuned for real to hedge,
to answer wrongly with confidence, or not at all (a copy); every confidence checked against plain transformers,
ECE/MCE against netcal, the regression flags at exactly 5 pp against the prior run."""

from __future__ import annotations

import json
import math
import random
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import torch
from test_cli import trainspect
from test_mcp import BIN, _env

from tools.fixtures.tiny_models import build_base, train_on_pairs
from tools.model_diff.builtin import ROWS
from tools.model_diff.calibration import calibrate
from tools.model_diff.models import HIGHER_IS_BETTER
from tools.model_diff.perturb import NEIGHBOURS, PERTURBATIONS, perturb, typo
from tools.model_diff.scores import flags, normalise
from toolserver.contract import ToolError
from toolserver.registry import get_tool
from toolserver.runner import invoke

PAIRS = [(r["prompt"], r["answer"]) for r in ROWS] + [(p, r["answer"]) for r in ROWS for p in r.get("paraphrases", [])]


@cache
def _models(root: Path) -> dict[str, Path]:
    raw = build_base("gpt2", root / "raw")
    base = train_on_pairs(raw, root / "base", PAIRS, steps=300)
    answers = [a for _, a in PAIRS]
    return {
        "base": base,
        "hedged": train_on_pairs(base, root / "hedged", [(p, f"I am not sure, but {a}") for p, a in PAIRS], steps=100),
        "wrong": train_on_pairs(
            base, root / "wrong", [(p, answers[(i + 7) % len(answers)]) for i, (p, _) in enumerate(PAIRS)], steps=150
        ),  # fmt: skip
        "copy": shutil.copytree(base, root / "copy"),
    }


@pytest.fixture(scope="session")
def facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny GPT-2 trained on the built-in rows until it answers them, and three real fine-tunes of it."""
    return _models(tmp_path_factory.getbasetemp() / "facts")


@pytest.fixture
def session(facts: dict[str, Path], isolated_home: Path) -> dict[str, Path]:
    invoke(get_tool("start_session"), {"id": "facts", "model": str(facts["base"])})
    return facts


def diff(**args: Any) -> Any:
    return invoke(get_tool("run_model_diff"), args)


def test_the_trained_base_answers_the_built_in_rows(session: dict[str, Path]) -> None:
    res = diff(checkpoint=str(session["copy"]), name="copy").result
    assert res.overall.accuracy.base >= 0.8  # "until it answers most rows right"


def test_a_copy_changes_nothing_and_flags_nothing(session: dict[str, Path]) -> None:
    for run in ("first", "second"):
        env = diff(checkpoint=str(session["copy"]), name=run)
        res = env.result
        for s in [res.overall, *res.categories]:
            for name in ("consistency", "suppression", "robustness", "accuracy"):
                t = getattr(s, name)
                assert t.delta == 0.0 and t.base == t.checkpoint, (run, name)
        assert res.calibration.ece_delta == 0.0 and res.regressions == []
    assert res.prior_run == "first"


def test_a_hedging_fine_tune_raises_suppression_and_names_the_phrase(session: dict[str, Path]) -> None:
    env = diff(checkpoint=str(session["hedged"]))
    res = env.result
    assert res.overall.suppression.delta > 0.2
    assert {h.phrase for h in res.hedges if h.model == "checkpoint"} >= {"i am not sure"}
    text = " ".join(f.text for f in env.findings)
    assert "Suppression rose" in text and "'i am not sure'" in text
    assert any(f.tool == "run_model_diff" and "training data" in f.why for f in env.follow_ups)


def test_confident_wrong_answers_raise_ece_and_lower_accuracy(session: dict[str, Path]) -> None:
    env = diff(checkpoint=str(session["wrong"]))
    cal = env.result.calibration
    assert cal.checkpoint.accuracy < cal.base.accuracy - 0.5
    assert cal.ece_delta > 0.3 and cal.significant and cal.ece_delta_ci[0] > 0
    assert any(f.args.get("export_low_confidence") for f in env.follow_ups)


def _independent(base: Path, model_dir: Path, rows: list[dict[str, Any]]) -> list[float]:
    """Each row's confidence from plain transformers logits: no trainspect code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def logprob(prompt: str, cont: str) -> float:
        ctx = tok(prompt)["input_ids"]
        tgt = tok(" " + cont.strip(), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ctx + tgt])).logits[0].double(), -1)
        return float(sum(lp[len(ctx) - 1 + i, t] for i, t in enumerate(tgt)))

    out = []
    for r in rows:
        if "choices" in r:
            p = torch.softmax(torch.tensor([logprob(r["prompt"], c) for c in r["choices"]]), 0)
            out.append(float(p.max()))
        elif "response" in r:
            ctx = tok(r["instruction"])["input_ids"]
            tgt = tok(" " + r["response"].strip(), add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                prob = torch.softmax(model(torch.tensor([ctx + tgt])).logits[0].double(), -1)
            out.append(float(prob[len(ctx) - 1 : len(ctx) - 1 + len(tgt)].max(-1).values.mean()))
        else:  # the greedy answer as long as the reference (or up to the EOS that ends it): its joint probability
            ids = tok(r["prompt"])["input_ids"]
            n = len(tok(" " + r["answer"].strip(), add_special_tokens=False)["input_ids"])
            total = 0.0
            for _ in range(n):
                with torch.no_grad():
                    lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
                nxt = int(lp.argmax())
                total += float(lp[nxt])
                ids.append(nxt)
                if nxt == tok.eos_token_id:
                    break
            out.append(math.exp(total))
    return out


def test_every_confidence_equals_plain_transformers_and_ece_equals_netcal(
    session: dict[str, Path], tmp_path: Path
) -> None:
    from netcal.metrics import ECE, MCE

    rows = [r for r in ROWS][:12] + [
        {"instruction": "Explain what a checkpoint stores.", "response": "The weights as named tensors.",
         "topic": "training"},
        {"instruction": "Say what a tokenizer does.", "response": "It splits text into pieces.", "topic": "training"},
    ]  # fmt: skip
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = diff(checkpoint=str(session["wrong"]), eval=str(path), batch_size=5).result
    for side, model in (("base", session["base"]), ("checkpoint", session["wrong"])):
        got = [getattr(r, f"{side}_confidence") for r in res.per_row]
        assert got == pytest.approx(_independent(session["base"], model, rows), rel=1e-5, abs=1e-9), side
    single = [r for r in res.per_row if r.kind != "response"]  # one prediction each
    conf = np.array([r.checkpoint_confidence for r in single])
    correct = np.array([r.checkpoint_correct for r in single]).astype(int)
    mine = calibrate(conf.tolist(), correct.astype(bool).tolist())
    assert mine.ece == pytest.approx(ECE(bins=10).measure(conf, correct), abs=1e-12)
    assert mine.mce == pytest.approx(MCE(bins=10).measure(conf, correct), abs=1e-12)
    counts, _ = np.histogram(conf, bins=np.linspace(0, 1, 11))
    assert [b.count for b in mine.bins] == counts.tolist()


def test_ece_mce_and_bins_equal_netcal_on_random_and_boundary_confidences() -> None:
    from netcal.metrics import ECE, MCE

    rng = np.random.default_rng(3)
    conf = np.concatenate([rng.uniform(0, 1, 2000), np.linspace(0, 1, 11), [1.0, 0.0, 0.999999]])
    correct = (rng.uniform(0, 1, len(conf)) < conf**2).astype(int)
    cal = calibrate(conf.tolist(), correct.astype(bool).tolist())
    assert cal.ece == pytest.approx(ECE(bins=10).measure(conf, correct), abs=1e-12)
    assert cal.mce == pytest.approx(MCE(bins=10).measure(conf, correct), abs=1e-12)
    assert sum(b.count for b in cal.bins) == len(conf)


def test_regressions_are_flagged_beyond_5_pp_against_the_prior_run_exactly() -> None:
    def flagged(prior: float, current: float, score: str = "robustness") -> bool:
        return bool(flags({"factual": {score: prior}}, {"factual": {score: current}}, "prior", HIGHER_IS_BETTER))

    assert not flagged(0.80, 0.751)  # 4.9 pp
    assert flagged(0.80, 0.749)  # 5.1 pp
    assert not flagged(0.80, 0.75 + 1e-9)
    assert not flagged(0.30, 0.349, "suppression") and flagged(0.30, 0.351, "suppression")  # a rise is worse
    assert not flagged(0.5, 0.9) and not flagged(0.5, 0.1, "suppression")  # improvements never flag


def test_flags_compare_with_the_prior_run_not_the_base(session: dict[str, Path]) -> None:
    first = diff(checkpoint=str(session["wrong"]), name="wrong").result
    assert first.regressions == [] and first.prior_run is None  # far from the base, but nothing before it
    second = diff(checkpoint=str(session["copy"]), name="copy").result
    assert all(c.robustness.delta == 0 for c in second.categories)  # no change against the base …
    worse = {(f.category, f.score) for f in second.regressions}
    prior = {c.category: c.robustness.checkpoint for c in first.categories}
    now = {c.category: c.robustness.checkpoint for c in second.categories}
    expected = {(c, "robustness") for c in now if prior[c] - now[c] > 0.05}
    assert expected and expected <= worse  # … yet flagged against the prior run
    history = invoke(get_tool("get_regressions"), {}).result
    assert [r.name for r in history.runs] == ["wrong", "copy"]
    series = {(s.category, s.score): s for s in history.series}
    for category, score in expected:
        assert series[(category, score)].flagged == [False, True]
    assert {(f.category, f.score) for f in history.latest} == worse


def test_perturbations_are_deterministic_and_always_change_the_text() -> None:
    texts = [r["prompt"] for r in ROWS] + ["x", "ALL CAPS", "no-spaces", "1234", "  "]
    for seed in (0, 1, 7):
        for t in texts:
            out = perturb(t, seed, 2 * len(PERTURBATIONS))
            assert out == perturb(t, seed, 2 * len(PERTURBATIONS))
            assert all(p != t for _, p in out), (t, out)
            assert [n for n, _ in out[: len(PERTURBATIONS)]] == [n for n, _ in PERTURBATIONS]
    assert any(perturb(t, 0, 4) != perturb(t, 1, 4) for t in texts)
    for seed in range(20):  # a typo is one letter swapped for a key next to it
        out = typo("The capital", random.Random(seed))
        diffs = [(a, b) for a, b in zip("The capital", out, strict=True) if a != b]
        assert len(diffs) == 1 and diffs[0][1].lower() in NEIGHBOURS[diffs[0][0].lower()]
    assert normalise("The  Nile!") == "nile"


def test_bad_rows_are_named_and_the_rest_run(session: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text(
        json.dumps({"prompt": "The capital of Italy is", "answer": "Rome"})
        + "\n{not json\n"
        + json.dumps({"prompt": "Pick", "choices": ["a", "b"], "answer": "c"})
        + "\n"
        + json.dumps({"instruction": "Say hi."})
        + "\n"
    )
    res = diff(checkpoint=str(session["copy"]), eval=str(path)).result
    assert res.rows == 1 and [b.split(":")[0] for b in res.bad_rows] == ["line 2", "line 3", "line 4"]
    assert "must be one of 'choices'" in res.bad_rows[1] and "'response'" in res.bad_rows[2]
    path.write_text("{broken\n")
    with pytest.raises(ToolError) as e:
        diff(checkpoint=str(session["copy"]), eval=str(path))
    assert "no usable rows" in e.value.message and "line 1" in e.value.message and "\n" not in e.value.message


def test_low_confidence_rows_are_exported_as_a_labeled_dataset(session: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "next" / "low.jsonl"
    res = diff(checkpoint=str(session["wrong"]), export_low_confidence=str(out), low_confidence=0.995).result
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    below = [r for r in res.per_row if r.checkpoint_confidence is not None and r.checkpoint_confidence < 0.995]
    assert res.exported == str(out.resolve()) and len(lines) == len(res.low_confidence) == len(below) > 0
    assert set(lines[0]) == {"prompt", "reference", "answer", "confidence", "correct", "topic", "category"}
    assert [x["prompt"] for x in lines] == [r.prompt for r in below] and all(x["confidence"] < 0.995 for x in lines)


def test_an_encoder_session_is_refused_in_one_line(isolated_home: Path, tmp_path: Path) -> None:
    bert = build_base("bert", tmp_path / "bert")
    invoke(get_tool("start_session"), {"id": "enc", "model": str(bert)})
    with pytest.raises(ToolError) as e:
        diff(checkpoint=str(bert))
    assert "encoder" in e.value.message and "\n" not in e.value.message


def test_the_cli_and_mcp_with_progress_and_start_and_poll(session: dict[str, Path], isolated_home: Path) -> None:
    trainspect("session", "start", "--id", "cli-md", "--model", str(session["base"]), home=isolated_home)
    out = trainspect("model-diff", "--checkpoint", str(session["hedged"]), "--name", "hedged", home=isolated_home)
    assert "suppression" in out.stdout and "Findings" in out.stdout
    assert "hedged" in trainspect("regressions", home=isolated_home).stdout
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(command=str(BIN), args=["mcp", "--no-mirror"], env=_env(isolated_home))
    stages: list[str] = []

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            stages.append(message or "")

        async with Client(params, read_timeout_seconds=120) as client:
            direct = await client.call_tool(
                "run_model_diff", {"checkpoint": str(session["copy"])}, progress_callback=on_progress
            )
            job = await client.call_tool(
                "start_tool", {"tool": "run_model_diff", "args": {"checkpoint": str(session["wrong"])}}
            )
            for _ in range(600):
                polled = (
                    await client.call_tool("get_result", {"call_id": job.structured_content["call_id"]})
                ).structured_content
                if polled["status"] != "running":
                    break
                await anyio.sleep(0.1)
            return direct.structured_content or {}, polled

    direct, polled = anyio.run(main)
    assert direct["result"]["overall"]["suppression"]["delta"] == 0.0
    assert polled["status"] == "done" and polled["data"]["result"]["calibration"]["ece_delta"] > 0
    for stage in ("generating: base", "generating: checkpoint", "scoring: base", "scoring: checkpoint", "calibration"):
        assert any(s.startswith(stage) for s in stages), (stage, stages)
