// The weightDiff card, drawn from its slim model (tools/weight_diff/models.py: WeightDiffCard):
// {name, mode, step, n_layers, matrix_types, layers: [{layer, fro: {type: ‖ΔW‖_F}, stable_rank: {type: r}}],
//  top_changed: [{label, rel_delta, stable_rank}], embeddings: [{key, rel_delta}], norms_changed, totals}.
import { el, fmt, isObject } from "../dom.js";
import { colour } from "../matrix_colours.js";

const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

function layerRows(slim) {
  return (Array.isArray(slim.layers) ? slim.layers : []).filter(isObject).map((r) => {
    const fro = isObject(r.fro) ? r.fro : {};
    const sr = isObject(r.stable_rank) ? r.stable_rank : {};
    const total = Math.sqrt(Object.values(fro).reduce((s, v) => s + (num(v) || 0) ** 2, 0));
    let best = null;
    for (const [t, v] of Object.entries(sr)) if (num(v) !== null && (best === null || v > best[1])) best = [t, v];
    return { layer: r.layer, fro, total, rank: best };
  });
}

function chart(rows, types, charts) {
  const canvas = el("canvas", { role: "img", "aria-label": "‖ΔW‖_F per layer by matrix type" });
  const box = el("div", { class: "wd-chart" }, canvas);
  charts.push(new window.Chart(canvas, {
    type: "bar",
    data: {
      labels: rows.map((r) => `L${r.layer}`),
      datasets: types.map((t, i) => ({
        label: t,
        data: rows.map((r) => num(r.fro[t])),
        backgroundColor: colour(t, i),
        borderRadius: 2,
      })),
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      plugins: {
        legend: { position: "bottom", labels: { boxWidth: 10, font: { size: 11 } } },
        tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ‖ΔW‖_F ${fmt(c.parsed.y)}` } },
      },
      scales: {
        x: { grid: { display: false }, ticks: { font: { size: 11 } } },
        y: { beginAtZero: true, title: { display: true, text: "‖ΔW‖_F", font: { size: 11 } }, ticks: { font: { size: 11 } } },
      },
    },
  }));
  return box;
}

function rankColumn(rows) {
  const max = Math.max(1e-12, ...rows.map((r) => (r.rank ? r.rank[1] : 0)));
  return el("div", { class: "wd-rank" },
    el("h4", {}, "stable rank of ΔW"),
    el("table", { class: "rows" },
      el("thead", {}, el("tr", {}, el("th", {}, "layer"), el("th", { class: "num" }, "‖ΔW‖_F"), el("th", {}, "max st. rank"))),
      el("tbody", {}, rows.map((r) => {
        const bar = el("span", { class: "srank" });
        bar.style.width = `${r.rank ? Math.max(2, Math.round((r.rank[1] / max) * 60)) : 0}px`;
        return el("tr", {},
          el("td", {}, `L${r.layer}`),
          el("td", { class: "num" }, fmt(r.total)),
          el("td", { class: "num", title: r.rank ? `${r.rank[0]}` : "" }, r.rank ? [bar, fmt(r.rank[1]), el("span", { class: "muted" }, ` ${r.rank[0]}`)] : "—"));
      }))));
}

function topTable(top) {
  return el("div", { class: "wd-top" },
    el("h4", {}, "top changed matrices"),
    el("table", { class: "rows" },
      el("thead", {}, el("tr", {}, el("th", {}, "matrix"), el("th", { class: "num" }, "‖ΔW‖/‖W‖"), el("th", { class: "num" }, "stable rank"))),
      el("tbody", {}, top.filter(isObject).map((t) => el("tr", {}, el("td", {}, String(t.label ?? "")), el("td", { class: "num" }, fmt(t.rel_delta)), el("td", { class: "num" }, fmt(t.stable_rank)))))));
}

export function render(card, charts) {
  const s = card.slim;
  if (!isObject(s) || !Array.isArray(s.layers)) throw new Error("not a weightDiff slim payload");
  const rows = layerRows(s);
  const types = (Array.isArray(s.matrix_types) ? s.matrix_types : []).filter((t) => typeof t === "string");
  const totals = isObject(s.totals) ? s.totals : {};
  const emb = (Array.isArray(s.embeddings) ? s.embeddings : []).filter(isObject);
  const meta = [
    ["checkpoint", s.name], ["mode", s.mode], ["step", s.step], ["layers", s.n_layers],
    ["overall ‖ΔW‖/‖W‖", fmt(totals.rel_delta)], ["tensors compared", totals.tensors_compared], ["unchanged", totals.unchanged], ["norms changed", s.norms_changed],
  ].filter(([, v]) => v !== null && v !== undefined);
  return el("div", { class: "wd" },
    el("div", { class: "wd-meta" }, meta.map(([k, v]) => el("span", {}, `${k} `, el("strong", {}, typeof v === "number" ? fmt(v) : String(v))))),
    rows.length && types.length ? chart(rows, types, charts) : el("p", { class: "muted" }, "no layer matrices compared"),
    rankColumn(rows),
    Array.isArray(s.top_changed) && s.top_changed.length ? topTable(s.top_changed) : null,
    emb.length ? el("div", { class: "wd-top muted" }, "embeddings: ", emb.map((e) => `${e.key} ${fmt(e.rel_delta)}`).join(" · ")) : null);
}
