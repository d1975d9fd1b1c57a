"""Live training signals: the step-event model, the signal engine, the emitters that feed it from a training
script, analysis checkpoints, and the `watch` tool. The emitters load torch / transformers only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tools.watch.engine import EngineConfig, SignalEngine
from tools.watch.models import WatchCard, WatchInput, WatchResult
from tools.watch.snapshot import WATCH_EVENTS, Signal, StepSnapshot
from toolserver.contract import ToolSpec, lazy

if TYPE_CHECKING:
    from tools.watch.emitters import StepLogger
    from tools.watch.hf_callback import TrainspectCallback

__all__ = ["EngineConfig", "Signal", "SignalEngine", "StepLogger", "StepSnapshot", "TrainspectCallback", "SPEC"]

SPEC = ToolSpec(
    name="watch",
    command="watch",
    card="watch",
    summary=(
        "Signals from a training run's step events (loss, learning rate, max grad norm, per-layer grad norms): "
        "loss spikes (> 2× the recent mean and > 6σ), divergence, gradient spikes, non-finite loss or gradients "
        "(overflow, repeated overflows, NaN), dead attention/other layers, plateaus (flat variance and trend). A "
        "plateau or dead layer is an episode: one signal when it starts, one (episode='end', duration_steps) when it "
        "clears, listed in `ongoing` meanwhile; seed_rules=true gives the design seed's five detectors, re-firing "
        "every cooldown. Reads a JSONL step log, "
        "a Hugging Face trainer_state.json or a Lightning metrics.csv; cost: no model, no GPU, ~40k steps/s when "
        "replaying. "
        "For a run still training call again with since_last=true to get only new signals (or follow=true to tail it). "
        "Next: dead layers → run_weight_diff on a checkpoint of the run to see whether those layers moved."
    ),
    input_model=WatchInput,
    output_model=WatchResult,
    slim_model=WatchCard,
    run=lazy("tools.watch.run:run"),
    slim=lazy("tools.watch.report:slim"),
    table=lazy("tools.watch.report:table"),
    needs_session=False,
    live=(WATCH_EVENTS,),
)
TOOLS = [SPEC]


def __getattr__(name: str) -> Any:
    if name == "StepLogger":
        from tools.watch.emitters import StepLogger

        return StepLogger
    if name == "TrainspectCallback":
        from tools.watch.hf_callback import TrainspectCallback

        return TrainspectCallback
    raise AttributeError(name)
