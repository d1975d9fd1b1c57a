// The trajectoryAnalysis card, from its slim model (tools/trajectory/models.py: TrajectoryCard): ‖ΔW‖/‖W‖ per matrix
// type over steps as lines, a sparkline of movement per step with the jumps marked, the step table, and the
// checkpoints that were not analysed with their reasons.
import { el, fmt, isObject } from "../dom.js";
import { colour } from "../matrix_colours.js";
import { sparkline } from "../sparkline.js";

const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

function chart(points, types, charts) {
  const canvas = el("canvas", { role: "img", "aria-label": "‖ΔW‖/‖W‖ per matrix type over training steps" });
  charts.push(new window.Chart(canvas, {
    type: "line",
    data: {
      datasets: types.map((t, i) => ({
        label: t,
        data: points.map((p) => ({ x: p.step, y: isObject(p.by_type) ? num(p.by_type[t]) : null })),
        borderColor: colour(t, i), backgroundColor: colour(t, i), pointRadius: 2, borderWidth: 2,
      })),
    },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false, parsing: true,
      interaction: { mode: "nearest", intersect: false },
      plugins: {
        legend: { position: "bottom", labels: { boxWidth: 10, font: { size: 11 } } },
        tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${fmt(c.parsed.y)}` } },
      },
      scales: {
        x: { type: "linear", title: { display: true, text: "step", font: { size: 11 } }, ticks: { font: { size: 11 } } },
        y: { beginAtZero: true, title: { display: true, text: "‖ΔW‖/‖W‖", font: { size: 11 } }, ticks: { font: { size: 11 } } },
      },
    },
  }));
  return el("div", { class: "wd-chart" }, canvas);
}

export function render(card, charts) {
  const s = card.slim;
  if (!isObject(s) || !Array.isArray(s.points)) throw new Error("not a trajectoryAnalysis slim payload");
  const points = s.points.filter(isObject);
  const types = Array.isArray(s.matrix_types) ? s.matrix_types.map(String) : [];
  const jumps = new Set(Array.isArray(s.jumps) ? s.jumps : []);
  const counts = isObject(s.entries) ? s.entries : {};
  const meta = [
    ["source", s.source], ["mode", s.mode], ["checkpoints", points.length],
    ["slowed from", s.slowed_from ?? "—"], ["never moved", Array.isArray(s.never_moved) && s.never_moved.length ? s.never_moved.map((l) => `L${l}`).join(", ") : "none"],
  ];
  const markers = points.filter((p) => jumps.has(p.step)).map((p) => ({ x: p.step, severity: "warn", label: `jump at ${p.label}` }));
  const problems = Array.isArray(s.problems) ? s.problems.filter(isObject) : [];
  return el("div", { class: "tj" },
    el("div", { class: "wd-meta" },
      meta.map(([k, v]) => el("span", {}, `${k} `, el("strong", {}, typeof v === "number" ? fmt(v) : String(v ?? "—")))),
      Object.entries(counts).map(([k, v]) => el("span", { class: k === "analysed" ? "" : "pill sev-warn" }, `${k} ${v}`))),
    points.length && types.length ? chart(points, types, charts) : null,
    el("div", { class: "spark-row" },
      el("div", { class: "spark-label" }, el("span", {}, "movement per step ‖W_k − W_k−1‖ / Δstep"), el("strong", { class: "num" }, fmt(points.length ? points[points.length - 1].movement_per_step : null))),
      sparkline(points.map((p) => p.step), points.map((p) => p.movement_per_step), markers, { label: "movement per step" })),
    el("table", { class: "rows" },
      el("thead", {}, el("tr", {}, ["checkpoint", "‖ΔW‖/‖W‖", "move/step", "cos", "median SR", "top changed"].map((h, i) => el("th", { class: i && i < 5 ? "num" : "" }, h)))),
      el("tbody", {}, points.map((p) => el("tr", { class: jumps.has(p.step) ? "sev-warn" : "" },
        el("td", {}, String(p.label ?? p.step), jumps.has(p.step) ? el("span", { class: "pill sev-warn" }, "jump") : null),
        el("td", { class: "num" }, fmt(p.rel_delta)), el("td", { class: "num" }, fmt(p.movement_per_step)),
        el("td", { class: "num" }, fmt(p.update_cosine)), el("td", { class: "num" }, fmt(p.median_stable_rank)),
        el("td", {}, String(p.top_changed ?? "—")))))),
    problems.length ? el("details", { class: "summary", open: "" }, el("summary", {}, `not analysed (${problems.length})`),
      el("ul", {}, problems.map((e) => el("li", {}, el("code", {}, String(e.status)), " ", String(e.path), el("span", { class: "muted" }, ` — ${String(e.reason ?? "")}`))))) : null);
}
