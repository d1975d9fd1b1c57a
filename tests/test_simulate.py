"""simulate passes 1, 2 and 2c on real tiny models, each number against an independent computation: per-module
gradient norms against a plain autograd loop, a dead MLP named (and nothing else), the seed's spike limit at its
edge, the feature predictions against what a real SGD fine-tune on the same data did (and the seed's sign
against it), DPO margins against transformers' log-probabilities, and the no-optimiser-step invariant."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from scipy.stats import spearmanr
from session_fixtures import build_sae, tiny_base

from tools.fixtures.tiny_models import CORPUS
from tools.simulate import artifacts
from tools.simulate.decompose import scores
from tools.simulate.models import SimulationResult
from toolserver.contract import ToolError
from toolserver.registry import get_tool
from toolserver.runner import invoke

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [s.strip() + "." for line in CORPUS.splitlines() for s in line.split(".") if s.strip()]


def sft_rows(n: int = 20) -> list[dict[str, str]]:
    """Each sentence split after its fourth word: the instruction and the response to learn."""
    rows = []
    for s in SENTENCES[:n]:
        words = s.split()
        rows.append({"instruction": " ".join(words[:4]), "response": " " + " ".join(words[4:])})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def progress(self, fraction: float, message: str) -> None:
        pass

    def emit(self, type: str, data: dict[str, Any], text: str | None = None) -> None:
        self.events.append((type, data))


def simulate(model: Path, dataset: Path, session: str, reporter: Any = None, sae: Path | None = None, **args: Any):
    invoke(get_tool("start_session"), {"id": session, "model": str(model)})
    if sae is not None:
        invoke(get_tool("load_sae"), {"sae": [str(sae)]}, session_id=session)
    on_emit = (lambda t, d, text=None: reporter.emit(t, d, text)) if reporter else None
    return invoke(get_tool("run_simulation"), {"dataset": str(dataset), **args}, session_id=session, on_emit=on_emit)


@pytest.fixture(scope="module")
def dead_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose layer-1 MLP has its input path blocked: post_attention_layernorm's weight is 0, so the
    MLP sees zeros (and, with no biases, gets no gradient), as does that norm's own weight."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_base("llama", tmp_path_factory)
    out = tmp_path_factory.mktemp("dead-llama")
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        model.model.layers[1].post_attention_layernorm.weight.zero_()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


DEAD = {
    "model.layers.1.post_attention_layernorm",
    "model.layers.1.mlp.gate_proj",
    "model.layers.1.mlp.up_proj",
    "model.layers.1.mlp.down_proj",
}


def reference_norms(model_dir: Path, rows: list[dict[str, str]], batch_size: int) -> list[dict[str, float]]:
    """Per batch, per parameter-owning module, the gradient norm from a plain loop: tokenised and masked here,
    not by the code under test."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = []
    for start in range(0, len(rows), batch_size):
        seqs = []
        for r in rows[start : start + batch_size]:
            p = tok(r["instruction"])["input_ids"]
            ids = p + tok(r["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            seqs.append((ids, [-100] * len(p) + ids[len(p) :]))
        width = max(len(i) for i, _ in seqs)
        ids = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i, _ in seqs])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in seqs])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in seqs])
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        norms = {}
        for name, module in model.named_modules():
            own = [p.grad for p in module.parameters(recurse=False) if p.requires_grad]
            if own:
                norms[name] = math.sqrt(sum(float(g.double().norm()) ** 2 if g is not None else 0.0 for g in own))
        out.append(norms)
    return out


def test_pass2_names_the_blocked_mlp_dead_and_its_norms_are_autograds(dead_llama: Path, tmp_path: Path) -> None:
    rows = sft_rows(20)
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    rec = Recorder()
    env = simulate(dead_llama, data, "dead", rec, passes=["2"], batch_size=4)
    land = env.result.landscape
    assert set(land.dead) == DEAD  # that MLP and its norm, and nothing else
    ref = reference_norms(dead_llama, rows, 4)
    assert land.batches == len(ref) == 5
    for m in land.modules:
        column = [b[m.name] for b in ref]
        assert m.mean == pytest.approx(sum(column) / len(column), rel=1e-4, abs=1e-12), m.name
        assert m.max == pytest.approx(max(column), rel=1e-4, abs=1e-12), m.name
    assert [m.name for m in land.modules] == list(ref[0])  # every module, in model order
    dead_signal = [s for s in env.result.signals if s.type == "dead_layers" and s.metric == "mean_grad_norm"]
    assert len(dead_signal) == 1 and set(dead_signal[0].layers) == DEAD and dead_signal[0].threshold == 1e-6
    # the batches went through watch's engine as steps: its own dead-layer episode started at the 5th batch
    engine = [s for s in env.result.signals if s.type == "dead_layers" and s.episode == "start"]
    assert engine and engine[0].step == 5 and set(engine[0].layers) == DEAD
    steps = [d["snapshot"] for t, d in rec.events if t == "simulate.step"]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5] and set(steps[0]["gradNorms"]) == set(ref[0])
    passes = [(d["pass"], d["phase"]) for t, d in rec.events if t == "simulate.pass"]
    assert passes == [("2", "start"), ("2", "end")]
    assert (
        env.result.invariant.unchanged and env.result.invariant.checksum_before == env.result.invariant.checksum_after
    )


