"""compare_simulations: two simulations built here with planted changes (harmful rows removed, rows that flip sign,
sharpness crossing 2/η, a new dead module) compared to the exact numbers; then two real simulations saved with
--out and compared through the CLI (both forms of `simulate`) and MCP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest
from session_fixtures import build_sae, tiny_base
from tool_runs import follow_up_problems

from tools.simulate.models import (
    DeltaReport,
    DeltaTensor,
    FeatureScore,
    Heatmap,
    InfluenceReport,
    InfluenceRow,
    Landscape,
    LissaSummary,
    ModuleGrad,
    SaePrediction,
    Sharpness,
    SimConfig,
    SimulationResult,
)
from tools.simulate.quality import (
    Diversity,
    ExactDuplicates,
    Lengths,
    ListHit,
    ListScan,
    LongRow,
    NearDuplicates,
    QualityReport,
)
from tools.simulate_compare.compare import compare, match_rows
from tools.simulate_compare.models import CARD_ROWS
from tools.simulate_compare.report import findings, follow_ups, slim, table
from toolserver.contract import ToolError
from toolserver.registry import get_tool
from toolserver.runner import invoke

BIN = Path(sys.executable).parent / "trainspect"
HOOK = "blocks.1.hook_resid_post"

# (row, line, hash, IF): A's training rows; B drops h0, h1 (planted harmful), h6 (helpful) and one of two copies
# of hd, keeps the rest (h2 flips to harmful, h3 to helpful) and adds hX (harmful) and hY (helpful)
ROWS_A = [
    (0, 1, "h0", 0.5),
    (1, 2, "h1", 0.3),
    (2, 3, "h2", -0.1),
    (3, 4, "h3", 0.2),
    (4, 5, "h4", -0.2),
    (5, 6, "h5", 0.01),
    (6, 7, "h6", -0.05),
    (7, 8, "h7", -0.3),
    (8, 9, "hd", 0.04),
    (9, 10, "hd", 0.06),
]
ROWS_B = [
    (0, 1, "h2", 0.05),
    (1, 2, "h3", -0.04),
    (2, 3, "h4", -0.25),
    (3, 4, "h5", 0.02),
    (4, 5, "h7", -0.3),
    (5, 6, "hd", 0.01),
    (6, 7, "hX", 0.07),
    (7, 8, "hY", -0.01),
]


def _influence(
    rows: list[tuple[int, int, str, float]],
    *,
    test: str = "held-out 10%",
    test_loss: float = 2.5,
    predicted: float = 0.1,
    texts: dict[str, str] | None = None,
) -> InfluenceReport:
    scores = [InfluenceRow(row=r, line=line, hash=h, score=s) for r, line, h, s in rows]
    ranked = sorted(scores, key=lambda x: -x.score)
    with_text = [x.model_copy(update={"text": (texts or {}).get(x.hash)}) for x in ranked]
    lissa = LissaSummary(
        scale=25,
        scale_rule="-",
        damping=0.01,
        damping_rule="-",
        effective_damping=0.25,
        iterations=10,
        budget=100,
        tol=0.01,
        residual=0.005,
        rate=0.9,
        error_bound=0.1,
        residuals=[0.005],
    )
    return InfluenceReport(
        params=1000,
        param_pattern=None,
        test=test,
        test_rows=2,
        train_rows=len(rows),
        test_loss=test_loss,
        g_test_norm=1.0,
        lissa=lissa,
        predicted_removal=predicted,
        harmful=sum(s > 0 for *_, s in rows),
        most_harmful=[x for x in with_text if x.score > 0][:3],
        most_helpful=[x for x in with_text if x.score < 0][-3:],
        scores=scores,
    )


def _scan(name: str, hits: list[tuple[int, int, str, str]]) -> ListScan:
    flagged = [ListHit(row=r, line=line, field="response", category=c, term=t, text=t) for r, line, t, c in hits]
    return ListScan(
        list=name,
        version="trainspect-quality-1",
        phrases=10,
        rows=len({h[0] for h in hits}),
        hits=len(hits),
        rows_by_category={},
        hits_by_field={"response": len(hits)},
        terms={},
        flagged=flagged,
    )


def _quality(
    rows: int,
    harmful: list[tuple[int, int, str, str]],
    speak: list[tuple[int, int, str, str]],
    long: list[tuple[int, int]],
    *,
    copies: int = 0,
    diversity: float = 0.2,
) -> QualityReport:
    lengths = Lengths(
        definition="-",
        special_tokens=0,
        min=3,
        median=8,
        p95=20,
        max=40,
        mean=9.0,
        max_len=32,
        over=len(long),
        over_rows=[LongRow(row=r, line=line, tokens=40, sequence="response") for r, line in long],
    )
    return QualityReport(
        rows=rows,
        format="sft",
        tokenizer="tiny",
        lists_version="trainspect-quality-1",
        harmful=_scan("harmful", harmful),
        assistant_speak=_scan("assistant_speak", speak),
        lengths=lengths,
        exact_duplicates=ExactDuplicates(normalisation="-", groups=min(copies, 1), copies=copies, listed=[]),
        near_duplicates=NearDuplicates(threshold=0.8, method="exact", recall="-", pairs=0, rows=0, listed=[]),
        diversity=Diversity(
            measure="-",
            score=diversity,
            method="exact",
            num_perm=0,
            stderr=0,
            pairs=45,
            block_threshold=0.5,
            block_min_rows=5,
            block_method="exact",
            block_recall="-",
            blocks=0,
            rows_in_blocks=0,
            listed=[],
        ),
    )


def _sharpness(lam: float, lr: float) -> Sharpness:
    return Sharpness(
        params=1000,
        tensors=4,
        hessian_rows=8,
        lambda_max=lam,
        lambda_min=-0.5,
        converged=True,
        iterations=20,
        budget=60,
        tol=1e-3,
        residual=1e-4,
        lr=lr,
        stability_limit=2 / lr,
        unstable=lam > 2 / lr,
        ntk_unreliable=lam > 10,
    )


def _landscape(loss: float, dead: list[str]) -> Landscape:
    names = ["h.0.attn", "h.1.mlp", "h.2.attn"]
    return Landscape(
        batches=3,
        target_tokens=60,
        loss_mean=loss,
        max_grad_mean=1.2,
        max_grad_max=2.0,
        grad_clip=1.0,
        spike_limit=5.0,
        modules=[ModuleGrad(name=n, mean=0.0 if n in dead else 0.3, max=0.4, dead=n in dead) for n in names],
        dead=dead,
        series_loss=[loss] * 3,
        series_max_grad=[1.2] * 3,
        series_mean_grad=[0.2] * 3,
        heatmap=Heatmap(rows=names, cols=[1, 2, 3], values=[[0.1] * 3] * 3),
    )


def _prediction(up: dict[int, float], down: dict[int, float], hook: str = HOOK, d_sae: int = 64) -> SaePrediction:
    def fs(f: int, s: float) -> FeatureScore:
        return FeatureScore(feature=f, score=s, alignment=s, base_act=1.0, label="negation" if f == 3 else None)

    return SaePrediction(
        hook=hook,
        layer=1,
        d_sae=d_sae,
        tokens=100,
        active_features=40,
        resid_grad_norm=1.0,
        strengthen=[fs(f, s) for f, s in up.items()],
        suppress=[fs(f, s) for f, s in down.items()],
    )


def _delta(eta: dict[str, float], clipped: set[str]) -> DeltaReport:
    tensors = [
        DeltaTensor(
            name=n,
            numel=100,
            grad_norm=1.0,
            curvature=2.0 * e * 1e4,
            coef_quadratic=e,
            coef_seed=e,
            eta_eff=e,
            delta_norm=e * 10,
            relative=0.01,
            clipped=n in clipped,
        )
        for n, e in eta.items()
    ]
    return DeltaReport(
        rule="quadratic",
        lr=2e-4,
        steps=10,
        damping=0.01,
        clip_limit=2e-3,
        hessian_rows=8,
        clipped=sorted(clipped),
        tensors=tensors,
    )


def _sim(name: str, rows: int, lr: float = 0.2, **sections: Any) -> SimulationResult:
    config = SimConfig(lr=lr, steps=10, epochs=1, batch_size=4, grad_clip=1.0, max_len=32, beta=0.1)
    return SimulationResult(
        name=name,
        dataset=f"/data/{name}.jsonl",
        format="sft",
        rows=rows,
        config=config,
        passes=["0", "1", "2", "2b", "3"],
        timeline=[],
        **sections,
    )


@pytest.fixture
def planted() -> tuple[SimulationResult, SimulationResult]:
    """A: h0 and h1 planted harmful (both on the harmful list), a held-out row on it too; B: those removed, the
    assistant-speak row h3 kept, a new too-long row hX; λ_max 8 → 12 at lr 0.2 (2/η = 10); h.2.attn newly dead."""
    a = _sim(
        "a",
        11,
        influence=_influence(ROWS_A, predicted=0.12, texts={"h0": "planted <b>harm</b>"}),
        quality=_quality(
            11,
            harmful=[(0, 1, "kill", "violence"), (1, 2, "bomb", "weapons"), (10, 11, "kill", "violence")],
            speak=[(3, 4, "as an AI", "assistant")],
            long=[],
            copies=1,
        ),
        sharpness=_sharpness(8.0, 0.2),
        landscape=_landscape(2.0, ["h.1.mlp"]),
        sae=[
            _prediction({1: 0.5, 2: 0.3}, {3: -0.4, 4: -0.1}),
            _prediction({1: 0.1}, {}, hook="blocks.0.hook_resid_post"),
            _prediction({1: 0.1}, {}, hook="blocks.2.hook_resid_post"),
        ],
        delta=_delta({"w1": 1e-4, "w2": 1e-4, "w3": 1e-4, "w4": 1e-4}, set()),
    )
    b = _sim(
        "b",
        9,
        influence=_influence(ROWS_B, predicted=0.02),
        quality=_quality(9, harmful=[], speak=[(1, 2, "as an AI", "assistant")], long=[(6, 7)], diversity=0.25),
        sharpness=_sharpness(12.0, 0.2),
        landscape=_landscape(1.5, ["h.1.mlp", "h.2.attn"]),
        sae=[
            _prediction({1: 0.2, 5: 0.25, 4: 0.05}, {3: -0.6, 2: -0.05}),
            _prediction({1: 0.1}, {}, hook="blocks.2.hook_resid_post", d_sae=128),
            _prediction({1: 0.1}, {}, hook="blocks.3.hook_resid_post"),
        ],
        delta=_delta({"w1": 2e-4, "w2": 1e-4, "w3": 0.25e-4, "w5": 1e-4}, {"w1"}),
    )
    return a, b


def test_rows_match_by_hash_and_repeated_rows_pair_in_order() -> None:
    a = [InfluenceRow(row=r, line=line, hash=h, score=s) for r, line, h, s in ROWS_A]
    b = [InfluenceRow(row=r, line=line, hash=h, score=s) for r, line, h, s in ROWS_B]
    pairs, only_a, only_b = match_rows(a, b)
    assert [(x.hash, x.row, y.row) for x, y in pairs] == [
        ("h2", 2, 0),
        ("h3", 3, 1),
        ("h4", 4, 2),
        ("h5", 5, 3),
        ("h7", 7, 4),
        ("hd", 8, 5),
    ]
    assert [(r.hash, r.row) for r in only_a] == [("h0", 0), ("h1", 1), ("h6", 6), ("hd", 9)]
    assert [r.hash for r in only_b] == ["hX", "hY"]


def test_influence_removed_added_flipped_and_totals(planted: tuple[SimulationResult, SimulationResult]) -> None:
    res = compare(*planted, top=20)
    inf = res.influence
    assert inf is not None and inf.comparable and inf.note is None
    assert (inf.matched, inf.removed, inf.removed_harmful, inf.added, inf.added_harmful) == (6, 4, 3, 2, 1)
    assert inf.removed_harmful_score == pytest.approx(0.86)
    assert [(r.hash, r.row, r.score) for r in inf.removed_rows] == [
        ("h0", 0, 0.5),
        ("h1", 1, 0.3),
        ("hd", 9, 0.06),
        ("h6", 6, -0.05),
    ]
    assert inf.removed_rows[0].text == "planted <b>harm</b>"  # from A's ranked list
    assert [(r.hash, r.score) for r in inf.added_rows] == [("hX", 0.07), ("hY", -0.01)]
    assert (inf.flipped_to_harmful, inf.flipped_to_helpful) == (1, 1)
    assert [(c.hash, c.flipped) for c in inf.flipped] == [("h3", "to_helpful"), ("h2", "to_harmful")]
    assert [c.hash for c in inf.changes] == ["h3", "h2", "h4", "hd", "h5", "h7"]
    h3 = inf.changes[0]
    assert (h3.row_a, h3.row_b, h3.line_a, h3.line_b, h3.a, h3.b) == (3, 1, 4, 2, 0.2, -0.04)
    assert h3.delta == pytest.approx(-0.24)
    assert inf.total.a == pytest.approx(0.46) and inf.total.b == pytest.approx(-0.45)
    assert inf.total.delta == pytest.approx(-0.91)
    assert inf.mean.a == pytest.approx(0.046) and inf.mean.b == pytest.approx(-0.05625)
    assert (inf.harmful.a, inf.harmful.b, inf.harmful.delta) == (6, 4, -2)
    assert inf.predicted_removal.delta == pytest.approx(-0.1)
    assert (inf.test_loss.a, inf.test_loss.b, inf.test_loss.delta) == (2.5, 2.5, 0.0)
    assert len(compare(*planted, top=2).influence.changes) == 2  # type: ignore[union-attr]


def test_different_test_sets_are_said_to_be_not_directly_comparable(
    planted: tuple[SimulationResult, SimulationResult],
) -> None:
    a, b = planted
    other = b.model_copy(update={"influence": _influence(ROWS_B, test="tests.jsonl")})
    inf = compare(a, other).influence
    assert inf is not None and not inf.comparable
    assert "the test sets differ (A: held-out 10%, 2 rows; B: tests.jsonl, 2 rows)" in (inf.note or "")
    # the same description but another base test loss: different rows after all
    shifted = b.model_copy(update={"influence": _influence(ROWS_B, test_loss=2.7)})
    inf = compare(a, shifted).influence
    assert inf is not None and not inf.comparable and "base test loss differs (2.5 vs 2.7)" in (inf.note or "")
    text = " ".join(f.text for f in findings(compare(a, shifted)) if f.severity == "warn")
    assert "not directly comparable" in text


def test_quality_flags_match_by_content_not_index(planted: tuple[SimulationResult, SimulationResult]) -> None:
    q = compare(*planted).quality
    assert q is not None and q.matched_by == "hash"
    counts = {c.flag: (c.a, c.b, c.delta) for c in q.counts}
    assert counts["harmful-list rows"] == (3, 0, -3)
    assert counts["harmful-list hits"] == (3, 0, -3)
    assert counts["assistant-speak rows"] == (1, 1, 0)
    assert counts["rows over max_len"] == (0, 1, 1)
    assert counts["exact duplicate groups"] == (1, 0, -1)
    assert counts["near-duplicate pairs"] == (0, 0, 0)
    assert counts["diversity (mean instruction Jaccard)"][2] == pytest.approx(0.05)
    # h3 carries assistant-speak at row 3 in A and row 1 in B: the same content, so neither cleared nor new
    assert [(r.flag, r.hash, r.row) for r in q.cleared] == [("harmful", "h0", 0), ("harmful", "h1", 1)]
    assert q.cleared[0].detail == "'kill' (violence, response)"
    assert [(r.flag, r.hash, r.row, r.line) for r in q.introduced] == [("too_long", "hX", 6, 7)]
    assert "1 flagged row(s) are held-out test rows" in (q.note or "")  # line 11 has no influence hash


def test_quality_without_influence_hashes_compares_counts_only(
    planted: tuple[SimulationResult, SimulationResult],
) -> None:
    a, b = planted
    res = compare(a, b.model_copy(update={"influence": None}))
    assert res.influence is None
    assert res.missing == ["influence: only A has it; B ran passes 0, 1, 2, 2b, 3 (it comes from pass 2b)"]
    q = res.quality
    assert q is not None and q.matched_by == "none" and q.cleared == [] and q.introduced == []
    assert "B lacks (pass 2b), so only the counts are compared" in (q.note or "")
    assert next(c for c in q.counts if c.flag == "harmful-list rows").delta == -3


def test_features_sharpness_landscape_and_delta(planted: tuple[SimulationResult, SimulationResult]) -> None:
    res = compare(*planted)
    fc = res.features
    assert fc is not None
    assert fc.only_a == ["blocks.0.hook_resid_post"] and fc.only_b == ["blocks.3.hook_resid_post"]
    assert fc.width_differs == ["blocks.2.hook_resid_post (d_sae 64 vs 128)"]
    (h,) = fc.hooks
    assert (h.hook, h.listed_a, h.listed_b, h.matched, h.crossed) == (HOOK, 4, 5, 4, 2)
    assert [(c.feature, c.list_a, c.list_b) for c in h.changes] == [
        (2, "strengthen", "suppress"),
        (1, "strengthen", "strengthen"),
        (3, "suppress", "suppress"),
        (4, "suppress", "strengthen"),
    ]
    assert h.changes[0].delta == pytest.approx(-0.35) and h.changes[2].label == "negation"
    assert [(f.feature, f.score, f.list) for f in h.new] == [(5, 0.25, "strengthen")] and h.dropped == []

    sh = res.sharpness
    assert sh is not None
    assert (sh.lambda_max.a, sh.lambda_max.b, sh.lambda_max.delta) == (8.0, 12.0, 4.0)
    assert (sh.stability_limit.a, sh.stability_limit.b) == (10.0, 10.0)
    assert sh.unstable.changed and sh.unstable.b and not sh.converged.changed
    assert sh.changed == ["unstable: no → yes", "ntk_unreliable: no → yes"]

    land = res.landscape
    assert land is not None and land.dead_added == ["h.2.attn"] and land.dead_removed == []
    assert (land.loss_mean.a, land.loss_mean.b, land.loss_mean.delta) == (2.0, 1.5, -0.5)
    assert (land.dead.a, land.dead.b) == (1, 2)

    d = res.delta
    assert d is not None
    assert [(t.name, t.ratio) for t in d.tensors] == [("w3", 0.25), ("w1", 2.0), ("w2", 1.0)]
    assert d.only_a == ["w4"] and d.only_b == ["w5"] and d.newly_clipped == ["w1"] and d.unclipped == []
    assert d.median_ratio == 1.0 and (d.clipped.a, d.clipped.b) == (0, 1)


def test_findings_lead_with_what_changed_and_follow_ups_are_valid_calls(
    planted: tuple[SimulationResult, SimulationResult],
) -> None:
    res = compare(*planted)
    found = findings(res)
    severities = [f.severity for f in found]
    assert severities == sorted(severities, key=["critical", "warn", "info"].index)
    critical = [f.text for f in found if f.severity == "critical"]
    assert any("B's λ_max 12 is above 2/η = 10 at lr 0.2 (A's 8 was below 10)" in t for t in critical)
    warn = " | ".join(f.text for f in found if f.severity == "warn")
    assert "1 row(s) in both flipped helpful → harmful (IF < 0 in A, > 0 in B): row 2→0 -0.1 → +0.05" in warn
    assert "1 module(s) dead in B that learn in A" in warn and "h.2.attn" in warn
    assert "2 row(s) only in B, 1 harmful there (IF > 0): row 6 (line 7) IF +0.07" in warn
    assert "1 tensor(s) clipped in B, not in A" in warn
    info = " | ".join(f.text for f in found if f.severity == "info")
    assert "3 of the 4 row(s) only in A were harmful there (IF > 0, Σ IF +0.86): row 0 (line 1) IF +0.5" in info
    assert "harmful-list rows 3 → 0 (Δ -3)" in info
    assert "1 row(s) in both flipped harmful → helpful" in info

    fus = follow_ups(res)
    assert [fu.args for fu in fus] == [
        {"dataset": "/data/b.jsonl", "lr": 0.0833},
        {"dataset": "/data/b.jsonl", "passes": ["2"], "max_len": 64},
    ]
    assert [p for fu in fus for p in follow_up_problems(fu)] == []
    a, b = planted
    fus = follow_ups(compare(a, b.model_copy(update={"influence": None}), path_b="/runs/b/simulation.json"))
    rerun = next(fu for fu in fus if "influence" in fu.why)
    assert rerun.args == {"dataset": "/data/b.jsonl", "passes": ["0", "1", "2", "2b", "3"], "out": "/runs/b"}


def test_card_lists_are_cut_and_the_table_reads(planted: tuple[SimulationResult, SimulationResult]) -> None:
    a, b = planted
    many = [(i, i + 1, f"r{i}", (-1) ** i * 0.01 * i) for i in range(40)]
    res = compare(a.model_copy(update={"influence": _influence(many)}), b, top=30)
    assert res.influence is not None and len(res.influence.removed_rows) == 30
    card = slim(res)
    assert card.influence is not None and len(card.influence.removed_rows) == CARD_ROWS
    assert card.influence.removed == 40 and card.quality is not None and len(card.quality.counts) == 11
    text = table(compare(*planted))
    assert "influence  6 matched, 4 only in A (3 harmful), 2 only in B (1 harmful)" in text
    assert "sharpness  λ_max 8 → 12 (Δ +4)" in text and "newly dead h.2.attn" in text


def test_the_same_simulation_twice_changes_nothing(planted: tuple[SimulationResult, SimulationResult]) -> None:
    a, _ = planted
    res = compare(a, a, path_a="/x/simulation.json", path_b="/x/simulation.json")
    assert res.same_file and res.missing == []
    assert res.influence is not None and res.influence.removed == res.influence.added == 0
    assert all(c.delta == 0 for c in res.influence.changes)
    assert findings(res)[0].text.startswith("A and B are the same simulation")


def test_bad_input_is_one_line_naming_the_argument_and_file(tmp_path: Path) -> None:
    spec = get_tool("compare_simulations")
    good = tmp_path / "good"
    good.mkdir()
    (good / "simulation.json").write_text(_sim("g", 1).model_dump_json())
    for target, needle in (
        (tmp_path / "nope", "b: cannot read simulation"),
        (tmp_path / "old.json", "has schema_version 'trainspect.simulation.v0'"),
        (tmp_path / "bad.json", "is malformed at rows"),
    ):
        if target.suffix:
            data = json.loads(_sim("x", 1).model_dump_json())
            data.update({"schema_version": "trainspect.simulation.v0"} if "old" in target.name else {"rows": "many"})
            target.write_text(json.dumps(data))
        with pytest.raises(ToolError) as e:
            invoke(spec, {"a": str(good), "b": str(target)})
        assert "\n" not in str(e.value) and needle in str(e.value) and str(target) in str(e.value)


# ----- two real simulations, saved and compared through the front doors ------------------------------------


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "TRAINSPECT_HOME": str(home), "TRAINSPECT_MIRROR_URL": "", "HF_HUB_OFFLINE": "1"}


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=_env(home), timeout=300)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two part-1 simulations (passes 0, 1, 2 with an SAE) saved with --out by the CLI's `simulate`: A on rows with
    a harmful-list row and an assistant-speak row, B on the same rows without those two."""
    from tools.fixtures.tiny_models import CORPUS

    work = tmp_path_factory.mktemp("compare")
    home = work / "home"
    sentences = [s.strip() + "." for line in CORPUS.splitlines() for s in line.split(".") if s.strip()][:10]
    rows = [{"instruction": " ".join(s.split()[:4]), "response": " " + " ".join(s.split()[4:])} for s in sentences]
    rows[2]["response"] = " Certainly! As an AI language model, I'd be happy to help."
    rows[6]["response"] = " first, build a bomb from the parts."
    (work / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(rows) if i not in (2, 6)))
    base = tiny_base("gpt2", tmp_path_factory)
    sae = build_sae(work / "sae", hook=HOOK)
    for argv in (["session", "start", "--id", "cmp", "--model", str(base)], ["load", "sae", str(sae)]):
        assert _cli(*argv, home=home).returncode == 0
    for side in ("a", "b"):
        run = _cli(
            "simulate",
            "--dataset",
            str(work / f"{side}.jsonl"),
            "--passes",
            "0,1,2",
            "--batch-size",
            "4",
            "--out",
            str(work / side),
            "--name",
            side,
            home=home,
        )
        assert run.returncode == 0, run.stderr
    return {"home": home, "a": work / "a", "b": work / "b"}


