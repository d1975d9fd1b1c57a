"""The live signal engine over a stream of step snapshots, O(1) amortised per step.

Two rule sets. `seed_rules=True` is the design seed's five detectors exactly (divergence, gradient spike,
dead attention layers, dead layers, plateau) with a 30-step cooldown per type, so a lasting condition
re-fires every cooldown. The default adds what real logs showed the five miss, each rule stated where it
is checked below:
- `loss_spike`: a finite loss above `loss_spike_ratio` × the mean of the previous `loss_spike_window`
  finite losses (the spike itself excluded; a NaN/inf loss never enters that window, so the first finite
  loss after one is compared with the level before it), and above that mean by more than
  `loss_spike_sigmas` × the window's standard deviation: a loss jittering near zero has a standard
  deviation close to its mean, so twice its mean is ordinary noise there (on the real logs in
  ../shared/reallogs the noise gate takes a pendulum PINN from 304 spikes to 45 and a memorising
  fine-tune from 35 to 4; a smooth run's jump passes it by orders of magnitude). Warn; critical above
  `loss_spike_critical_ratio`, or once the loss has stayed above `loss_spike_ratio` × that pre-spike mean
  for `loss_spike_persist` logged steps (no recovery). The spike is over when a loss falls back to or below that line.
- `grad_nonfinite`: an inf/NaN maxGrad or per-layer norm. Info for an isolated overflow; warn when the
  last `overflow_window` logged steps hold `overflow_repeat` or more (a loss scaler collapsing);
  critical for a NaN gradient while the loss is finite.
- A plateau must also be flat in trend: the least-squares line through the window changes by less than
  `plateau_trend` × |mean| across it, so a steady descent with low variance is not a plateau.
- Episodes: a plateau or a dead layer fires once when it starts (`episode="start"`) and once when it
  clears (`episode="end"`, with `since_step` and `duration_steps`; info, and outside the cooldown). A
  plateau ends when the mean of its window moves more than `plateau_exit` from its level at the start
  (hysteresis: noise inside a plateau does not end it); a dead layer ends at its first logged norm at or
  above the limit (or NaN). Layers dying while their type is in cooldown are announced when it ends.
- For the two new types a repeat within the cooldown is held back unless it is more severe than the last
  one fired (an info overflow does not hide the scaler collapsing ten steps later).

Decisions on the edges both rule sets share (tests pin each one):
- Steps must strictly increase. The caller (`RunWatcher`) drops repeated or backward steps before they
  reach the engine (two ranks writing one log, a resumed run) and reports them; the engine never rescans.
- Windows count logged events, the cooldown counts steps: a type that fired at step s fires again only
  at a step >= s + cooldown_steps, however sparsely the run logs.
- Variance is the population variance (divide by n) of the last `plateau_window` finite losses. A window
  with variance exactly 0 is a plateau even when its mean is 0 (a loss stuck at 0.0 cannot pass the
  relative test `var < ratio * mean²`).
- A NaN/inf loss raises `loss_nonfinite` (critical, same cooldown), is never pushed into a window (it
  would poison the rolling sums), and breaks the rising run: divergence needs `diverge_window` finite,
  non-decreasing losses in a row. A non-finite maxGrad never enters the spike baseline; a NaN grad norm
  breaks that layer's dead streak.
- A layer missing from a step's gradNorms keeps its streak unchanged (work stays proportional to the
  layers reported in that step).
- Seed rules: firing does not reset a streak; only a norm at or above the limit (or NaN) does. So a layer
  that stays dead is named again each time the cooldown lets its type fire (step 5, 35, 65, … with the
  streak length in the message); one that crosses the streak during its type's cooldown is named when
  the cooldown ends.
- The spike detectors wait for a full window of previous values.
"""

from __future__ import annotations

import math
import re
from collections import deque
from typing import Any

from pydantic import BaseModel, Field, field_validator

