"""Curvature primitives against exact references: on a real tiny GPT-2 (a 544-parameter MLP subset, small enough
to form its Hessian in float64 with torch.autograd.functional.hessian) and on ridge regression (exact
leave-one-out retraining). HVPs against H·v, Lanczos against eigvalsh, LiSSA against a damped solve (and the
seed's fixed scale failing loudly where the measured spectrum leaves its interval), per-sample gradients against
one backward per sample, influence against the exact formula and against retraining."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging

from tools.simulate.batches import TrainBatch, collate
from tools.simulate.curvature import (
    LissaResult,
    bottom_eigenvalue,
    causal_lm_loss,
    extreme_eigenvalues,
    hvp,
    influence,
    lissa,
    mean_hvp,
    per_sample_grads,
    subset,
    top_eigenvalue,
)
from toolserver.contract import ToolError

NAMES = ["transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_fc.bias", "transformer.h.0.mlp.c_proj.weight"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny ops: two threads on two shared cores are ~25× slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.set_verbosity_error()
    yield
    torch.set_num_threads(before)


def tiny_lm(dtype: torch.dtype = torch.float32) -> GPT2LMHeadModel:
    """One layer, 8 dims, untied head; weights at std 0.3 so the MLP's curvature is not ~0 (it is indefinite)."""
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=32,
        n_embd=8,
        n_layer=1,
        n_head=2,
        n_positions=16,
        initializer_range=0.3,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(cfg).to(dtype).eval()


def make_batch(spec: list[tuple[int, int]], rows: list[int], seed: int) -> TrainBatch:
    """(length, prompt length) per sequence, through batches.collate: right padding, -100 on prompt and padding."""
    g = torch.Generator().manual_seed(seed)
    encoded = [(torch.randint(1, 32, (n,), generator=g).tolist(), p, False) for n, p in spec]
    return collate(encoded, rows, pad=0)


@pytest.fixture(scope="module")
def lm() -> dict:
    model = tiny_lm()
    batches = [
        make_batch([(10, 3), (7, 2), (9, 0), (5, 1)], [0, 1, 2, 3], seed=1),
        make_batch([(8, 2), (10, 4), (6, 0)], [4, 5, 6], seed=2),
    ]
    test = make_batch([(9, 2), (10, 3)], [100, 101], seed=3)
    params = subset(model, NAMES)
    fns = [causal_lm_loss(model, NAMES, b) for b in batches]
    return {"model": model, "batches": batches, "test": test, "params": params, "fns": fns}


