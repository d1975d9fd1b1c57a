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
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from tools.watch.analysis_checkpoint import AnalysisConfig, AnalysisRecorder, scheduled
from tools.watch.engine import EngineConfig, SignalEngine
from tools.watch.snapshot import WATCH_EVENTS, Signal, StepSnapshot
from tools.watch.watcher import RunSummary, default_run_name

log = logging.getLogger("trainspect.watch")


class GradNorms(NamedTuple):
    """One step's gradient norms, on the host."""

    modules: dict[str, float]  # module name → L2 norm of its own parameters' gradients
    max: float | None  # the largest per-parameter grad norm (None before any backward)
    params: list[float] | None  # per-parameter norms (0 without a gradient), for the analysis triggers


class Pending(NamedTuple):
    """Norms queued on the gradients' device, not yet copied to the host."""

    packed: torch.Tensor  # the present gradients' norms, then the riders (scalar tensors such as the loss)
    present: list[int]  # which parameters had a gradient


class GradNormMeter:
    """Per-module L2 grad norms and the largest per-parameter grad norm. One fused `_foreach_norm` (in
    float32) over all gradients where they live, stacked with the loss into one tensor: a single host
    copy per step. On the host each module's norm is one C-level `math.hypot` over its parameters'
    norms; a handful of torch calls per step, since on a small model each one costs as much as the maths."""

    def __init__(self, model: nn.Module) -> None:
        seen: set[int] = set()
        self.params: list[nn.Parameter] = []
        self.names: list[str] = []  # modules
        self._spans: list[tuple[int, int]] = []  # each module's parameters: params[start:end]
        for name, module in model.named_modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in seen]
            if not own:
                continue
            seen.update(id(p) for p in own)  # a tied weight counts once, under its first owner
            self.names.append(name or type(module).__name__)
            self._spans.append((len(self.params), len(self.params) + len(own)))
            self.params += own

    def on_device(self, *riders: torch.Tensor) -> Pending | None:
        """Queue the norms of the present gradients (and the scalar `riders`) where they live; nothing
        waits for the device here. None before any backward."""
        grads = [p.grad for p in self.params]
        present = [i for i, g in enumerate(grads) if g is not None]
        if not present:
            return None
        found = torch._foreach_norm([grads[i] for i in present], 2, dtype=torch.float32)  # clip_grad_norm_'s kernel
        extra = [r.detach() for r in riders]
        try:
            packed = torch.stack([*found, *extra])
        except RuntimeError:  # tensors on several devices (model parallel): gather them on the CPU
            packed = torch.stack([t.float().cpu() for t in (*found, *extra)])
        return Pending(packed, present)

    def to_host(self, pending: Pending | None) -> tuple[GradNorms, list[float]]:
        """The step's one host copy: (grad norms, the riders as floats)."""
        if pending is None:
            return GradNorms(dict.fromkeys(self.names, 0.0), None, None), []
        values = pending.packed.tolist()
        n = len(pending.present)
        norms, riders = values[:n], values[n:]
        if n < len(self.params):  # parameters without a gradient count as 0
            full = [0.0] * len(self.params)
            for i, v in zip(pending.present, norms, strict=True):
                full[i] = v
            norms = full
        modules = dict(zip(self.names, [math.hypot(*norms[a:b]) for a, b in self._spans], strict=True))
        peak, total = max(norms), sum(norms)
        if not math.isfinite(total):  # an overflowed step: max() would keep or drop a NaN by its position
            peak = total
        return GradNorms(modules, peak, norms), riders

    def measure(self) -> GradNorms:
        return self.to_host(self.on_device())[0]