from tools.watch.snapshot import Episode, Signal, StepSnapshot
from toolserver.contract import SEVERITY_RANK

# attention modules by name; a norm named after the attention it follows (Llama's post_attention_layernorm) is not one
DEFAULT_ATTENTION_REGEX = (
    r"(?i)(attn|attention)(?!\w*norm)|(^|[._])(q|k|v|o|qkv)_proj($|[._])|(^|\.)(query|key|value)($|\.)"
)
CLOSE = 1e-9  # relative distance from a limit inside which a decision is made on exact sums


class EngineConfig(BaseModel):
    """Detector thresholds; the defaults are the design's."""

    seed_rules: bool = Field(
        False,
        description="the seed's five detectors and cooldown exactly: no loss_spike or grad_nonfinite, no trend test "
        "for plateaus, and lasting conditions re-fire every cooldown instead of a start and an end",
    )
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
    plateau_trend: float = Field(
        0.01,
        ge=0,
        description="and when the least-squares line through those losses changes by less than this × |mean| "
        "across them (not under seed_rules)",
    )
    plateau_exit: float = Field(
        0.05, gt=0, description="a plateau ends when its window's mean moves more than this fraction from its level"
    )
    loss_spike_window: int = Field(20, ge=1, description="previous finite losses averaged as the loss-spike baseline")
    loss_spike_ratio: float = Field(2.0, gt=1, description="loss / baseline above which a loss spike warns")
    loss_spike_critical_ratio: float = Field(
        5.0, gt=1, description="loss / baseline above which a loss spike is critical"
    )
    loss_spike_sigmas: float = Field(
        6.0, ge=0, description="a loss spike also rises above the baseline by more than this many standard deviations"
    )
    loss_spike_persist: int = Field(
        10,
        ge=1,
        description="logged steps the loss stays above loss_spike_ratio × its pre-spike mean before the spike turns "
        "critical",
    )
    overflow_window: int = Field(20, ge=1, description="logged steps in which non-finite gradient norms are counted")
    overflow_repeat: int = Field(
        3, ge=2, description="non-finite gradient norms within overflow_window that make grad_nonfinite a warning"
    )

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

    def drift(self) -> float:
        """A bound on the running sums' rounding, in the values' units."""
        return 1e-9 * math.sqrt(self.peak_sq)

    def exact(self) -> tuple[float, float]:
        """Mean and population variance, two-pass over the window."""
        n = len(self.values)
        mean = math.fsum(self.values) / n
        return mean, math.fsum((x - mean) ** 2 for x in self.values) / n


class TrendWindow(RollingWindow):
    """A RollingWindow that also keeps Σ i·xᵢ (i = 0 for the oldest value), for the least-squares trend."""

    __slots__ = ("total_iy",)

    def _resum(self) -> None:
        super()._resum()
        self.total_iy = math.fsum(i * v for i, v in enumerate(self.values))

    def push(self, x: float) -> None:  # RollingWindow.push with Σ i·xᵢ, inline: this runs on every logged step
        values = self.values
        n = len(values)
        if n == self.size:
            old = values[0]
            self.total_iy -= self.total - old  # every remaining value moves one position down
            self.total -= old
            self.total_sq -= old * old
            n -= 1
        values.append(x)
        self.total += x
        self.total_sq += x * x
        self.total_iy += n * x
        if self.total_sq > self.peak_sq:
            self.peak_sq = self.total_sq
        self._pushes += 1
        if self._pushes >= self.size:
            self._resum()

    def change(self) -> float:
        """How much the least-squares line through the window rises across it (slope × (n − 1)), from the sums."""
        n = len(self.values)
        sxx = n * (n * n - 1) / 12
        return (self.total_iy - (n - 1) / 2 * self.total) / sxx * (n - 1) if n > 1 else 0.0

    def exact_change(self) -> float:
        return trend_change(list(self.values))


