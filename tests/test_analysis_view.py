"""trainspect analysis (run_analysis_view) on real tiny training runs and on checkpoints built with the recorder's own
summarise(): every number against torch, each triage rule shown to fire on the run that has the problem and to stay
silent on the one that does not (pinned at its threshold), the CLI as a user runs it, the result's size at 0.5B
scale, and the card drawn at 64 layers × 1,000 checkpoints in a real Chromium."""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from analysis_fixtures import Kept, result, synthetic_run, train, view, write_checkpoint
from test_cli import assert_one_line_error
from tool_runs import follow_up_problems
from web_fixtures import ARTIFACTS_DIR, chromium, chromium_path, ev, fresh_page, mirror_server

from tools.analysis_view import SPEC
from tools.analysis_view.compute import layer_of
from tools.analysis_view.models import MAX_CELLS, AnalysisViewInput, AnalysisViewResult, Grids
from tools.analysis_view.report import findings, slim
from tools.analysis_view.run import analyse
from tools.watch.analysis_checkpoint import read_analysis_checkpoint
from toolserver.contract import Envelope, ToolError
from toolserver.mcp_server import compact_result

BLOCKED = 2  # the block whose output the blocked run scales by 1e-3


def norm(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.double()))


def layer_norms(kept: Kept, layers: int) -> list[float]:
    sums = [0.0] * layers
    for name, g in kept.grads.items():
        if (layer := layer_of(name)) is not None:
            sums[layer] += norm(g) ** 2
    return [math.sqrt(s) for s in sums]


def rel_move(w: torch.Tensor, ref: torch.Tensor) -> float:
    return norm(w - ref) / norm(ref)


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, Kept]]:
    out = tmp_path_factory.mktemp("healthy")
    return out, train(out)


@pytest.fixture(scope="module")
def blocked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, Kept]]:
    out = tmp_path_factory.mktemp("blocked")
    return out, train(out, block=BLOCKED)


def test_every_number_against_torch(healthy: tuple[Path, dict[int, Kept]]) -> None:
    out, kept = healthy
    res = result(out, grad_clip=1.0)
    steps = sorted(kept)
    assert res.checkpoints == len(steps) and res.n_layers == 6 and res.grad_heatmap.steps == steps
    for j, step in enumerate(steps):
        expected = layer_norms(kept[step], 6)
        assert [row[j] for row in res.grad_heatmap.values] == pytest.approx(expected, rel=1e-3), step
        total = norm(torch.stack([g.double().norm() for g in kept[step].grads.values()]))
        assert res.timeline.grad_norm[j] == pytest.approx(total, rel=1e-3)
    for w in res.waterfall:
        assert w.layers == pytest.approx(layer_norms(kept[w.step], 6), rel=1e-3)
        assert {o.name: o.norm for o in w.outside} == pytest.approx(
            {n: norm(g) for n, g in kept[w.step].grads.items() if layer_of(n) is None}, rel=1e-3
        )
    assert [w.step for w in res.waterfall] == steps  # four checkpoints: all of them

    ref, last = kept[res.movement.reference_step].weights, kept[steps[-1]].weights
    moved = {n: rel_move(last[n], ref[n]) for n in ref}
    for m in res.movement_top:
        assert m.moved == pytest.approx(moved[m.name], rel=1e-4) and m.exact
    unlisted = [v for n, v in moved.items() if n not in {m.name for m in res.movement_top}]
    assert min(m.moved for m in res.movement_top) >= max(unlisted) * (1 - 1e-4)
    for j, step in enumerate(res.movement_layers.steps):
        w = kept[step].weights
        for layer in range(6):
            names = [n for n in ref if layer_of(n) == layer]
            expected = math.sqrt(sum(norm(w[n] - ref[n]) ** 2 for n in names) / sum(norm(ref[n]) ** 2 for n in names))
            assert res.movement_layers.values[layer][j] == pytest.approx(expected, rel=1e-3, abs=1e-9), (step, layer)

    clipped = sum(norm(torch.stack([g.norm() for g in kept[s].grads.values()])) > 1.0 for s in steps)
    assert res.clipping.clipped == clipped and res.clipping.of == len(steps) and res.clipping.source == "input"

    files = {s: read_analysis_checkpoint(out / f"analysis_{s:08d}.json") for s in steps}
    attention = res.attention
    assert attention.entropy.rows == [f"L{i}.h{h}" for i in range(6) for h in range(2)]
    for r, label in enumerate(attention.entropy.rows):
        layer, head = int(label[1]), int(label[-1])
        assert attention.entropy.values[r] == [
            files[s].attention[f"layer.{layer}"].entropy_per_head[head] for s in steps
        ]
        assert attention.max_attn[r].value == files[steps[-1]].attention[f"layer.{layer}"].max_attn_per_head[head]
    block0 = next(m for m in res.activations.modules if m.module == "transformer.h.0")
    assert block0.std == [files[s].activations["transformer.h.0"].std for s in steps]
    assert [m.layer for m in res.activations.modules] == sorted(m.layer for m in res.activations.modules)