class JsonlSink:
    """One os.write() of a whole line per step on an O_APPEND descriptor: lines from two writers never
    interleave, and the line is in the OS as soon as step() returns (a crash right after loses nothing).
    A concurrent reader may still catch a line half copied in; JsonlReader holds an unterminated last
    line back until its newline arrives."""

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
    """Live events to the web mirror from a background thread: the training loop only enqueues the
    already-built models (the worker serialises them into events), so a mirror that is down, slow or
    black-holed never costs the loop more than a queue put. Step events are dropped (and counted) once
    the queue is nearly full; the last `reserve` places are kept for signals and the summary."""

    def __init__(
        self, url: str, *, run: str, session: str, token: str | None, max_queue: int = 10_000, reserve: int = 1_000
    ) -> None:
        from web_mirror.client import MirrorClient

        self.run, self.session = run, session
        self.client = MirrorClient(url, token=token)
        self.dropped = 0
        self._step_room = max_queue - reserve
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._work, name=f"trainspect-mirror-{run}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        from web_mirror.events import Event

        while (item := self._queue.get()) is not None:
            type, key, dump, ts = item
            try:
                self.client.send(
                    Event(type=type, session=self.session, call_id=self.run, ts=ts, data={"run": self.run, key: dump()})
                )
            except Exception:  # the client promises not to raise; the training run must not depend on it
                log.warning("web mirror: event not sent", exc_info=True)

    def send(self, type: str, key: str, dump: Callable[[], Any], *, droppable: bool) -> None:
        """Queue event `type` whose data is {run, key: dump()}; never waits."""
        if droppable and self._queue.qsize() >= self._step_room:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait((type, key, dump, time.time()))
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
    analysis      their AnalysisConfig; `grad_clip=` states the run's clip norm so `trainspect analysis` can
                  count clipped steps: the gradients recorded are those present when step() runs, pre-clip
                  when it is called before clip_grad_norm_
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        path: str | Path | None = None,
        url: str | None = None,
        run: str | None = None,
        session: str | None = None,
        token: str | None = None,
        config: EngineConfig | None = None,
        append: bool = False,
        analysis_dir: str | Path | None = None,
        analysis: AnalysisConfig | None = None,
    ) -> None:
        if path is None and url is None and analysis_dir is None:
            raise ValueError("StepLogger needs path= (a JSONL file), url= (the web mirror) or analysis_dir=")
        if analysis_dir is not None and model is None:
            raise ValueError("analysis checkpoints need the model")
        self.meter = GradNormMeter(model) if model is not None else None
        self.analysis = (
            AnalysisRecorder(model, analysis_dir, analysis) if model is not None and analysis_dir is not None else None
        )
        if self.analysis is not None:
            self.analysis.arm()  # the first step may be a scheduled one
        self.engine = SignalEngine(config)
        self.summary = RunSummary()
        self.skipped = 0  # steps not after the previous one, not logged
        self.run = run or (default_run_name(Path(path)) if path is not None else f"run-{os.getpid()}")
        self.file = JsonlSink(Path(path), append) if path is not None else None
        self.mirror = None
        if url:
            sess = session or os.environ.get("TRAINSPECT_SESSION") or "default"
            self.mirror = MirrorSink(
                url, run=self.run, session=sess, token=token or os.environ.get("TRAINSPECT_MIRROR_TOKEN")
            )

    def step(
        self,
        step: int,
        loss: float | torch.Tensor,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        epoch: float | None = None,
        learning_rate: float | None = None,
        attentions: Sequence[torch.Tensor] | None = None,
        **extra: float,
    ) -> list[Signal]:
        """Call after backward() and before optimizer.step() (the gradients are read here). `attentions`
        (e.g. a Hugging Face model's outputs.attentions) feed attention entropy in analysis checkpoints."""
        if learning_rate is None and optimizer is not None:
            learning_rate = float(optimizer.param_groups[0]["lr"])
        is_tensor = isinstance(loss, torch.Tensor)
        pending = self.meter.on_device(*([loss] if is_tensor else [])) if self.meter is not None else None
        grads, riders = self.meter.to_host(pending) if self.meter is not None else (None, [])
        loss_value = riders[0] if riders else float(loss.detach()) if is_tensor else float(loss)  # type: ignore[union-attr]
        snap = StepSnapshot(
            step=step,
            loss=loss_value,
            learning_rate=learning_rate,
            epoch=epoch,
            max_grad=grads.max if grads else None,
            grad_norms=grads.modules if grads else None,
            **extra,
        )
        signals = self.record(snap)
        if self.analysis is not None:
            self.analysis.record(step, loss_value, grads.params if grads else None, attentions=attentions)
            if scheduled(step + 1):
                self.analysis.arm()
        return signals

    def record(self, snap: StepSnapshot) -> list[Signal]:
        """Log an already-built snapshot (the Hugging Face callback's path). A step that is not after the
        previous one is skipped with a warning rather than raised: a logging slip must not end a run."""
        if self.engine.last_step is not None and snap.step <= self.engine.last_step:
            self.skipped += 1
            if self.skipped == 1:
                log.warning(
                    "trainspect: step %d is not after step %d, not logged (steps must increase; "
                    "StepLogger.skipped counts these)",
                    snap.step,
                    self.engine.last_step,
                )
            return []
        signals = self.engine.observe(snap)
        snap.dead_layers = self.engine.dead_layers() or None
        self.summary.add_step(snap)
        for s in signals:
            self.summary.add_signal(s)
        if self.file is not None:
            self.file.write(snap)
        if self.mirror is not None:
            self.mirror.send(WATCH_EVENTS.type("step"), "snapshot", snap.wire, droppable=True)
            for s in signals:
                self.mirror.send(
                    WATCH_EVENTS.type("signal"), "signal", partial(s.model_dump, mode="json"), droppable=False
                )
        return signals

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.mirror is not None:
            self.mirror.send(
                WATCH_EVENTS.type("summary"), "summary", partial(self.summary.model_dump, mode="json"), droppable=False
            )
            self.mirror.close()
            self.mirror = None

    def __enter__(self) -> StepLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