def test_the_spike_signal_at_its_edge(dead_llama: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "data.jsonl", sft_rows(8))
    first = simulate(dead_llama, data, "spike", passes=["2"], batch_size=4).result.landscape
    limit = first.max_grad_mean / 5
    for clip, fires in ((limit * 1.001, False), (limit * 0.999, True)):
        result = simulate(dead_llama, data, "spike", passes=["2"], batch_size=4, grad_clip=clip).result
        spikes = [s for s in result.signals if s.type == "gradient_spike" and s.metric == "max_grad_mean"]
        assert bool(spikes) == fires, clip
        if fires:
            assert spikes[0].threshold == pytest.approx(5 * clip) and spikes[0].value == pytest.approx(5 * limit)


def test_an_optimiser_step_fails_the_run(dead_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tools.simulate.landscape as landscape

    real = landscape._accumulate

    def sneaky(model: Any, names: Any, sums: Any) -> None:
        torch.optim.SGD(model.parameters(), lr=1e-3).step()  # a training step slipped in
        real(model, names, sums)

    monkeypatch.setattr(landscape, "_accumulate", sneaky)
    data = write_jsonl(tmp_path / "data.jsonl", sft_rows(8))
    with pytest.raises(ToolError, match="parameters changed during the simulation"):
        simulate(dead_llama, data, "sneaky", passes=["2"], batch_size=4)


# ----- the feature prediction against a real fine-tune -------------------------------------------------
@pytest.fixture(scope="module")
def predicted_vs_real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Simulate passes 1 and 2 on a tiny GPT-2 with an SAE at layer 1, then fine-tune it for real with SGD on the
    same batches and diff the SAE's features between base and the real checkpoint over the same texts."""
    from transformers import AutoModelForCausalLM

    from tools.simulate.batches import batches

    root = tmp_path_factory.mktemp("predict")
    base = tiny_base("gpt2", tmp_path_factory)
    rows = sft_rows(20)
    data = write_jsonl(root / "data.jsonl", rows)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES))
    invoke(get_tool("start_session"), {"id": "predict", "model": str(base)})
    sae = Path(  # an SAE trained with sae-lens on this model's own activations (TopK, the project's sae train)
        invoke(
            get_tool("run_sae_train"),
            {"layer": 1, "dataset": str(corpus), "d_sae": 256, "out": str(root / "sae")},
            session_id="predict",
        ).result.out
    )
    env = simulate(base, data, "predict", sae=sae, passes=["1", "2"], batch_size=4, out=str(root / "sim"))
    tensors = artifacts.read_tensors(root / "sim")
    model = AutoModelForCausalLM.from_pretrained(base)
    model.eval()  # as simulated: no dropout
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    pairs = [(r["instruction"], r["response"]) for r in rows]
    train = list(batches(tok, pairs, list(range(len(rows))), 4, 512))
    for _ in range(6):  # 30 steps
        for b in train:
            opt.zero_grad()
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss.backward()
            opt.step()
    model.save_pretrained(root / "tuned")
    tok.save_pretrained(root / "tuned")
    probes = write_jsonl(root / "probes.jsonl", rows)
    diff = invoke(
        get_tool("run_sae_diff"), {"checkpoint": str(root / "tuned"), "prompts": str(probes)}, session_id="predict"
    ).result.layers[0]
    delta = torch.tensor(diff.columns.tuned_mean) - torch.tensor(diff.columns.base_mean)
    hook = "blocks.1.hook_resid_post"
    from sae_lens import SAE

    w_dec = SAE.load_from_disk(str(sae)).W_dec.detach()
    return {
        "result": env.result,
        "g": tensors[f"resid_grad.{hook}"],
        "acts": tensors[f"base_acts_mean.{hook}"],
        "w_dec": w_dec,
        "delta": delta,
    }


