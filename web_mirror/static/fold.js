// A card is the fold of its events: the same rules as web_mirror/cards.py, applied to live stream events.
// Every field is read defensively: a malformed event means less on the card, never a broken page.

const STEP_FIELDS = ["step", "loss", "maxGrad", "learning_rate"];
const NON_FINITE = ["NaN", "Infinity", "-Infinity"];
const EXTRA_KEPT = 100;
const MAX_POINTS = 1000;

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const text = (v) => (typeof v === "string" ? v : null);
const number = (v) => (typeof v === "number" || NON_FINITE.includes(v) ? v : null);

export function newCard(ev) {
  const family = ev.type.split(".")[0];
  return {
    call_id: ev.call_id, session: ev.session,
    kind: { training: "watch", simulate: "simulate" }[family] || "generic",
    tool: null, status: "running", first_seq: ev.seq, last_seq: ev.seq,
    started_ts: ev.ts, ended_ts: null, duration_s: null, args: null, progress: null,
    slim: null, findings: [], error: null, hint: null, has_result: false, watch: null, extra: [],
  };
}

function watchOf(card) {
  if (!card.watch) card.watch = { run: null, steps: [], signals: [], summary: null, seen: 0, stride: 1, pinned: 0 };
  return card.watch;
}

// The bounded step series, point for point as cards.py's _add_step and _pin keep it.
function addStep(w, snap) {
  const steps = w.steps;
  const prev = steps[steps.length - 1];
  if (prev && prev.n % w.stride !== 0 && !prev.signal) steps.pop();
  steps.push({ ...Object.fromEntries(STEP_FIELDS.map((k) => [k, number(snap[k])])), n: w.seen, signal: false });
  w.seen += 1;
  if (steps.length >= MAX_POINTS && steps.length - w.pinned >= Math.floor(MAX_POINTS / 2)) {
    w.stride *= 2;
    const last = steps.length - 1;
    w.steps = steps.filter((p, i) => p.n % w.stride === 0 || p.signal || i === last);
  }
}

function pin(w, signal) {
  const step = number(signal.step);
  if (step === null) return;
  for (let i = w.steps.length - 1; i >= 0; i--) {
    const point = w.steps[i];
    if (point.step === step) {
      if (!point.signal) {
        point.signal = true;
        w.pinned += 1;
      }
      return;
    }
  }
}

function keep(card, ev) {
  card.extra = card.extra.concat([{ type: ev.type, ts: ev.ts, data: ev.data }]).slice(-EXTRA_KEPT);
}

export function applyEvent(card, ev) {
  const d = isObject(ev.data) ? ev.data : {};
  card.last_seq = ev.seq;
  if (["tool.start", "tool.result", "tool.error"].includes(ev.type)) {
    card.tool = text(d.tool) || card.tool;
    card.kind = text(d.card) || card.kind;
  }
  if (ev.type === "tool.start") {
    card.started_ts = ev.ts;
    card.args = isObject(d.args) ? d.args : null;
  } else if (ev.type === "tool.progress") {
    card.progress = { fraction: number(d.fraction), message: text(d.message) };
  } else if (ev.type === "tool.result" || ev.type === "tool.error") {
    card.status = ev.type === "tool.result" ? "ok" : "error";
    card.ended_ts = ev.ts;
    card.duration_s = number(d.duration_s);
    if (ev.type === "tool.result") {
      card.slim = d.slim === undefined ? null : d.slim;
      card.findings = Array.isArray(d.findings) ? d.findings.filter(isObject) : [];
      card.has_result = d.has_result === true;
    } else {
      card.error = text(d.error);
      card.hint = text(d.hint);
    }
  } else if (ev.type.startsWith("training.watch.")) {
    const w = watchOf(card);
    w.run = text(d.run) || w.run;
    if (ev.type === "training.watch.step" && isObject(d.snapshot)) {
      addStep(w, d.snapshot);
    } else if (ev.type === "training.watch.signal" && isObject(d.signal)) {
      w.signals.push(d.signal);
      pin(w, d.signal);
    } else if (ev.type === "training.watch.summary") {
      w.summary = d.summary === undefined ? null : d.summary;
      if (card.tool === null) {
        card.status = "ok";
        card.ended_ts = ev.ts;
      }
    } else {
      keep(card, ev);
    }
  } else {
    keep(card, ev);
  }
}
