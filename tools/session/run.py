"""The runs of start_session, load_sae and session_status."""

from __future__ import annotations

from session import service
from session.context import ToolContext
from session.sae import processing_for
from session.state import Session, SessionStatus
from tools.session import LOAD_SAE
from tools.session.models import LoadedSae, LoadSaeInput, LoadSaeResult, SessionStatusInput, StartSessionInput
from tools.watch import SPEC as WATCH
from tools.weight_diff import SPEC as WEIGHT_DIFF
from toolserver.contract import Finding, FollowUp, Outcome, Reporter


def _next_steps(session: Session, status: SessionStatus) -> list[FollowUp]:
    steps: list[FollowUp] = []
    entry = service.catalog_entry(session)
    if session.kind == "llm" and not session.saes and entry and entry.sae_spec:
        steps.append(
            FollowUp(
                tool=LOAD_SAE.name,
                args={"sae": [entry.sae_spec]},
                why=f"sae-lens publishes an SAE for {entry.slug} at layer {entry.default_layer} (downloads from the "
                f"HF hub)",
            )
        )
    steps.append(
        FollowUp(
            tool=WEIGHT_DIFF.name,
            args={},
            why="pass checkpoint=PATH of a fine-tune to see which layers and matrices it changed",
        )
    )
    steps.append(
        FollowUp(
            tool=WATCH.name,
            args={},
            why="pass metrics=PATH of a training log (JSONL or trainer_state.json) for live loss/gradient signals",
        )
    )
    return steps


def _describe(status: SessionStatus) -> str:
    return f"{status.model} ({status.kind}, {status.n_layers} layers, d_model {status.d_model})"


def run_start(ctx: ToolContext, args: StartSessionInput, reporter: Reporter) -> Outcome[SessionStatus]:
    reporter.progress(0.1, f"resolving {args.model}")
    started, kept = service.start_session(args.id, args.model)
    status = service.status(started, ctx.models)
    reporter.progress(1.0, "session saved")
    findings = [
        Finding(
            text=f"Session {status.id}: {_describe(status)} from {status.model_source}; default layer "
            f"{status.default_layer}. No weights loaded yet: analyses load the model on first use."
        )
    ]
    if kept:
        findings.append(
            Finding(
                text=f"The session's previous file was unreadable; it is kept as {kept} and this session starts "
                f"afresh.",
                severity="warn",
            )
        )
    if status.saes:
        kept_saes = ", ".join(f"{r.spec} at {r.hook}" for r in status.saes)
        findings.append(Finding(text=f"Kept the SAEs of the session's earlier start: {kept_saes}."))
    return Outcome(result=status, findings=findings, follow_ups=_next_steps(started, status))


def run_load_sae(ctx: ToolContext, args: LoadSaeInput, reporter: Reporter) -> Outcome[LoadSaeResult]:
    sess = ctx.require_session()
    reporter.progress(0.1, f"loading {len(args.sae)} SAE{'s' if len(args.sae) > 1 else ''}")
    sess, infos, replaced = service.load_saes(sess, args.sae, ctx.models)
    reporter.progress(1.0, "SAEs loaded")
    loaded, findings = [], []
    for info in infos:
        processing, why = processing_for(info)
        loaded.append(
            LoadedSae(
                sae=info.spec,
                source=info.source,
                hook=info.hook,
                hook_assumed=info.hook_assumed,
                layer=info.layer,
                d_in=info.d_in,
                d_sae=info.d_sae,
                architecture=info.architecture,
                model_kwargs=info.model_kwargs,
                processing=why,
            )
        )
        findings.append(
            Finding(
                text=f"SAE loaded: {info.d_sae} {info.architecture} features reading {info.hook} "
                f"(layer {info.layer}, d_in {info.d_in} = the model's d_model)."
            )
        )
        if info.hook_assumed:
            findings.append(
                Finding(
                    severity="warn",
                    text=f"{info.spec}: its metadata names no hook; assuming it reads "
                    f"{info.hook} (the model's default layer). If it was trained elsewhere, save it "
                    "with metadata.hook_name set.",
                )
            )
        if not processing.raw:
            findings.append(
                Finding(
                    text=f"SAE analyses at {info.hook} run the model with {processing.describe()} to "
                    f"match how the SAE was trained ({why}); weight tools are unaffected."
                )
            )
    if replaced:
        findings.append(Finding(text=f"Replaced {', '.join(r.spec for r in replaced)} (same hook)."))
    result = LoadSaeResult(session=sess.id, loaded=loaded, replaced=[r.spec for r in replaced], attached=sess.saes)
    layers = ", ".join(str(i.layer) for i in infos)
    follow = [
        FollowUp(
            tool=WEIGHT_DIFF.name,
            args={},
            why=f"pass checkpoint=PATH to see whether layer {layers}, where the SAEs read, changed",
        )
    ]
    return Outcome(result=result, findings=findings, follow_ups=follow)


def run_status(ctx: ToolContext, args: SessionStatusInput, reporter: Reporter) -> Outcome[SessionStatus]:
    sess = ctx.require_session()
    status = service.status(sess, ctx.models)
    sae = ("SAEs " + ", ".join(f"{r.spec} at {r.hook}" for r in status.saes)) if status.saes else "no SAE"
    loaded = "model in memory" if status.model_in_memory else "model not loaded in this process"
    findings = [
        Finding(
            text=f"Session {status.id}: {_describe(status)}; {sae}; {status.calls} "
            f"call{'' if status.calls == 1 else 's'} so far; {loaded}."
        )
    ]
    failed = [c for c in status.recent_calls if not c.ok]
    if failed:
        findings.append(
            Finding(
                text=f"{len(failed)} of the last {len(status.recent_calls)} calls failed "
                f"({', '.join(c.tool for c in failed)}).",
                severity="warn",
            )
        )
    return Outcome(result=status, findings=findings, follow_ups=_next_steps(sess, status))
