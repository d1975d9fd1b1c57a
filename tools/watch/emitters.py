"""Feeding the watch from a training script: per-module gradient norms, and a step logger that writes
line-atomic JSONL and/or sends live events to the web mirror.

    log = StepLogger(model, path="run/metrics.jsonl")          # or url="http://127.0.0.1:8002"
    loss.backward(); log.step(step, loss, optimizer, epoch=epoch); optimizer.step()

Gradient norms are grouped per parameter-owning module under the framework's own module names
(`transformer.h.0.attn.c_attn`, `model.layers.3.self_attn.q_proj`, …), so attention layers are
recognisable by name. Parameters with requires_grad=False (frozen on purpose, e.g. a LoRA base) are
not reported; a trainable parameter that received no gradient reports 0 — that is a dead path.
"""
from __future__ import annotations

import logging
import math
import os
import queue
import threading
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from tools.watch.analysis_checkpoint import AnalysisConfig, AnalysisRecorder, scheduled
from tools.watch.engine import EngineConfig, SignalEngine
from tools.watch.snapshot import Signal, StepSnapshot
from tools.watch.watcher import RunSummary, default_run_name

log = logging.getLogger("trainspect.watch")


class GradNormMeter:
    """Per-module L2 grad norms and the largest per-parameter grad norm, from one fused norm call over
    all gradients (no Python work per scalar, one host sync per step)."""

    def __init__(self, model: nn.Module) -> None:
        seen: set[int] = set()
        self.params: list[nn.Parameter] = []
        self.param_names: list[str] = []
        self.names: list[str] = []  # modules
        owners: list[int] = []
        for name, module in model.named_modules():
            own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad and id(p) not in seen]
            if not own:
                continue
            seen.update(id(p) for _, p in own)  # a tied weight counts once, under its first owner
            owners += [len(self.names)] * len(own)
            self.names.append(name or type(module).__name__)
            self.param_names += [f"{name}.{n}" if name else n for n, _ in own]
            self.params += [p for _, p in own]
        self.owners = owners  # module index of each parameter

    def param_norms(self) -> torch.Tensor | None:
        """Per-parameter grad norms on the CPU (0 for a parameter without a gradient); None before any backward."""
        grads = [p.grad for p in self.params]
        present = [i for i, g in enumerate(grads) if g is not None]
        if not present:
            return None
        found = torch._foreach_norm([grads[i] for i in present])  # the fused kernel clip_grad_norm_ uses
        try:
            stacked = torch.stack(found).float().cpu()
        except RuntimeError:  # gradients on several devices (model parallel)
            stacked = torch.stack([n.float().cpu() for n in found])
        if len(present) == len(grads):
            return stacked
        norms = torch.zeros(len(grads))
        norms[present] = stacked
        return norms

    def group(self, norms: torch.Tensor | None) -> tuple[dict[str, float], float | None]:
        """(module name → grad norm, max per-parameter grad norm) from per-parameter norms: one host
        copy of one float per parameter, then plain arithmetic (cheaper than tensor ops at this size)."""
        if norms is None:
            return dict.fromkeys(self.names, 0.0), None
        values = norms.tolist()
        squares = [0.0] * len(self.names)
        for owner, v in zip(self.owners, values):
            squares[owner] += v * v
        return dict(zip(self.names, map(math.sqrt, squares))), max(values)

    def measure(self) -> tuple[dict[str, float], float | None]:
        return self.group(self.param_norms())


class JsonlSink:
    """One os.write() of a whole line per step on an O_APPEND descriptor: a reader never sees half a
    line from a well-behaved writer, and the line is in the OS as soon as step() returns."""

    def __init__(self, path: Path, append: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if append else os.O_TRUNC)
        self._fd = os.open(path, flags, 0o644)

    def write(self, snap: StepSnapshot) -> None:
        data = snap.model_dump_json(by_alias=True, exclude_none=True).encode() + b"\n"
        written = os.write(self._fd, data)
        while written < len(data):  # only on a full disk or a signal mid-write
            written += os.write(self._fd, data[written:])

    def close(self) -> None:
        os.close(self._fd)


