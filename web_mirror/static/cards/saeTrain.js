// The saeTrain card, from its slim model (tools/sae/models.py: SaeTrainCard): layer, quick/full, the loss curve,
// where the SAE was saved.
import { el, fmt, isObject } from "../dom.js";
import { sparkline } from "../sparkline.js";

export function render(card) {
  const s = card.slim;
  if (!isObject(s)) throw new Error("not a saeTrain slim payload");
  const losses = (Array.isArray(s.losses) ? s.losses : []).filter(isObject);
  const facts = [["layer", s.layer], ["mode", s.mode], ["features", s.d_sae], ["k", s.k], ["activations", s.activations],
    ["steps", s.steps], ["held-out FVU", s.eval_fvu], ["dead features", s.dead_features]];
  return el("div", {},
    el("div", { class: "wd-meta" }, facts.map(([k, v]) => el("span", {}, `${k} `, el("strong", {}, typeof v === "number" ? fmt(v) : String(v ?? "—"))))),
    el("div", { class: "spark-row" }, el("div", { class: "spark-label" }, el("span", {}, "training MSE")),
      sparkline(losses.map((p) => p.step), losses.map((p) => p.mse), [], { label: "training MSE" })),
    el("p", {}, "saved to ", el("code", {}, String(s.out ?? ""))));
}
