// The mergeAnalysis card, from its slim model (tools/merge_analysis/models.py: MergeCard): the verdict badge, every
// check with its value and thresholds, the matrices the rank and collapse checks flagged, the behaviour scores and a
// few generations base vs merged side by side (degenerate ones first). All text goes in as text nodes.
import { el, fmt, isObject } from "../dom.js";

const SEV = { fail: "sev-critical", warn: "sev-warn", pass: "sev-info", skipped: "" };

function checks(rows) {
  return el("table", { class: "rows checks" },
    el("thead", {}, el("tr", {}, ["check", "status", "value", "warn at", "fail at", "why"].map((h, i) => el("th", { class: i > 1 && i < 5 ? "num" : "" }, h)))),
    el("tbody", {}, rows.map((c) => el("tr", { class: c.status === "fail" ? "sev-critical" : c.status === "warn" ? "sev-warn" : "" },
      el("td", {}, el("code", {}, String(c.name))),
      el("td", {}, el("span", { class: `pill ${SEV[c.status] ?? ""}` }, String(c.status))),
      el("td", { class: "num" }, fmt(c.value)), el("td", { class: "num" }, fmt(c.warn_at)), el("td", { class: "num" }, fmt(c.fail_at)),
      el("td", {}, String(c.why ?? ""), Array.isArray(c.items) && c.items.length && c.status !== "pass"
        ? el("div", { class: "muted" }, c.items.map(String).join(", ")) : null)))));
}

function flagged(rows, total) {
  if (!rows.length) return null;
  return el("details", { class: "summary", open: "" }, el("summary", {}, `flagged matrices (${total})`),
    el("table", { class: "rows" },
      el("thead", {}, el("tr", {}, ["matrix", "‖ΔW‖/‖W‖", "stable rank", "allowed r", "reason"].map((h, i) => el("th", { class: i && i < 4 ? "num" : "" }, h)))),
      el("tbody", {}, rows.map((f) => el("tr", {},
        el("td", {}, String(f.label)), el("td", { class: "num" }, fmt(f.rel_delta)), el("td", { class: "num" }, fmt(f.stable_rank)),
        el("td", { class: "num" }, fmt(f.allowed_rank)), el("td", {}, String(f.reason)))))));
}

function generations(rows) {
  if (!rows.length) return null;
  return el("details", { class: "summary", open: "" }, el("summary", {}, "generations: base → merged"),
    el("table", { class: "rows gens" },
      el("thead", {}, el("tr", {}, ["prompt", "base", "merged"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.map((g) => el("tr", { class: g.merged_degenerate ? "sev-warn" : "" },
        el("td", {}, String(g.prompt)), el("td", {}, el("code", {}, String(g.base))),
        el("td", {}, el("code", {}, String(g.merged)), g.merged_degenerate ? el("span", { class: "pill sev-warn" }, "degenerate") : null))))));
}

export function render(card) {
  const s = card.slim;
  if (!isObject(s) || !Array.isArray(s.checks)) throw new Error("not a mergeAnalysis slim payload");
  const f = isObject(s.fidelity) ? s.fidelity : null;
  const meta = [
    ["mode", s.mode],
    ["fidelity", f ? `${f.save_dtype}: mean |Δ| ${fmt(f.mean_abs)}, ${fmt(f.share_of_effect)} of the effect` : "—"],
    ["KL(base ‖ merged)", s.kl_mean == null ? "—" : `${fmt(s.kl_mean)} nats`],
    ["degenerate", s.merged_degenerate == null ? "—" : `${fmt(100 * s.merged_degenerate)}% merged vs ${fmt(100 * s.base_degenerate)}% base`],
  ];
  return el("div", { class: "ma" },
    el("div", { class: "wd-meta" },
      el("span", { class: `pill verdict ${SEV[s.verdict] ?? ""}` }, `verdict ${String(s.verdict).toUpperCase()}`),
      meta.map(([k, v]) => el("span", {}, `${k} `, el("strong", {}, String(v ?? "—"))))),
    checks(s.checks.filter(isObject)),
    flagged(Array.isArray(s.flagged) ? s.flagged.filter(isObject) : [], s.flagged_total ?? 0),
    generations(Array.isArray(s.generations) ? s.generations.filter(isObject) : []));
}
