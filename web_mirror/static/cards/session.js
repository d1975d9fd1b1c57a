// The session card (start_session, session_status), from its slim model (tools/session/models.py: SessionCard).
import { el, fmt, isObject } from "../dom.js";

export function render(card) {
  const s = card.slim;
  if (!isObject(s)) throw new Error("not a session slim payload");
  const saes = (Array.isArray(s.saes) ? s.saes : []).filter(isObject);
  const rows = [
    ["session", s.id], ["model", s.model], ["kind", s.kind], ["layers", s.n_layers], ["d_model", s.d_model],
    ["SAEs", saes.length ? saes.map((x) => `L${x.layer} ${x.hook}`).join(" · ") : "none"], ["calls", s.calls],
    ["model in memory", s.model_in_memory ? "yes" : "no"],
  ];
  return el("dl", { class: "facts" }, rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, typeof v === "number" ? fmt(v) : String(v ?? "—"))]));
}
