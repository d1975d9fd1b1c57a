// DOM helpers. All user-supplied text goes through textContent (never innerHTML), so a probe or
// layer name like "<img onerror=...>" is shown as the characters it is.

export const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
export function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  append(node, children);
  return node;
}

// Numbers: a few significant digits; the wire carries NaN/Infinity as strings.
export function fmt(v) {
  if (typeof v === "number") {
    if (!Number.isFinite(v)) return String(v);
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
    return String(Number(v.toPrecision(4)));
  }
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (isObject(v) || Array.isArray(v)) return JSON.stringify(v);
  return String(v);
}

export const toNumber = (v) => (typeof v === "number" ? v : typeof v === "string" && v !== "" ? Number(v) : NaN);

export function clock(ts) {
  if (typeof ts !== "number") return "—";
  const d = new Date(ts * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function seconds(s) {
  if (typeof s !== "number") return "—";
  return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`;
}

const MAX_ROWS = 25;
const MAX_COLS = 10;
const MAX_DEPTH = 3;

// The generic renderer: any JSON value as nested tables, bounded in size.
export function valueNode(v, depth = 0) {
  if (depth > MAX_DEPTH) return el("code", { class: "json" }, truncate(JSON.stringify(v), 160));
  if (Array.isArray(v)) {
    if (v.length === 0) return el("span", { class: "muted" }, "none");
    if (v.every(isObject)) return rowsTable(v, depth);
    if (v.every((x) => !isObject(x) && !Array.isArray(x))) {
      const shown = v.slice(0, 40).map(fmt).join(", ");
      return el("span", { class: "list" }, v.length > 40 ? `${shown}, … (${v.length} items)` : shown);
    }
    return el("ol", { class: "values" }, v.slice(0, MAX_ROWS).map((x) => el("li", {}, valueNode(x, depth + 1))), more(v.length));
  }
  if (isObject(v)) return kvTable(v, depth);
  return el("span", { class: typeof v === "number" ? "num" : "" }, fmt(v));
}

export function kvTable(obj, depth = 0) {
  const rows = Object.entries(obj).slice(0, 60).map(([k, val]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, valueNode(val, depth + 1))));
  return el("table", { class: "kv" }, el("tbody", {}, rows));
}

export function rowsTable(rows, depth = 0) {
  const cols = [];
  for (const r of rows.slice(0, MAX_ROWS)) for (const k of Object.keys(r)) if (!cols.includes(k) && cols.length < MAX_COLS) cols.push(k);
  return el("div", { class: "scroll" },
    el("table", { class: "rows" },
      el("thead", {}, el("tr", {}, cols.map((c) => el("th", { scope: "col" }, c)))),
      el("tbody", {}, rows.slice(0, MAX_ROWS).map((r) => el("tr", {}, cols.map((c) => el("td", { class: typeof r[c] === "number" ? "num" : "" }, valueNode(r[c], depth + 2))))))),
    more(rows.length));
}

function more(n) {
  return n > MAX_ROWS ? el("div", { class: "muted more" }, `… ${n - MAX_ROWS} more (full result via the sync row)`) : null;
}

export function truncate(s, n) {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

// The one severity order (most severe first), as the contract states it: app.js sets it from /api/contract.
let severities = [];
export function setSeverities(order) {
  severities = Array.isArray(order) ? order.filter((s) => typeof s === "string") : [];
}
export const severityRank = (s) => (severities.includes(s) ? severities.indexOf(s) : severities.length);

// Signals (watch's schema) from the live markers and the slim payload, each once (a signal is its type, step,
// metric and episode), most severe first, then earliest.
export function mergeSignals(...lists) {
  const seen = new Map();
  for (const s of lists.flat()) if (isObject(s)) seen.set(`${s.type}|${s.step}|${s.metric}|${s.episode ?? ""}`, s);
  return [...seen.values()].sort((a, b) => severityRank(a.severity) - severityRank(b.severity) || toNumber(a.step) - toNumber(b.step));
}
