"""start_session, load_sae and session_status: what the session holds, as tools."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from session import service
from session.catalog import CATALOG
from session.service import SessionStatus
from session.state import Session
from toolserver.registry import Finding, FollowUp, Outcome, Reporter, ToolError, ToolSpec, register


class StartSessionInput(BaseModel):
    id: str = Field(description="session id: letters, digits, '.', '_' or '-'; later calls default to this session")
    model: str = Field(description=f"catalog slug ({', '.join(CATALOG)}), Hugging Face id, or a local save_pretrained directory")


class LoadSaeInput(BaseModel):
    sae: str = Field(
        description="a local sae-lens directory (written by sae.save_model) or release/sae_id from sae-lens' registry, e.g. gpt2-small-res-jb/blocks.8.hook_resid_pre",
        json_schema_extra={"positional": True},
    )


class SessionStatusInput(BaseModel):
    pass


class LoadSaeResult(BaseModel):
    session: str
    sae: str = Field(description="the SAE spec as stored (local directories made absolute)")
    source: str = Field(description="local or pretrained")
    hook: str = Field(description="TransformerLens hook the SAE reads, from its metadata")
    hook_assumed: bool = Field(description="the SAE's metadata names no hook, so `hook` is the default layer's resid_post, a guess")
    layer: int
    d_in: int
    d_sae: int = Field(description="number of SAE features")
    architecture: str
    model_kwargs: dict[str, Any] = Field(description="how sae-lens loaded the model the SAE was trained on (HookedTransformer.from_pretrained kwargs, from its metadata)")


def _require(session: Session | None) -> Session:
    if session is None:
        raise ToolError("no session started", "run: trainspect session start --id ID --model SPEC")
    return session


def _next_steps(session: Session, status: SessionStatus) -> list[FollowUp]:
    steps: list[FollowUp] = []
    entry = service.catalog_entry(session)
    if session.kind == "llm" and not session.sae and entry and entry.sae_spec:
        steps.append(FollowUp(tool="load_sae", args={"sae": entry.sae_spec}, why=f"sae-lens publishes an SAE for {entry.slug} at layer {entry.default_layer} (downloads from the HF hub)"))
    steps.append(FollowUp(tool="run_weight_diff", args={}, why="pass checkpoint=PATH of a fine-tune to see which layers and matrices it changed"))
    steps.append(FollowUp(tool="watch", args={}, why="pass metrics=PATH of a training log (JSONL or trainer_state.json) for live loss/gradient signals"))
    return steps


def _describe(status: SessionStatus) -> str:
    return f"{status.model} ({status.kind}, {status.n_layers} layers, d_model {status.d_model})"


def run_start(session: Session | None, args: StartSessionInput, reporter: Reporter) -> Outcome[SessionStatus]:
    reporter.progress(0.1, f"resolving {args.model}")
    started, kept = service.start_session(args.id, args.model)
    status = service.status(started)
    reporter.progress(1.0, "session saved")
    findings = [Finding(text=f"Session {status.id}: {_describe(status)} from {status.model_source}; default layer {status.default_layer}. No weights loaded yet: analyses load the model on first use.")]
    if kept:
        findings.append(Finding(text=f"The session's previous file was unreadable; it is kept as {kept} and this session starts afresh.", severity="warn"))
    if status.sae:
        findings.append(Finding(text=f"Kept the SAE {status.sae} at {status.sae_hook} from the session's earlier start."))
    return Outcome(result=status, findings=findings, follow_ups=_next_steps(started, status))


def run_load_sae(session: Session | None, args: LoadSaeInput, reporter: Reporter) -> Outcome[LoadSaeResult]:
    sess = _require(session)
    reporter.progress(0.1, f"loading SAE {args.sae}")
    sess, info = service.load_sae(sess, args.sae)
    reporter.progress(1.0, "SAE loaded")
    result = LoadSaeResult(
        session=sess.id, sae=info.spec, source=info.source, hook=info.hook, hook_assumed=info.hook_assumed, layer=info.layer, d_in=info.d_in,
        d_sae=info.d_sae, architecture=info.architecture, model_kwargs=info.model_kwargs,
    )
    findings = [Finding(text=f"SAE loaded: {info.d_sae} {info.architecture} features reading {info.hook} (layer {info.layer}, d_in {info.d_in} = the model's d_model).")]
    if info.hook_assumed:
        findings.append(Finding(text=f"The SAE's metadata names no hook: assuming it reads {info.hook} (the model's default layer). If it was trained elsewhere, save it with metadata.hook_name set.", severity="warn"))
    if info.centred:
        findings.append(Finding(
            text="The SAE was trained on a model loaded with center_writing_weights=True, whose residual vectors all have mean 0 "
            "over d_model (LayerNorm models); the session runs unprocessed HF weights, so centre each activation (x - x.mean(-1)) before encoding.",
            severity="warn",
        ))
    follow = [FollowUp(tool="run_weight_diff", args={}, why=f"pass checkpoint=PATH to see whether layer {info.layer}, where the SAE reads, changed")]
    return Outcome(result=result, findings=findings, follow_ups=follow)


def run_status(session: Session | None, args: SessionStatusInput, reporter: Reporter) -> Outcome[SessionStatus]:
    sess = _require(session)
    status = service.status(sess)
    sae = f"SAE {status.sae} at {status.sae_hook}" if status.sae else "no SAE"
    loaded = "model in memory" if status.model_in_memory else "model not loaded in this process"
    findings = [Finding(text=f"Session {status.id}: {_describe(status)}; {sae}; {status.calls} call{'' if status.calls == 1 else 's'} so far; {loaded}.")]
    failed = [c for c in status.recent_calls if not c.ok]
    if failed:
        findings.append(Finding(text=f"{len(failed)} of the last {len(status.recent_calls)} calls failed ({', '.join(c.tool for c in failed)}).", severity="warn"))
    return Outcome(result=status, findings=findings, follow_ups=_next_steps(sess, status))


def slim_status(s: SessionStatus) -> dict[str, Any]:
    return {
        "id": s.id, "model": s.model, "kind": s.kind, "d_model": s.d_model, "n_layers": s.n_layers,
        "sae": s.sae, "sae_hook": s.sae_hook, "sae_layer": s.sae_layer, "calls": s.calls,
        "model_in_memory": s.model_in_memory,
    }


def slim_sae(r: LoadSaeResult) -> dict[str, Any]:
    return r.model_dump(include={"sae", "hook", "layer", "d_in", "d_sae", "architecture"})


def _rows(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {'-' if v is None else v}" for k, v in rows)


def table_status(s: SessionStatus) -> str:
    text = _rows([
        ("session", s.id), ("model", s.model), ("source", s.model_source), ("kind", s.kind),
        ("layers", s.n_layers), ("d_model", s.d_model), ("default layer", s.default_layer),
        ("sae", s.sae), ("sae hook", s.sae_hook), ("calls", s.calls),
        ("model in memory", "yes" if s.model_in_memory else "no"),
    ])
    if s.recent_calls:
        text += "\n\nrecent calls:\n" + "\n".join(f"  {c.created_at}  {c.tool:<22} {'ok' if c.ok else 'FAILED'}" for c in s.recent_calls)
    return text


def table_sae(r: LoadSaeResult) -> str:
    return _rows([("session", r.session), ("sae", r.sae), ("source", r.source), ("hook", r.hook), ("layer", r.layer), ("d_in", r.d_in), ("features", r.d_sae), ("architecture", r.architecture)])


START = register(ToolSpec(
    name="start_session",
    command="session start",
    card="session",
    summary=(
        "Start (or switch to) a session on a model: a catalog slug, a Hugging Face id or a local save_pretrained "
        "directory; detects whether it is a causal LM or an encoder. Call this first; later calls use this session. "
        "Cost: reads config files only, under a second, no GPU (a hub id not yet in the HF cache is downloaded first, "
        "minutes for large models). Next: run_weight_diff on a checkpoint, load_sae for SAE analyses."
    ),
    input_model=StartSessionInput,
    output_model=SessionStatus,
    run=run_start,
    slim=slim_status,
    table=table_status,
    needs_session=False,
    session_arg="id",
))

LOAD_SAE = register(ToolSpec(
    name="load_sae",
    command="load sae",
    card="session",
    summary=(
        "Attach a sae-lens SAE to the current session: a local directory written by sae.save_model, or "
        "release/sae_id from sae-lens' pretrained registry. Its hook and layer come from the SAE's metadata; "
        "d_in is checked against the model. Use before SAE-feature analyses. Cost: seconds for a local "
        "directory (no model is loaded); release/sae_id downloads from the HF hub. Next: run_weight_diff."
    ),
    input_model=LoadSaeInput,
    output_model=LoadSaeResult,
    run=run_load_sae,
    slim=slim_sae,
    table=table_sae,
))

STATUS = register(ToolSpec(
    name="session_status",
    command="session status",
    card="session",
    summary=(
        "Show the current session: model, kind, layers, SAE and hook, the recent calls, and whether the model "
        "is already in memory. Use to check what later calls will analyse. Cost: instant, reads the state file. "
        "Next: the follow_ups it suggests (load_sae, run_weight_diff)."
    ),
    input_model=SessionStatusInput,
    output_model=SessionStatus,
    run=run_status,
    slim=slim_status,
    table=table_status,
))