def test_a_norm_bottleneck_pinches_the_waterfall_at_its_layer_and_a_healthy_run_does_not(
    healthy: tuple[Path, dict[int, Kept]], blocked: tuple[Path, dict[int, Kept]]
) -> None:
    """Block 2's output scaled by 1e-3: every gradient below it shrinks ~1000× (the scale multiplies the backward
    pass through it), so the waterfall drops between layers 3 and 2 and the first third of the depth starves."""
    out, kept = blocked
    outcome = view(out)
    res = outcome.result
    per_step = {s: layer_norms(k, 6) for s, k in kept.items()}
    drops = {s: max(range(5), key=lambda i: n[i + 1] / n[i]) for s, n in per_step.items()}
    assert set(drops.values()) == {BLOCKED}  # torch: the largest drop is at the blocked layer at every checkpoint
    assert res.pinch.layer == BLOCKED and res.pinch.checkpoints == len(kept) == res.pinch.of
    at = per_step[res.pinch.step]
    assert res.pinch.drop == pytest.approx(at[BLOCKED + 1] / at[BLOCKED], rel=1e-3)
    assert res.pinch.drop == pytest.approx(max(n[BLOCKED + 1] / n[BLOCKED] for n in per_step.values()), rel=1e-3)
    ratios = {s: statistics.median(n[4:]) / statistics.median(n[:2]) for s, n in per_step.items()}  # thirds of 6
    assert res.vanishing.steps == sorted(s for s, r in ratios.items() if r >= 100) and res.vanishing.checkpoints >= 2
    assert res.vanishing.ratio == pytest.approx(max(ratios.values()), rel=1e-3)
    assert (res.vanishing.first_third, res.vanishing.last_third) == ([0, 1], [4, 5])
    texts = [f.text for f in outcome.findings if f.severity == "warn"]
    assert any("pinches at layer 2" in t and "rule ≥ 10×" in t for t in texts), texts
    assert any(t.startswith("Vanishing gradient path") and "rule ≥ 100×" in t for t in texts), texts
    assert slim(res).pinch_layer == BLOCKED

    clean = view(healthy[0])
    assert clean.result.pinch.checkpoints == 0 and clean.result.vanishing.checkpoints == 0
    assert not any("pinches" in f.text or "Vanishing" in f.text for f in clean.findings)
    assert any(f.text.startswith("Gradients flow through every layer") for f in clean.findings)
    assert slim(clean.result).pinch_layer is None

    # pinned at the thresholds: the largest ratio and drop fire at exactly their value and not a hair above
    edge = result(out, vanishing_ratio=res.vanishing.ratio, pinch_drop=res.pinch.drop)
    assert edge.vanishing.checkpoints == 1 and edge.pinch.checkpoints == 1 and edge.pinch.layer == BLOCKED
    above = result(out, vanishing_ratio=res.vanishing.ratio * 1.001, pinch_drop=res.pinch.drop * 1.001)
    assert above.vanishing.checkpoints == 0 and above.pinch.checkpoints == 0


def test_parameters_no_gradient_reaches_or_whose_gradient_is_zeroed_never_move(
    tmp_path: Path, healthy: tuple[Path, dict[int, Kept]]
) -> None:
    kept = train(
        tmp_path,
        n_layer=2,
        steps=30,
        detach="transformer.h.1.mlp.c_fc",
        zero="transformer.h.0.attn.c_proj.bias",
        weight_decay=0.0,
    )
    steps = sorted(kept)
    frozen = {n for n, w in kept[steps[0]].weights.items() if all(torch.equal(kept[s].weights[n], w) for s in steps)}
    assert frozen == {
        "transformer.h.1.mlp.c_fc.weight",
        "transformer.h.1.mlp.c_fc.bias",
        "transformer.h.1.ln_2.weight",  # its only way to the loss is through the detached c_fc
        "transformer.h.1.ln_2.bias",
        "transformer.h.0.attn.c_proj.bias",
    }
    outcome = view(tmp_path)
    still = {s.name: s.gradient for s in outcome.result.still}
    assert still == {n: "zero" if n == "transformer.h.0.attn.c_proj.bias" else "none" for n in frozen}
    assert all(s.largest == 0.0 and s.exact for s in outcome.result.still)
    texts = [f.text for f in outcome.findings]
    assert any("4 trainable parameters never moved" in t and "no gradient ever reaches them" in t for t in texts)
    assert any("1 trainable parameter never moved" in t and "c_proj.bias" in t and "is 0" in t for t in texts)
    assert result(healthy[0]).still == []