SPEARMAN_MIN = 0.5  # on the 30 features with the largest |predicted score|


def _spearman(pred: torch.Tensor, delta: torch.Tensor, k: int = 30) -> float:
    top = torch.argsort(pred.abs(), descending=True)[:k]
    return float(spearmanr(pred[top].numpy(), delta[top].numpy()).statistic)


def test_predicted_features_move_the_way_a_real_finetune_moves_them(predicted_vs_real: dict[str, Any]) -> None:
    r = predicted_vs_real
    score, _ = scores(r["g"], r["w_dec"], r["acts"])
    rho = _spearman(score, r["delta"])
    assert rho >= SPEARMAN_MIN, rho
    seed_sign = _spearman(-score, r["delta"])  # the seed's formula, without the descent sign
    assert seed_sign < SPEARMAN_MIN and seed_sign == pytest.approx(-rho)
    (pred,) = r["result"].sae
    assert pred.strengthen and pred.suppress
    assert [f.feature for f in pred.strengthen] == torch.argsort(score, descending=True)[
        : len(pred.strengthen)
    ].tolist()
    assert all(f.score > 0 for f in pred.strengthen) and all(f.score < 0 for f in pred.suppress)
    assert "positive = predicted to strengthen" in pred.convention


def test_saved_artifacts_read_back(predicted_vs_real: dict[str, Any], tmp_path: Path) -> None:
    result: SimulationResult = predicted_vs_real["result"]
    again = artifacts.read(Path(result.artifacts[0]))
    assert again == result
    bad = tmp_path / "simulation.json"
    bad.write_text(json.dumps({**json.loads(result.model_dump_json()), "schema_version": "trainspect.simulation.v0"}))
    with pytest.raises(ToolError, match="schema_version 'trainspect.simulation.v0'"):
        artifacts.read(bad)


# ----- pass 2c -------------------------------------------------------------------------------------
def _logp(model: Any, tok: Any, prompt: str, response: str) -> float:
    """Σ log P(response tokens, EOS | prompt) by transformers directly."""
    p = tok(prompt)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return float(sum(logp[len(p) + i - 1, t] for i, t in enumerate(r)))


