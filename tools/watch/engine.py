"""The live signal engine: five detectors over a stream of step snapshots, O(1) amortised per step.

Decisions on the edges the design leaves open (tests pin each one):
- Steps must strictly increase. The caller (`RunWatcher`) drops repeated or backward steps before they
  reach the engine (two ranks writing one log, a resumed run) and reports them; the engine never rescans.
- Windows count logged events, the cooldown counts steps: a type that fired at step s fires again only
  at a step >= s + cooldown_steps, however sparsely the run logs.
- Variance is the population variance (divide by n) of the last `plateau_window` finite losses. A window
  with variance exactly 0 is a plateau even when its mean is 0 (a loss stuck at 0.0 cannot pass the
  relative test `var < ratio * mean²`).
- A NaN/inf loss raises `loss_nonfinite` (critical, same cooldown), is never pushed into a window (it
  would poison the rolling sums), and breaks the rising run: divergence needs `diverge_window` finite,
  non-decreasing losses in a row. A non-finite maxGrad is ignored (it is an overflowed step, not a
  measurement); a NaN grad norm breaks that layer's dead streak.
- A layer missing from a step's gradNorms keeps its streak unchanged (work stays proportional to the
  layers reported in that step).
- Firing does not reset a streak; only a norm at or above the limit (or NaN) does. So a layer that stays
  dead is named again each time the cooldown lets its type fire (step 5, 35, 65, … with the streak length
  in the message), a reminder at the same pace as a lasting plateau; a layer that recovers and dies again
  fires on the 5th step of its new streak; one that crosses the streak during its type's cooldown is
  named when the cooldown ends.
- The spike detector waits for a full window of `spike_window` previous maxGrad values.
"""

from __future__ import annotations

import math
import re
from collections import deque
from typing import Any

from pydantic import BaseModel, Field, field_validator

from tools.watch.snapshot import Signal, StepSnapshot

DEFAULT_ATTENTION_REGEX = r"(?i)attn|attention|(^|[._])(q|k|v|o|qkv)_proj($|[._])|(^|\.)(query|key|value)($|\.)"


class EngineConfig(BaseModel):
    """Detector thresholds; the defaults are the design's."""

    attention_regex: str = Field(
        DEFAULT_ATTENTION_REGEX,
        description="regex (re.search) on a gradNorms key that marks it as an attention layer",
    )
    cooldown_steps: int = Field(30, ge=0, description="steps before the same signal type may fire again")
    diverge_window: int = Field(10, ge=2, description="consecutive non-decreasing losses that make a divergence")
    diverge_critical_rise: float = Field(
        0.5, description="loss rise over that window above which divergence is critical"
    )
    spike_window: int = Field(20, ge=1, description="previous maxGrad values averaged as the spike baseline")
    spike_ratio: float = Field(5.0, gt=0, description="maxGrad / baseline above which a spike warns")
    spike_critical_ratio: float = Field(20.0, gt=0, description="maxGrad / baseline above which a spike is critical")
    spike_min_grad: float = Field(1.0, description="a spike also needs maxGrad above this absolute value")
    dead_grad_norm: float = Field(1e-6, ge=0, description="a layer grad norm below this counts towards a dead streak")
    dead_streak: int = Field(5, ge=1, description="consecutive low-norm steps that make a layer dead")
    plateau_window: int = Field(20, ge=2, description="losses whose variance tests for a plateau")
    plateau_ratio: float = Field(0.001, ge=0, description="plateau when variance < ratio × mean²")

    @field_validator("attention_regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regex: {e}") from None
        return v


class RollingWindow:
    """Last `size` values with running sum and sum of squares; re-summed exactly every `size` pushes so
    float drift stays bounded over millions of steps (amortised O(1)). `peak_sq` (the largest running
    sum of squares since the last re-sum) bounds that drift."""

    __slots__ = ("size", "values", "total", "total_sq", "peak_sq", "_pushes")

    def __init__(self, size: int, values: list[float] | None = None) -> None:
        self.size = size
        self.values: deque[float] = deque(values or (), maxlen=size)
        self._resum()

    def _resum(self) -> None:
        self.total = math.fsum(self.values)
        self.total_sq = self.peak_sq = math.fsum(v * v for v in self.values)
        self._pushes = 0

    def push(self, x: float) -> None:
        values = self.values
        if len(values) == self.size:
            old = values[0]
            self.total -= old
            self.total_sq -= old * old
        values.append(x)
        self.total += x
        self.total_sq += x * x
        if self.total_sq > self.peak_sq:
            self.peak_sq = self.total_sq
        self._pushes += 1
        if self._pushes >= self.size:
            self._resum()

    @property
    def full(self) -> bool:
        return len(self.values) == self.size

    def mean(self) -> float:
        return self.total / len(self.values)

    def variance(self) -> float:
        """Population variance from the running sums (to within float rounding of the sums)."""
        m = self.mean()
        return max(self.total_sq / len(self.values) - m * m, 0.0)

    def exact(self) -> tuple[float, float]:
        """Mean and population variance, two-pass over the window."""
        n = len(self.values)
        mean = math.fsum(self.values) / n
        return mean, math.fsum((x - mean) ** 2 for x in self.values) / n