def _tensors(dominant: float, rest: float = 1e-3, *, holder: str = "model.layers.1.mlp.up_proj.weight") -> list:
    """Weights and gradients of a 2-layer model; `holder`'s gradient has norm `dominant`, the others `rest`."""
    names = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"]
    out = []
    for name in names:
        g = torch.full((4, 4), (dominant if name == holder else rest) / 4)  # ‖g‖ = 4 × value / 4
        out.append((name, torch.randn(4, 4, generator=torch.Generator().manual_seed(1)), g))
    return out


def test_clipping_by_one_tensor_fires_from_the_stated_share_of_checkpoints(tmp_path: Path) -> None:
    """Ten checkpoints, grad_clip 1 recorded in them: nine above the clip (0.9 ≥ 0.9) fire, eight and one at
    0.999 do not; one parameter holding the largest share in 9 of 10 clipped fires, 8 of 10 does not."""

    def run_of(name: str, norms: list[float], holders: int = 10) -> AnalysisViewResult:
        d = tmp_path / name
        other = "model.layers.0.mlp.up_proj.weight"
        for k, n in enumerate(norms):
            holder = "model.layers.1.mlp.up_proj.weight" if k < holders else other
            write_checkpoint(d, 10 * (k + 1), _tensors(n, holder=holder), grad_clip=1.0)
        return result(d)

    fires = run_of("nine", [2.0] * 8 + [1.001, 0.5])
    c = fires.clipping
    assert (c.clipped, c.of, c.source, c.grad_clip, c.top) == (
        9,
        10,
        "checkpoints",
        1.0,
        "model.layers.1.mlp.up_proj.weight",
    )
    assert c.dominated and c.top_count == 9
    shares = [n * n / (n * n + 2e-6) for n in [2.0] * 8 + [1.001]]  # the holder's share of ‖g‖², the rest 2 × 1e-3²
    assert c.top_share == pytest.approx(statistics.fmean(shares), rel=1e-4)
    text = next(f.text for f in findings(fires, AnalysisViewInput(dir=str(tmp_path))) if "Clipping" in f.text)
    assert "in 9 of 10 checkpoints" in text and "model.layers.1.mlp.up_proj.weight" in text and "rule ≥ 0.9" in text

    silent = run_of("eight", [2.0] * 8 + [0.999, 0.5])
    assert silent.clipping.clipped == 8 and not silent.clipping.dominated
    assert run_of("held9", [2.0] * 10, holders=9).clipping.dominated
    held8 = run_of("held8", [2.0] * 10, holders=8).clipping
    assert held8.clipped == 10 and held8.top_count == 8 and not held8.dominated
    given = result(tmp_path / "eight", grad_clip=0.9985)  # a given clip overrides the recorded one
    assert given.clipping.source == "input" and given.clipping.clipped == 9 and given.clipping.dominated


def test_gradients_recorded_after_clipping_are_said_to_be(tmp_path: Path) -> None:
    for k in range(6):
        write_checkpoint(tmp_path, 10 * (k + 1), _tensors(1.0), grad_clip=1.0)  # every global norm at the clip
    outcome = view(tmp_path)
    c = outcome.result.clipping
    assert c.at_clip == 6 and c.post_clip and not c.dominated  # 4-digit norms put some a hair above the clip
    assert any("recorded after clip_grad_norm_" in f.text for f in outcome.findings)


def _pattern(peak: float, heads: int = 2, keys: int = 16) -> torch.Tensor:
    """[1, heads, 4 queries, keys] attention: head 0 puts `peak` on key 0 and spreads the rest evenly; head 1 is
    uniform."""
    p = torch.full((1, heads, 4, keys), 1 / keys)
    p[0, 0] = (1 - peak) / (keys - 1)
    p[0, 0, :, 0] = peak
    return p


