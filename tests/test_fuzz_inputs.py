"""Property tests for every reader and the checkpoint loader, on damaged copies of real files.

The damage: truncations, bit flips, a BOM, a line over 64 KiB, a deeply nested line, NaN/inf and wrong types in a
loss. The properties: never an exception other than our one-line ToolError, never a hang, and never a silent wrong
number — what a reader returns is what the damaged file says (checked against an independent parse), and a
checkpoint either reads back bit for bit as written or is refused.

Not claimed: a flipped byte inside a safetensors file's tensor data, or a legacy (pre-zip) torch file's, reads as
a different number — neither format stores a checksum, so no reader can tell. Zip-format torch files do (CRC-32 per
record) and are fuzzed everywhere.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REALLOGS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from session.checkpoints import open_checkpoint
from tools.watch.readers import JsonlReader, TableReader
from tools.watch.snapshot import LOSS_KEYS, StepSnapshot
from toolserver.contract import ToolError
from toolserver.registry import get_tool
from toolserver.runner import invoke

BOM = b"\xef\xbb\xbf"
BOUND_S = 30.0  # "never a hang": generous, far above any example's real time
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
WORK = Path(tempfile.mkdtemp(prefix="trainspect-fuzz-inputs-"))


def real(*suffixes: str) -> list[Path]:
    return sorted(p for p in REALLOGS.glob("*") if p.name.endswith(suffixes)) if REALLOGS.is_dir() else []


def generated_jsonl() -> bytes:
    rows = [
        {"step": i, "loss": 2.0 / (1 + i / 10), "maxGrad": 1.0 + (i % 3), "gradNorms": {"h.0": 0.1}}
        for i in range(1, 60)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# ----- damage ------------------------------------------------------------------------------------------------------
LINE_DAMAGE = {
    "huge": lambda line: b'{"step": 7, "loss": 1.5, "pad": "' + b"x" * 70_000 + b'"}',
    "deep": lambda line: b'{"step": 7, "loss": 1.5, "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "nan": lambda line: line.replace(b'"loss": ', b'"loss": NaN, "was": ', 1),
    "inf": lambda line: line.replace(b'"loss": ', b'"loss": -Infinity, "was": ', 1),
    "overflow": lambda line: line.replace(b'"loss": ', b'"loss": 1e999, "was": ', 1),
    "string": lambda line: line.replace(b'"loss": ', b'"loss": "low", "was": ', 1),
    "null": lambda line: line.replace(b'"loss": ', b'"loss": null, "was": ', 1),
    "list": lambda line: b"[1, 2, 3]",
    "fraction": lambda line: b'{"step": 2.5, "loss": 1.0}',
}


@st.composite
def damage(draw: st.DrawFn) -> tuple[str, int, int]:
    kind = draw(st.sampled_from(["truncate", "flip", "bom", *LINE_DAMAGE]))
    return kind, draw(st.integers(0, 1 << 30)), draw(st.integers(0, 7))


def damaged(data: bytes, how: tuple[str, int, int]) -> bytes:
    kind, where, bit = how
    if kind == "truncate":
        return data[: where % (len(data) + 1)]
    if kind == "flip":
        out = bytearray(data)
        out[where % len(out)] ^= 1 << bit
        return bytes(out)
    if kind == "bom":
        return BOM + data
    lines = data.split(b"\n")
    i = where % len(lines)
    lines[i] = LINE_DAMAGE[kind](lines[i])
    return b"\n".join(lines)


def write(name: str, data: bytes) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


def oracle_rows(rows: list[tuple[int, Any]]) -> tuple[list[tuple[int, StepSnapshot]], list[int], int]:
    snaps, bad, skipped = [], [], 0
    for n, row in rows:
        if not isinstance(row, dict):
            bad.append(n)
        elif LOSS_KEYS.isdisjoint(row):
            skipped += 1
        else:
            try:
                snaps.append((n, StepSnapshot.model_validate(row)))
            except (ValueError, RecursionError):
                bad.append(n)
    return snaps, bad, skipped


# ----- JSONL: what the reader returns is what the file says ---------------------------------------------------------
def oracle_jsonl(data: bytes) -> tuple[list[tuple[int, StepSnapshot]], list[int], int]:
    """(snapshots, bad line numbers, skipped rows) by the stdlib's JSON parser, line by line."""
    rows: list[tuple[int, Any]] = []
    bad: list[int] = []
    for n, raw in enumerate(data.removeprefix(BOM).split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            rows.append((n, json.loads(raw)))
        except (ValueError, RecursionError):
            bad.append(n)
    snaps, bad_rows, skipped = oracle_rows(rows)
    return snaps, sorted(bad + bad_rows), skipped


def read_all(reader: JsonlReader, chunk: int) -> tuple[list[tuple[int, StepSnapshot]], list[int], int]:
    snaps, bad, skipped = [], [], 0
    while True:
        batch = reader.read(final=True, max_bytes=chunk)
        snaps += batch.snapshots
        bad += [b.line for b in batch.bad]
        skipped += batch.skipped
        if not reader.pending():
            return snaps, bad, skipped


def same(a: list[tuple[int, StepSnapshot]], b: list[tuple[int, StepSnapshot]]) -> bool:
    """Equal, NaN equal to NaN (a NaN loss read back as NaN is the data written)."""
    return json.dumps([(n, s.model_dump()) for n, s in a]) == json.dumps([(n, s.model_dump()) for n, s in b])


JSONL_SOURCES = {"generated": generated_jsonl()} | {p.name: p.read_bytes() for p in real(".jsonl")}


@given(source=st.sampled_from(sorted(JSONL_SOURCES)), how=damage(), chunk=st.sampled_from([7, 300, 4096, 8 << 20]))
@SETTINGS
def test_jsonl_reads_back_exactly_what_the_damaged_file_says(
    source: str, how: tuple[str, int, int], chunk: int
) -> None:
    data = damaged(JSONL_SOURCES[source], how)
    path = write("log.jsonl", data)
    t = time.monotonic()
    got = read_all(JsonlReader(path), chunk)
    assert time.monotonic() - t < BOUND_S
    want = oracle_jsonl(data)
    assert same(got[0], want[0]) and (sorted(got[1]), got[2]) == want[1:], (source, how)


# ----- every format through the watch tool: a result or one line ------------------------------------------------------
def generated_csv() -> bytes:
    return ("step,train_loss,lr\n" + "".join(f"{i},{2 - i / 100},0.001\n" for i in range(80))).encode()


def generated_state() -> bytes:
    history = [{"step": i, "loss": 2 - i / 100, "grad_norm": 1.0} for i in range(1, 50)] + [
        {"step": 49, "eval_loss": 1.0}
    ]
    return json.dumps({"global_step": 49, "log_history": history}, indent=2).encode()


LOG_SOURCES = {"gen.jsonl": generated_jsonl(), "gen.csv": generated_csv(), "gen_trainer_state.json": generated_state()}
LOG_SOURCES |= {
    p.name: p.read_bytes() for p in real(".jsonl", ".csv", "trainer_state.json", "zero-loss", ".log", ".md")
}


@given(source=st.sampled_from(sorted(LOG_SOURCES)), how=damage())
@SETTINGS
def test_every_log_gives_a_result_or_one_line(source: str, how: tuple[str, int, int]) -> None:
    suffix = ".csv" if source.endswith(".csv") else ""
    path = write(f"run-log{suffix}", damaged(LOG_SOURCES[source], how))
    t = time.monotonic()
    try:
        env = invoke(get_tool("watch"), {"metrics": str(path)}, session=None)
    except ToolError as e:
        assert "\n" not in e.message and "failed unexpectedly" not in e.message, e.message
        return
    finally:
        assert time.monotonic() - t < BOUND_S
    s = env.result.summary
    assert s.steps_seen + s.bad_lines + s.skipped_rows + s.out_of_order >= 1


@given(source=st.sampled_from(sorted(k for k in LOG_SOURCES if "trainer_state" in k)), how=damage())
@SETTINGS
def test_trainer_state_rows_are_its_log_history(source: str, how: tuple[str, int, int]) -> None:
    data = damaged(LOG_SOURCES[source], how)
    path = write("trainer_state.json", data)
    try:
        history = json.loads(data.decode("utf-8-sig", errors="replace"))["log_history"]
    except (ValueError, RecursionError, KeyError, TypeError):
        history = None
    if not isinstance(history, list):
        with pytest.raises(ToolError):
            TableReader(path, "trainer_state").read(final=True)
        return
    batch = TableReader(path, "trainer_state").read(final=True)
    # an entry without "loss" is not a step (eval rows, the run summary): skipped, whatever else it holds
    want = oracle_rows([(i, e if not isinstance(e, dict) or "loss" in e else {}) for i, e in enumerate(history, 1)])
    assert same(batch.snapshots, want[0]) and ([b.line for b in batch.bad], batch.skipped) == want[1:]


# ----- the checkpoint loader: bit for bit, or refused -----------------------------------------------------------------
def state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(40, 16, generator=gen)
    return {
        "wte.weight": emb,
        "h.0.attn.c_attn.weight": torch.randn(16, 48, generator=gen),
        "h.0.ln_1.weight": torch.ones(16),
        "h.0.mlp.c_fc.weight": torch.randn(16, 64, generator=gen).to(torch.bfloat16),
        "h.0.mlp.c_fc.bias": torch.zeros(64, dtype=torch.float16),
        "position_ids": torch.arange(32),
    }


def saved(fmt: str) -> Path:
    sd = state()
    path = WORK / f"clean-{fmt}"
    if fmt == "zip.pt":
        torch.save({"step": 3, "state_dict": sd}, path)
    elif fmt == "legacy.pt":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    else:
        save_file(sd, path)
    return path


FORMATS = {"zip.pt": ".pt", "legacy.pt": ".pt", "safetensors": ".safetensors"}
CLEAN = {fmt: saved(fmt).read_bytes() for fmt in FORMATS}


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes() + str((t.dtype, tuple(t.shape))).encode()


@given(
    fmt=st.sampled_from(sorted(FORMATS)),
    kind=st.sampled_from(["truncate", "flip"]),
    where=st.integers(0, 1 << 30),
    bit=st.integers(0, 7),
)
@SETTINGS
def test_a_damaged_checkpoint_reads_back_bit_for_bit_or_is_refused(fmt: str, kind: str, where: int, bit: int) -> None:
    data = CLEAN[fmt]
    if kind == "flip" and fmt != "zip.pt":
        where %= 8 if fmt == "safetensors" else len(data)  # no checksum: only the header length prefix is fair game
        if fmt == "legacy.pt":
            kind = "truncate"
    path = write(f"ck{FORMATS[fmt]}", damaged(data, (kind, where, bit)))
    want = {k: bits(v) for k, v in state().items()}
    try:
        with open_checkpoint(path) as reader:
            got = {k: bits(reader.get(k)) for k in reader.keys()}
    except ToolError as e:
        assert "\n" not in e.message, e.message
        return
    normalised = {k.removeprefix("transformer."): v for k, v in got.items()}
    assert normalised == want, (fmt, kind, where, bit)


def test_the_fuzzed_formats_read_back_clean() -> None:
    for fmt in FORMATS:
        path = write(f"clean{FORMATS[fmt]}", CLEAN[fmt])
        with open_checkpoint(path) as reader:
            assert {k: bits(reader.get(k)) for k in reader.keys()} == {k: bits(v) for k, v in state().items()}


def test_the_damage_is_real() -> None:
    """Each kind of damage changes the bytes it is given (a fuzz test whose damage were a no-op could not fail)."""
    data = generated_jsonl()
    for kind in ["truncate", "flip", "bom", *LINE_DAMAGE]:
        assert damaged(data, (kind, 12345, 3)) != data, kind
    assert oracle_jsonl(damaged(data, ("deep", 0, 0)))[1] == [1]
    assert len(oracle_jsonl(data)[0]) == 59
