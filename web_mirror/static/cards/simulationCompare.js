// The simulationCompare card, from its slim model (tools/simulate_compare/models.py: SimulationCompareCard): the two
// simulations, what either lacks, then each section both hold — influence (A vs B totals, rows only in A or only in
// B, rows whose sign flipped, the largest changes as diverging bars), sharpness against 2/η, the landscape's loss
// and dead modules, dataset-quality counts with the rows cleared or introduced, SAE feature shifts per hook, and the
// effective-LR map's largest changes. Lists arrive cut to the first 10; counts cover everything.
import { el, fmt, isObject, toNumber, truncate } from "../dom.js";

const list = (v) => (Array.isArray(v) ? v.filter(isObject) : []);
const strings = (v) => (Array.isArray(v) ? v.map(String) : []);
const text = (v) => (v === null || v === undefined ? "—" : String(v));
const finite = (v) => typeof v === "number" && Number.isFinite(v);
const signed = (v) => (finite(v) && v > 0 ? `+${fmt(v)}` : fmt(v));
const sign = (v) => (finite(v) && v > 0 ? "pos" : finite(v) && v < 0 ? "neg" : "");
const yes = (v) => (v ? "yes" : "no");

function section(title, ...children) {
  return el("section", { class: "sc-section" }, el("h4", {}, ...[title].flat()), ...children);
}

function table(head, rows, numeric = []) {
  if (!rows.length) return null;
  return el("div", { class: "scroll" }, el("table", { class: "rows sc-table" },
    el("thead", {}, el("tr", {}, head.map((h, i) => el("th", { class: numeric.includes(i) ? "num" : null }, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c, i) => el("td", { class: numeric.includes(i) ? "num" : null }, c)))))));
}

// [label, {a, b, delta}] rows as a table: A, B and the change, coloured by its sign
function abTable(rows) {
  return table(["", "A", "B", "Δ"], rows.filter(([, c]) => isObject(c)).map(([label, c]) =>
    [label, fmt(c.a), fmt(c.b), el("span", { class: `sc-delta ${sign(c.delta)}` }, signed(c.delta))]), [1, 2, 3]);
}

// a diverging bar for a change, scaled to the largest |change| shown
function bar(v, top) {
  const track = el("span", { class: "sc-track" });
  const fill = el("span", { class: `sc-fill ${sign(v)}` });
  const share = top > 0 && finite(v) ? Math.min(Math.abs(v) / top, 1) : 0;
  fill.style.width = `${share * 50}%`;
  fill.style.left = v < 0 ? `${50 - share * 50}%` : "50%";
  track.append(fill);
  return track;
}

function chips(names, cls) {
  return names.map((n) => el("code", { class: `sc-chip ${cls || ""}`, title: n }, truncate(n, 48)));
}

function sides(s) {
  const one = (label, x) => (isObject(x) ? el("div", { class: "sc-side" },
    el("strong", {}, `${label} · ${text(x.name)}`),
    el("span", {}, `${fmt(x.rows)} ${text(x.format)} rows · passes ${strings(x.passes).join(", ") || "none"} · lr ${fmt(x.lr)}, T ${fmt(x.steps)}`),
    el("span", { class: "muted", title: text(x.path) }, truncate(text(x.dataset), 80))) : null);
  return el("div", { class: "sc-sides" }, one("A", s.a), one("B", s.b));
}