def test_dpo_margins_match_transformers_and_a_greedy_answer_is_preferred(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    factory_base = tiny_base_path(tmp_path)
    tok = AutoTokenizer.from_pretrained(factory_base)
    model = AutoModelForCausalLM.from_pretrained(factory_base).eval()
    prompt = "The model reads a sentence and"
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        greedy = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    own = tok.decode(greedy[0, ids.shape[1] :])
    pairs = [
        {"prompt": prompt, "chosen": own, "rejected": " bytes plateau merged frozen vector tokens"},
        {"prompt": "Dead layers receive", "chosen": " almost no gradient.", "rejected": " a large learning rate."},
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    pref = simulate(factory_base, data, "dpo", passes=["2c"], beta=0.5).result.preference
    want = [_logp(model, tok, p["prompt"], p["chosen"]) - _logp(model, tok, p["prompt"], p["rejected"]) for p in pairs]
    got = {m.row: m.margin for m in pref.most_backwards}
    assert [got[0], got[1]] == pytest.approx(want, rel=1e-4)
    assert want[0] > 0  # the base's own greedy continuation is preferred
    losses = [-math.log(1 / (1 + math.exp(-0.5 * m))) for m in want]
    assert pref.dpo_loss_mean == pytest.approx(sum(losses) / 2, rel=1e-4)
    assert pref.mean_margin == pytest.approx(sum(want) / 2, rel=1e-4)
    assert pref.negative_share == sum(m < 0 for m in want) / 2


def tiny_base_path(tmp_path: Path) -> Path:
    from tools.fixtures.tiny_models import build_base

    return build_base("gpt2", tmp_path / "gpt2")


def test_preference_pairs_decomposed_with_an_sae(tmp_path: Path) -> None:
    base = tiny_base_path(tmp_path)
    sae = build_sae(tmp_path / "sae", hook="blocks.1.hook_resid_post")
    pairs = [{"prompt": r["instruction"], "chosen": r["response"], "rejected": " the loss."} for r in sft_rows(8)]
    result = simulate(base, write_jsonl(tmp_path / "p.jsonl", pairs), "pref-sae", sae=sae, batch_size=4).result
    assert result.passes == ["0", "1", "2", "2c"]  # every pass that applies to preference rows
    pref = result.preference
    assert pref.pairs == 8 and pref.prediction is not None and pref.differs_from_sft
    assert [p.name for p in result.timeline] == ["0", "1+2", "2c"]
    assert result.invariant.unchanged


# ----- front doors ---------------------------------------------------------------------------------
def test_cli_runs_and_refuses_a_bad_row_in_one_line(tmp_path: Path, isolated_home: Path) -> None:
    base = tiny_base_path(tmp_path)
    env = {"TRAINSPECT_HOME": str(isolated_home), "TRAINSPECT_MIRROR_URL": "", "HF_HUB_OFFLINE": "1", "PATH": ""}
    cli = [sys.executable, "-m", "toolserver.cli"]
    subprocess.run([*cli, "session", "start", "--id", "cli", "--model", str(base)], env=env, check=True, cwd=ROOT)
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(6))
    run = subprocess.run(
        [*cli, "simulate", "--dataset", str(data), "--passes", "0,2", "--batch-size", "3", "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["result"]["passes"] == ["0", "2"] and out["result"]["landscape"]["batches"] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "response": "b"}\n{"instruction": "c", "response": 3}\n')
    run = subprocess.run([*cli, "simulate", "--dataset", str(bad)], env=env, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"{bad} line 2: field 'response' is a int, not a string" in run.stderr


def test_the_card_shows_the_dead_mlp_in_chromium(dead_llama: Path, tmp_path: Path) -> None:
    from web_fixtures import ARTIFACTS_DIR, browser_page, chromium_path, mirror_server

    from web_mirror.client import MirrorClient

    if chromium_path() is None:
        pytest.skip("Debian chromium is not installed (make setup installs it)")
    data = write_jsonl(tmp_path / "data.jsonl", sft_rows(20))
    with mirror_server(tmp_path / "home") as server, browser_page(height=1400) as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        mirror = MirrorClient(server.url)
        try:
            invoke(get_tool("start_session"), {"id": "sim-card", "model": str(dead_llama)}, mirror=mirror)
            invoke(
                get_tool("run_simulation"),
                {"dataset": str(data), "passes": ["0", "2"], "batch_size": 4, "name": "dead <mlp>"},
                session_id="sim-card",
                mirror=mirror,
                call_id="sim-dead",
            )
        finally:
            mirror.close()
        page.goto(f"{server.url}/#s=sim-card")
        node = page.wait_for_selector('article.card[data-call-id="sim-dead"][data-status="ok"]')
        assert node.get_attribute("data-renderer") == "simulation"
        marked = node.eval_on_selector_all(".sim-land .hm-rows .hot", "ns => ns.map(n => n.textContent)")
        assert sorted(m.removesuffix(" ◀") for m in marked) == sorted(DEAD)
        assert "4 dead" in node.inner_text() and "dead <mlp>" in node.inner_text() and not errors
        ARTIFACTS_DIR.mkdir(exist_ok=True)
        node.screenshot(path=str(ARTIFACTS_DIR / "card-simulation-dead-mlp.png"))


def test_mcp_start_and_poll_reports_progress(dead_llama: Path, tmp_path: Path, isolated_home: Path) -> None:
    import os

    import anyio
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    data = write_jsonl(tmp_path / "data.jsonl", sft_rows(20))
    env = {**os.environ, "TRAINSPECT_HOME": str(isolated_home), "TRAINSPECT_MIRROR_URL": "", "HF_HUB_OFFLINE": "1"}
    params = StdioServerParameters(
        command=str(Path(sys.executable).parent / "trainspect"), args=["mcp", "--no-mirror"], env=env
    )
    seen: list[tuple[str, float, str]] = []

    async def main() -> dict[str, Any]:
        async with Client(params, read_timeout_seconds=120) as client:
            started = await client.call_tool("start_session", {"id": "mcp-sim", "model": str(dead_llama)})
            assert not started.is_error, started.content
            args = {"dataset": str(data), "passes": "0,2", "batch_size": 2}
            job = await client.call_tool("start_tool", {"tool": "run_simulation", "args": args})
            call_id = job.structured_content["call_id"]
            for _ in range(1200):
                polled = (await client.call_tool("get_result", {"call_id": call_id})).structured_content
                seen.append((polled["status"], polled["fraction"], polled["message"]))
                if polled["status"] != "running":
                    return polled
                await anyio.sleep(0.05)
            raise AssertionError("the simulation did not finish")

    polled = anyio.run(main)
    assert polled["status"] == "done", polled
    result = polled["data"]["result"]
    assert sorted(result["landscape"]["dead"]) == sorted(DEAD) and result["invariant"]["unchanged"]
    fractions = [f for s, f, _ in seen if s == "running"]
    assert fractions == sorted(fractions) and any("batch" in m for _, _, m in seen), seen[:5]