def _sigmas(rise: float, var: float) -> str:
    return f"{rise / math.sqrt(var):.3g} standard deviations" if var > 0 else "infinitely many standard deviations"


def trend_change(values: list[float]) -> float:
    """Rise of the least-squares line through `values` (at positions 0..n−1) from first to last, two-pass."""
    n = len(values)
    if n < 2:
        return 0.0
    xbar, ybar = (n - 1) / 2, math.fsum(values) / n
    sxy = math.fsum((i - xbar) * (y - ybar) for i, y in enumerate(values))
    return sxy / (n * (n * n - 1) / 12) * (n - 1)


class SignalEngine:
    """Feed snapshots in step order with `observe`; it returns every signal that fired on that step, in
    priority order. `state()` / `from_state()` persist it between processes (a few KB)."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = cfg = config or EngineConfig()
        self.episodes = not cfg.seed_rules
        self._attn_re = re.compile(cfg.attention_regex)
        self._is_attn: dict[str, bool] = {}
        self.last_step: int | None = None
        self._events = 0  # snapshots observed
        self._prev_loss: float | None = None
        self._rising = 0  # length of the current run of non-decreasing finite losses
        self._recent = RollingWindow(cfg.diverge_window)
        self._plateau = TrendWindow(cfg.plateau_window) if self.episodes else RollingWindow(cfg.plateau_window)
        self._plateau_steps: deque[int] = deque(maxlen=cfg.plateau_window)
        self._plateau_on: tuple[int, float] | None = None  # (since step, level) of an ongoing plateau
        self._band = (0.0, 0.0)
        self._losses = self._loss_window()
        self._spike: list[Any] | None = None  # [pre-spike mean, since step, logged steps above, critical yet]
        self._after_nonfinite: int | None = None  # step of a non-finite loss not yet followed by a finite one
        self._grads = RollingWindow(cfg.spike_window)
        self._overflows: deque[tuple[int, int]] = deque()  # (event index, step) of non-finite gradient norms
        self.attn_streaks: dict[str, int] = {}
        self.layer_streaks: dict[str, int] = {}
        self._low_since: dict[str, int] = {}  # step each current low streak began
        self._announced: dict[str, dict[str, int]] = {"attention_head_dead": {}, "dead_layers": {}}
        self._last_fired: dict[str, int] = {}
        self._last_severity: dict[str, str] = {}

    def _loss_window(self, values: list[float] | None = None) -> RollingWindow:
        """The loss-spike baseline: the plateau window itself when both hold the same number of losses (the
        spike is checked before the loss is pushed), else a window of its own."""
        cfg = self.config
        return (
            self._plateau
            if cfg.loss_spike_window == cfg.plateau_window
            else RollingWindow(cfg.loss_spike_window, values)
        )

    # ----- the per-step path -------------------------------------------------------------------
    def observe(self, snap: StepSnapshot) -> list[Signal]:
        """Signals that fire on this step. Precondition: snap.step > the previous step observed."""
        cfg = self.config
        step = snap.step
        self.last_step = step
        self._events += 1
        fired: list[Signal] = []
        loss = snap.loss
        finite = not (loss != loss or loss in (math.inf, -math.inf))
        if not finite:
            self._prev_loss, self._rising = None, 0
            if self._after_nonfinite is None:
                self._after_nonfinite = step
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
        max_grad = snap.max_grad
        grad_ok = max_grad is None or not (max_grad != max_grad or max_grad in (math.inf, -math.inf))
        episodes = self.episodes
        if episodes:
            norms = snap.grad_norms
            if not grad_ok or (norms and not math.isfinite(sum(norms.values()))):
                self._check_grad_nonfinite(step, snap, loss if finite else None, fired)
        plateau = self._plateau
        if finite:
            if episodes:
                losses = self._losses
                if self._spike is not None or (
                    losses.full and loss > cfg.loss_spike_ratio * losses.total / losses.size * (1 - CLOSE)
                ):
                    self._check_loss_spike(step, loss, fired)
                if losses is not plateau:
                    losses.push(loss)
                self._after_nonfinite = None
                self._plateau_steps.append(step)
            self._rising = self._rising + 1 if self._prev_loss is not None and loss >= self._prev_loss else 1
            self._prev_loss = loss
            self._recent.push(loss)
            plateau.push(loss)
            if self._rising >= cfg.diverge_window:
                self._check_diverging(step, loss, fired)

        if max_grad is not None and grad_ok:
            if self._grads.full:
                self._check_spike(step, max_grad, fired)
            self._grads.push(max_grad)

        recovered = self._update_streaks(snap.grad_norms, step) if snap.grad_norms else None
        if recovered or self.attn_streaks or self.layer_streaks:
            for kind, streaks in (("attention_head_dead", self.attn_streaks), ("dead_layers", self.layer_streaks)):
                if recovered and kind in recovered:
                    self._end_dead(kind, recovered[kind], step, snap, fired)
                if streaks:
                    self._check_dead(kind, streaks, step, snap, fired)
        if finite and plateau.full:
            if self._plateau_on is None:
                self._check_plateau(step, snap.epoch, fired)
            elif abs(plateau.total - self._band[0]) >= self._band[1] - plateau.size * plateau.drift():
                self._check_plateau_end(step, fired)  # the mean may have left the plateau's band
        return fired

    def _set_band(self) -> None:
        """(centre, half width) of the window totals inside which an ongoing plateau surely goes on: its exit
        limit less a rounding margin; observe() also subtracts the running sums' current drift."""
        if self._plateau_on is not None:
            n, level = self.config.plateau_window, self._plateau_on[1]
            limit = self.config.plateau_exit * abs(level)
            self._band = (n * level, n * (limit - 2 * CLOSE * abs(level)))

    def _ready(self, kind: str, step: int) -> bool:
        last = self._last_fired.get(kind)
        return last is None or step - last >= self.config.cooldown_steps

    def _may_fire(self, kind: str, step: int, severity: str) -> bool:
        """The new types' cooldown: a repeat waits unless it is more severe than the last one fired."""
        return self._ready(kind, step) or SEVERITY_RANK[severity] < SEVERITY_RANK[self._last_severity[kind]]

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
        *,
        since: int | None = None,
        episode: str | None = None,
    ) -> Signal:
        if episode != "end":  # an episode's end is news, not a repeat: it neither waits for nor starts a cooldown
            self._last_fired[kind] = step
            self._last_severity[kind] = severity
        if episode is None and self.episodes and kind in ("attention_head_dead", "dead_layers", "loss_plateau"):
            episode = "start"
        return Signal(
            type=kind,
            severity=severity,
            step=step,
            metric=metric,
            value=value,  # type: ignore[arg-type]
            threshold=threshold,
            layers=layers,
            message=message,
            episode=episode,  # type: ignore[arg-type]
            since_step=since if episode == "end" else None,
            duration_steps=step - since if episode == "end" and since is not None else None,
        )

    # ----- loss ---------------------------------------------------------------------------------
    def _check_loss_spike(self, step: int, loss: float, fired: list[Signal]) -> None:
        """See the module docstring; the baseline is decided on exact sums whenever a loss is near a limit."""
        cfg = self.config
        spike = self._spike
        if spike is not None:
            base, since, high, critical = spike
            if loss > cfg.loss_spike_ratio * base:
                spike[2] = high = high + 1
                if high >= cfg.loss_spike_persist and not critical:
                    spike[3] = True
                    if self._may_fire("loss_spike", step, "critical"):
                        fired.append(
                            self._fire(
                                "loss_spike",
                                "critical",
                                step,
                                "loss_ratio_sustained",
                                loss / base,
                                cfg.loss_spike_ratio,
                                [],
                                f"loss {loss:.4g} is still {loss / base:.3g}× its mean before the spike at step "
                                f"{since} ({base:.4g}) after {high} logged steps above {cfg.loss_spike_ratio:g}×: no "
                                f"recovery — the run has left its basin; restart from a checkpoint before step "
                                f"{since} with a lower learning rate or longer warmup",
                            )
                        )
                return
            self._spike = None  # recovered: back to or below the line
        window = self._losses
        if not window.full:
            return
        base = window.mean()
        if loss <= cfg.loss_spike_ratio * base * (1 - CLOSE) or base <= 0:
            return  # clearly no spike (and a baseline at or below 0 has no ratio)
        base, var = window.exact()
        if base <= 0 or loss <= cfg.loss_spike_ratio * base or not loss - base > cfg.loss_spike_sigmas * math.sqrt(var):
            return
        ratio = loss / base
        critical = ratio > cfg.loss_spike_critical_ratio
        severity = "critical" if critical else "warn"
        self._spike = [base, step, 1, critical]
        if not self._may_fire("loss_spike", step, severity):
            return
        after = (
            f" (the first finite loss after the non-finite one at step {self._after_nonfinite})"
            if self._after_nonfinite is not None
            else ""
        )
        limit = cfg.loss_spike_critical_ratio if critical else cfg.loss_spike_ratio
        fired.append(
            self._fire(
                "loss_spike",
                severity,
                step,
                "loss_ratio",
                ratio,
                limit,
                [],
                f"loss jumped to {loss:.4g}{after}: {ratio:.3g}× the mean of the previous {cfg.loss_spike_window} "
                f"logged losses ({base:.4g}, above {limit:g}×) and {_sigmas(loss - base, var)} of their spread "
                f"(above {cfg.loss_spike_sigmas:g}); a common cause is a learning rate too high for the local "
                "curvature: compare weight-delta sizes with grad norms at this step",
            )
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

    # ----- gradients ----------------------------------------------------------------------------
    def _check_grad_nonfinite(self, step: int, snap: StepSnapshot, loss: float | None, fired: list[Signal]) -> None:
        cfg = self.config
        g = snap.max_grad
        bad = sorted(name for name, v in (snap.grad_norms or {}).items() if not math.isfinite(v))
        if not bad and (g is None or math.isfinite(g)):
            return  # finite norms whose sum overflowed
        nan = (g is not None and g != g) or any(snap.grad_norms[n] != snap.grad_norms[n] for n in bad)  # type: ignore[index]
        overflows = self._overflows
        overflows.append((self._events, step))
        while overflows[0][0] <= self._events - cfg.overflow_window:
            overflows.popleft()
        count = len(overflows)
        severity = "critical" if nan and loss is not None else "warn" if count >= cfg.overflow_repeat else "info"
        if not self._may_fire("grad_nonfinite", step, severity):
            return
        what = "NaN" if nan else "infinite"
        named = f" in {', '.join(bad[:8])}{f' and {len(bad) - 8} more' if len(bad) > 8 else ''}" if bad else ""
        if severity == "critical":
            message = (
                f"gradient norm is NaN{named} at step {step} while the loss is finite ({loss:.4g}): a NaN made in the "
                "backward pass (0/0, log 0, sqrt at 0, a custom op) or in the data; under fp16 autocast it can also "
                "be an overflow the loss scaler skips"
            )
        elif severity == "warn":
            steps = ", ".join(str(s) for _, s in list(overflows)[-6:])
            message = (
                f"{count} non-finite gradient norms in the last {cfg.overflow_window} logged steps (steps {steps}; "
                f"now {what}{named}): the loss scaler keeps overflowing and its scale may be collapsing — try bf16, "
                "a lower learning rate or stronger clipping"
            )
        else:
            message = (
                f"gradient norm is {what}{named} at step {step}: an overflow; under fp16 loss scaling the scaler "
                "skips this step and lowers its scale, routine when it is rare"
            )
        fired.append(
            self._fire(
                "grad_nonfinite",
                severity,
                step,
                "nonfinite_grads_in_window",
                float(count),
                float(cfg.overflow_repeat) if severity == "warn" else None,
                bad,
                message,
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

    # ----- dead layers ----------------------------------------------------------------------------
    def _update_streaks(self, norms: dict[str, float], step: int) -> dict[str, list[str]] | None:
        """Advance the streaks; returns the announced dead layers that recovered on this step, per type."""
        thr = self.config.dead_grad_norm
        if not (self.attn_streaks or self.layer_streaks) and min(norms.values()) >= thr:
            return None  # the healthy common case: nothing low, nothing streaking
        low = {name for name, norm in norms.items() if norm < thr}
        recovered: dict[str, list[str]] | None = None
        for kind, streaks in (("attention_head_dead", self.attn_streaks), ("dead_layers", self.layer_streaks)):
            for name in [n for n in streaks if n not in low and n in norms]:
                del streaks[name]
                self._low_since.pop(name, None)
                if name in self._announced[kind]:
                    recovered = recovered or {}
                    recovered.setdefault(kind, []).append(name)
        for name in low:
            attn = self._is_attn.get(name)
            if attn is None:
                attn = self._is_attn[name] = self._attn_re.search(name) is not None
            streaks = self.attn_streaks if attn else self.layer_streaks
            n = streaks.get(name, 0)
            if not n:
                self._low_since[name] = step
            streaks[name] = n + 1
        return recovered

    def _check_dead(
        self, kind: str, streaks: dict[str, int], step: int, snap: StepSnapshot, fired: list[Signal]
    ) -> None:
        cfg = self.config
        if not self._ready(kind, step):
            return
        announced = self._announced[kind]
        if self.episodes:
            dead = sorted(name for name, n in streaks.items() if n >= cfg.dead_streak and name not in announced)
        else:
            dead = sorted(name for name, n in streaks.items() if n >= cfg.dead_streak)
        if not dead:
            return
        norms = snap.grad_norms or {}
        value = max((norms[n] for n in dead if n in norms), default=0.0)
        what = "attention layer" if kind == "attention_head_dead" else "layer"
        plural = "s" if len(dead) > 1 else ""
        more = f" and {len(dead) - 8} more" if len(dead) > 8 else ""
        if self.episodes:
            for name in dead:
                announced[name] = self._low_since[name]
            shown = ", ".join(f"{name} (since step {announced[name]})" for name in dead[:8])
            total = f"; {len(announced)} dead in all" if len(announced) > len(dead) else ""
            message = (
                f"{len(dead)} {what}{plural} with grad norm below {cfg.dead_grad_norm:g} for {cfg.dead_streak}+ "
                f"consecutive logged steps: {shown}{more}{total}; an end signal follows when "
                f"{'they recover' if plural else 'it recovers'}"
            )
        else:
            shown = ", ".join(f"{name} ({streaks[name]} steps)" for name in dead[:8])
            message = (
                f"{len(dead)} {what}{plural} with grad norm below {cfg.dead_grad_norm:g} for "
                f"{cfg.dead_streak}+ consecutive logged steps: {shown}{more}"
            )
        fired.append(self._fire(kind, "warn", step, "gradNorm", value, cfg.dead_grad_norm, dead, message))

    def _end_dead(self, kind: str, names: list[str], step: int, snap: StepSnapshot, fired: list[Signal]) -> None:
        announced = self._announced[kind]
        since = {name: announced.pop(name) for name in sorted(names)}
        norms = snap.grad_norms or {}
        value = max((norms[n] for n in since if math.isfinite(norms[n])), default=None)
        shown = ", ".join(f"{name} ({step - s} steps, since step {s})" for name, s in list(since.items())[:8])
        more = f" and {len(since) - 8} more" if len(since) > 8 else ""
        left = f"; {len(announced)} still dead" if announced else ""
        fired.append(
            self._fire(
                kind,
                "info",
                step,
                "gradNorm",
                value,
                self.config.dead_grad_norm,
                list(since),
                f"{len(since)} dead {'attention layer' if kind == 'attention_head_dead' else 'layer'}"
                f"{'s' if len(since) > 1 else ''} recovered at step {step}: {shown}{more}{left}",
                since=min(since.values()),
                episode="end",
            )
        )

    # ----- plateau --------------------------------------------------------------------------------
    def _flat(self) -> tuple[bool, float, float, float]:
        """(plateau?, mean, variance, trend change) of the plateau window; exact sums near each limit."""
        cfg = self.config
        window = self._plateau
        mean, var = window.mean(), window.variance()
        if var > 2 * cfg.plateau_ratio * mean * mean + 1e-12 * window.peak_sq / window.size:
            return False, mean, var, 0.0  # clearly not flat, even allowing for the running sums' rounding
        mean, var = window.exact()  # near the threshold (or exactly flat) decide on exact sums
        if var == 0.0:
            return True, mean, var, 0.0
        if not var < cfg.plateau_ratio * mean * mean:
            return False, mean, var, 0.0
        if not self.episodes:
            return True, mean, var, 0.0
        change, limit = window.change(), cfg.plateau_trend * abs(mean)
        margin = 0.25 * limit + window.drift()
        if limit - margin <= abs(change) <= limit + margin:
            change = window.exact_change()
        return abs(change) < limit, mean, var, change

    def _check_plateau(self, step: int, epoch: float | None, fired: list[Signal]) -> None:
        cfg = self.config
        if not self._ready("loss_plateau", step):
            return
        flat, mean, var, change = self._flat()
        if not flat:
            return
        window = self._plateau
        ratio = var / (mean * mean) if mean else 0.0
        at = f"epoch {epoch:.4g}" if epoch is not None else "an unknown epoch"
        if self.episodes:
            since = self._plateau_steps[0]
            self._plateau_on = (since, mean)
            self._set_band()
            trend = f"{round(change / mean, 4) + 0.0:+.2%}" if mean else f"{change:+.3g}"  # never "-0.00%"
            message = (
                f"loss has plateaued at {at}: over the last {cfg.plateau_window} logged steps variance {ratio:.2e} of "
                f"mean² and the fitted trend {trend} across them (limits {cfg.plateau_ratio:g} and "
                f"±{cfg.plateau_trend:.0%}); mean {mean:.4g}, flat since step {since}; it ends when that mean moves "
                f"more than {cfg.plateau_exit:.0%}"
            )
        else:
            message = (
                f"loss has plateaued at {at}: variance over the last {cfg.plateau_window} logged steps is "
                f"{ratio:.2e} of mean² (mean {mean:.4g}, {window.values[0]:.4g} → {window.values[-1]:.4g} across "
                "them)"
            )
        fired.append(
            self._fire(
                "loss_plateau",
                "info",
                step,
                "loss_variance_ratio",
                ratio,
                cfg.plateau_ratio,
                [],
                f"{message}; healthy convergence or a stalled run",
            )
        )

    def _check_plateau_end(self, step: int, fired: list[Signal]) -> None:
        cfg = self.config
        since, level = self._plateau_on  # type: ignore[misc]
        window = self._plateau
        limit = cfg.plateau_exit * abs(level)
        mean = window.mean()
        if abs(abs(mean - level) - limit) <= CLOSE * (abs(mean) + abs(level)) + window.drift() / window.size:
            mean = math.fsum(window.values) / len(window.values)
        if not abs(mean - level) > limit:
            return
        self._plateau_on = None
        moved = (mean - level) / abs(level) if level else math.inf
        fired.append(
            self._fire(
                "loss_plateau",
                "info",
                step,
                "loss_level_change",
                moved if level else None,
                cfg.plateau_exit,
                [],
                f"the loss plateau since step {since} ended at step {step} after {step - since} steps: the mean of "
                f"the last {cfg.plateau_window} logged losses moved from {level:.4g} to {mean:.4g}"
                + (f" ({moved:+.1%}, beyond ±{cfg.plateau_exit:.0%})" if level else ""),
                since=since,
                episode="end",
            )
        )

    # ----- what is going on now -------------------------------------------------------------------
    def dead_layers(self) -> list[str]:
        """Layers (attention or not) currently at or past the dead streak."""
        if not (self.attn_streaks or self.layer_streaks):
            return []  # the healthy common case, once per logged step
        n = self.config.dead_streak
        return sorted(
            name for streaks in (self.attn_streaks, self.layer_streaks) for name, c in streaks.items() if c >= n
        )

    def ongoing(self) -> list[Episode]:
        """Episodes started and not yet ended (always empty under seed rules)."""
        out = []
        if self._plateau_on is not None:
            since, level = self._plateau_on
            out.append(Episode(type="loss_plateau", since_step=since, message=f"loss flat at {level:.4g}"))
        for kind, announced in self._announced.items():
            if announced:
                names = sorted(announced, key=lambda n: (announced[n], n))
                what = "attention layer" if kind == "attention_head_dead" else "layer"
                out.append(
                    Episode(
                        type=kind,  # type: ignore[arg-type]
                        since_step=min(announced.values()),
                        layers=names,
                        message=f"{len(names)} {what}{'s' if len(names) > 1 else ''} with no gradient",
                    )
                )
        return out

    # ----- persistence -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(),
            "last_step": self.last_step,
            "events": self._events,
            "prev_loss": self._prev_loss,
            "rising": self._rising,
            "recent": list(self._recent.values),
            "plateau": list(self._plateau.values),
            "plateau_steps": list(self._plateau_steps),
            "plateau_on": self._plateau_on,
            "losses": list(self._losses.values) if self._losses is not self._plateau else None,
            "spike": self._spike,
            "after_nonfinite": self._after_nonfinite,
            "grads": list(self._grads.values),
            "overflows": list(self._overflows),
            "attn_streaks": self.attn_streaks,
            "layer_streaks": self.layer_streaks,
            "low_since": self._low_since,
            "announced": self._announced,
            "last_fired": self._last_fired,
            "last_severity": self._last_severity,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SignalEngine:
        engine = cls(EngineConfig.model_validate(state["config"]))
        cfg = engine.config
        engine.last_step = state["last_step"]
        engine._events = state["events"]
        engine._prev_loss = state["prev_loss"]
        engine._rising = state["rising"]
        engine._recent = RollingWindow(cfg.diverge_window, state["recent"])
        engine._plateau = (TrendWindow if engine.episodes else RollingWindow)(cfg.plateau_window, state["plateau"])
        engine._plateau_steps = deque(state["plateau_steps"], maxlen=cfg.plateau_window)
        engine._plateau_on = tuple(state["plateau_on"]) if state["plateau_on"] else None  # type: ignore[assignment]
        engine._set_band()
        engine._losses = engine._loss_window(state["losses"])
        engine._spike = state["spike"]
        engine._after_nonfinite = state["after_nonfinite"]
        engine._grads = RollingWindow(cfg.spike_window, state["grads"])
        engine._overflows = deque(tuple(o) for o in state["overflows"])  # type: ignore[misc]
        engine.attn_streaks = dict(state["attn_streaks"])
        engine.layer_streaks = dict(state["layer_streaks"])
        engine._low_since = dict(state["low_since"])
        engine._announced = {k: dict(v) for k, v in state["announced"].items()}
        engine._last_fired = dict(state["last_fired"])
        engine._last_severity = dict(state["last_severity"])
        return engine