function influence(inf) {
  const moved = list(inf.changes);
  const top = Math.max(0, ...moved.map((c) => Math.abs(toNumber(c.delta))).filter(Number.isFinite));
  const rowText = (t) => el("span", { class: "sc-text", title: text(t) }, t ? truncate(String(t), 90) : "—");
  const oneSide = (title, rows) => (rows.length ? el("div", {}, el("h5", {}, title),
    table(["row", "line", "IF", "text"], rows.map((r) => [fmt(r.row), fmt(r.line), el("span", { class: `sc-delta ${sign(r.score)}` }, signed(r.score)), rowText(r.text)]), [0, 1, 2])) : null);
  const flipLabel = { to_harmful: "→ harmful", to_helpful: "→ helpful" };
  return section(["influence on the test loss", inf.comparable ? null : el("span", { class: "pill sev-warn" }, "not directly comparable")],
    inf.comparable ? null : el("p", { class: "sc-note" }, text(inf.note)),
    el("p", { class: "sc-counts" },
      `${fmt(inf.matched)} rows in both · ${fmt(inf.removed)} only in A (${fmt(inf.removed_harmful)} harmful, Σ IF ${signed(inf.removed_harmful_score)}) · `,
      `${fmt(inf.added)} only in B (${fmt(inf.added_harmful)} harmful) · flipped ${fmt(inf.flipped_to_harmful)} → harmful, ${fmt(inf.flipped_to_helpful)} → helpful`),
    abTable([["Σ IF", inf.total], ["mean IF", inf.mean], ["harmful rows", inf.harmful], ["predicted removal", inf.predicted_removal], ["base test loss", inf.test_loss]]),
    el("div", { class: "sc-cols" }, oneSide("only in A (removed), most harmful first", list(inf.removed_rows)), oneSide("only in B (added), most harmful first", list(inf.added_rows))),
    moved.length ? el("div", {}, el("h5", {}, "largest changes (rows matched by content)"),
      table(["row A → B", "IF A", "IF B", "Δ", "", "sign", "text"], moved.map((c) => [
        `${fmt(c.row_a)} → ${fmt(c.row_b)}`, signed(c.a), signed(c.b), el("span", { class: `sc-delta ${sign(c.delta)}` }, signed(c.delta)), bar(toNumber(c.delta), top),
        c.flipped ? el("span", { class: `pill ${c.flipped === "to_harmful" ? "sev-warn" : "sev-info"}` }, flipLabel[c.flipped] || text(c.flipped)) : "",
        rowText(c.text)]), [1, 2, 3])) : null,
    el("p", { class: "muted sc-conv" }, text(inf.convention)));
}

function sharpness(sh) {
  const un = isObject(sh.unstable) ? sh.unstable : {};
  const crossed = un.changed ? el("span", { class: `pill ${un.b ? "sev-critical" : "sev-info"}` }, un.b ? "B crosses 2/η" : "B back under 2/η") : null;
  return section(["sharpness", crossed],
    abTable([["λ_max", sh.lambda_max], ["λ_min", sh.lambda_min], ["2/η", sh.stability_limit]]),
    el("p", { class: "sc-counts" }, `unstable (λ_max > 2/η): ${yes(un.a)} → ${yes(un.b)}`,
      strings(sh.changed).length ? ` · changed: ${strings(sh.changed).join(", ")}` : " · no flag changed"));
}

function landscape(land) {
  const added = strings(land.dead_added), removed = strings(land.dead_removed);
  return section(["gradient landscape", added.length ? el("span", { class: "pill sev-warn" }, `${added.length} newly dead`) : null],
    abTable([["loss mean", land.loss_mean], ["max grad norm mean", land.max_grad_mean], ["dead modules", land.dead], ["batches", land.batches]]),
    added.length ? el("p", { class: "sc-dead" }, "dead in B, not in A: ", chips(added, "warn")) : null,
    removed.length ? el("p", { class: "sc-dead" }, "dead in A, not in B: ", chips(removed)) : null);
}

function quality(q) {
  const counts = list(q.counts);
  const flagged = (title, rows) => (rows.length ? el("div", {}, el("h5", {}, title),
    table(["flag", "row", "line", "what"], rows.map((r) => [text(r.flag), fmt(r.row), fmt(r.line), el("span", { class: "sc-text" }, truncate(text(r.detail), 120))]), [1, 2])) : null);
  return section("dataset quality",
    table(["flag", "A", "B", "Δ"], counts.map((c) => [text(c.flag), fmt(c.a), fmt(c.b), el("span", { class: `sc-delta ${sign(c.delta)}` }, signed(c.delta))]), [1, 2, 3]),
    el("div", { class: "sc-cols" }, flagged("flagged in A, not in B (cleared)", list(q.cleared)), flagged("flagged in B, not in A (introduced)", list(q.introduced))),
    q.note ? el("p", { class: "muted sc-note" }, text(q.note)) : null);
}

