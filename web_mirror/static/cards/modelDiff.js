// The modelDiff card, from its slim model (tools/model_diff/models.py: ModelDiffCard): the three scores and accuracy
// as base → checkpoint with Δ (green improved, red regressed, by each score's direction), the per-category table,
// the reliability diagram (base and checkpoint bars against the diagonal, Chart.js), per-topic ECE, the hedges the
// checkpoint's generations matched and its low-confidence rows. Every text goes in as a text node.
import { el, fmt, isObject } from "../dom.js";

const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
const signed = (v) => (num(v) === null ? "—" : `${v >= 0 ? "+" : ""}${fmt(v)}`);

function direction(cell) {
  const d = num(cell.delta);
  if (d === null || Math.abs(d) < 1e-9) return "";
  return (d > 0) === Boolean(cell.higher_is_better) ? "better" : "worse";
}

function scoreTiles(cells) {
  return el("div", { class: "md-scores" }, cells.map((c) => el("div", { class: `md-score ${direction(c)}` },
    el("span", { class: "muted" }, String(c.score)),
    el("strong", {}, `${fmt(c.base)} → ${fmt(c.checkpoint)}`),
    el("span", { class: "md-delta" }, signed(c.delta)))));
}

function categories(rows) {
  if (!rows.length) return null;
  const names = rows[0].cells.map((c) => String(c.score));
  return el("table", { class: "rows" },
    el("thead", {}, el("tr", {}, el("th", {}, "category"), el("th", { class: "num" }, "rows"), names.map((n) => el("th", { class: "num" }, n)))),
    el("tbody", {}, rows.map((r) => el("tr", {},
      el("td", {}, String(r.category)), el("td", { class: "num" }, fmt(r.rows)),
      (Array.isArray(r.cells) ? r.cells : []).map((c) => el("td", { class: `num ${direction(c)}` }, `${fmt(c.checkpoint)} (${signed(c.delta)})`))))));
}

function reliability(base, ck, charts) {
  const canvas = el("canvas", { role: "img", "aria-label": "reliability diagram: accuracy per confidence bin, base and checkpoint" });
  const labels = base.map((b) => `${fmt(b.lower)}–${fmt(b.upper)}`);
  charts.push(new window.Chart(canvas, {
    data: {
      labels,
      datasets: [
        { type: "bar", label: "base accuracy", data: base.map((b) => num(b.accuracy)), backgroundColor: "rgba(100,116,139,0.55)" },
        { type: "bar", label: "checkpoint accuracy", data: ck.map((b) => num(b.accuracy)), backgroundColor: "rgba(37,99,235,0.7)" },
        { type: "line", label: "perfect calibration", data: base.map((b) => (b.lower + b.upper) / 2), borderColor: "#16a34a", borderDash: [4, 4], pointRadius: 0, borderWidth: 1.5 },
      ],
    },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      plugins: {
        legend: { position: "bottom", labels: { boxWidth: 10, font: { size: 11 } } },
        tooltip: { callbacks: { afterLabel: (c) => { const b = (c.datasetIndex === 0 ? base : ck)[c.dataIndex]; return b && c.datasetIndex < 2 ? `n = ${b.count}, mean confidence ${fmt(b.confidence)}` : ""; } } },
      },
      scales: {
        x: { title: { display: true, text: "confidence", font: { size: 11 } }, ticks: { font: { size: 10 } } },
        y: { min: 0, max: 1, title: { display: true, text: "accuracy", font: { size: 11 } }, ticks: { font: { size: 11 } } },
      },
    },
  }));
  return el("div", { class: "wd-chart" }, canvas);
}

function topics(rows) {
  if (!rows.length) return null;
  return el("table", { class: "rows" },
    el("thead", {}, el("tr", {}, ["topic", "rows", "ECE base", "ECE checkpoint", ""].map((h, i) => el("th", { class: i && i < 4 ? "num" : "" }, h)))),
    el("tbody", {}, rows.map((t) => el("tr", {},
      el("td", {}, String(t.topic)), el("td", { class: "num" }, fmt(t.rows)), el("td", { class: "num" }, fmt(t.base)),
      el("td", { class: "num" }, fmt(t.checkpoint)), el("td", {}, t.too_few ? el("span", { class: "muted" }, "too few rows to trust") : null)))));
}

export function render(card, charts) {
  const s = card.slim;
  if (!isObject(s) || !Array.isArray(s.overall)) throw new Error("not a modelDiff slim payload");
  const ece = isObject(s.ece) ? s.ece : {};
  const ci = Array.isArray(s.ece_delta_ci) ? ` (95% CI ${signed(s.ece_delta_ci[0])} to ${signed(s.ece_delta_ci[1])})` : "";
  const flags = Array.isArray(s.regressions) ? s.regressions.filter(isObject) : [];
  const low = Array.isArray(s.low_confidence) ? s.low_confidence.filter(isObject) : [];
  const hedges = Array.isArray(s.hedges) ? s.hedges.filter(isObject) : [];
  return el("div", { class: "md" },
    scoreTiles(s.overall.filter(isObject)),
    flags.length ? el("ul", { class: "md-flags" }, flags.map((f) => el("li", { class: "sev-critical" },
      `${String(f.category)} ${String(f.score)}: ${fmt(f.prior)} → ${fmt(f.current)} vs the prior run ${String(f.prior_run)}`))) : null,
    categories(Array.isArray(s.categories) ? s.categories.filter(isObject) : []),
    el("div", { class: "wd-meta" }, el("span", {}, "ECE ", el("strong", {}, `${fmt(ece.base)} → ${fmt(ece.checkpoint)}`), ` ${signed(ece.delta)}${ci}`)),
    Array.isArray(s.base_bins) && Array.isArray(s.checkpoint_bins) ? reliability(s.base_bins, s.checkpoint_bins, charts) : null,
    topics(Array.isArray(s.topics) ? s.topics.filter(isObject) : []),
    hedges.length ? el("details", { class: "summary", open: "" }, el("summary", {}, `hedges in the checkpoint's generations (${hedges.length})`),
      el("ul", {}, hedges.map((h) => el("li", {}, el("code", {}, String(h.phrase)), " in ", el("span", {}, String(h.generation)), el("span", { class: "muted" }, ` — ${String(h.prompt)}`))))) : null,
    low.length ? el("details", { class: "summary", open: "" }, el("summary", {}, `low-confidence rows (${s.low_confidence_total ?? low.length})`),
      el("table", { class: "rows gens" },
        el("thead", {}, el("tr", {}, ["prompt", "reference", "answer", "confidence"].map((h, i) => el("th", { class: i === 3 ? "num" : "" }, h)))),
        el("tbody", {}, low.map((r) => el("tr", {}, el("td", {}, String(r.prompt)), el("td", {}, String(r.reference ?? "—")),
          el("td", {}, el("code", {}, String(r.answer))), el("td", { class: "num" }, fmt(r.confidence))))))) : null);
}
