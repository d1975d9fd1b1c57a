// A heatmap on a <canvas>: one canvas pixel per cell, written in one putImageData and scaled up by CSS
// (image-rendering: pixelated), so 64 rows × 1,000 columns draws in a few milliseconds. Row labels, the first and
// last column labels, a colour legend and a readout of the cell under the pointer, all as text nodes.
import { el, fmt, toNumber } from "./dom.js";

// viridis, sampled at 9 stops: dark = low, yellow = high
const SEQUENTIAL = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
const DIVERGING = [[33, 102, 172], [103, 169, 207], [209, 229, 240], [247, 247, 247], [253, 219, 199], [239, 138, 98], [178, 24, 43]];
const MISSING = [226, 229, 235];
const ZERO = [20, 20, 20]; // a zero on a log scale: nothing flows

function ramp(stops) {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * (stops.length - 1);
    const a = Math.min(Math.floor(x), stops.length - 2);
    const f = x - a;
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = Math.round(stops[a][c] + f * (stops[a + 1][c] - stops[a][c]));
  }
  return lut;
}
const LUTS = { sequential: ramp(SEQUENTIAL), diverging: ramp(DIVERGING) };

const gradientCss = (stops) => `linear-gradient(to right, ${stops.map((s, i) => `rgb(${s.join(",")}) ${Math.round((i / (stops.length - 1)) * 100)}%`).join(", ")})`;

// The value range the colours span: log (positive values only), diverging (symmetric about 0) or linear.
function range(values, scale) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const row of values) {
    for (const raw of row) {
      const v = toNumber(raw);
      if (!Number.isFinite(v) || (scale === "log" && v <= 0)) continue;
      const x = scale === "log" ? Math.log10(v) : scale === "diverging" ? Math.abs(v) : v;
      if (x < lo) lo = x;
      if (x > hi) hi = x;
    }
  }
  if (lo === Infinity) return [0, 1];
  if (scale === "diverging") return [-hi, hi || 1];
  return hi > lo ? [lo, hi] : [lo - 0.5, hi + 0.5];
}

// values: rows × columns (numbers, null for missing). rows, cols: labels. scale: "log" | "linear" | "diverging".
// marks: row indices to flag (e.g. the pinch layer). height: CSS pixels of the drawing.
export function heatmap(values, { rows = [], cols = [], scale = "linear", label = "", marks = [], height = null, unit = "" } = {}) {
  const nRows = values.length;
  const nCols = nRows ? Math.max(...values.map((r) => (Array.isArray(r) ? r.length : 0))) : 0;
  const canvas = el("canvas", { class: "hm-canvas", width: Math.max(nCols, 1), height: Math.max(nRows, 1), role: "img", "aria-label": label });
  const [lo, hi] = range(values, scale);
  const lut = LUTS[scale === "diverging" ? "diverging" : "sequential"];
  const ctx = canvas.getContext("2d");
  if (ctx && nRows && nCols) {
    const img = ctx.createImageData(nCols, nRows);
    const px = img.data;
    const span = hi - lo || 1;
    for (let r = 0; r < nRows; r++) {
      const row = values[r] || [];
      for (let c = 0; c < nCols; c++) {
        const v = toNumber(row[c]);
        let rgb = MISSING;
        let i = -1;
        if (Number.isFinite(v)) {
          if (scale === "log") {
            if (v <= 0) rgb = ZERO;
            else i = Math.round(((Math.log10(v) - lo) / span) * 255);
          } else {
            i = Math.round(((v - lo) / span) * 255);
          }
        }
        const o = (r * nCols + c) * 4;
        if (i >= 0) {
          const k = Math.min(255, Math.max(0, i)) * 3;
          px[o] = lut[k]; px[o + 1] = lut[k + 1]; px[o + 2] = lut[k + 2];
        } else {
          px[o] = rgb[0]; px[o + 1] = rgb[1]; px[o + 2] = rgb[2];
        }
        px[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
  }
  const h = height || Math.min(360, Math.max(48, nRows * 14));
  canvas.style.height = `${h}px`;
  const readout = el("div", { class: "hm-readout muted" }, "\u00a0");
  canvas.addEventListener("mousemove", (e) => {
    const box = canvas.getBoundingClientRect();
    const c = Math.min(nCols - 1, Math.floor(((e.clientX - box.left) / box.width) * nCols));
    const r = Math.min(nRows - 1, Math.floor(((e.clientY - box.top) / box.height) * nRows));
    if (r < 0 || c < 0) return;
    readout.textContent = `${rows[r] ?? r} · ${cols[c] ?? c}: ${fmt((values[r] || [])[c] ?? null)}${unit}`;
  });
  const every = Math.max(1, Math.ceil(nRows / Math.max(1, Math.floor(h / 13)))); // a label per 13 px at most
  const flagged = new Set(marks);
  const labels = el("div", { class: "hm-rows" }, rows.map((name, i) => {
    if (i % every && !flagged.has(i)) return null;
    const tag = el("span", { class: flagged.has(i) ? "hot" : "" }, flagged.has(i) ? `${name} ◀` : String(name));
    tag.style.top = `${((i + 0.5) / nRows) * 100}%`;
    return tag;
  }));
  labels.style.height = `${h}px`;
  const stops = scale === "diverging" ? DIVERGING : SEQUENTIAL;
  const bar = el("span", { class: "hm-bar" });
  bar.style.background = gradientCss(stops);
  const end = (x) => fmt(scale === "log" ? 10 ** x : x);
  return el("figure", { class: "hm" },
    el("div", { class: "hm-plot" }, labels, canvas),
    el("div", { class: "hm-cols muted" }, el("span", {}, String(cols[0] ?? "")), el("span", {}, nCols > 2 ? String(cols[Math.floor((nCols - 1) / 2)] ?? "") : ""), el("span", {}, String(cols[nCols - 1] ?? ""))),
    el("figcaption", {}, el("span", { class: "hm-label" }, label), el("span", { class: "hm-legend muted" }, end(lo), bar, end(hi), scale === "log" ? " (log)" : ""), readout));
}
