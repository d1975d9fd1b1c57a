// The saeDiff card, from its slim model (tools/sae/models.py: SaeDiffCard): per layer a canvas with one cell per
// SAE feature (shade = |Δ| relative to the layer's largest, shifted features in blue), the layer's counts, and the
// top features base vs checkpoint. A canvas, so a 16k-feature layer draws in one pass.
import { el, fmt, isObject } from "../dom.js";

const NEURONPEDIA = "https://www.neuronpedia.org/";

function bytes(b64) {
  try {
    const raw = atob(typeof b64 === "string" ? b64 : "");
    return Uint8Array.from(raw, (c) => c.charCodeAt(0));
  } catch {
    return new Uint8Array(0);
  }
}

function cellsCanvas(layer) {
  const n = Number.isInteger(layer.d_sae) && layer.d_sae > 0 ? layer.d_sae : 0;
  const shade = bytes(layer.cells);
  const changed = bytes(layer.changed_bits);
  const cols = Math.min(n, 256) || 1;
  const size = Math.max(2, Math.min(12, Math.floor(896 / cols)));
  const rows = Math.ceil(n / cols);
  const canvas = el("canvas", { class: "sae-cells", width: cols * size, height: Math.max(1, rows * size), role: "img",
    "aria-label": `${n} features of layer ${layer.layer}; ${layer.n_changed} shifted` });
  const ctx = canvas.getContext("2d");
  if (!ctx) return canvas;
  const img = ctx.createImageData(canvas.width, canvas.height);
  for (let f = 0; f < n; f++) {
    const on = (changed[f >> 3] >> (f & 7)) & 1;
    const v = shade[f] ?? 0;
    const [r, g, b] = on ? [29, 78, 216] : [235 - Math.round(v * 0.45), 238 - Math.round(v * 0.45), 243 - Math.round(v * 0.3)];
    const x0 = (f % cols) * size;
    const y0 = Math.floor(f / cols) * size;
    for (let y = y0; y < y0 + size - (size > 3 ? 1 : 0); y++) {
      for (let x = x0; x < x0 + size - (size > 3 ? 1 : 0); x++) {
        const i = (y * canvas.width + x) * 4;
        img.data[i] = r; img.data[i + 1] = g; img.data[i + 2] = b; img.data[i + 3] = 255;
      }
    }
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

function featureLink(f) {
  const label = typeof f.label === "string" && f.label ? f.label : null;
  const name = `F${f.feature}${label ? ` · ${label}` : ""}`;
  if (typeof f.url === "string" && f.url.startsWith(NEURONPEDIA)) return el("a", { href: f.url, target: "_blank", rel: "noopener noreferrer" }, name);
  return name;
}

function topTable(top) {
  return el("table", { class: "rows" },
    el("thead", {}, el("tr", {}, ["feature", "base", "checkpoint", "Δ", "fires base/ckpt", "q", ""].map((h) => el("th", { class: h === "feature" || !h ? "" : "num" }, h)))),
    el("tbody", {}, top.filter(isObject).map((f) => el("tr", {},
      el("td", {}, featureLink(f)), el("td", { class: "num" }, fmt(f.base_mean)), el("td", { class: "num" }, fmt(f.tuned_mean)),
      el("td", { class: "num" }, fmt(f.delta)), el("td", { class: "num" }, `${fmt(f.base_freq)} / ${fmt(f.tuned_freq)}`),
      el("td", { class: "num" }, fmt(f.q_value)), el("td", {}, f.changed ? el("span", { class: "pill sev-warn" }, "changed") : "")))));
}

function layerBlock(layer) {
  const top = Array.isArray(layer.top) ? layer.top : [];
  const first = top.find((f) => isObject(f) && f.changed) || null;
  return el("section", { class: "sae-layer" },
    el("div", { class: "wd-meta" },
      el("span", {}, el("strong", {}, `L${layer.layer}`), ` ${layer.hook ?? ""}`),
      el("span", {}, "changed ", el("strong", {}, `${fmt(layer.n_changed)} / ${fmt(layer.d_sae)}`)),
      el("span", {}, "mean |Δ| ", el("strong", {}, fmt(layer.mean_abs_delta))),
      el("span", {}, "max |Δ| ", el("strong", {}, fmt(layer.max_abs_delta))),
      first ? el("span", {}, "top ", el("strong", {}, featureLink(first))) : null,
      el("span", { class: layer.transfer_ok ? "" : "pill sev-warn" }, `FVU base ${fmt(layer.fvu_base)} · ckpt ${fmt(layer.fvu_tuned)}`)),
    cellsCanvas(layer),
    el("details", { class: "summary" }, el("summary", {}, "rule"), el("p", { class: "muted" }, String(layer.rule ?? ""))),
    top.length ? topTable(top) : null);
}

export function render(card) {
  const s = card.slim;
  if (!isObject(s) || !Array.isArray(s.layers)) throw new Error("not a saeDiff slim payload");
  return el("div", { class: "sae" },
    el("div", { class: "wd-meta" }, el("span", {}, "checkpoint ", el("strong", {}, String(s.name ?? ""))), el("span", {}, "probes ", el("strong", {}, fmt(s.probes)))),
    s.layers.filter(isObject).map(layerBlock));
}
