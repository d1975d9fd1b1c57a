"""load_sae's run: attach SAEs to the session, one per hook, and say how analyses will run the model for each."""

from __future__ import annotations

from session import service
from session.context import ToolContext
from session.sae import processing_for
from tools.sae import DIFF
from tools.sae.models import LoadedSae, LoadSaeInput, LoadSaeResult
from toolserver.contract import Finding, FollowUp, Outcome, Reporter


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
            tool=DIFF.name,
            args={},
            why=f"pass checkpoint=PATH of a fine-tune to see which features changed at layer {layers}",
        )
    ]
    return Outcome(result=result, findings=findings, follow_ups=follow)