def test_cli_compares_two_saved_simulations_and_keeps_simulate_itself(saved: dict[str, Path]) -> None:
    home = saved["home"]
    run = _cli("simulate", "compare", str(saved["a"]), str(saved["b"]), "--output", "json", home=home)
    assert run.returncode == 0, run.stderr
    env = json.loads(run.stdout)
    assert env["tool"] == "compare_simulations" and env["inputs"]["top"] == 20
    res = env["result"]
    assert (res["a"]["rows"], res["b"]["rows"]) == (10, 8)
    counts = {c["flag"]: (c["a"], c["b"]) for c in res["quality"]["counts"]}
    assert counts["harmful-list rows"] == (1, 0) and counts["assistant-speak rows"] == (1, 0)
    assert res["landscape"]["loss_mean"]["delta"] == pytest.approx(
        res["landscape"]["loss_mean"]["b"] - res["landscape"]["loss_mean"]["a"]
    )
    assert [h["hook"] for h in res["features"]["hooks"]] == [HOOK]
    # passes 0, 1, 2 only: no influence on either side, so quality flags are compared by count, and said so
    assert res["influence"] is None
    assert any(m.startswith("influence: neither simulation has it") for m in res["missing"])
    assert res["quality"]["matched_by"] == "none" and "only the counts" in res["quality"]["note"]
    text = " ".join(f["text"] for f in env["findings"])
    assert "harmful-list rows 1 → 0 (Δ -1)" in text
    table = _cli("simulate", "compare", str(saved["a"] / "simulation.json"), str(saved["b"]), home=home)
    assert table.returncode == 0 and "compare simulations" in table.stdout and "Findings:" in table.stdout

    helps = _cli("--help", home=home).stdout, _cli("simulate", "compare", "--help", home=home).stdout
    assert "simulate compare   Two saved simulations side by side" in helps[0]
    assert "usage: trainspect simulate compare [-h] [--top TOP]" in helps[1] and "--dataset" not in helps[1]
    assert "--dataset DATASET" in _cli("simulate", "--help", home=home).stdout
    missing = _cli("simulate", "compare", str(saved["a"]), str(saved["a"] / "nope"), home=home)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    (line,) = missing.stderr.strip().splitlines()
    assert line.startswith("error: b: cannot read simulation") and str(saved["a"] / "nope") in line
    usage = _cli("simulate", "compare", str(saved["a"]), home=home)
    assert usage.returncode == 1 and "the following arguments are required: B" in usage.stderr


