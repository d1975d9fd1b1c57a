"""Live training signals: the step-event model, the signal engine, the emitters that feed it from a
training script, and analysis checkpoints. The emitters load torch / transformers only when used."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tools.watch.engine import EngineConfig, SignalEngine
from tools.watch.snapshot import Signal, StepSnapshot

if TYPE_CHECKING:
    from tools.watch.emitters import StepLogger
    from tools.watch.hf_callback import TrainspectCallback

__all__ = ["EngineConfig", "Signal", "SignalEngine", "StepLogger", "StepSnapshot", "TrainspectCallback"]


def __getattr__(name: str) -> Any:
    if name == "StepLogger":
        from tools.watch.emitters import StepLogger

        return StepLogger
    if name == "TrainspectCallback":
        from tools.watch.hf_callback import TrainspectCallback

        return TrainspectCallback
    raise AttributeError(name)
