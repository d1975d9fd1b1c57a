// A tiny inline SVG sparkline with markers at given x positions (the one hand-drawn plot on the page).
import { fmt, svg, toNumber } from "./dom.js";

const W = 320;
const H = 56;
const PAD = 4;

// xs, ys: equal-length arrays (ys may hold null/"NaN": drawn as gaps, non-finite ones as red ticks).
// markers: [{x, severity, label}] drawn as vertical ticks coloured by severity.
export function sparkline(xs, ys, markers = [], { label = "", logScale = false } = {}) {
  const pts = [];
  const bad = [];
  for (let i = 0; i < xs.length; i++) {
    const x = toNumber(xs[i]);
    const raw = ys[i];
    const y = toNumber(raw);
    if (!Number.isFinite(x)) continue;
    if (Number.isFinite(y) && (!logScale || y > 0)) pts.push([x, logScale ? Math.log10(y) : y]);
    else if (raw !== null && raw !== undefined) bad.push(x);
  }
  const allX = pts.map((p) => p[0]).concat(bad, markers.map((m) => toNumber(m.x)).filter(Number.isFinite));
  const node = svg("svg", { class: "spark", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": label });
  if (!allX.length) return node;
  const [x0, x1] = range(allX);
  const [y0, y1] = pts.length ? range(pts.map((p) => p[1])) : [0, 1];
  const sx = (x) => PAD + ((x - x0) / (x1 - x0 || 1)) * (W - 2 * PAD);
  const sy = (y) => H - PAD - ((y - y0) / (y1 - y0 || 1)) * (H - 2 * PAD);
  for (const m of markers) {
    const x = toNumber(m.x);
    if (!Number.isFinite(x)) continue;
    node.append(svg("line", { class: `marker sev-${m.severity}`, x1: sx(x), x2: sx(x), y1: 0, y2: H }, svg("title", {}, m.label)));
  }
  if (pts.length) {
    const d = pts.map(([x, y], i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join("");
    node.append(svg("path", { class: "line", d }));
    const [lx, ly] = pts[pts.length - 1];
    node.append(svg("circle", { class: "last", cx: sx(lx), cy: sy(ly), r: 2.5 }));
  }
  for (const x of bad) node.append(svg("line", { class: "nonfinite", x1: sx(x), x2: sx(x), y1: 0, y2: 8 }, svg("title", {}, `non-finite at ${fmt(x)}`)));
  return node;
}

function range(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}