def test_attention_entropy_collapsing_early_fires_at_its_fraction_and_window(tmp_path: Path) -> None:
    def run_of(name: str, collapse_step: int) -> Path:
        d = tmp_path / name
        for step, peak in ((0, 1 / 16), (collapse_step, 0.995), (100, 0.995)):
            write_checkpoint(d, step, _tensors(0.5), attention={"layer.0": _pattern(peak)})
        return d

    d = run_of("at25", 25)  # the window ends at 0 + 0.25 × (100 − 0) = 25
    ck = read_analysis_checkpoint(d / "analysis_00000025.json")
    e0 = read_analysis_checkpoint(d / "analysis_00000000.json").attention["layer.0"].entropy_per_head[0]
    e1 = ck.attention["layer.0"].entropy_per_head[0]
    p = torch.tensor([0.995] + [0.005 / 15] * 15)
    assert e0 == pytest.approx(math.log(16), rel=5e-4) and e1 == pytest.approx(float(-(p * p.log()).sum()), rel=1e-3)
    ratio = e1 / e0
    assert ratio < 0.1
    res = result(d)
    assert [(c.head, c.step, c.first, c.value, c.window_end) for c in res.collapsed] == [("L0.h0", 25, e0, e1, 25.0)]
    assert slim(res).collapsed == ["L0.h0"]
    assert [c.head for c in result(d, collapse_fraction=ratio).collapsed] == ["L0.h0"]  # at the fraction: fires
    assert result(d, collapse_fraction=ratio * 0.999).collapsed == []  # a hair below it: silent
    assert result(run_of("at26", 26)).collapsed == []  # one step past the window: silent
    texts = [f.text for f in view(d).findings]
    assert any("Attention entropy collapsed early in L0.h0" in t and "rule ≤ 0.1×" in t for t in texts), texts


def test_activation_growth_and_non_finite_gradients(blocked: tuple[Path, dict[int, Kept]], tmp_path: Path) -> None:
    out, kept = blocked
    res = result(out)
    steps = sorted(kept)
    files = {s: read_analysis_checkpoint(out / f"analysis_{s:08d}.json") for s in (steps[0], steps[-1])}
    top = res.grown[0]
    first, last = (files[s].activations[top.module].std for s in (steps[0], steps[-1]))
    assert (top.first, top.last, top.first_step, top.last_step) == (first, last, steps[0], steps[-1])
    assert top.ratio == pytest.approx(last / first, rel=1e-3) and top.ratio >= 10
    assert [g.module for g in result(out, activation_growth=top.ratio * 0.9999).grown][:1] == [top.module]
    assert top.module not in {g.module for g in result(out, activation_growth=top.ratio * 1.001).grown}

    tensors = _tensors(0.5)
    tensors[1] = (tensors[1][0], tensors[1][1], torch.full((4, 4), float("nan")))
    write_checkpoint(tmp_path, 10, _tensors(0.5))
    write_checkpoint(tmp_path, 20, tensors)
    outcome = view(tmp_path)
    assert [(n.step, n.params) for n in outcome.result.nonfinite] == [(20, ["model.layers.0.mlp.up_proj.weight"])]
    assert outcome.findings[0].severity == "critical" and "step 20" in outcome.findings[0].text