def flat(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def exact(lm: dict) -> dict:
    """The float64 Hessian of each batch's loss with respect to the flattened subset, and of their mean."""
    model64 = tiny_lm(torch.float64)
    model64.load_state_dict(lm["model"].state_dict())
    shapes = [p.shape for p in lm["params"]]
    sizes = [p.numel() for p in lm["params"]]
    x = flat(lm["params"]).double()

    def loss_of_flat(batch: TrainBatch):
        fn = causal_lm_loss(model64, NAMES, batch)
        return lambda z: fn([t.view(s) for t, s in zip(z.split(sizes), shapes, strict=True)]).double()

    hs = [torch.autograd.functional.hessian(loss_of_flat(b), x, vectorize=True) for b in lm["batches"]]
    return {"per_batch": hs, "mean": sum(hs) / len(hs), "model64": model64}


def test_hvp_equals_exact_hessian_times_v(lm: dict, exact: dict) -> None:
    v = [torch.randn_like(p) for p in lm["params"]]
    got = flat(hvp(lm["fns"][0], lm["params"], v))
    assert got.dtype == torch.float32
    err = rel(got, exact["per_batch"][0] @ flat(v).double())
    assert err < 1e-5, err


def test_mean_hvp_is_the_hessian_of_the_mean_batch_loss(lm: dict, exact: dict) -> None:
    v = [torch.randn_like(p) for p in lm["params"]]
    got = flat(mean_hvp(lm["fns"], lm["params"], v))
    assert rel(got, exact["mean"] @ flat(v).double()) < 1e-5
    assert rel(got, exact["per_batch"][0] @ flat(v).double()) > 0.05  # the second batch counts


def test_bf16_model_gives_float32_hvp_and_is_left_untouched(lm: dict, exact: dict) -> None:
    """The subset is upcast to float32 and cast back inside the forward: the HVP is float32, its accuracy bf16's."""
    bf16 = tiny_lm(torch.bfloat16)
    before = {n: p.clone() for n, p in bf16.named_parameters()}
    batch = lm["batches"][0]
    params = subset(bf16, NAMES)
    assert all(p.dtype == torch.float32 for p in params)
    v = [torch.randn_like(p) for p in params]
    got = flat(hvp(causal_lm_loss(bf16, NAMES, batch), params, v))
    model64 = tiny_lm(torch.float64)
    model64.load_state_dict({k: t.double() for k, t in bf16.state_dict().items()})  # the same (rounded) weights
    ref = flat(hvp(causal_lm_loss(model64, NAMES, batch), [p.double() for p in params], [t.double() for t in v]))
    assert got.dtype == torch.float32
    assert rel(got, ref) < 0.05  # bf16 activations: a few per cent, not float32's 1e-7
    for n, p in bf16.named_parameters():
        assert p.grad is None and torch.equal(p, before[n]) and p.dtype == torch.bfloat16


@pytest.fixture(scope="module")
def spectrum(lm: dict) -> tuple:
    hvp_fn = functools.partial(mean_hvp, lm["fns"], lm["params"])
    shapes = [p.shape for p in lm["params"]]
    return hvp_fn, top_eigenvalue(hvp_fn, shapes), bottom_eigenvalue(hvp_fn, shapes)


def test_lanczos_finds_both_ends_of_the_spectrum(exact: dict, spectrum: tuple) -> None:
    _, top, bottom = spectrum
    eig = torch.linalg.eigvalsh(exact["mean"])
    assert eig[0] < 0, "the tiny LM's MLP Hessian is indefinite, so λ_min matters"
    for got, want in ((top, eig[-1]), (bottom, eig[0])):
        assert got.converged and got.iterations <= got.budget and got.residual < 1e-3
        assert abs(got.value - float(want)) <= 0.02 * abs(float(want)), (got.value, float(want))
    assert top.which == "top" and bottom.which == "bottom"
    assert "vector" not in top.model_dump()


def test_one_lanczos_run_finds_both_ends_in_fewer_hvps(exact: dict, spectrum: tuple) -> None:
    hvp_fn, top, bottom = spectrum
    high, low = extreme_eigenvalues(hvp_fn, [v.shape for v in top.vector])
    eig = torch.linalg.eigvalsh(exact["mean"])
    assert high.converged and low.converged and high.which == "top" and low.which == "bottom"
    assert high.value == pytest.approx(float(eig[-1]), rel=0.02) and low.value == pytest.approx(float(eig[0]), rel=0.02)
    assert high.iterations == low.iterations < top.iterations + bottom.iterations


def test_lanczos_reports_an_exhausted_budget(exact: dict, spectrum: tuple, lm: dict) -> None:
    hvp_fn = spectrum[0]
    got = top_eigenvalue(hvp_fn, [p.shape for p in lm["params"]], max_iter=4)
    assert not got.converged and got.iterations == 4 and got.budget == 4
    assert got.value <= float(torch.linalg.eigvalsh(exact["mean"])[-1]) + 1e-6  # a Rayleigh quotient: a lower bound


@pytest.fixture(scope="module")
def lm_lissa(lm: dict, spectrum: tuple) -> tuple[LissaResult, list[torch.Tensor]]:
    """The seed's damping λ = 0.01 with the scale from the measured spectrum, on the test batch's gradient."""
    hvp_fn, top, bottom = spectrum
    x = [p.detach().requires_grad_(True) for p in lm["params"]]
    g_test = list(torch.autograd.grad(causal_lm_loss(lm["model"], NAMES, lm["test"])(x), x))
    result = lissa(hvp_fn, g_test, lam_max=top.value, lam_min=bottom.value, damping=0.01, tol=5e-5)
    return result, g_test


def test_lissa_equals_the_damped_solve_with_negative_curvature(exact: dict, spectrum: tuple, lm_lissa: tuple) -> None:
    """The scale covers λ_min < 0 (sλ > |λ_min|), so H + sλI is positive definite and v/s is its solve."""
    _, top, bottom = spectrum
    result, g_test = lm_lissa
    mu = result.effective_damping
    assert mu == pytest.approx(result.scale * 0.01) and mu > -bottom.value
    assert -mu < bottom.value and top.value < result.scale * (2 - 0.01)
    h = exact["mean"]
    want = torch.linalg.solve(h + mu * torch.eye(len(h), dtype=h.dtype), flat(g_test).double())
    err = rel(flat(result.ihvp), want)
    assert err < 1e-3, err
    assert err <= result.error_bound
    assert result.residual <= 5e-5 and result.iterations == len(result.residuals)
    assert all(b <= a * (1 + 1e-3) for a, b in zip(result.residuals, result.residuals[1:], strict=False))


def test_seed_fixed_scale_fails_loudly_where_the_measured_scale_converges(spectrum: tuple, lm_lissa: tuple) -> None:
    """s = 25, 10 iterations: negative curvature below −sλ = −0.25 makes the series grow; 10 steps leave it
    unconverged, a longer run shows it diverging. The measured scale converged on the same g (lm_lissa)."""
    hvp_fn, top, bottom = spectrum
    g_test = lm_lissa[1]
    assert bottom.value < -25 * 0.01
    with pytest.raises(ToolError) as short:
        lissa(hvp_fn, g_test, lam_max=top.value, lam_min=bottom.value, scale=25.0, max_iter=10)
    msg = short.value.message
    assert "did not converge after 10 HVPs" in msg and "s=25" in msg and f"λ_max={top.value:.4g}" in msg
    assert "\n" not in msg and float(msg.split("residual ")[1].split()[0]) > 0.5
    with pytest.raises(ToolError, match=r"diverged .*λ_min=.*s=25"):
        lissa(hvp_fn, g_test, lam_max=top.value, lam_min=bottom.value, scale=25.0, max_iter=2000)


def test_lissa_catches_an_underestimated_negative_curvature(spectrum: tuple, lm_lissa: tuple) -> None:
    """λ_min claimed 0: the scale no longer covers the negative eigenvalues; the residual monitor says so."""
    hvp_fn, top, _ = spectrum
    with pytest.raises(ToolError, match="diverged"):
        lissa(hvp_fn, lm_lissa[1], lam_max=top.value, lam_min=0.0)


def loop_grads(model: GPT2LMHeadModel, batch: TrainBatch) -> torch.Tensor:
    """One backward per sample through transformers' own masked loss on a one-row batch."""
    params = dict(model.named_parameters())
    rows = []
    for i in range(batch.input_ids.shape[0]):
        loss = model(
            input_ids=batch.input_ids[i : i + 1],
            attention_mask=batch.attention_mask[i : i + 1],
            labels=batch.labels[i : i + 1],
        ).loss
        rows.append(flat(list(torch.autograd.grad(loss, [params[n] for n in NAMES]))))
    return torch.stack(rows)


def test_per_sample_grads_equal_single_sample_backwards(lm: dict) -> None:
    """Padded rows, prompt-masked rows and a {text} row: each its own mean token cross-entropy."""
    batch = lm["batches"][0]
    got = per_sample_grads(lm["model"], NAMES, batch)
    want = loop_grads(lm["model"], batch)
    assert got.shape == (4, sum(p.numel() for p in lm["params"])) and not got.requires_grad
    for g, w in zip(got, want, strict=True):
        assert rel(g, w) < 1e-5
    assert all(p.grad is None for p in lm["model"].parameters())


def test_per_sample_grads_refuse_left_padding(lm: dict) -> None:
    b = lm["batches"][0]
    left = TrainBatch(b.rows, b.input_ids, b.attention_mask.flip(1), b.labels, 0)
    with pytest.raises(ToolError, match="right-padded"):
        per_sample_grads(lm["model"], NAMES, left)


def test_lm_influence_from_lissa_equals_the_exact_formula(lm: dict, exact: dict, lm_lissa: tuple) -> None:
    result, g_test = lm_lissa
    per_sample = torch.cat([per_sample_grads(lm["model"], NAMES, b) for b in lm["batches"]])
    h = exact["mean"]
    inv = torch.linalg.solve(h + result.effective_damping * torch.eye(len(h), dtype=h.dtype), flat(g_test).double())
    want = -(per_sample.double() @ inv)
    got = influence(result.ihvp, per_sample)
    assert got.shape == (7,)
    assert rel(got, want) < 1e-3
    assert torch.equal(got.argsort(), want.argsort())


@pytest.fixture(scope="module")
def ridge() -> dict:
    """L(θ) = (1/n) Σ ½(xᵢᵀθ − yᵢ)² + ½μ‖θ‖², sample 7's label corrupted; a clean test set."""
    rng = np.random.default_rng(0)
    n, d, mu = 40, 6, 0.1
    theta = rng.standard_normal(d)
    x = rng.standard_normal((n, d))
    y = x @ theta + 0.1 * rng.standard_normal(n)
    y[7] += 8.0
    xt = rng.standard_normal((20, d))
    yt = xt @ theta
    h = x.T @ x / n + mu * np.eye(d)
    fit = np.linalg.solve(h, x.T @ y / n)
    per_sample = x * (x @ fit - y)[:, None]  # ∇ ½(xᵢᵀθ − yᵢ)²
    g_test = xt.T @ (xt @ fit - yt) / len(yt)

    def test_loss(th: np.ndarray) -> float:
        return float(0.5 * np.mean((xt @ th - yt) ** 2))

    loo = []
    for z in range(n):
        keep = np.arange(n) != z
        hz = x[keep].T @ x[keep] / n + mu * np.eye(d)  # ε = −1/n: z's weight removed, the rest unchanged
        loo.append(test_loss(np.linalg.solve(hz, x[keep].T @ y[keep] / n)) - test_loss(fit))
    return {"h": h, "per_sample": per_sample, "g_test": g_test, "loo": np.array(loo), "n": n}


def test_influence_sign_matches_exact_retraining(ridge: dict) -> None:
    """The most harmful sample by IF, removed and the model retrained exactly, lowers the test loss the most;
    the flipped convention would pick a sample whose removal raises it."""
    ihvp = [torch.from_numpy(np.linalg.solve(ridge["h"], ridge["g_test"]))]
    score = influence(ihvp, torch.from_numpy(ridge["per_sample"])).numpy()
    loo = ridge["loo"]
    assert int(score.argmax()) == int(loo.argmin()) == 7
    assert loo[score.argmax()] < 0 < loo[(-score).argmax()]
    assert np.corrcoef(-score / ridge["n"], loo)[0, 1] > 0.9  # ΔL_test(remove z) ≈ −IF(z)/n


def test_ridge_influence_from_lissa_equals_exact(ridge: dict) -> None:
    """LiSSA's answer is the damped inverse: equal to it to 1e-3, to the undamped H⁻¹ within the damping's bias."""
    h32 = torch.from_numpy(ridge["h"]).float()
    hvp_fn = lambda v: [h32 @ v[0]]  # noqa: E731
    top, bottom = top_eigenvalue(hvp_fn, [torch.Size([6])]), bottom_eigenvalue(hvp_fn, [torch.Size([6])])
    g = [torch.from_numpy(ridge["g_test"]).float()]
    result = lissa(hvp_fn, g, lam_max=top.value, lam_min=bottom.value, tol=1e-6)
    per_sample = torch.from_numpy(ridge["per_sample"]).float()
    got = influence(result.ihvp, per_sample)
    damped_h = ridge["h"] + result.effective_damping * np.eye(6)
    damped = influence([torch.from_numpy(np.linalg.solve(damped_h, ridge["g_test"]))], per_sample.double())
    exact = influence([torch.from_numpy(np.linalg.solve(ridge["h"], ridge["g_test"]))], per_sample.double())
    assert rel(got, damped) < 1e-3
    mu, lo, hi = result.effective_damping, bottom.value, top.value
    assert rel(got, exact) < mu * hi / (lo * (lo + mu))  # ‖(H + μ)⁻¹g − H⁻¹g‖ / ‖H⁻¹g‖ ≤ μλ_max / (λ_min(λ_min + μ))
    assert int(got.argmax()) == int(exact.argmax()) == 7


def test_seed_fixed_scale_diverges_when_lambda_max_exceeds_it(ridge: dict) -> None:
    """A positive definite H with λ_max = 80 > 25·(2 − λ): the seed's s = 25 diverges; the measured s converges."""
    h = torch.from_numpy(ridge["h"]).float()
    h = h * (80.0 / float(torch.linalg.eigvalsh(h)[-1]))
    hvp_fn = lambda v: [h @ v[0]]  # noqa: E731
    top, bottom = top_eigenvalue(hvp_fn, [torch.Size([6])]), bottom_eigenvalue(hvp_fn, [torch.Size([6])])
    g = [torch.from_numpy(ridge["g_test"]).float()]
    with pytest.raises(ToolError) as err:
        lissa(hvp_fn, g, lam_max=top.value, lam_min=bottom.value, scale=25.0, max_iter=10)
    msg = err.value.message
    assert "diverged" in msg and "λ_max=80" in msg and "s=25," in msg and "residual " in msg
    good = lissa(hvp_fn, g, lam_max=top.value, lam_min=bottom.value, max_iter=10_000)
    want = torch.linalg.solve(h.double() + good.effective_damping * torch.eye(6, dtype=torch.float64), g[0].double())
    assert rel(good.ihvp[0], want) < 1e-3
