"""Inputs a hostile (or unlucky) user hands us: each case of the hostile-inputs issue, kept fixed.

The corpus test at the end runs every CLI case as a subprocess and fails on any "Traceback" or "failed
unexpectedly"; the cases above it check that what comes back is right, not merely quiet.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from test_cli import BIN, trainspect
from watch_fixtures import watch, write_jsonl

from session.checkpoints import open_checkpoint
from session.state import check_id, current_session, load_session
from toolserver.contract import ToolError, validation_problems
from toolserver.registry import get_tool
from toolserver.runner import invoke


# ----- files a test can damage ---------------------------------------------------------------------------------
def steps_jsonl(path: Path, n: int, start: int = 1, loss: float = 2.0) -> Path:
    return write_jsonl(path, ({"step": i, "loss": loss + 0.01 * (i % 7)} for i in range(start, start + n)))


def record_offset(path: Path, suffix: str) -> tuple[int, int]:
    """(byte offset, size) of a zip record's data: where torch's mmap reads it from."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
    raw = path.read_bytes()
    n, m = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + n + m, info.file_size


def poisoned(src: Path, dst: Path, key: str, how: str) -> Path:
    """A copy of a {step, state_dict} checkpoint with NaN/inf written into one tensor (or every one)."""
    ck = torch.load(src, weights_only=True)
    sd = ck["state_dict"]
    for k in [key] if key != "*" else list(sd):
        t = sd[k].clone()
        if how == "inf":
            t.view(-1)[0] = math.inf
        elif how == "nan":
            t.view(-1)[:3] = math.nan
        else:
            t.fill_(math.nan)
        sd[k] = t
    torch.save(ck, dst)
    return dst


@pytest.fixture
def gpt2_session(tiny_gpt2: dict[str, Path], isolated_home: Path) -> dict[str, Path]:
    invoke(get_tool("start_session"), {"id": "hostile", "model": str(tiny_gpt2["base"])})
    return tiny_gpt2


def diff(checkpoint: Path) -> Any:
    return invoke(get_tool("run_weight_diff"), {"checkpoint": str(checkpoint)})


# ----- 1, 9: the session pointer and session ids ---------------------------------------------------------------
@pytest.mark.parametrize("damage", ["bytes", "directory", "bad id"])
def test_a_damaged_session_pointer_is_one_line_and_session_start_repairs_it(
    gpt2_session: dict[str, Path], isolated_home: Path, damage: str
) -> None:
    pointer = isolated_home / "current"
    pointer.unlink()
    if damage == "bytes":
        pointer.write_bytes(b"\xff\xfe")
    elif damage == "directory":
        pointer.mkdir()
    else:
        pointer.write_text("abc\ndef")
    with pytest.raises(ToolError) as e:
        current_session()
    assert str(pointer) in e.value.message and "session start" in (e.value.hint or "")
    invoke(get_tool("start_session"), {"id": "again", "model": str(gpt2_session["base"])})
    assert current_session().id == "again" and pointer.read_text() == "again"
    assert not list(isolated_home.glob(".current*.tmp"))  # no half-written pointer left behind
    assert len(list(isolated_home.glob("current.*.corrupt"))) == (damage == "directory")  # set aside, not deleted


@pytest.mark.parametrize("bad", ["abc\n", "abc\r", " abc", "a/b", "", "a" * 129, "é"])
def test_one_rule_for_session_ids(bad: str) -> None:
    with pytest.raises(ToolError, match="invalid session id"):
        check_id(bad)
    with pytest.raises(ToolError, match="invalid session id"):
        load_session(bad)


# ----- 3: non-finite weights ------------------------------------------------------------------------------------
def test_inf_and_nan_are_counted_named_and_kept_out_of_every_norm(
    gpt2_session: dict[str, Path], tmp_path: Path
) -> None:
    clean = diff(gpt2_session["full"]).result
    raw, key = "transformer.h.0.attn.c_attn.weight", "h.0.attn.c_attn.weight"  # as stored; as results name it
    for how, count in (("inf", 1), ("nan", 3)):
        res = diff(poisoned(gpt2_session["full"], tmp_path / f"{how}.pt", raw, how)).result
        [bad] = res.nonfinite
        assert bad.key == key and bad.checkpoint == count and bad.base == 0
        assert res.totals.nonfinite == 1
        first = diff_findings(tmp_path / f"{how}.pt")[0]
        assert first["severity"] == "critical" and key in first["text"] and "NaN or inf" in first["text"]
        assert not any(key in r.keys for r in res.rows)  # out of the table, not a nan row
        untouched = {tuple(r.keys): r.fro_delta for r in clean.rows if key not in r.keys}
        assert {tuple(r.keys): r.fro_delta for r in res.rows} == untouched  # every other number unchanged
        assert all(math.isfinite(r.fro_delta) for r in [*res.rows, *res.norms, *res.embeddings])