def test_choices_of_steps_and_tensor_and_their_errors(blocked: tuple[Path, dict[int, Kept]]) -> None:
    out, kept = blocked
    steps = sorted(kept)
    res = result(out, steps=[steps[2], steps[0]], step=steps[1])
    assert [w.step for w in res.waterfall] == [steps[0], steps[2]]
    assert res.grids.step == steps[1] and len(res.grids.gridded) == 5
    ck = read_analysis_checkpoint(out / f"analysis_{steps[1]:08d}.json")
    name = max(res.grids.gridded, key=lambda n: ck.weights[n].moved)
    assert res.grids.tensor == name and res.grids.weight == ck.weights[name].grid
    assert res.grids.gradient == ck.gradients[name].grid
    other = next(n for n in res.grids.gridded if n != name)
    assert result(out, tensor=other).grids.tensor == other
    with pytest.raises(ToolError, match=r"steps: no checkpoint at step 15 \(nearest: "):
        result(out, steps=[15])
    with pytest.raises(ToolError, match="tensor transformer.wpe.weight has no grid in analysis_"):
        result(out, tensor="transformer.wpe.weight")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRAINSPECT_MIRROR_URL": ""}
    return subprocess.run(
        [sys.executable, "-m", "toolserver.cli", "analysis", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_the_cli_reads_a_folder_lists_what_it_skips_and_fails_in_one_line(
    blocked: tuple[Path, dict[int, Kept]], tmp_path: Path
) -> None:
    out, kept = blocked
    folder = tmp_path / "run" / "analysis"
    folder.mkdir(parents=True)
    for f in out.glob("analysis_*.json"):
        (folder / f.name).write_bytes(f.read_bytes())
    future = json.loads((folder / f"analysis_{max(kept):08d}.json").read_text())
    future["schema_version"] = "trainspect.analysis.v2"
    (folder / "analysis_99999999.json").write_text(json.dumps(future))
    (folder / "analysis_broken.json").write_text('{"schema_version": "trainspect.analysis.v1", "step": ')
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')

    table = cli("--dir", str(folder))
    assert table.returncode == 0, table.stderr
    assert "gradient waterfall" in table.stdout and "← pinch" in table.stdout and "Findings:" in table.stdout
    assert "analysis_99999999.json" in table.stdout and "schema_version 'trainspect.analysis.v2'" in table.stdout
    assert "2 of 7 files skipped" in table.stdout

    as_json = cli("--dir", str(folder), "--output", "json")
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["tool"] == "run_analysis_view" and doc["result"]["checkpoints"] == len(kept)
    skipped = {s["file"]: s["reason"] for s in doc["result"]["skipped"]}
    assert skipped.keys() == {"analysis_99999999.json", "analysis_broken.json"}
    assert "this trainspect reads 'trainspect.analysis.v1'" in skipped["analysis_99999999.json"]
    assert "cannot read analysis checkpoint" in skipped["analysis_broken.json"]
    assert {"tool": "watch", "args": {"metrics": str(tmp_path / "run" / "metrics.jsonl")}} in [
        {k: fu[k] for k in ("tool", "args")} for fu in doc["follow_ups"]
    ]

    assert_one_line_error(cli("--dir", str(tmp_path / "nowhere")), "--dir", "nowhere", "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(cli("--dir", str(empty)), "no analysis checkpoints (analysis_*.json) in", str(empty))
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "analysis_00000010.json").write_text(json.dumps(future))
    assert_one_line_error(cli("--dir", str(only_bad)), "none of the 1 analysis checkpoints", "schema_version")


def test_the_result_stays_small_enough_for_an_mcp_client_at_half_a_billion_parameters() -> None:
    """A Qwen2-0.5B-shaped run (24 layers, 14 heads, 72 activation modules) over 1,000 checkpoints: every heatmap
    within the cell cap, and the MCP result (lists cut at 50 for paging) under 100,000 characters with the grids of a
    gradient in the 1e-5s (their cells are the longest numbers)."""
    run = synthetic_run(layers=24, heads=14, checkpoints=1000)
    args = AnalysisViewInput(dir=str(run.dir), columns=1000)
    res = analyse(run, [], args, None)
    for h in (res.grad_heatmap, res.movement_layers, res.attention.entropy):
        assert len(h.rows) * len(h.steps) <= MAX_CELLS and all(len(r) == len(h.steps) for r in h.values)
    assert len(res.grad_heatmap.steps) == MAX_CELLS // 24 and res.grad_heatmap.steps[-1] == run.frames[-1].step
    assert 3 * len(res.activations.modules) * len(res.activations.steps) <= MAX_CELLS // 8
    rng = random.Random(0)
    shown = Grids(
        tensor="model.layers.12.mlp.up_proj.weight",
        step=run.frames[-1].step,
        shape=[4864, 896],
        weight=[[float(f"{rng.gauss(0, 0.02):.3g}") for _ in range(32)] for _ in range(32)],
        gradient=[[float(f"{rng.gauss(0, 1e-5):.3g}") for _ in range(32)] for _ in range(32)],
        moved=0.01,
        gridded=["model.layers.12.mlp.up_proj.weight"],
    )
    res = analyse(run, [], AnalysisViewInput(dir=str(run.dir)), shown)
    envelope = Envelope[AnalysisViewResult](
        tool=SPEC.name,
        call_id="c",
        created_at="t",
        duration_s=0.0,
        session=None,
        inputs={},
        result=res,
        findings=findings(res, args),
        follow_ups=[],
    )
    compact = compact_result(SPEC, envelope)
    size = len(json.dumps(compact.structured_content)) + sum(len(c.text) for c in compact.content)
    assert size < 100_000, size


@pytest.mark.skipif(chromium_path() is None, reason="Debian chromium is not installed (make setup installs it)")
def test_the_card_draws_64_layers_by_1000_checkpoints_quickly(tmp_path: Path) -> None:
    """The card's payload for a 64-layer run of 1,000 checkpoints with the heatmaps at full resolution (the cell cap
    raised so the grad-norm and movement heatmaps hold all 64 × 1,000 cells): drawn by its renderer through the
    page, then timed drawing it again directly (render + layout), median of 5."""
    run = synthetic_run(layers=64, heads=16, checkpoints=1000)
    res = analyse(run, [], AnalysisViewInput(dir=str(run.dir), columns=1000), None, max_cells=64_000)
    assert len(res.grad_heatmap.rows) == 64 and len(res.grad_heatmap.steps) == 1000
    card = slim(res).model_dump(mode="json")
    with mirror_server(tmp_path / "home") as server, chromium() as browser, fresh_page(browser, height=1600) as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{server.url}/#s=big")
        page.wait_for_selector(".connection.live")
        server.post(
            [
                ev("tool.start", "big", "big1", tool=SPEC.name, card=SPEC.card, args={"dir": str(run.dir)}),
                ev(
                    "tool.result", "big", "big1", tool=SPEC.name, card=SPEC.card, duration_s=1.0, slim=card, findings=[]
                ),
            ]
        )
        node = page.wait_for_selector('article.card[data-call-id="big1"][data-renderer="analysisView"]', timeout=30_000)
        assert node.query_selector_all("canvas.hm-canvas")
        ms = page.evaluate(
            """async (slim) => {
                const { render } = await import("/static/cards/analysisView.js");
                const times = [];
                for (let i = 0; i < 5; i++) {
                    const charts = [];
                    const box = document.createElement("div");
                    document.querySelector("main").append(box);
                    const t0 = performance.now();
                    box.append(render({ slim }, charts));
                    box.getBoundingClientRect();
                    await new Promise(requestAnimationFrame);
                    times.push(performance.now() - t0);
                    charts.forEach((c) => c.destroy());
                    box.remove();
                }
                return times.sort((a, b) => a - b)[2];
            }""",
            card,
        )
        ARTIFACTS_DIR.mkdir(exist_ok=True)
        node.screenshot(path=str(ARTIFACTS_DIR / "card-analysisView-64x1000.png"))
        print(f"analysisView card, 64 layers × 1,000 checkpoints: {ms:.0f} ms to render (median of 5)")
        (ARTIFACTS_DIR / "analysis-view-render-ms.txt").write_text(f"{ms:.1f}\n")
        assert not errors, errors
        assert ms < 1500, ms


def test_the_follow_ups_and_the_finding_order(blocked: tuple[Path, dict[int, Kept]], tmp_path: Path) -> None:
    """Follow-ups name real tools with arguments their input models accept: the grids at the pinch, the same run's
    step log, and its saved weights (a checkpoint directory, never its optimizer state)."""
    out, _ = blocked
    folder = tmp_path / "run" / "analysis"
    folder.mkdir(parents=True)
    for f in out.glob("analysis_*.json"):
        (folder / f.name).write_bytes(f.read_bytes())
    (tmp_path / "run" / "trainer_state.json").write_text('{"log_history": []}')
    for name in ("checkpoint-20", "checkpoint-100"):
        (tmp_path / "run" / name).mkdir()
        (tmp_path / "run" / name / "model.safetensors").write_bytes(b"")
    (tmp_path / "run" / "optimizer.pt").write_bytes(b"")
    outcome = view(folder)
    severities = [f.severity for f in outcome.findings]
    assert severities == sorted(severities, key=["critical", "warn", "info"].index)
    calls = {fu.tool: fu.args for fu in outcome.follow_ups if fu.tool != SPEC.name}
    assert calls == {
        "watch": {"metrics": str(tmp_path / "run" / "trainer_state.json")},
        "run_trajectory_analysis": {"dir": str(tmp_path / "run")},
        "run_weight_diff": {"checkpoint": str(tmp_path / "run" / "checkpoint-100")},
    }
    grids = [fu for fu in outcome.follow_ups if fu.tool == SPEC.name and "tensor" in fu.args]
    assert grids and layer_of(grids[0].args["tensor"]) == BLOCKED and grids[0].args["step"] == outcome.result.pinch.step
    assert [p for fu in outcome.follow_ups for p in follow_up_problems(fu)] == []
