"""Every registered tool run once for real, on tiny real models, through the runner (as every front door does).

Shared by the registry tests (follow-ups checked against the registry) and the page test (every card kind drawn
from a real run's slim payload). Adding a tool adds its call here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from session_fixtures import build_sae

from session.model_cache import ModelCache
from tools.fixtures.tiny_models import CORPUS
from toolserver.contract import Envelope, FollowUp, ToolSpec
from toolserver.registry import get_tool
from toolserver.runner import invoke


def watch_log(path: Path) -> Path:
    """A small training log with a gradient spike and a plateau, as StepLogger writes it."""
    rows = [
        {
            "step": i,
            "loss": 2.5 * math.exp(-i / 30) + 0.3,
            "maxGrad": 40.0 if i == 50 else 1.0 + 0.01 * (i % 5),
            "gradNorms": {"h.0.attn.c_attn": 0.5, "h.1.mlp.c_fc": 0.0 if i > 60 else 0.3},
        }
        for i in range(1, 121)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


HOSTILE = '<script>window.__xss = "model-diff"</script>'


def hostile_eval(work: Path) -> Path:
    """A few eval rows whose prompt, answer and choices carry markup: the card must show it as text."""
    rows = [
        {"prompt": f"The capital of {HOSTILE}", "answer": HOSTILE, "category": "factual", "topic": "<b>geo</b>"},
        {"prompt": "Which keyword starts a loop?", "choices": ["for", HOSTILE], "answer": "for", "category": "code"},
        {"instruction": f"Repeat {HOSTILE}", "response": f"I am not sure, but {HOSTILE}", "category": "refusal"},
    ]
    path = work / "hostile-eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def trajectory_run(models: dict[str, Path], work: Path) -> Path:
    """Three .pt checkpoints along the full fine-tune's direction: its own at step 5, then further along it."""
    import torch
    from safetensors.torch import load_file

    out = work / "trajectory"
    out.mkdir(parents=True, exist_ok=True)
    base = load_file(models["base"] / "model.safetensors")
    raw = torch.load(models["full"], weights_only=True)
    tuned = raw.get("state_dict", raw)
    for step, reach in ((5, 1.0), (10, 1.6), (15, 1.9)):
        state = {k: base[k] + reach * (v - base[k]) if k in base else v for k, v in tuned.items()}
        torch.save({"step": step, "state_dict": state}, out / f"ckpt_{step}.pt")
    return out


def analysis_run(work: Path) -> Path:
    """A tiny real training run (30 steps, clip norm 1) writing analysis checkpoints, its step log beside them."""
    import torch
    from watch_fixtures import BATCH, sequences, tiny_lm

    from tools.watch import StepLogger
    from tools.watch.analysis_checkpoint import AnalysisConfig

    out = work / "analysis <i>run</i>"
    model = tiny_lm()
    model.config._attn_implementation = "eager"  # attention weights are returned only by eager attention
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = sequences(30 * BATCH)
    config = AnalysisConfig(grad_clip=1.0)
    with StepLogger(model, path=out / "metrics.jsonl", analysis_dir=out / "analysis", analysis=config) as log:
        for step in range(1, 31):
            x = data[(step - 1) * BATCH : step * BATCH]
            opt.zero_grad()
            outputs = model(input_ids=x, labels=x, output_attentions=True)
            outputs.loss.backward()
            log.step(step, outputs.loss, opt, attentions=outputs.attentions)  # before clipping: pre-clip gradients
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    return out / "analysis"


def simulation_pairs(work: Path, drop: tuple[int, ...] = ()) -> Path:
    """Preference pairs for a simulation, one with assistant-speak and one carrying markup (shown as text); `drop`
    leaves rows out (a cleaned copy, for compare_simulations)."""
    sentences = [t.strip() + "." for line in CORPUS.splitlines() for t in line.split(".") if t.strip()][:8]
    rows = [
        {"prompt": " ".join(t.split()[:4]), "chosen": " " + " ".join(t.split()[4:]), "rejected": " the loss."}
        for t in sentences
    ]
    rows[2]["chosen"] = " Certainly! As an AI language model, I'd be happy to help."
    rows[5]["prompt"] = HOSTILE
    path = work / f"pairs{''.join(f'-{i}' for i in drop)}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(rows) if i not in drop))
    return path