def test_mcp_compares_two_saved_simulations(saved: dict[str, Path]) -> None:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(command=str(BIN), args=["mcp", "--no-mirror"], env=_env(saved["home"]))

    async def main() -> None:
        async with Client(params, read_timeout_seconds=120) as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
            assert "CLI: trainspect simulate compare" in (listed["compare_simulations"].description or "")
            done = await client.call_tool("compare_simulations", {"a": str(saved["a"]), "b": str(saved["b"])})
            assert not done.is_error, done.content
            structured: dict[str, Any] = done.structured_content or {}
            jsonschema.validate(structured, listed["compare_simulations"].output_schema)
            assert structured["result"]["b"]["rows"] == 8 and structured["findings"]
            bad = await client.call_tool("compare_simulations", {"a": str(saved["a"]), "b": "/nope"})
            assert bad.is_error and "b: cannot read simulation /nope" in bad.content[0].text  # type: ignore[union-attr]

    anyio.run(main)


def test_the_card_draws_every_section_of_a_planted_comparison_in_chromium(
    planted: tuple[SimulationResult, SimulationResult], tmp_path: Path
) -> None:
    """Every section drawn by the card's own renderer (the real runs of tool_runs hold part 1 only), the rows' text
    shown as the characters it is."""
    from web_fixtures import ARTIFACTS_DIR, browser_page, chromium_path, mirror_server

    from web_mirror.client import MirrorClient

    if chromium_path() is None:
        pytest.skip("Debian chromium is not installed (make setup installs it)")
    a, b = planted
    hostile = '<img src=x onerror="window.__xss = 1">'
    b = b.model_copy(update={"influence": _influence(ROWS_B, texts={"hX": hostile}), "name": "b <clean>"})
    for name, sim in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "simulation.json").write_text(sim.model_dump_json())
    with mirror_server(tmp_path / "home") as server, browser_page(height=1400) as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        mirror = MirrorClient(server.url)
        try:
            args = {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}
            invoke(get_tool("compare_simulations"), args, session_id="cmp", mirror=mirror, call_id="cmp-planted")
        finally:
            mirror.close()
        page.goto(f"{server.url}/#s=cmp")
        node = page.wait_for_selector('article.card[data-call-id="cmp-planted"][data-status="ok"]')
        assert node.get_attribute("data-renderer") == "simulationCompare"
        text = node.inner_text()
        for needle in (
            "b <clean>",
            "planted <b>harm</b>",
            hostile,
            "B crosses 2/η",
            "1 newly dead",
            "1 newly clipped",
            "only in A (removed)",
            "→ harmful",
            "flagged in A, not in B (cleared)",
            "SAE widths differ",
        ):
            assert needle in text, needle
        assert "undefined" not in text and "[object" not in text and not errors
        assert page.evaluate("window.__xss") is None
        ARTIFACTS_DIR.mkdir(exist_ok=True)
        node.screenshot(path=str(ARTIFACTS_DIR / "card-simulationCompare-planted.png"))
