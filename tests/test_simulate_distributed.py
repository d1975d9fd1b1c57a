"""simulate under torchrun: 2 CPU ranks (gloo) give the one-process landscape, feature predictions, sharpness and
pass 2b influence scores (to 1e-5; the sums are only taken in another order), and rank 1 writes nothing.

The dataset holds a batch with no target token (its prompts outgrow --max-len) between trained ones, so the
batch numbering and the shard ownership are checked across a skipped batch, and an odd number of trained batches
(one rank holds more than the other). Rank 1's writes are watched by a Python audit hook (sitecustomize on
PYTHONPATH) that logs every file opened for writing, created, renamed or removed under the test's directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from session_fixtures import build_sae, tiny_base
from test_simulate import SENTENCES, sft_rows, write_jsonl

from session.state import load_session
from tools.simulate import artifacts
from toolserver.registry import get_tool
from toolserver.runner import invoke, results_dir

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
MAX_LEN = 40  # the normal rows hold at most 32 tokens; the long prompts 52

SPY = """
import atexit, json, os, sys

_root, _log, _rank = os.environ.get("SPY_ROOT"), os.environ.get("SPY_LOG"), os.environ.get("RANK")
if _root and _log and _rank is not None:
    _seen, _on = [], [True]
    _write = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _hook(event, args):
        if not _on[0]:
            return
        paths = []
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in str(mode) for c in "wax+") or flags & _write:
                paths = [args[0]]
        elif event in ("os.rename", "os.replace", "os.mkdir", "os.remove", "os.rmdir", "shutil.copyfile"):
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        for p in paths:
            p = os.fsdecode(p)
            if os.path.abspath(p).startswith(_root):
                _seen.append([event, p])

    def _dump():
        _on[0] = False
        with open(f"{_log}.{_rank}", "w") as f:
            json.dump(_seen, f)

    sys.addaudithook(_hook)
    atexit.register(_dump)
"""


@pytest.fixture
def setup(tmp_path: Path, isolated_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny GPT-2 session with an SAE; 12 trained rows around 4 rows that are all prompt after truncation."""
    base = tiny_base("gpt2", tmp_path_factory)
    sae = build_sae(tmp_path / "sae", hook="blocks.1.hook_resid_post")
    rows = sft_rows(16)
    long = [{"instruction": " ".join(SENTENCES[i : i + 3]), "response": " the end."} for i in range(4)]
    data = write_jsonl(tmp_path / "data.jsonl", rows[:4] + long + rows[4:12])  # batch 2 of 4 has no target
    test = write_jsonl(tmp_path / "test.jsonl", rows[12:16])
    invoke(get_tool("start_session"), {"id": "dist", "model": str(base)})
    invoke(get_tool("load_sae"), {"sae": [str(sae)]}, session_id="dist")
    spy = tmp_path / "spy"
    spy.mkdir()
    (spy / "sitecustomize.py").write_text(SPY)
    env = {
        **os.environ,
        "TRAINSPECT_HOME": str(isolated_home),
        "TRAINSPECT_MIRROR_URL": "",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # 2 shared cores: one process or two ranks, one thread each
        "PYTHONPATH": os.pathsep.join([str(spy), str(ROOT)]),
        "SPY_ROOT": str(tmp_path),
        "SPY_LOG": str(tmp_path / "writes"),
    }
    return {"data": data, "test": test, "env": env, "root": tmp_path, "home": isolated_home}


def _simulate(s: dict[str, Any], out: str, ranks: int) -> dict[str, Any]:
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks)] if ranks > 1 else []
    cli = [*(launch or [sys.executable]), "-m", "toolserver.cli", "simulate"]
    flags = [
        "--dataset", str(s["data"]), "--test", str(s["test"]), "--passes", "1,2,2b", "--batch-size", "4",
        "--max-len", str(MAX_LEN), "--hessian-rows", "12", "--lissa-tol", "1e-3", "--influence-params", r"h\.1\.",
        "--out", str(s["root"] / out), "--save", str(s["root"] / f"{out}.json"), "--output", "json",
    ]  # fmt: skip
    env = {**s["env"], "RANK": "0"} if ranks == 1 else s["env"]  # one process: its writes are logged as rank 0's
    run = subprocess.run([*cli, *flags], env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)  # one JSON document: rank 1 printed nothing