def run_every_tool(
    models: dict[str, Path], work: Path, *, mirror: Any | None = None, session: str = "every-tool"
) -> list[tuple[ToolSpec[Any, Any], Envelope[Any]]]:
    """(spec, envelope) for one real call of every registered tool, in the order a user would make them."""
    cache = ModelCache()
    sae = build_sae(work / "sae", hook="blocks.1.hook_resid_post")
    corpus = work / "corpus.txt"
    corpus.write_text(CORPUS)
    # B: A without its assistant-speak row, both with influence; A (run second: its card is the screenshot) with pass
    # 3's checkpoint
    second = {"hessian_rows": 8, "sharpness_budget": 30, "sharpness_tol": 1e-2}
    sim, sim_a, sim_b = {"batch_size": 4, **second}, work / "sim-a", work / "sim-b"
    calls: list[tuple[str, dict[str, Any]]] = [
        ("start_session", {"id": session, "model": str(models["base"])}),
        ("load_sae", {"sae": [str(sae)]}),
        (
            "run_simulation",
            {
                "dataset": str(simulation_pairs(work, drop=(2,))),
                **sim,
                "out": str(sim_b),
                "passes": ["0", "1", "2", "2b", "2c"],
            },
        ),
        (
            "run_simulation",
            {
                "dataset": str(simulation_pairs(work)),
                **sim,
                "name": "pairs <sim>",
                "out": str(sim_a),
                "passes": ["0", "1", "2", "2b", "2c", "3"],
            },
        ),
        ("compare_simulations", {"a": str(sim_a), "b": str(sim_b)}),
        ("run_weight_diff", {"checkpoint": str(models["full"]), "name": "full <ft>"}),
        ("run_weight_diff", {"checkpoint": str(models["lora"]), "name": "lora"}),
        ("run_residual_drift", {"checkpoint": str(models["full"]), "name": "full <ft>"}),
        ("run_sae_diff", {"checkpoint": str(models["full"]), "name": "full <ft>"}),
        ("run_sae_train", {"layer": 1, "dataset": str(corpus), "d_sae": 64, "k": 8, "out": str(work / "trained-sae")}),
        ("run_sae_align", {"a": str(sae), "b": str(work / "trained-sae")}),
        ("run_merge_analysis", {"checkpoint": str(models["lora"]), "name": "lora <merge>", "max_new_tokens": 8}),
        ("run_trajectory_analysis", {"checkpoints": str(trajectory_run(models, work) / "*.pt"), "name": "<b>run</b>"}),
        ("run_model_diff", {"checkpoint": str(models["full"]), "name": "full <ft>", "eval": str(hostile_eval(work))}),
        ("get_regressions", {}),
        ("watch", {"metrics": str(watch_log(work / "run" / "metrics.jsonl")), "run": "tiny-run"}),
        ("run_analysis_view", {"dir": str(analysis_run(work))}),
        ("session_status", {}),
    ]
    out = []
    for name, args in calls:
        spec = get_tool(name)
        out.append((spec, invoke(spec, args, session_id=session, models=cache, mirror=mirror)))
    return out


def follow_up_problems(fu: FollowUp) -> list[str]:
    """Why an agent could not make this call: an unknown tool, or an argument its input model rejects. A required
    argument the result cannot know may be left out, if `why` names it (the agent fills it in)."""
    try:
        spec = get_tool(fu.tool)
    except KeyError:
        return [f"{fu.tool}: no such tool"]
    if fu.tool != spec.name:
        return [f"{fu.tool}: a CLI command, not the MCP tool name {spec.name}"]
    from pydantic import ValidationError

    try:
        spec.input_model.model_validate(fu.args)
        return []
    except ValidationError as e:
        problems = []
        for err in e.errors():
            field = ".".join(map(str, err["loc"]))
            if err["type"] != "missing":
                problems.append(f"{fu.tool} {field}: {err['msg']}")
            elif field not in fu.why:
                problems.append(f"{fu.tool}: required {field} is neither given nor named in why ({fu.why!r})")
        return problems
