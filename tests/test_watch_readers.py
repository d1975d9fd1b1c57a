"""Readers: bad lines with line numbers, unknown keys kept, partial last lines, CRLF, spellings, the
three formats, and the real logs in ../shared/reallogs (each checked against a direct parse)."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import pytest
from watch_fixtures import steps, watch, write_jsonl

from bench.watch import FullHistoryEngine
from tools.watch.engine import EngineConfig
from tools.watch.readers import JsonlReader, TableReader, detect_format
from tools.watch.snapshot import StepSnapshot
from toolserver.contract import ToolError


def test_bad_lines_are_reported_with_line_numbers_and_skipped(tmp_path: Path) -> None:
    rows = [json.dumps(r) for r in steps(10)]
    rows[2] = '{"step": 3, "loss": '  # truncated
    rows[4] = '{"step": 5, "loss": "abc"}'
    rows[6] = "[1, 2]"
    rows[8] = '{"step": 9.5, "loss": 1.0}'
    rows.insert(5, "")  # a blank line is not an error (line 6)
    result = watch(write_jsonl(tmp_path / "m.jsonl", rows))
    s = result.summary
    assert s.steps_seen == 6 and s.bad_lines == 4
    assert [(b.line, b.error.split(":")[0]) for b in s.bad_line_examples] == [
        (3, "invalid JSON"),
        (5, "loss"),
        (8, "not a JSON object (list)"),
        (10, "step"),
    ]


def test_unknown_keys_are_kept_and_spellings_accepted() -> None:
    snap = StepSnapshot.model_validate_json(
        '{"current_steps": 4, "loss": 1.5, "lr": 0.001, "grad_norm": 2.0, "grad_norms": {"a": 1}, '
        '"dead_layers": ["b"], "epoch": "0.5", "tokens_per_s": 1200, "note": "warmup"}'
    )
    assert (snap.step, snap.loss, snap.learning_rate, snap.max_grad, snap.grad_norms, snap.dead_layers, snap.epoch) == (
        4,
        1.5,
        0.001,
        2.0,
        {"a": 1.0},
        ["b"],
        0.5,
    )
    assert snap.wire() == {
        "step": 4,
        "loss": 1.5,
        "learning_rate": 0.001,
        "maxGrad": 2.0,
        "gradNorms": {"a": 1.0},
        "deadLayers": ["b"],
        "epoch": 0.5,
        "tokens_per_s": 1200,
        "note": "warmup",
    }
    camel = StepSnapshot.model_validate(
        {"step": 1, "loss": 1, "learning_rate": 0.1, "maxGrad": 3, "gradNorms": {}, "deadLayers": []}
    )
    assert (camel.learning_rate, camel.max_grad, camel.grad_norms, camel.dead_layers) == (0.1, 3.0, {}, [])


def test_negative_zero_loss_reads_as_zero() -> None:
    snap = StepSnapshot.model_validate_json('{"step": 1, "loss": -0.0}')
    assert snap.loss == 0.0 and math.copysign(1, snap.loss) == 1


def test_partial_last_line_waits_for_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    reader = JsonlReader(path)
    assert [s.step for _, s in reader.read(final=False).snapshots] == [1]
    assert reader.read(final=False).snapshots == []
    with open(path, "ab") as f:
        f.write(b'ss": 1.9}\n{"step": 3, "loss": 1.8}')
    # a last line that is already whole JSON is taken without its newline (files that never end one)
    assert [(line, s.step) for line, s in reader.read(final=False).snapshots] == [(2, 2), (3, 3)]
    with open(path, "ab") as f:
        f.write(b'\n{"step": 4, "lo')
    assert reader.read(final=False).snapshots == []
    batch = reader.read(final=True)  # the writer is gone: the broken last line is reported
    assert batch.snapshots == [] and [b.line for b in batch.bad] == [4]


def test_long_lines_and_chunk_boundaries(tmp_path: Path) -> None:
    norms = {f"model.layers.{i}.mlp": 0.5 for i in range(400)}
    path = write_jsonl(tmp_path / "m.jsonl", steps(50, grad_norms=norms))
    reader = JsonlReader(path)
    got = []
    while True:
        got += [s.step for _, s in reader.read(final=True, max_bytes=4096).snapshots]  # lines are ~12 KB
        if not reader.pending():
            break
    assert got == list(range(1, 51))


def test_crlf_jsonl(tmp_path: Path) -> None:
    result = watch(write_jsonl(tmp_path / "m.jsonl", steps(5), newline="\r\n"))
    assert result.summary.steps_seen == 5 and result.summary.bad_lines == 0


def test_steps_going_backwards_are_skipped_and_reported(tmp_path: Path) -> None:
    rows = steps(30) + steps(11, start=25)  # a resumed run re-logging steps 25..30, then 31..35
    result = watch(write_jsonl(tmp_path / "m.jsonl", rows))
    s = result.summary
    assert (s.steps_seen, s.last_step, s.out_of_order) == (35, 35, 6)
    assert s.out_of_order_lines == list(range(31, 37))


def test_trainer_state(tmp_path: Path) -> None:
    history = [
        {"epoch": 0.1 * i, "grad_norm": 1.0, "learning_rate": 1e-4, "loss": 2.0 + 0.5 * (-1) ** i, "step": i}
        for i in range(1, 41)
    ]
    history.insert(20, {"epoch": 2.0, "eval_loss": 1.1, "step": 20})
    history[30]["grad_norm"] = 9.0  # step 30
    history.append({"epoch": 4.0, "step": 40, "train_loss": 2.1, "train_runtime": 10.0})
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps({"global_step": 40, "log_history": history}, indent=2))
    assert detect_format(path) == "trainer_state"
    result = watch(path)
    assert result.format == "trainer_state" and result.summary.steps_seen == 40 and result.summary.skipped_rows == 2
    assert [(s.type, s.step) for s in result.signals] == [("gradient_spike", 30)]


def test_trainer_state_partially_written_is_retried_in_follow_mode(tmp_path: Path) -> None:
    path = tmp_path / "trainer_state.json"
    path.write_text('{"log_history": [{"loss": 1.0, "step": 1}')
    reader = TableReader(path, "trainer_state")
    assert reader.read(final=False).snapshots == []
    path.write_text('{"log_history": [{"loss": 1.0, "step": 1}, {"loss": 0.9, "step": 2}]}')
    assert [s.step for _, s in reader.read(final=False).snapshots] == [1, 2]
    path.write_text('{"log_history": [{"loss": 1.0, "step": 1}, {"loss": 0.9, "step": 2}, {"loss": 0.8, "step": 3}]}')
    assert [s.step for _, s in reader.read(final=False).snapshots] == [3]


def test_lightning_csv(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    lines = ["epoch,step,train_loss_step,val_loss"]
    lines += [f"0,{i},{2.0 + 0.5 * (-1) ** i}," for i in range(1, 30)]
    lines.insert(10, "0,9,,1.5")  # a validation row: no training loss
    lines.insert(5, "0,4,abc,")
    path.write_text("\r\n".join(lines) + "\r\n")
    result = watch(path)
    s = result.summary
    assert result.format == "csv" and s.skipped_rows == 1 and s.bad_lines == 1
    assert s.bad_line_examples[0].line == 6 and s.steps_seen == 29


def test_empty_and_unreadable_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="no metrics file"):
        watch(tmp_path / "missing.jsonl")
    junk = tmp_path / "train.log"
    junk.write_text("epoch 1 loss 2.0\nepoch 2 loss 1.9\n")
    with pytest.raises(ToolError, match=r"no step events in .*2 unreadable lines \(line 1: invalid JSON"):
        watch(junk)
    other = write_jsonl(tmp_path / "history.jsonl", [{"reward": 1.0, "_step": i} for i in range(3)])
    with pytest.raises(ToolError, match="3 rows, none with a training loss"):
        watch(other)


# ----- the real logs ---------------------------------------------------------------------------
def _direct_losses(path: Path) -> list[tuple[int, float]]:
    """An independent parse: (step, loss) rows in file order, straight from json/csv."""
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return [
                (int(r["step"]), float(r["train_loss_step"])) for r in csv.DictReader(f) if r.get("train_loss_step")
            ]
    text = path.read_text()
    if text.lstrip().startswith("{") and "\n" in text and not text.split("\n", 1)[0].strip().endswith("}"):
        return [(e["step"], float(e["loss"])) for e in json.loads(text)["log_history"] if "loss" in e]
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [(r["current_steps"], float(r["loss"])) for r in rows if "loss" in r]


REAL = [
    "0Xero7__slm_training__lightning_logs_version_8_metrics.csv",
    "Macro1027__Simple-Pendulum-PINN__lightning_logs_version_28_metrics.csv",
    "10844110__t5-summarization-demo__trainer_state.json",
    "ChenguangYang96UCR__KG-LLM__outputs_trainer_state.json",
    "Eikor__iplm-rl__checkpoint-4000_trainer_state.json",
    "Hahaazaza__Neiro__trainer_state.json",
    "Zeiad246__LLM-Backend__checkpoint-3000_trainer_state.json",
    "ijinyu1113__Learned-Remasking-Policy-for-dLLM__pretrained_checkpoints_checkpoint-2000_trainer_state.json",
    "poludmik__qlora-fine-tune__output_trainer_state.json__v100steps-zero-loss",
    "hsc748NLP__NSLLM__trainer_log.jsonl",
    "rameyjm7__SFT-Training-LLM__trainer_log.jsonl",
    "syGOAT__Mistral-v0.2-Translator-bf16__trainer_log.jsonl",
]


@pytest.mark.parametrize("seed_rules", [True, False], ids=["seed-rules", "default"])
@pytest.mark.parametrize("name", REAL)
def test_real_logs_summary_and_signals_match_a_direct_parse(reallogs: Path, name: str, seed_rules: bool) -> None:
    path = reallogs / name
    result = watch(path, max_signals=1000, seed_rules=seed_rules)
    rows, kept, last = _direct_losses(path), [], None
    for step, loss in rows:
        if last is None or step > last:
            kept.append((step, loss))
            last = step
    s = result.summary
    assert s.steps_seen == len(kept)
    assert s.out_of_order == len(rows) - len(kept)
    assert (s.first_step, s.last_step) == (kept[0][0], kept[-1][0])
    finite = [loss for _, loss in kept if math.isfinite(loss)]
    assert (s.loss_first, s.loss_last, s.loss_min) == (finite[0], finite[-1], min(finite))
    assert s.bad_lines == 0
    reference = FullHistoryEngine(EngineConfig(seed_rules=seed_rules))
    want = [
        (sig.type, sig.severity, sig.step, sig.episode) for snap in _snapshots(path) for sig in reference.observe(snap)
    ]
    assert result.signals_total == len(want)
    assert s.signals_by_type == dict(Counter(t for t, _, _, e in want if e != "end"))
    assert s.ended_by_type == dict(Counter(t for t, _, _, e in want if e == "end"))
    got = [(sig.type, sig.severity, sig.step, sig.episode) for sig in result.signals]
    assert len(got) == min(len(want), 1000) and set(got) <= set(want)


def _snapshots(path: Path) -> list[StepSnapshot]:
    """Snapshots for the reference engine, built from the direct parse (loss, and HF grad_norm when present)."""
    out, last = [], None
    grads = {}
    if path.suffix != ".csv" and path.read_text().lstrip().startswith("{\n"):
        grads = {e["step"]: e.get("grad_norm") for e in json.loads(path.read_text())["log_history"] if "loss" in e}
    for step, loss in _direct_losses(path):
        if last is None or step > last:
            out.append(StepSnapshot(step=step, loss=loss, max_grad=grads.get(step)))
            last = step
    return out


def test_real_log_quirks(reallogs: Path) -> None:
    kg = watch(reallogs / "ChenguangYang96UCR__KG-LLM__outputs_trainer_state.json").summary
    assert kg.max_grad_max == pytest.approx(19.28, abs=0.01) and kg.max_grad_max_step == 10  # NaN grad norms ignored
    zero = watch(
        reallogs
        / "ijinyu1113__Learned-Remasking-Policy-for-dLLM__pretrained_checkpoints_checkpoint-2000_trainer_state.json"
    )
    assert zero.summary.loss_first == 0.0 and math.copysign(1, zero.summary.loss_first) == 1  # logged as -0.0
    two_ranks = watch(reallogs / "rameyjm7__SFT-Training-LLM__trainer_log.jsonl").summary
    assert two_ranks.out_of_order == 702 and two_ranks.out_of_order_lines[0] == 2
    assert watch(reallogs / "hsc748NLP__NSLLM__trainer_log.jsonl").summary.skipped_rows == 1  # the closing line


@pytest.mark.parametrize(
    "name, message",
    [
        ("mfts__spaceinvaders-wandb-challenge__wandb_wandb-history.jsonl", "none with a training loss"),
        ("Rusheel86__Chaos-Economy__wandb_run-20260425_174928-7yj6c945_files_output.log", "unreadable lines"),
        ("Eikor__iplm-rl__checkpoint-4000_adapter_config.json", "has no log_history"),
    ],
)
def test_real_files_that_are_not_step_logs(reallogs: Path, name: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        watch(reallogs / name)
