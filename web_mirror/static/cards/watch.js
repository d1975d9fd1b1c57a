// The watch card: loss and max-grad sparklines with a marker where each signal fired, the conditions
// still going on (a plateau, dead layers: episodes that started and have not ended), then the signal feed,
// most severe first; an episode's end says how long it lasted. The live series (training.watch.* events: points and signal markers) draws it
// while the run streams; the tool's slim model (tools/watch/models.py: WatchCard — downsampled series,
// ranked signals, summary) takes over when it arrives.
import { el, fmt, isObject, kvTable, mergeSignals, toNumber } from "../dom.js";
import { sparkline } from "../sparkline.js";

const GRAD_SIGNALS = new Set(["gradient_spike", "grad_nonfinite"]);
const SUMMARY_KEYS = ["steps_seen", "first_step", "last_step", "loss_first", "loss_last", "loss_min", "nonfinite_losses", "max_grad_max", "max_grad_max_step", "layers_reported", "bad_lines", "skipped_rows", "out_of_order"];

function series(card) {
  const s = isObject(card.slim) && isObject(card.slim.series) ? card.slim.series : null;
  if (s && Array.isArray(s.step)) return { step: s.step, loss: s.loss || [], maxGrad: s.maxGrad || [] };
  const points = card.live ? card.live.points : [];
  return { step: points.map((r) => r.step), loss: points.map((r) => r.loss), maxGrad: points.map((r) => r.maxGrad) };
}

function signals(card) {
  return mergeSignals(card.live ? card.live.markers : [], isObject(card.slim) && Array.isArray(card.slim.signals) ? card.slim.signals : []);
}

function last(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== undefined) return values[i];
  return null;
}

function sparkRow(name, xs, ys, markers) {
  return el("div", { class: "spark-row" },
    el("div", { class: "spark-label" }, el("span", {}, name), el("strong", { class: "num" }, fmt(last(ys)))),
    sparkline(xs, ys, markers, { label: name }));
}

function ongoing(card) {
  const list = isObject(card.slim) && Array.isArray(card.slim.ongoing) ? card.slim.ongoing : null;
  if (list) return list.filter(isObject);
  // live: what started and has not ended among the streamed signals (the last event per type decides)
  const open = new Map();
  for (const s of signals(card).slice().sort((a, b) => toNumber(a.step) - toNumber(b.step))) {
    if (s.episode === "start") open.set(s.type, { type: s.type, since_step: s.step, layers: s.layers || [], message: s.message });
    else if (s.episode === "end") open.delete(s.type);
  }
  return [...open.values()];
}

function episodeTag(x) {
  if (x.episode === "end") return el("span", { class: "pill episode-end" }, `ended · ${fmt(x.duration_steps)} steps`);
  if (x.episode === "start") return el("span", { class: "pill episode-start" }, "started");
  return null;
}

export function render(card) {
  const s = series(card);
  const sig = signals(card);
  const marker = (x) => ({ x: x.step, severity: x.severity, label: `${x.severity} ${x.type} at step ${x.step}: ${x.message}` });
  const summary = (isObject(card.slim) && isObject(card.slim.summary) && card.slim.summary) || (card.live && isObject(card.live.summary) && card.live.summary) || null;
  const counts = summary && isObject(summary.signals_by_severity) ? summary.signals_by_severity : null;
  const open = ongoing(card);
  return el("div", { class: "watch" },
    el("div", { class: "sparks" },
      sparkRow("loss", s.step, s.loss, sig.filter((x) => !GRAD_SIGNALS.has(x.type)).map(marker)),
      sparkRow("max grad", s.step, s.maxGrad, sig.filter((x) => GRAD_SIGNALS.has(x.type)).map(marker))),
    el("div", { class: "muted steps-note" }, s.step.length ? `steps ${fmt(s.step[0])}–${fmt(s.step[s.step.length - 1])} · ${s.step.length} points` : "waiting for steps…"),
    open.length ? el("ul", { class: "ongoing" }, open.map((e) => el("li", { class: e.type === "loss_plateau" ? "sev-info" : "sev-warn" },
      el("span", { class: "pill ongoing-pill" }, "ongoing"),
      el("code", { class: "sig-type" }, String(e.type)),
      el("span", { class: "sig-step num" }, `since step ${fmt(e.since_step)}`),
      el("span", { class: "sig-msg" }, String(e.message ?? "")),
      Array.isArray(e.layers) && e.layers.length ? el("span", { class: "sig-layers muted" }, e.layers.slice(0, 6).join(", ") + (e.layers.length > 6 ? ` +${e.layers.length - 6}` : "")) : null))) : null,
    el("h4", {}, `signals (${sig.length})`, counts ? el("span", { class: "counts" }, Object.entries(counts).map(([k, v]) => el("span", { class: `pill sev-${k}` }, `${k} ${v}`))) : null),
    sig.length ? el("ol", { class: "signals" }, sig.slice(0, 50).map((x) => el("li", { class: `sev-${x.severity}` },
      el("span", { class: "sev" }, String(x.severity)),
      el("span", { class: "sig-step num" }, `step ${fmt(x.step)}`),
      el("code", { class: "sig-type" }, String(x.type)),
      episodeTag(x),
      el("span", { class: "sig-msg" }, String(x.message ?? "")),
      Array.isArray(x.layers) && x.layers.length ? el("span", { class: "sig-layers muted" }, x.layers.slice(0, 6).join(", ") + (x.layers.length > 6 ? ` +${x.layers.length - 6}` : "")) : null)))
      : el("p", { class: "muted" }, "no signals"),
    summary ? el("details", { class: "summary" }, el("summary", {}, "run summary"), kvTable(Object.fromEntries(SUMMARY_KEYS.filter((k) => k in summary).map((k) => [k, summary[k]])))) : null);
}
