// The regressions card, from get_regressions' result (tools/model_diff/models.py: RegressionsResult): a table of
// categories × scores, each cell a sparkline of the checkpoint's score across the session's model-diff runs with
// any point worse than the run before it by more than the threshold marked in red, and its latest value.
import { el, fmt, isObject } from "../dom.js";
import { sparkline } from "../sparkline.js";

export function render(card) {
  const s = card.slim;
  if (!isObject(s) || !Array.isArray(s.series)) throw new Error("not a regressions slim payload");
  const runs = Array.isArray(s.runs) ? s.runs.filter(isObject) : [];
  const latest = Array.isArray(s.latest) ? s.latest.filter(isObject) : [];
  const series = s.series.filter(isObject);
  const scores = [...new Set(series.map((x) => String(x.score)))];
  const categories = [...new Set(series.map((x) => String(x.category)))];
  const xs = runs.map((_, i) => i + 1);
  const cell = (category, score) => {
    const one = series.find((x) => String(x.category) === category && String(x.score) === score);
    if (!one) return el("td", {}, "—");
    const values = Array.isArray(one.values) ? one.values : [];
    const flagged = Array.isArray(one.flagged) ? one.flagged : [];
    const markers = xs.filter((_, i) => flagged[i]).map((x) => ({ x, severity: "critical", label: `run ${x} regressed` }));
    return el("td", { class: flagged[flagged.length - 1] ? "rg-cell worse" : "rg-cell" },
      sparkline(xs, values, markers, { label: `${category} ${score} per run` }),
      el("strong", { class: "num" }, fmt(values[values.length - 1])));
  };
  return el("div", { class: "rg" },
    el("div", { class: "wd-meta" }, el("span", {}, "runs ", el("strong", {}, String(runs.length))),
      el("span", {}, "flagged beyond ", el("strong", {}, `${fmt(100 * (s.threshold ?? 0))} pp`), " vs the prior run"),
      runs.length ? el("span", {}, "latest ", el("strong", {}, String(runs[runs.length - 1].name))) : null),
    latest.length ? el("ul", { class: "md-flags" }, latest.map((f) => el("li", { class: "sev-critical" },
      `${String(f.category)} ${String(f.score)}: ${fmt(f.prior)} → ${fmt(f.current)} vs ${String(f.prior_run)}`))) : null,
    el("table", { class: "rows" },
      el("thead", {}, el("tr", {}, el("th", {}, "category"), scores.map((sc) => el("th", {}, sc)))),
      el("tbody", {}, categories.map((c) => el("tr", {}, el("td", {}, c), scores.map((sc) => cell(c, sc)))))));
}