def _close(a: list[float | None], b: list[float | None]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            assert y == pytest.approx(x, rel=TOL, abs=1e-9)


def test_two_gloo_ranks_give_the_one_process_simulation_and_rank_1_writes_nothing(setup: dict[str, Any]) -> None:
    s = setup
    one = _simulate(s, "one", 1)
    (s["root"] / "writes.0").rename(s["root"] / "writes.one")
    results_before = len(list(results_dir().glob("*.json")))
    two = _simulate(s, "two", 2)
    a, b = artifacts.read(s["root"] / "one"), artifacts.read(s["root"] / "two")

    la, lb = a.landscape, b.landscape
    assert la is not None and lb is not None
    assert (la.batches, la.skipped_batches) == (lb.batches, lb.skipped_batches) == (3, 1)
    assert la.heatmap.cols == lb.heatmap.cols == [1, 2, 3]  # the skipped batch does not take a number
    assert la.target_tokens == lb.target_tokens and la.dead == lb.dead
    assert [m.name for m in la.modules] == [m.name for m in lb.modules]
    _close([m.mean for m in la.modules], [m.mean for m in lb.modules])
    _close([m.max for m in la.modules], [m.max for m in lb.modules])
    _close(la.series_loss, lb.series_loss)
    _close(la.series_max_grad, lb.series_max_grad)
    _close(la.series_mean_grad, lb.series_mean_grad)
    _close([la.loss_mean, la.max_grad_mean], [lb.loss_mean, lb.max_grad_mean])
    _close([v for row in la.heatmap.values for v in row], [v for row in lb.heatmap.values for v in row])
    assert [(x.type, x.step) for x in a.signals] == [(x.type, x.step) for x in b.signals]

    (pa,), (pb,) = a.sae, b.sae
    assert pa.tokens == pb.tokens
    _close([pa.resid_grad_norm], [pb.resid_grad_norm])
    assert [f.feature for f in pa.strengthen] == [f.feature for f in pb.strengthen]
    _close([f.score for f in pa.strengthen + pa.suppress], [f.score for f in pb.strengthen + pb.suppress])

    ta, tb = artifacts.read_tensors(s["root"] / "one"), artifacts.read_tensors(s["root"] / "two")
    assert ta.keys() == tb.keys() and any(k.startswith("mean_grad.") for k in ta)
    for k, t in ta.items():
        scale = float(t.abs().max()) or 1.0
        assert float((t - tb[k]).abs().max()) <= TOL * scale, k

    sa, sb = a.sharpness, b.sharpness
    assert sa is not None and sb is not None and sa.converged
    _close([sa.lambda_max, sa.lambda_min], [sb.lambda_max, sb.lambda_min])
    assert sa.iterations == sb.iterations
    ia, ib = a.influence, b.influence
    assert ia is not None and ib is not None
    assert ia.lissa.iterations == ib.lissa.iterations
    _close([ia.test_loss, ia.g_test_norm], [ib.test_loss, ib.g_test_norm])
    assert [x.row for x in ia.scores] == [x.row for x in ib.scores] == list(range(16))
    _close([x.score for x in ia.scores], [x.score for x in ib.scores])
    assert all(x.score == 0 for x in ia.scores[4:8])  # all prompt: no loss of their own, no influence

    # rank 0 is a normal run: one stored result, one call record, the --out and --save files; rank 1 wrote nothing
    assert two["call_id"] != one["call_id"] and two["result"]["artifacts"] == b.artifacts
    assert len(list(results_dir().glob("*.json"))) == results_before + 1
    calls = [c.tool for c in load_session("dist").history]
    assert calls == ["start_session", "load_sae", "run_simulation", "run_simulation"]
    assert json.loads((s["root"] / "two.json").read_text())["call_id"] == two["call_id"]
    logged = {r: json.loads((s["root"] / f"writes.{r}").read_text()) for r in ("one", "0", "1")}
    assert any(str(s["root"] / "two") in p for _, p in logged["0"])  # the spy sees rank 0's --out
    assert any(str(s["root"] / "one") in p for _, p in logged["one"])
    assert logged["1"] == []


def test_another_tool_under_torchrun_refuses_in_one_line(setup: dict[str, Any]) -> None:
    env = {**setup["env"], "WORLD_SIZE": "2", "RANK": "0"}
    run = subprocess.run(
        [sys.executable, "-m", "toolserver.cli", "session", "status"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [
        "error: session status does not run under torchrun (WORLD_SIZE=2): only simulate shards its work over "
        "ranks (hint: run it as one process: trainspect session status ...)"
    ]