def diff_findings(checkpoint: Path) -> list[dict[str, Any]]:
    return [f.model_dump() for f in invoke(get_tool("run_weight_diff"), {"checkpoint": str(checkpoint)}).findings]


def test_an_all_nan_checkpoint_is_never_reported_unchanged(gpt2_session: dict[str, Path], tmp_path: Path) -> None:
    env = invoke(
        get_tool("run_weight_diff"), {"checkpoint": str(poisoned(gpt2_session["full"], tmp_path / "n.pt", "*", "all"))}
    )
    texts = " ".join(f.text for f in env.findings)
    assert env.findings[0].severity == "critical" and "NaN or inf" in texts
    assert "unchanged" not in texts and "identical" not in texts
    assert env.result.totals.nonfinite == len(env.result.nonfinite) > 10


def test_a_nan_lora_alpha_is_named_and_a_null_one_names_its_field(
    gpt2_session: dict[str, Path], tmp_path: Path
) -> None:
    for value, expect in (("NaN", "ok"), (None, "error")):
        adapter = shutil.copytree(gpt2_session["lora"], tmp_path / f"lora-{value}")
        cfg = json.loads((adapter / "adapter_config.json").read_text())
        cfg["lora_alpha"] = value if value is None else math.nan
        (adapter / "adapter_config.json").write_text(json.dumps(cfg))
        if expect == "error":
            with pytest.raises(ToolError, match="lora_alpha: Input should be a valid number"):
                diff(adapter)
            continue
        env = invoke(get_tool("run_weight_diff"), {"checkpoint": str(adapter)})
        assert env.findings[0].severity == "critical"
        assert env.result.nonfinite and all("lora_alpha" in (n.note or "") for n in env.result.nonfinite)
        assert not env.result.rows


# ----- 4: damaged .pt files are refused, never read as other numbers -------------------------------------------
def test_a_truncated_record_and_a_flipped_byte_are_refused_with_one_line(tmp_path: Path) -> None:
    sd = {"a.weight": torch.arange(96, dtype=torch.float32).reshape(8, 12), "a.bias": torch.ones(5)}
    good = tmp_path / "good.pt"
    torch.save(sd, good)
    with open_checkpoint(good) as r:
        assert all(torch.equal(r.get(k), v) for k, v in sd.items())

    off, size = record_offset(good, "data/0")
    assert size == 384
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "cut.pt", "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():  # the issue's file: data/0 cut from 384 to 10 bytes, a valid zip otherwise
            data = src.read(info)
            dst.writestr(info, data[:10] if info.filename.endswith("data/0") else data)
    with pytest.raises(ToolError, match=r"needs 384 bytes but its record .*data/0 holds 10"):
        open_checkpoint(tmp_path / "cut.pt")

    raw = bytearray(good.read_bytes())
    raw[off + 10] ^= 0x01
    (tmp_path / "flip.pt").write_bytes(raw)
    assert not torch.equal(torch.load(tmp_path / "flip.pt", weights_only=True)["a.weight"], sd["a.weight"])  # torch
    with pytest.raises(ToolError, match="a.weight fails its CRC-32 check"), open_checkpoint(tmp_path / "flip.pt") as r:
        r.get("a.weight")


