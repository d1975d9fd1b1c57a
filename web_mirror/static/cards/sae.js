// The card of a loaded SAE (load_sae), from its slim model (tools/session/models.py: SaeCard).
import { el, fmt, isObject } from "../dom.js";

export function render(card) {
  const s = card.slim;
  if (!isObject(s)) throw new Error("not an SAE slim payload");
  const rows = [
    ["SAE", s.sae], ["hook", s.hook], ["layer", s.layer], ["d_in", s.d_in], ["features", s.d_sae],
    ["architecture", s.architecture], ["processing", s.processing],
  ];
  return el("dl", { class: "facts" }, rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, typeof v === "number" ? fmt(v) : String(v ?? "—"))]));
}
