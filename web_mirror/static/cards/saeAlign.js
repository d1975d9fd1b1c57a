// The saeAlign card, from its slim model (tools/sae/models.py: SaeAlignCard): mean best-match cosine, the
// histogram of best-match cosines, the weakest and strongest matches.
import { el, fmt, isObject } from "../dom.js";

function histogram(counts, charts) {
  const canvas = el("canvas", { role: "img", "aria-label": "best-match cosines of A's features" });
  charts.push(new window.Chart(canvas, {
    type: "bar",
    data: { labels: counts.map((_, i) => (-1 + i * 0.1).toFixed(1)), datasets: [{ label: "features", data: counts, backgroundColor: "#6366f1" }] },
    options: { animation: false, responsive: true, maintainAspectRatio: false, plugins: { legend: { display: false } },
      scales: { x: { title: { display: true, text: "best-match cosine (bin start)" }, grid: { display: false } }, y: { beginAtZero: true } } },
  }));
  return el("div", { class: "wd-chart" }, canvas);
}

function matches(title, rows) {
  return el("div", { class: "wd-top" }, el("h4", {}, title),
    el("table", { class: "rows" },
      el("thead", {}, el("tr", {}, el("th", {}, "A"), el("th", {}, "B"), el("th", { class: "num" }, "cos"), el("th", {}, "mutual"))),
      el("tbody", {}, rows.filter(isObject).map((m) => el("tr", {}, el("td", {}, `F${m.feature}`), el("td", {}, `F${m.best}`),
        el("td", { class: "num" }, fmt(m.cos)), el("td", {}, m.mutual ? "yes" : "no"))))));
}

export function render(card, charts) {
  const s = card.slim;
  if (!isObject(s)) throw new Error("not a saeAlign slim payload");
  const meta = [["A", s.a], ["B", s.b], ["features", `${fmt(s.d_sae_a)} vs ${fmt(s.d_sae_b)}`], ["mean best cos", fmt(s.mean_cos)],
    ["mutual", s.mutual], ["no counterpart", `${fmt(s.unmatched)} (< ${fmt(s.match)})`]];
  return el("div", {},
    el("div", { class: "wd-meta" }, meta.map(([k, v]) => el("span", {}, `${k} `, el("strong", {}, typeof v === "number" ? fmt(v) : String(v ?? "—"))))),
    Array.isArray(s.histogram) ? histogram(s.histogram, charts) : null,
    matches("strongest", Array.isArray(s.strongest) ? s.strongest : []),
    matches("weakest", Array.isArray(s.weakest) ? s.weakest : []));
}