class MirrorSink:
    """Live events to the web mirror from a background thread: the training loop only enqueues, so a
    mirror that is down, slow or black-holed never costs the loop more than a queue put. If the queue
    fills (mirror far behind), step events are dropped and counted; signals are always queued."""

    def __init__(self, url: str, *, run: str, session: str, token: str | None, max_queue: int = 10_000) -> None:
        from web_mirror.client import MirrorClient

        self.run, self.session = run, session
        self.client = MirrorClient(url, token=token)
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._work, name=f"trainspect-mirror-{run}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (event := self._queue.get()) is not None:
            try:
                self.client.send(event)
            except Exception:  # the client promises not to raise; the training run must not depend on it
                log.warning("web mirror: event not sent", exc_info=True)

    def send(self, type: str, data: dict[str, Any], *, droppable: bool) -> None:
        from web_mirror.events import Event

        event = Event(type=type, session=self.session, call_id=self.run, data={"run": self.run, **data})
        try:
            if droppable:
                self._queue.put_nowait(event)
            else:
                self._queue.put(event, timeout=1.0)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 2.0) -> None:
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self.client.flush(timeout)
        self.client.close()


class StepLogger:
    """Logs one training step per `step()` call: loss, learning rate, per-module grad norms, maxGrad,
    deadLayers, epoch and any extra numbers; runs the signal engine on it and returns what fired.

    path          JSONL file (truncated at start unless append=True, e.g. for a resumed run)
    url           web mirror URL: `training.watch.step` / `.signal` / `.summary` events for run `run`
    analysis_dir  also write analysis checkpoints there (see analysis_checkpoint.py); activations are
                  captured on scheduled steps when step() is called once per step with consecutive steps
    """

    def __init__(self, model: nn.Module | None = None, *, path: str | Path | None = None, url: str | None = None,
                 run: str | None = None, session: str | None = None, token: str | None = None,
                 config: EngineConfig | None = None, append: bool = False,
                 analysis_dir: str | Path | None = None, analysis: AnalysisConfig | None = None) -> None:
        if path is None and url is None and analysis_dir is None:
            raise ValueError("StepLogger needs path= (a JSONL file), url= (the web mirror) or analysis_dir=")
        if analysis_dir is not None and model is None:
            raise ValueError("analysis checkpoints need the model")
        self.meter = GradNormMeter(model) if model is not None else None
        self.analysis = AnalysisRecorder(model, analysis_dir, analysis) if model is not None and analysis_dir is not None else None
        if self.analysis is not None:
            self.analysis.arm()  # the first step may be a scheduled one
        self.engine = SignalEngine(config)
        self.summary = RunSummary()
        self.run = run or (default_run_name(Path(path)) if path is not None else f"run-{os.getpid()}")
        self.file = JsonlSink(Path(path), append) if path is not None else None
        self.mirror = None
        if url:
            sess = session or os.environ.get("TRAINSPECT_SESSION") or "default"
            self.mirror = MirrorSink(url, run=self.run, session=sess, token=token or os.environ.get("TRAINSPECT_MIRROR_TOKEN"))

    def step(self, step: int, loss: float | torch.Tensor, optimizer: torch.optim.Optimizer | None = None, *,
             epoch: float | None = None, learning_rate: float | None = None,
             attentions: Sequence[torch.Tensor] | None = None, **extra: float) -> list[Signal]:
        """Call after backward() and before optimizer.step() (the gradients are read here). `attentions`
        (e.g. a Hugging Face model's outputs.attentions) feed attention entropy in analysis checkpoints."""
        if learning_rate is None and optimizer is not None:
            learning_rate = float(optimizer.param_groups[0]["lr"])
        param_norms = self.meter.param_norms() if self.meter is not None else None
        norms, max_grad = self.meter.group(param_norms) if self.meter is not None else (None, None)
        loss_value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        snap = StepSnapshot(step=step, loss=loss_value, learning_rate=learning_rate, max_grad=max_grad,
                            grad_norms=norms, epoch=epoch, **extra)
        signals = self.record(snap)
        if self.analysis is not None:
            self.analysis.record(step, loss_value, param_norms, attentions=attentions)
            if scheduled(step + 1):
                self.analysis.arm()
        return signals

    def record(self, snap: StepSnapshot) -> list[Signal]:
        """Log an already-built snapshot (the Hugging Face callback's path)."""
        if self.engine.last_step is not None and snap.step <= self.engine.last_step:
            raise ValueError(f"step {snap.step} is not after the previous step {self.engine.last_step}")
        signals = self.engine.observe(snap)
        snap.dead_layers = self.engine.dead_layers() or None
        self.summary.add_step(snap)
        for s in signals:
            self.summary.add_signal(s)
        if self.file is not None:
            self.file.write(snap)
        if self.mirror is not None:
            self.mirror.send("training.watch.step", {"snapshot": snap.wire()}, droppable=True)
            for s in signals:
                self.mirror.send("training.watch.signal", {"signal": s.model_dump(mode="json")}, droppable=False)
        return signals

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.mirror is not None:
            self.mirror.send("training.watch.summary", {"summary": self.summary.model_dump(mode="json")}, droppable=False)
            self.mirror.close()
            self.mirror = None

    def __enter__(self) -> "StepLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