class SignalEngine:
    """Feed snapshots in step order with `observe`; it returns every signal that fired on that step, in
    priority order. `state()` / `from_state()` persist it between processes (a few KB)."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = cfg = config or EngineConfig()
        self._attn_re = re.compile(cfg.attention_regex)
        self._is_attn: dict[str, bool] = {}
        self.last_step: int | None = None
        self._prev_loss: float | None = None
        self._rising = 0  # length of the current run of non-decreasing finite losses
        self._recent = RollingWindow(cfg.diverge_window)
        self._plateau = RollingWindow(cfg.plateau_window)
        self._grads = RollingWindow(cfg.spike_window)
        self.attn_streaks: dict[str, int] = {}
        self.layer_streaks: dict[str, int] = {}
        self._last_fired: dict[str, int] = {}

    # ----- the per-step path -------------------------------------------------------------------
    def observe(self, snap: StepSnapshot) -> list[Signal]:
        """Signals that fire on this step. Precondition: snap.step > the previous step observed."""
        cfg = self.config
        step = snap.step
        self.last_step = step
        fired: list[Signal] = []
        loss = snap.loss
        finite = not (loss != loss or loss in (math.inf, -math.inf))
        if not finite:
            self._prev_loss, self._rising = None, 0
            if self._ready("loss_nonfinite", step):
                fired.append(
                    self._fire(
                        "loss_nonfinite",
                        "critical",
                        step,
                        "loss",
                        None,
                        None,
                        [],
                        f"loss is {loss} at step {step}: the run has numerically blown up",
                    )
                )
        else:
            self._rising = self._rising + 1 if self._prev_loss is not None and loss >= self._prev_loss else 1
            self._prev_loss = loss
            self._recent.push(loss)
            self._plateau.push(loss)
            if self._rising >= cfg.diverge_window:
                self._check_diverging(step, loss, fired)

        max_grad = snap.max_grad
        if max_grad is not None and max_grad == max_grad and max_grad not in (math.inf, -math.inf):
            if self._grads.full:
                self._check_spike(step, max_grad, fired)
            self._grads.push(max_grad)

        if snap.grad_norms:
            self._update_streaks(snap.grad_norms)
        if self.attn_streaks:
            self._check_dead("attention_head_dead", self.attn_streaks, step, snap, fired)
        if self.layer_streaks:
            self._check_dead("dead_layers", self.layer_streaks, step, snap, fired)
        if self._plateau.full and finite:
            self._check_plateau(step, snap.epoch, fired)
        return fired

    def _ready(self, kind: str, step: int) -> bool:
        last = self._last_fired.get(kind)
        return last is None or step - last >= self.config.cooldown_steps

    def _fire(
        self,
        kind: str,
        severity: str,
        step: int,
        metric: str,
        value: float | None,
        threshold: float | None,
        layers: list[str],
        message: str,
    ) -> Signal:
        self._last_fired[kind] = step
        return Signal(
            type=kind,
            severity=severity,
            step=step,
            metric=metric,
            value=value,  # type: ignore[arg-type]
            threshold=threshold,
            layers=layers,
            message=message,
        )

    def _check_diverging(self, step: int, loss: float, fired: list[Signal]) -> None:
        cfg = self.config
        rise = loss - self._recent.values[0]
        if rise > 0 and self._ready("loss_diverging", step):
            critical = rise > cfg.diverge_critical_rise
            fired.append(
                self._fire(
                    "loss_diverging",
                    "critical" if critical else "warn",
                    step,
                    "loss_rise",
                    rise,
                    cfg.diverge_critical_rise if critical else 0.0,
                    [],
                    f"loss rose {rise:.4g} over the last {cfg.diverge_window} logged steps without falling once "
                    f"(now {loss:.4g}); the run may be diverging",
                )
            )

    def _check_spike(self, step: int, max_grad: float, fired: list[Signal]) -> None:
        cfg = self.config
        base = self._grads.mean()
        ratio = max_grad / base if base > 0 else math.inf
        if ratio > cfg.spike_ratio and max_grad > cfg.spike_min_grad and self._ready("gradient_spike", step):
            critical = ratio > cfg.spike_critical_ratio
            limit = cfg.spike_critical_ratio if critical else cfg.spike_ratio
            fired.append(
                self._fire(
                    "gradient_spike",
                    "critical" if critical else "warn",
                    step,
                    "maxGrad",
                    max_grad,
                    limit * base,
                    [],
                    f"max grad norm {max_grad:.4g} is {ratio:.3g}× the mean of the previous {cfg.spike_window} "
                    f"logged values ({base:.4g})",
                )
            )

    def _update_streaks(self, norms: dict[str, float]) -> None:
        thr = self.config.dead_grad_norm
        if not (self.attn_streaks or self.layer_streaks) and min(norms.values()) >= thr:
            return  # the healthy common case: nothing low, nothing streaking
        low = {name for name, norm in norms.items() if norm < thr}
        for streaks in (self.attn_streaks, self.layer_streaks):
            for name in [n for n in streaks if n not in low and n in norms]:
                del streaks[name]
        for name in low:
            attn = self._is_attn.get(name)
            if attn is None:
                attn = self._is_attn[name] = self._attn_re.search(name) is not None
            streaks = self.attn_streaks if attn else self.layer_streaks
            streaks[name] = streaks.get(name, 0) + 1

    def _check_dead(
        self, kind: str, streaks: dict[str, int], step: int, snap: StepSnapshot, fired: list[Signal]
    ) -> None:
        cfg = self.config
        if not self._ready(kind, step):
            return
        dead = sorted(name for name, n in streaks.items() if n >= cfg.dead_streak)
        if not dead:
            return
        norms = snap.grad_norms or {}
        value = max((norms[n] for n in dead if n in norms), default=0.0)
        what = "attention layer" if kind == "attention_head_dead" else "layer"
        shown = ", ".join(f"{name} ({streaks[name]} steps)" for name in dead[:8])
        more = f" and {len(dead) - 8} more" if len(dead) > 8 else ""
        fired.append(
            self._fire(
                kind,
                "warn",
                step,
                "gradNorm",
                value,
                cfg.dead_grad_norm,
                dead,
                f"{len(dead)} {what}{'s' if len(dead) > 1 else ''} with grad norm below {cfg.dead_grad_norm:g} for "
                f"{cfg.dead_streak}+ consecutive logged steps: {shown}{more}",
            )
        )

    def _check_plateau(self, step: int, epoch: float | None, fired: list[Signal]) -> None:
        cfg = self.config
        if not self._ready("loss_plateau", step):
            return
        window = self._plateau
        mean, var = window.mean(), window.variance()
        if var > 2 * cfg.plateau_ratio * mean * mean + 1e-12 * window.peak_sq / window.size:
            return  # clearly not flat, even allowing for the running sums' rounding
        mean, var = window.exact()  # near the threshold (or exactly flat) decide on exact sums
        if var < cfg.plateau_ratio * mean * mean or var == 0.0:
            ratio = var / (mean * mean) if mean else 0.0
            at = f"epoch {epoch:.4g}" if epoch is not None else "an unknown epoch"
            fired.append(
                self._fire(
                    "loss_plateau",
                    "info",
                    step,
                    "loss_variance_ratio",
                    ratio,
                    cfg.plateau_ratio,
                    [],
                    f"loss has plateaued at {at}: variance over the last {cfg.plateau_window} logged steps is "
                    f"{ratio:.2e} of mean² (mean {mean:.4g}, {window.values[0]:.4g} → {window.values[-1]:.4g} across "
                    f"them); healthy convergence or a stalled run",
                )
            )

    def dead_layers(self) -> list[str]:
        """Layers (attention or not) currently at or past the dead streak."""
        if not (self.attn_streaks or self.layer_streaks):
            return []  # the healthy common case, once per logged step
        n = self.config.dead_streak
        return sorted(
            name for streaks in (self.attn_streaks, self.layer_streaks) for name, c in streaks.items() if c >= n
        )

    # ----- persistence -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(),
            "last_step": self.last_step,
            "prev_loss": self._prev_loss,
            "rising": self._rising,
            "recent": list(self._recent.values),
            "plateau": list(self._plateau.values),
            "grads": list(self._grads.values),
            "attn_streaks": self.attn_streaks,
            "layer_streaks": self.layer_streaks,
            "last_fired": self._last_fired,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SignalEngine:
        engine = cls(EngineConfig.model_validate(state["config"]))
        cfg = engine.config
        engine.last_step = state["last_step"]
        engine._prev_loss = state["prev_loss"]
        engine._rising = state["rising"]
        engine._recent = RollingWindow(cfg.diverge_window, state["recent"])
        engine._plateau = RollingWindow(cfg.plateau_window, state["plateau"])
        engine._grads = RollingWindow(cfg.spike_window, state["grads"])
        engine.attn_streaks = dict(state["attn_streaks"])
        engine.layer_streaks = dict(state["layer_streaks"])
        engine._last_fired = dict(state["last_fired"])
        return engine
