// The card of a load_sae call, from its slim model (tools/session/models.py: SaeCard): the SAEs loaded, and
// what the session holds now.
import { el, fmt, isObject } from "../dom.js";

export function render(card) {
  const s = card.slim;
  if (!isObject(s) || !Array.isArray(s.loaded)) throw new Error("not an SAE slim payload");
  const attached = (Array.isArray(s.attached) ? s.attached : []).filter(isObject);
  return el("div", {},
    el("table", { class: "rows" },
      el("thead", {}, el("tr", {}, ["layer", "hook", "features", "d_in", "architecture", "processing", "SAE"].map((h) => el("th", {}, h)))),
      el("tbody", {}, s.loaded.filter(isObject).map((x) => el("tr", {},
        el("td", { class: "num" }, fmt(x.layer)), el("td", {}, String(x.hook ?? "")), el("td", { class: "num" }, fmt(x.d_sae)),
        el("td", { class: "num" }, fmt(x.d_in)), el("td", {}, String(x.architecture ?? "")), el("td", { class: "muted" }, String(x.processing ?? "")),
        el("td", {}, String(x.sae ?? "")))))),
    Array.isArray(s.replaced) && s.replaced.length ? el("p", { class: "muted" }, `replaced: ${s.replaced.join(", ")}`) : null,
    el("p", { class: "muted" }, `the session now has ${attached.length} SAE${attached.length === 1 ? "" : "s"}: ${attached.map((x) => `layer ${x.layer}`).join(", ")}`));
}