def test_a_symlink_loop_says_so(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone.pt")
    with pytest.raises(ToolError, match="is a symlink loop"):
        open_checkpoint(tmp_path / "a")
    with pytest.raises(ToolError, match="gone.pt, which does not exist"):
        open_checkpoint(tmp_path / "dangling")


# ----- 5, 6, 8: logs ---------------------------------------------------------------------------------------------
def test_a_first_line_over_64_kib_is_read(tmp_path: Path) -> None:
    rows = [{"step": 1, "loss": 2.0, "note": "x" * 100_000}, *({"step": i, "loss": 2.0} for i in range(2, 11))]
    s = watch(write_jsonl(tmp_path / "big.jsonl", rows)).summary
    assert s.steps_seen == 10 and not s.bad_lines


def deep(depth: int) -> str:
    return '{"step": 5, "loss": 1.0, "x": ' + "[" * depth + "]" * depth + "}"


def test_a_deeply_nested_line_is_one_bad_line_and_the_rest_is_read(tmp_path: Path) -> None:
    rows: list[Any] = [*({"step": i, "loss": 2.0} for i in range(1, 5)), deep(200_000)]
    rows += [{"step": i, "loss": 2.0} for i in range(6, 11)]
    path = write_jsonl(tmp_path / "deep.jsonl", rows)
    for follow in (False, True):
        s = watch(path, follow=follow, idle_timeout_s=0.5).summary
        assert s.steps_seen == 9 and s.last_step == 10
        [bad] = s.bad_line_examples
        assert s.bad_lines == 1 and bad.line == 5 and "nested too deeply" in bad.error


def test_a_lightning_csv_saved_with_a_bom_is_read(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("step,train_loss\n" + "".join(f"{i},{2.0 - i / 100}\n" for i in range(40)), encoding="utf-8-sig")
    s = watch(path).summary
    assert s.steps_seen == 40 and not s.bad_lines and s.loss_last == pytest.approx(1.61)


# ----- 7, 11: a restarted run under --follow, with JSON on stdout ---------------------------------------------------
def test_follow_reads_a_truncated_file_again_and_stdout_stays_json(tmp_path: Path, isolated_home: Path) -> None:
    path = steps_jsonl(tmp_path / "metrics.jsonl", 30)
    env = {**os.environ, "TRAINSPECT_HOME": str(isolated_home), "TRAINSPECT_MIRROR_URL": ""}
    args = [str(BIN), "watch", "--metrics", str(path), "--follow", "--idle-timeout-s", "4", "--output", "json"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = ""
    deadline = time.monotonic() + 120
    while "following" not in seen and time.monotonic() < deadline:  # stderr says it is tailing
        seen += proc.stderr.readline()
    time.sleep(1.0)
    path.write_text("")  # a restarted run truncates its log (StepLogger's default), then writes 20 steps
    steps_jsonl(tmp_path / "new.jsonl", 20, loss=1.0)
    with open(path, "a") as f:
        f.write((tmp_path / "new.jsonl").read_text())
    out, _ = proc.communicate(timeout=120)
    res = json.loads(out)["result"]  # the whole of stdout is the JSON document
    assert res["summary"]["steps_seen"] == 20 and res["summary"]["last_step"] == 20 and res["new_steps"] == 20
    assert res["summary"]["loss_last"] < 1.1  # the new run's numbers, not the old one's
    assert any("truncated or rewritten after 30 steps" in n for n in res["notes"])


# ----- 12: argument errors -----------------------------------------------------------------------------------------
def test_argument_errors_are_one_line_naming_each_field() -> None:
    from pydantic import ValidationError

    spec = get_tool("run_weight_diff")
    with pytest.raises(ValidationError) as e:
        spec.input_model.model_validate({"checkpoint": 3, "top_k": "many"})
    line = validation_problems(e.value)
    assert line == (
        "checkpoint: Input should be a valid string; "
        "top_k: Input should be a valid integer, unable to parse string as an integer"
    )
    with pytest.raises(ToolError) as t:
        invoke(spec, {"top_k": 0}, session=None)
    assert "\n" not in str(t.value) and "checkpoint: Field required" in str(t.value) and "top_k" in str(t.value)


def test_cli_help_shows_no_internal_metavars() -> None:
    from toolserver.cli import build_parser
    from toolserver.registry import all_tools

    parser = build_parser(all_tools())
    sub = next(a for a in parser._actions if a.choices)  # noqa: SLF001 — argparse keeps subparsers here
    texts = [parser.format_help()]
    for p in sub.choices.values():  # type: ignore[union-attr]
        texts.append(p.format_help())
        texts += [
            q.format_help() for a in p._actions if a.choices and isinstance(a.choices, dict) for q in a.choices.values()
        ]
    assert len(texts) > 8 and not [t for t in texts if " _" in t.replace("\n", " ")]


# ----- the corpus: no CLI command prints a traceback ------------------------------------------------------------
@dataclass
class Case:
    name: str
    argv: list[str]
    ok: bool  # rc 0 expected (a result that says what is wrong); else a one-line error
    needles: list[str] = field(default_factory=list)
    pointer: bytes | str | None = None  # damage to the current-session pointer first


def hostile_corpus(models: dict[str, Path], work: Path) -> list[Case]:
    full = models["full"]
    key = "transformer.h.0.attn.c_attn.weight"
    named = "h.0.attn.c_attn.weight"
    cut = work / "cut.pt"
    with zipfile.ZipFile(full) as src, zipfile.ZipFile(cut, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[:10] if info.filename.endswith("data/0") else data)
    flip = bytearray(full.read_bytes())
    off, _ = record_offset(full, "data/3")
    flip[off + 5] ^= 0x10
    (work / "flip.pt").write_bytes(flip)
    lora_null = shutil.copytree(models["lora"], work / "lora-null")
    cfg = json.loads((lora_null / "adapter_config.json").read_text())
    (lora_null / "adapter_config.json").write_text(json.dumps({**cfg, "lora_alpha": None}))
    lora_nan = shutil.copytree(models["lora"], work / "lora-nan")
    (lora_nan / "adapter_config.json").write_text(json.dumps({**cfg, "lora_alpha": math.nan}))
    (work / "loop").symlink_to(work / "loop2")
    (work / "loop2").symlink_to(work / "loop")
    big = write_jsonl(work / "big.jsonl", [{"step": 1, "loss": 2.0, "pad": "x" * 70_000}, {"step": 2, "loss": 2.0}])
    deep_log = write_jsonl(work / "deep.jsonl", [{"step": 1, "loss": 2.0}, deep(100_000), {"step": 3, "loss": 2.0}])
    bom = work / "metrics.csv"
    bom.write_text("step,train_loss\n1,2.0\n2,1.9\n", encoding="utf-8-sig")
    binary = work / "binary.jsonl"
    binary.write_bytes(bytes(range(256)) * 64)
    wd = ["weight-diff", "--checkpoint"]
    return [
        Case("pointer bytes: status", ["session", "status"], False, ["current"], pointer=b"\xff\xfe"),
        Case("pointer bytes: weight-diff", [*wd, str(full)], False, ["current"], pointer=b"\xff\xfe"),
        Case("pointer dir: status", ["session", "status"], False, ["a directory"], pointer="dir"),
        Case(
            "pointer dir: session start repairs",
            ["session", "start", "--id", "x", "--model", str(models["base"])],
            True,
            pointer="dir",
        ),
        Case("pointer bytes: watch needs no session", ["watch", "--metrics", str(big)], True, pointer=b"\xff\xfe"),
        Case("inf weight", [*wd, str(poisoned(full, work / "inf.pt", key, "inf"))], True, ["NaN or inf", named]),
        Case("nan weight", [*wd, str(poisoned(full, work / "nan.pt", key, "nan"))], True, ["NaN or inf", named]),
        Case("all nan", [*wd, str(poisoned(full, work / "all.pt", "*", "all"))], True, ["NaN or inf"]),
        Case("lora_alpha NaN", [*wd, str(lora_nan)], True, ["lora_alpha"]),
        Case("lora_alpha null", [*wd, str(lora_null)], False, ["lora_alpha"]),
        Case("truncated record", [*wd, str(cut)], False, [str(cut), "holds 10"]),
        Case("flipped byte", [*wd, str(work / "flip.pt")], False, ["CRC-32"]),
        Case("symlink loop", [*wd, str(work / "loop")], False, ["symlink loop"]),
        Case(
            "session id with a newline",
            ["session", "start", "--id", "abc\n", "--model", str(models["base"])],
            False,
            ["invalid session id"],
        ),
        Case("first line over 64 KiB", ["watch", "--metrics", str(big)], True, ["2 steps"]),
        Case("deep line", ["watch", "--metrics", str(deep_log)], True, ["nested too deeply"]),
        Case("csv with a bom", ["watch", "--metrics", str(bom)], True),
        Case("binary log", ["watch", "--metrics", str(binary)], False),
    ]


def run_case(case: Case, seeded: Path, root: Path) -> tuple[Case, subprocess.CompletedProcess[str]]:
    home = shutil.copytree(seeded, root / case.name.replace(" ", "_").replace(":", ""))
    if case.pointer is not None:
        (home / "current").unlink()
        if case.pointer == "dir":
            (home / "current").mkdir()
        else:
            (home / "current").write_bytes(case.pointer)  # type: ignore[arg-type]
    return case, trainspect(*case.argv, home=home, check=False)


def test_no_hostile_input_prints_a_traceback(
    gpt2_session: dict[str, Path], isolated_home: Path, tmp_path: Path
) -> None:
    work = tmp_path / "inputs"
    work.mkdir()
    corpus = hostile_corpus(gpt2_session, work)
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda c: run_case(c, isolated_home, tmp_path / "homes"), corpus))
    problems = []
    for case, proc in done:
        said = proc.stdout + proc.stderr
        if "Traceback" in said or "failed unexpectedly" in said:
            problems.append(f"{case.name}: {said[-400:]}")
        elif case.ok != (proc.returncode == 0):
            problems.append(f"{case.name}: rc {proc.returncode}: {said[-300:]}")
        elif not case.ok and len(proc.stderr.strip().splitlines()) != 1:
            problems.append(f"{case.name}: not one line: {proc.stderr!r}")
        elif missing := [n for n in case.needles if n not in said]:
            problems.append(f"{case.name}: does not say {missing}: {said[-300:]}")
    assert not problems, "\n".join(problems)
    repaired = tmp_path / "homes" / "pointer_dir_session_start_repairs"
    assert (repaired / "current").read_text() == "x"
