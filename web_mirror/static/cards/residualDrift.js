// The residualDrift card, from its slim model (tools/residual_drift/models.py: ResidualDriftCard): the mean
// cosine distance per layer as a line, the max over probes as a band above it, where drift starts and peaks.
import { el, fmt, isObject } from "../dom.js";

const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
const label = (layer) => (layer === "embed" ? "embed" : `L${layer}`);

function chart(layers, charts) {
  const canvas = el("canvas", { role: "img", "aria-label": "cosine distance per layer, mean with the max as a band" });
  charts.push(new window.Chart(canvas, {
    type: "line",
    data: {
      labels: layers.map((l) => label(l.layer)),
      datasets: [
        { label: "max over probes", data: layers.map((l) => num(l.cos_max)), borderColor: "#93c5fd", backgroundColor: "rgba(147,197,253,.35)", pointRadius: 0, borderWidth: 1, fill: false },
        { label: "mean 1 − cos", data: layers.map((l) => num(l.cos_mean)), borderColor: "#1d4ed8", backgroundColor: "rgba(147,197,253,.35)", pointRadius: 3, borderWidth: 2, fill: "-1" },
      ],
    },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      plugins: {
        legend: { position: "bottom", labels: { boxWidth: 10, font: { size: 11 } } },
        tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${fmt(c.parsed.y)}` } },
      },
      scales: {
        x: { grid: { display: false }, ticks: { font: { size: 11 } } },
        y: { beginAtZero: true, title: { display: true, text: "1 − cos(h_base, h_ft)", font: { size: 11 } }, ticks: { font: { size: 11 } } },
      },
    },
  }));
  return el("div", { class: "wd-chart" }, canvas);
}

export function render(card, charts) {
  const s = card.slim;
  if (!isObject(s) || !Array.isArray(s.layers)) throw new Error("not a residualDrift slim payload");
  const layers = s.layers.filter(isObject);
  const where = (l) => (l === null || l === undefined ? "none" : label(l));
  const meta = [
    ["checkpoint", s.name], ["model", s.kind], ["probes", s.probes], ["truncated", s.truncated],
    ["drift starts", where(s.start_layer)], ["peaks", where(s.peak_layer)], ["floor", fmt(s.drift_floor)],
  ];
  return el("div", { class: "rd" },
    el("div", { class: "wd-meta" }, meta.map(([k, v]) => el("span", {}, `${k} `, el("strong", {}, typeof v === "number" ? fmt(v) : String(v ?? "—"))))),
    layers.length ? chart(layers, charts) : el("p", { class: "muted" }, "no layers compared"),
    el("p", { class: "muted" }, String(s.reduction ?? "")),
    el("table", { class: "rows" },
      el("thead", {}, el("tr", {}, el("th", {}, "layer"), el("th", { class: "num" }, "1−cos mean"), el("th", { class: "num" }, "max"), el("th", { class: "num" }, "‖Δh‖/‖h‖"), el("th", {}, ""))),
      el("tbody", {}, layers.map((l) => el("tr", {},
        el("td", {}, label(l.layer)), el("td", { class: "num" }, fmt(l.cos_mean)), el("td", { class: "num" }, fmt(l.cos_max)), el("td", { class: "num" }, fmt(l.rel_norm_mean)),
        el("td", { class: "muted" }, l.layer === s.start_layer ? "← starts" : l.layer === s.peak_layer ? "← peak" : ""))))));
}
