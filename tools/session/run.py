"""The runs of start_session, load_sae and session_status."""

from __future__ import annotations

from session import service
from session.context import ToolContext
from session.state import Session, SessionStatus
from tools.sae import LOAD_SAE
from tools.session.models import SessionStatusInput, StartSessionInput
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
