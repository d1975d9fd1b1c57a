"""simulate's second-order passes through the tool, each number against an exact computation on a real tiny GPT-2
(pre-trained for a few seconds on the fixture corpus): sharpness against the eigenvalues of the Hessian formed
exactly over a ≤ 5k-parameter subset; pass 2b's influence scores against −∇L(z)ᵀ(H + μI)⁻¹∇L_test with that
exact H and one backward per row, and label-flipped rows found among the most harmful; pass 3's delta against a
real SGD fine-tune of the same config; the synthetic checkpoint through the loader and the other tools."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from scipy.stats import spearmanr
from session_fixtures import build_sae, tiny_base
from test_simulate import Recorder, sft_rows, simulate, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from tools.fixtures.tiny_models import finetune, train_on_pairs
from tools.simulate.batches import TrainBatch, batches
from tools.simulate.curvature import causal_lm_loss, subset
from tools.simulate.hessian import curvature
from tools.simulate.models import SimulationResult
from tools.simulate.sharpness import sharpness
from toolserver.contract import ToolError
from toolserver.registry import get_tool
from toolserver.runner import invoke

# 320 parameters: the final norm and block 1's second norm and MLP output bias, small enough to form H exactly
SUBSET = r"transformer\.ln_f|transformer\.h\.1\.ln_2|transformer\.h\.1\.mlp\.c_proj\.bias"
FACTS = [
    ("the rate is", "small"),
    ("the loss is", "falling"),
    ("the layer is", "dead"),
    ("the adapter is", "merged"),
    ("the weight is", "frozen"),
    ("the token is", "rare"),
]
FLIPPED = [(0, 3), (2, 5), (4, 1)]  # (fact, the fact whose answer it is given instead)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny ops: two threads on two shared cores are several times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-2 after 150 AdamW steps on the fixture corpus: a base that has learned some language."""
    logging.set_verbosity_error()
    return finetune(tiny_base("gpt2", tmp_path_factory), tmp_path_factory.mktemp("pre") / "base", 150, 3e-3, "hf_dir")


def fact_rows() -> tuple[list[dict[str, str]], list[int]]:
    """Each fact three times, then three rows answering with another fact's answer (their positions returned)."""
    rows = [{"prompt": p, "completion": " " + a} for p, a in FACTS for _ in range(3)]
    flipped = []
    for f, other in FLIPPED:
        flipped.append(len(rows))
        rows.append({"prompt": FACTS[f][0], "completion": " " + FACTS[other][1]})
    return rows, flipped


def hf(path: Path, dtype: torch.dtype = torch.float32) -> Any:
    return AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager").to(dtype).eval()


def make_batches(path: Path, rows: list[dict[str, str]], batch_size: int) -> list[TrainBatch]:
    tok = AutoTokenizer.from_pretrained(str(path))
    pairs = [(r.get("prompt") or r.get("instruction", ""), r.get("completion") or r.get("response", "")) for r in rows]
    return list(batches(tok, pairs, list(range(len(rows))), batch_size, 512))


def exact_hessian(model: Any, names: list[str], bs: list[TrainBatch]) -> torch.Tensor:
    """H of the mean per-batch loss over `names`, formed in float64."""
    params = [p.double() for p in subset(model, names)]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    fns = [causal_lm_loss(model, names, b) for b in bs]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        ps = [c.view(s) for c, s in zip(flat.split(sizes), shapes, strict=True)]
        return sum(fn(ps) for fn in fns) / len(fns)

    return torch.autograd.functional.hessian(loss, torch.cat([p.reshape(-1) for p in params]), vectorize=True)


def flat_grad(model: Any, names: list[str], bs: list[TrainBatch]) -> torch.Tensor:
    params = [p.double().requires_grad_(True) for p in subset(model, names)]
    loss = sum(causal_lm_loss(model, names, b)(params) for b in bs) / len(bs)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