function features(fc) {
  const hooks = list(fc.hooks).map((h) => el("div", { class: "sc-hook" },
    el("h5", {}, `${text(h.hook)} · ${fmt(h.matched)} in both top lists · ${fmt(h.crossed)} crossed strengthen ↔ suppress`),
    table(["feature", "label", "A", "B", "Δ", "list A → B"], list(h.changes).map((c) => [`F${fmt(c.feature)}`, text(c.label), signed(c.a), signed(c.b),
      el("span", { class: `sc-delta ${sign(c.delta)}` }, signed(c.delta)), `${text(c.list_a)} → ${text(c.list_b)}`]), [2, 3, 4]),
    list(h.new).length ? el("p", {}, "new in B's lists: ", list(h.new).map((f) => el("code", { class: "sc-chip" }, `F${fmt(f.feature)} ${signed(f.score)}`))) : null,
    list(h.dropped).length ? el("p", {}, "dropped from A's lists: ", list(h.dropped).map((f) => el("code", { class: "sc-chip" }, `F${fmt(f.feature)} ${signed(f.score)}`))) : null));
  const apart = [["only in A", strings(fc.only_a)], ["only in B", strings(fc.only_b)], ["SAE widths differ", strings(fc.width_differs)]].filter(([, v]) => v.length);
  return section("predicted SAE features", hooks,
    apart.map(([k, v]) => el("p", { class: "muted" }, `${k}: `, chips(v))),
    el("p", { class: "muted sc-conv" }, text(fc.convention)));
}

function delta(d) {
  const newly = strings(d.newly_clipped);
  return section(["effective-LR map", newly.length ? el("span", { class: "pill sev-warn" }, `${newly.length} newly clipped`) : null],
    el("p", { class: "sc-counts" }, `${fmt(d.matched)} tensors in both · rules ${text(d.rule_a)} / ${text(d.rule_b)} · median η_eff B/A ${fmt(d.median_ratio)} · clipped ${fmt(isObject(d.clipped) ? d.clipped.a : null)} → ${fmt(isObject(d.clipped) ? d.clipped.b : null)}`),
    table(["tensor", "η_eff A", "η_eff B", "B/A", "K A", "K B", "clipped"], list(d.tensors).map((t) => [
      el("code", { title: text(t.name) }, truncate(text(t.name), 60)), fmt(t.eta_eff_a), fmt(t.eta_eff_b), t.ratio === null ? "—" : `×${fmt(t.ratio)}`,
      fmt(t.curvature_a), fmt(t.curvature_b), `${yes(t.clipped_a)} → ${yes(t.clipped_b)}`]), [1, 2, 3, 4, 5]),
    newly.length ? el("p", { class: "sc-dead" }, "clipped in B, not in A: ", chips(newly, "warn")) : null);
}

export function render(card) {
  const s = card.slim;
  if (!isObject(s)) throw new Error("not a simulationCompare slim payload");
  const missing = strings(s.missing);
  return el("div", { class: "sc" },
    sides(s),
    s.same_file ? el("p", { class: "pill sev-warn" }, "A and B are the same simulation") : null,
    missing.length ? el("ul", { class: "sc-missing muted" }, missing.map((m) => el("li", {}, m))) : null,
    isObject(s.influence) ? influence(s.influence) : null,
    isObject(s.sharpness) ? sharpness(s.sharpness) : null,
    isObject(s.landscape) ? landscape(s.landscape) : null,
    isObject(s.quality) ? quality(s.quality) : null,
    isObject(s.features) ? features(s.features) : null,
    isObject(s.delta) ? delta(s.delta) : null);
}
