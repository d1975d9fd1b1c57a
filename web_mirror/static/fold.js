// A card is the fold of its events: the same rules as web_mirror/cards.py, applied to live stream events.
// Live families (the registered tools' declarations, from /api/contract) fold into a bounded live series.
// Every field is read defensively: a malformed event means less on the card, never a broken page.

const NON_FINITE = ["NaN", "Infinity", "-Infinity"];
const EXTRA_KEPT = 100;
const TOOL_EVENTS = ["tool.start", "tool.progress", "tool.result", "tool.error"];

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const text = (v) => (typeof v === "string" ? v : null);
const number = (v) => (typeof v === "number" || NON_FINITE.includes(v) ? v : null);

export function makeFolder(families) {
  const byLength = [...families].sort((a, b) => b.prefix.length - a.prefix.length); // the longest prefix wins
  const familyOf = (type) => byLength.find((f) => type.startsWith(`${f.prefix}.`) && type.length > f.prefix.length + 1) || null;

  function newCard(ev) {
    const family = familyOf(ev.type);
    return {
      call_id: ev.call_id, session: ev.session, kind: family ? family.card : "generic",
      tool: null, status: "running", first_seq: ev.seq, last_seq: ev.seq,
      started_ts: ev.ts, ended_ts: null, duration_s: null, args: null, progress: null,
      slim: null, findings: [], error: null, hint: null, has_result: false, live: null, extra: [],
    };
  }

  function applyEvent(card, ev) {
    const d = isObject(ev.data) ? ev.data : {};
    card.last_seq = ev.seq;
    if (TOOL_EVENTS.includes(ev.type)) return toolEvent(card, ev, d);
    const family = familyOf(ev.type);
    if (!family) return keep(card, ev);
    if (!card.live || card.live.family !== family.prefix) {
      card.live = { family: family.prefix, label: null, points: [], markers: [], summary: null, seen: 0, stride: 1, pinned: 0 };
    }
    const live = card.live;
    live.label = text(d[family.label_key]) || live.label;
    const suffix = ev.type.slice(family.prefix.length + 1);
    if (suffix === family.point && isObject(d[family.point_key])) {
      addPoint(live, family, d[family.point_key]);
    } else if (suffix === family.marker && isObject(d[family.marker_key])) {
      live.markers.push(d[family.marker_key]);
      pin(live, family, d[family.marker_key]);
    } else if (suffix === family.summary) {
      live.summary = d[family.summary_key] === undefined ? null : d[family.summary_key];
      if (card.tool === null) {
        card.status = "ok";
        card.ended_ts = ev.ts;
      }
    } else {
      keep(card, ev);
    }
  }

  return { newCard, applyEvent };
}

function toolEvent(card, ev, d) {
  if (ev.type !== "tool.progress") {
    card.tool = text(d.tool) || card.tool;
    card.kind = text(d.card) || card.kind;
  }
  if (ev.type === "tool.start") {
    card.started_ts = ev.ts;
    card.args = isObject(d.args) ? d.args : null;
  } else if (ev.type === "tool.progress") {
    card.progress = { fraction: number(d.fraction), message: text(d.message) };
  } else {
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
  }
}

// The bounded series, point for point as cards.py's _add_point and _pin keep it.
function addPoint(live, family, raw) {
  const points = live.points;
  const prev = points[points.length - 1];
  if (prev && prev.n % live.stride !== 0 && !prev.pinned) points.pop();
  points.push({ ...Object.fromEntries(family.fields.map((k) => [k, number(raw[k])])), n: live.seen, pinned: false });
  live.seen += 1;
  if (points.length >= family.max_points && points.length - live.pinned >= Math.floor(family.max_points / 2)) {
    live.stride *= 2;
    const last = points.length - 1;
    live.points = points.filter((p, i) => p.n % live.stride === 0 || p.pinned || i === last);
  }
}

function pin(live, family, marker) {
  const x = number(marker[family.fields[0]]);
  if (x === null) return;
  for (let i = live.points.length - 1; i >= 0; i--) {
    const point = live.points[i];
    if (point[family.fields[0]] === x) {
      if (!point.pinned) {
        point.pinned = true;
        live.pinned += 1;
      }
      return;
    }
  }
}

function keep(card, ev) {
  card.extra = card.extra.concat([{ type: ev.type, ts: ev.ts, data: ev.data }]).slice(-EXTRA_KEPT);
}