@pytest.fixture(scope="module")
def knows_facts(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base after a real fine-tune on the six facts: influence is read at a model that has learned the task,
    where a correct row's gradient is small and a wrong answer's pulls against the test rows."""
    return train_on_pairs(base, tmp_path_factory.mktemp("facts") / "model", FACTS, steps=60, lr=3e-3)


@pytest.fixture(scope="module")
def influence_run(knows_facts: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = knows_facts
    tmp = tmp_path_factory.mktemp("influence")
    rows, flipped = fact_rows()
    data = write_jsonl(tmp / "facts.jsonl", rows)
    test = write_jsonl(tmp / "test.jsonl", [{"prompt": p, "completion": " " + a} for p, a in FACTS])
    env = simulate(
        base,
        data,
        "influence",
        passes="2b",
        test=str(test),
        influence_params=SUBSET,
        hessian_rows=len(rows),
        batch_size=7,
        lissa_tol=1e-4,
        sharpness_tol=1e-6,
        sharpness_budget=200,
    )
    return {"result": env.result, "rows": rows, "flipped": flipped, "test": test}


@pytest.fixture(scope="module")
def exact(knows_facts: Path, influence_run: dict[str, Any]) -> dict[str, Any]:
    """H, g_test and every row's own-loss gradient, exactly, on a float64 copy of the base."""
    base = knows_facts
    model = hf(base, torch.float64)
    names = [n for n, _ in model.named_parameters() if n in set(_subset_names(model))]
    rows = influence_run["rows"]
    train = make_batches(base, rows, 7)
    test = make_batches(base, [{"prompt": p, "completion": " " + a} for p, a in FACTS], 7)
    per_row = torch.stack([flat_grad(model, names, make_batches(base, [r], 1)) for r in rows])
    return {"H": exact_hessian(model, names, train), "g_test": flat_grad(model, names, test), "per_row": per_row}


def _subset_names(model: Any) -> list[str]:
    return [n for n, _ in model.named_parameters() if re.search(SUBSET, n)]


def test_sharpness_is_the_exact_hessians_extreme_eigenvalues(influence_run: dict[str, Any], exact: dict) -> None:
    sharp = influence_run["result"].sharpness
    eig = torch.linalg.eigvalsh(exact["H"])
    assert sharp.params == exact["H"].shape[0] == 320
    assert sharp.converged and sharp.iterations <= sharp.budget
    assert sharp.lambda_max == pytest.approx(float(eig[-1]), rel=0.02)
    assert sharp.lambda_min == pytest.approx(float(eig[0]), rel=0.02)
    assert sharp.stability_limit == pytest.approx(2 / sharp.lr) and sharp.unstable == (sharp.lambda_max > 2 / sharp.lr)


def test_the_instability_label_follows_two_over_the_learning_rate(knows_facts: Path, exact: dict) -> None:
    """GD at η diverges along λ_max when λ_max > 2/η: the label flips between η just below and just above 2/λ_max."""
    base = knows_facts
    model = hf(base)
    lam = float(torch.linalg.eigvalsh(exact["H"])[-1])
    rows, _ = fact_rows()
    curv = curvature(model, _subset_names(model), make_batches(base, rows, 7))
    stable = sharpness(curv, 0.95 * 2 / lam, tol=1e-6, budget=200, bottom=False)
    unstable = sharpness(curv, 1.05 * 2 / lam, tol=1e-6, budget=200, bottom=False)
    assert not stable.unstable and unstable.unstable and stable.lambda_min is None
    assert stable.ntk_unreliable == (lam > 10)


def test_influence_ranks_rows_as_the_exact_hessian_does(influence_run: dict[str, Any], exact: dict) -> None:
    inf = influence_run["result"].influence
    mu = inf.lissa.effective_damping
    H = exact["H"]
    ihvp = torch.linalg.solve(H + mu * torch.eye(H.shape[0], dtype=H.dtype), exact["g_test"])
    want = -(exact["per_row"] @ ihvp)
    got = torch.tensor([r.score for r in inf.scores], dtype=torch.float64)
    rho = spearmanr(got.numpy(), want.numpy()).statistic
    rel = float((got - want).norm() / want.norm())
    print(f"influence vs exact (H + {mu:.4g}·I): Spearman {rho:.4f}, relative L2 {rel:.2e}")
    assert rho >= 0.9
    assert rel < 0.05
    assert inf.lissa.residual <= inf.lissa.tol and inf.lissa.iterations <= inf.lissa.budget
    assert inf.g_test_norm == pytest.approx(float(exact["g_test"].norm()), rel=1e-4)


def test_label_flipped_rows_are_the_most_harmful(influence_run: dict[str, Any]) -> None:
    inf = influence_run["result"].influence
    flipped = set(influence_run["flipped"])
    top = [r.row for r in inf.most_harmful[: len(flipped) + 1]]
    print("most harmful:", [(r.row, round(r.score, 4), r.text) for r in inf.most_harmful[:5]])
    assert flipped <= set(top)
    assert all(r.text and "→" in r.text for r in inf.most_harmful)
    assert inf.predicted_removal > 0 and inf.harmful >= len(flipped)


def test_the_seeds_fixed_scale_fails_loudly(base: Path, tmp_path: Path) -> None:
    """Every parameter of the base on the fact rows has λ_max > 50, beyond the seed's s = 25 interval (−0.25,
    49.75): the series diverges and the run fails with one line naming λ_max, s and the residual."""
    rows, _ = fact_rows()
    with pytest.raises(ToolError) as err:
        simulate(
            base,
            write_jsonl(tmp_path / "facts.jsonl", rows),
            "seed-scale",
            passes="2b",
            hessian_rows=len(rows),
            batch_size=7,
            sharpness_budget=40,
            sharpness_tol=1e-2,
            lissa_scale=25,
            damping=0.01,
        )
    msg = str(err.value)
    lam = re.search(r"λ_max=([0-9.e+]+)", msg)
    assert lam and float(lam.group(1)) > 50, msg
    assert "LiSSA diverged" in msg and "s=25" in msg and "residual" in msg and "\n" not in msg


def test_an_unconverged_series_fails_with_its_residual(
    knows_facts: Path, influence_run: dict[str, Any], tmp_path: Path
) -> None:
    rows, _ = fact_rows()
    with pytest.raises(ToolError, match=r"LiSSA did not converge after 3 HVPs: residual .* > tol 1\.0e-04"):
        simulate(
            knows_facts,
            write_jsonl(tmp_path / "facts.jsonl", rows),
            "budget",
            passes="2b",
            test=str(influence_run["test"]),
            influence_params=SUBSET,
            lissa_depth=3,
            lissa_tol=1e-4,
        )


# ---- pass 3 against a real fine-tune ------------------------------------------------------------------------

LR, T, BATCH, ROWS = 0.01, 10, 4, 20


@pytest.fixture(scope="module")
def delta_run(base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("delta")
    rows = sft_rows(ROWS)
    data = write_jsonl(tmp / "sft.jsonl", rows)
    sae = build_sae(tmp / "sae")
    recorder = Recorder()
    env = simulate(
        base,
        data,
        "delta",
        recorder,
        sae,
        passes="2,3",
        out=str(tmp / "out"),
        batch_size=BATCH,
        steps=T,
        lr=LR,
        grad_clip=1e6,
        hessian_rows=ROWS,
    )
    return {"result": env.result, "rows": rows, "out": tmp / "out", "data": data, "sae": sae, "events": recorder.events}


def real_finetune(base: Path, rows: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    """T plain SGD steps at LR over the dataset's batches in order (dropout off, as simulate measures), ΔW."""
    model = hf(base)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bs = make_batches(base, rows, BATCH)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(T):
        b = bs[step % len(bs)]
        opt.zero_grad()
        model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss.backward()
        opt.step()
    return {n: (p.detach() - before[n]).double() for n, p in model.named_parameters()}


def test_pass3_predicts_a_real_finetunes_delta(base: Path, delta_run: dict[str, Any]) -> None:
    """Per tensor: cosine and relative error of predicted vs real ΔW, the quadratic (default) rule asserted, the
    seed's rule and the curvature-free ηT·ḡ measured beside it."""
    result: SimulationResult = delta_run["result"]
    real = real_finetune(base, delta_run["rows"])
    tensors = load_file(delta_run["out"] / "tensors.safetensors")
    stats: dict[str, dict[str, list[float]]] = {k: {"cos": [], "rel": []} for k in ("quadratic", "seed", "linear")}
    sq = {k: [0.0, 0.0] for k in stats}
    for d in result.delta.tensors:
        r = real[d.name].flatten()
        g = tensors[f"mean_grad.{d.name}"].double().flatten()
        preds = {"quadratic": -d.coef_quadratic * g, "seed": -d.coef_seed * g, "linear": -LR * T * g}
        assert torch.allclose(tensors[f"delta.{d.name}"].double().flatten(), preds["quadratic"], rtol=1e-5, atol=1e-9)
        for k, p in preds.items():
            stats[k]["cos"].append(float(p @ r / (p.norm() * r.norm())))
            stats[k]["rel"].append(float((p - r).norm() / r.norm()))
            sq[k][0] += float(((p - r) ** 2).sum())
            sq[k][1] += float((r**2).sum())
    summary = {
        k: (statistics.median(v["cos"]), statistics.median(v["rel"]), math.sqrt(sq[k][0] / sq[k][1]))
        for k, v in stats.items()
    }
    for k, (cos, rel, whole) in summary.items():
        print(f"pass 3 {k}: median cosine {cos:.3f}, median relative error {rel:.3f}, whole-model relative {whole:.3f}")
    cos, rel, whole = summary["quadratic"]
    assert cos >= 0.8 and rel <= 0.7 and whole <= 0.7
    assert whole < summary["linear"][2] and whole < summary["seed"][2]
    assert not result.delta.clipped and result.invariant.unchanged


def test_clipping_caps_each_tensor_and_is_recorded(base: Path, delta_run: dict[str, Any], tmp_path: Path) -> None:
    env = simulate(
        base,
        delta_run["data"],
        "clip",
        passes="3",
        out=str(tmp_path),
        batch_size=BATCH,
        steps=T,
        lr=LR,
        grad_clip=0.05,
        hessian_rows=8,
        checkpoint_format="pt",
    )
    delta = env.result.delta
    assert delta.clip_limit == pytest.approx(LR * T * 0.05)
    assert delta.clipped and set(delta.clipped) == {t.name for t in delta.tensors if t.clipped}
    for t in delta.tensors:
        assert t.delta_norm <= delta.clip_limit * (1 + 1e-9)
        unclipped = abs(t.coef_quadratic) * t.grad_norm
        assert t.clipped == (unclipped > delta.clip_limit)
        assert t.eta_eff * T * t.grad_norm == pytest.approx(t.delta_norm, rel=1e-6)
    saved = load_file(tmp_path / "tensors.safetensors")
    for t in delta.tensors:
        assert float(saved[f"delta.{t.name}"].double().norm()) == pytest.approx(t.delta_norm, rel=1e-5)


def test_the_synthetic_checkpoint_is_a_checkpoint_every_tool_reads(base: Path, delta_run: dict[str, Any]) -> None:
    """Saved with save_pretrained, reloaded bit for bit, sae diff's summary in the result and the stream; then
    weight-diff, sae-diff, residual-drift and model-diff run on it unchanged, weight-diff measuring the very
    delta pass 3 wrote."""
    delta = delta_run["result"].delta
    ckpt = delta.checkpoint
    assert ckpt.format == "hf" and ckpt.reloaded and ckpt.matched == 28 and (Path(ckpt.path) / "config.json").is_file()
    assert ckpt.sae_diff and ckpt.sae_diff[0].hook == "blocks.1.hook_resid_post" and ckpt.sae_diff[0].features == 128
    assert ckpt.sae_diff_texts == ROWS
    streamed = [d for t, d in delta_run["events"] if t == "simulate.checkpoint"]
    assert streamed and streamed[0]["checkpoint"]["sae_diff"][0]["changed"] == ckpt.sae_diff[0].changed
    invoke(get_tool("start_session"), {"id": "reader", "model": str(base)})
    invoke(get_tool("load_sae"), {"sae": [str(delta_run["sae"])]}, session_id="reader")
    wd = invoke(get_tool("run_weight_diff"), {"checkpoint": ckpt.path}, session_id="reader").result
    written = math.sqrt(sum(t.delta_norm**2 for t in delta.tensors))
    assert wd.totals.fro_delta == pytest.approx(written, rel=1e-3)
    assert wd.totals.unchanged == 0
    sd = invoke(get_tool("run_sae_diff"), {"checkpoint": ckpt.path}, session_id="reader").result
    assert sd.layers[0].d_sae == 128
    rd = invoke(get_tool("run_residual_drift"), {"checkpoint": ckpt.path}, session_id="reader").result
    assert rd.layers
    md = invoke(get_tool("run_model_diff"), {"checkpoint": ckpt.path, "bootstrap": 100}, session_id="reader").result
    assert md.rows > 0 and md.overall.rows > 0


def test_the_pt_checkpoint_has_the_base_keys_dtypes_and_shapes(
    base: Path, delta_run: dict[str, Any], tmp_path: Path
) -> None:
    env = simulate(
        base,
        delta_run["data"],
        "pt",
        passes="3",
        out=str(tmp_path),
        batch_size=BATCH,
        steps=T,
        lr=LR,
        hessian_rows=8,
        checkpoint_format="pt",
    )
    ckpt = env.result.delta.checkpoint
    saved = torch.load(ckpt.path, weights_only=True)
    want = hf(base).state_dict()
    assert saved["step"] == T and set(saved["state_dict"]) == set(want)
    for k, v in saved["state_dict"].items():
        assert v.dtype == want[k].dtype and v.shape == want[k].shape
    assert ckpt.matched == 28 and env.result.invariant.unchanged


def test_compare_reports_the_planted_rows_gone_and_the_test_loss_influence_change(
    knows_facts: Path, influence_run: dict[str, Any], tmp_path: Path
) -> None:
    """Two real simulations of the fact rows against the same test rows, before and after removing the planted
    label-flipped rows: compare names exactly those rows as removed and harmful, with the influence they took."""
    rows, flipped = fact_rows()
    clean = [r for i, r in enumerate(rows) if i not in flipped]
    args = {"passes": "2b", "test": str(influence_run["test"]), "influence_params": SUBSET, "batch_size": 7}
    a = simulate(knows_facts, write_jsonl(tmp_path / "planted.jsonl", rows), "a", out=str(tmp_path / "a"), **args)
    simulate(knows_facts, write_jsonl(tmp_path / "clean.jsonl", clean), "b", out=str(tmp_path / "b"), **args)
    cmp = invoke(get_tool("compare_simulations"), {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}).result
    inf = cmp.influence
    planted = {s.hash for s in a.result.influence.scores if s.row in flipped}
    assert inf.comparable and inf.removed == len(flipped) and inf.added == 0
    assert {r.hash for r in inf.removed_rows} == planted and inf.removed_harmful == len(flipped)
    want = sum(s.score for s in a.result.influence.scores if s.row in flipped)
    assert inf.removed_harmful_score == pytest.approx(want, rel=1e-9)
    assert inf.harmful.a == a.result.influence.harmful and inf.harmful.b < inf.harmful.a
    assert inf.predicted_removal.a == pytest.approx(a.result.influence.predicted_removal)
    assert inf.total.delta == pytest.approx(inf.total.b - inf.total.a)


def test_lissa_refuses_an_unconverged_spectrum(
    knows_facts: Path, influence_run: dict[str, Any], tmp_path: Path
) -> None:
    """An unconverged Lanczos gives bounds, not the spectrum: a scale from them could sit inside it."""
    rows, _ = fact_rows()
    with pytest.raises(ToolError, match=r"Lanczos did not converge within 3 HVPs .* LiSSA's scale needs"):
        simulate(
            knows_facts,
            write_jsonl(tmp_path / "facts.jsonl", rows),
            "unconverged",
            passes="2b",
            test=str(influence_run["test"]),
            influence_params=SUBSET,
            sharpness_budget=3,
        )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        ({"passes": "3"}, r"^pass 3 writes a synthetic checkpoint, so it needs --out DIR \(add --out DIR"),
        ({"passes": "2b", "influence_params": "no_such_param"}, r"^--influence-params 'no_such_param' matches no "),
        ({"passes": "2b", "influence_params": "("}, r"influence_params.*not a regular expression"),
        ({"passes": "2b", "sharpness": False}, r"^pass 2b's LiSSA needs the measured spectrum \(drop --no-sharpness"),
    ],
)
def test_bad_second_order_input_is_one_line(base: Path, tmp_path: Path, args: dict[str, Any], line: str) -> None:
    rows, _ = fact_rows()
    with pytest.raises(ToolError, match=line) as err:
        simulate(base, write_jsonl(tmp_path / "facts.jsonl", rows), "bad", batch_size=7, **args)
    assert "\n" not in str(err.value)


def test_a_failed_checkpoint_leaves_the_previous_one(
    base: Path, delta_run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new checkpoint is written and reloaded beside the old one; a failure there leaves the old one whole."""
    out = tmp_path / "out"
    args = {"passes": "3", "out": str(out), "batch_size": BATCH, "steps": T, "lr": LR, "hessian_rows": 8}
    first = simulate(base, delta_run["data"], "keep", checkpoint_format="pt", **args).result.delta.checkpoint
    before = Path(first.path).read_bytes()

    def broken(*a: Any) -> int:
        raise ToolError("reload differs", "a bug")

    monkeypatch.setattr("tools.simulate.second_order.reload_and_check", broken)
    with pytest.raises(ToolError, match="reload differs"):
        simulate(base, delta_run["data"], "keep2", checkpoint_format="pt", **{**args, "lr": 2 * LR})
    assert Path(first.path).read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "simulation.json", "tensors.safetensors"]
