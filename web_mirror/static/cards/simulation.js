// The simulation card, from its slim model (tools/simulate/models.py: SimulationCard): the pass timeline, the
// module × batch gradient-norm heatmap with dead modules marked, loss and max-grad per batch with the signals,
// the predicted features (strengthen / suppress bars), the quality flags with their rows, the preference margins
// histogram, sharpness against 2/η, the most harmful / helpful rows (pass 2b) with LiSSA's residual curve, the
// effective-LR map (pass 3) and its synthetic checkpoint, and the no-optimiser-step check. While it runs, the
// simulate.* step events draw the two lines.
import { el, fmt, isObject, mergeSignals, toNumber } from "../dom.js";
import { heatmap } from "../heatmap.js";
import { sparkline } from "../sparkline.js";

const list = (v) => (Array.isArray(v) ? v.filter(isObject) : []);

function timeline(passes) {
  if (!passes.length) return null;
  const total = passes.reduce((s, p) => Math.max(s, toNumber(p.started_s) + toNumber(p.seconds)), 0) || 1;
  return el("div", { class: "sim-timeline" }, passes.map((p) => {
    const bar = el("span", { class: "sim-pass", title: `pass ${p.name}: ${fmt(p.seconds)} s` }, `pass ${p.name} · ${fmt(p.seconds)} s`);
    bar.style.marginLeft = `${(toNumber(p.started_s) / total) * 100}%`;
    bar.style.width = `${Math.max(12, (toNumber(p.seconds) / total) * 100)}%`;
    return el("div", { class: "sim-lane" }, bar);
  }));
}

function lines(card, land, signals) {
  let xs, loss, grad, mean = null;
  if (land) {
    xs = land.series_loss.map((_, i) => i + 1);
    loss = land.series_loss;
    grad = land.series_max_grad;
    mean = Array.isArray(land.series_mean_grad) ? land.series_mean_grad : null;
  } else {
    const pts = card.live ? card.live.points : [];
    xs = pts.map((p) => p.step);
    loss = pts.map((p) => p.loss);
    grad = pts.map((p) => p.maxGrad);
  }
  if (!xs.length) return el("p", { class: "muted" }, "waiting for the first batch…");
  const marker = (s) => ({ x: s.step, severity: s.severity, label: `${s.severity} ${s.type} at batch ${s.step}: ${s.message}` });
  const gradTypes = new Set(["gradient_spike", "grad_nonfinite"]);
  const row = (name, ys, marks) => el("div", { class: "spark-row" },
    el("div", { class: "spark-label" }, el("span", {}, name), el("strong", { class: "num" }, fmt(ys[ys.length - 1]))),
    sparkline(xs, ys, marks, { label: name }));
  return el("div", { class: "sparks" },
    row("loss per batch", loss, signals.filter((s) => !gradTypes.has(s.type)).map(marker)),
    row(`max grad norm per batch (spike limit ${land ? fmt(land.spike_limit) : "5 × clip"})`, grad, signals.filter((s) => gradTypes.has(s.type)).map(marker)),
    mean ? row("mean module grad norm per batch", mean, []) : null);
}

// "transformer.h.0.attn.c_attn", … → "h.0.attn.c_attn", …: the dotted prefix every row shares says nothing
function stripPrefix(names) {
  if (names.length < 2) return names;
  const parts = names.map((n) => n.split("."));
  let k = 0;
  while (parts.every((p) => p.length > k + 1 && p[k] === parts[0][k])) k++;
  return parts.map((p) => p.slice(k).join("."));
}

function landscape(land) {
  const hm = isObject(land.heatmap) ? land.heatmap : null;
  const dead = new Set(Array.isArray(land.dead) ? land.dead : []);
  const rows = hm && Array.isArray(hm.rows) ? hm.rows.map(String) : [];
  const shown = stripPrefix(rows);
  return el("div", { class: "sim-land" },
    el("h4", {}, `gradient norm per module over ${fmt(land.batches)} batches`, dead.size ? el("span", { class: "pill sev-warn" }, `${dead.size} dead`) : null),
    hm ? heatmap(hm.values, { rows: shown, cols: (hm.cols || []).map((c) => `batch ${c}`), scale: "log", label: "grad norm", marks: rows.map((r, i) => (dead.has(r) ? i : -1)).filter((i) => i >= 0) }) : null,
    dead.size ? el("p", { class: "sim-dead" }, "dead (mean norm < 1e-6 over all batches): ", [...dead].map((d) => el("code", {}, d))) : null);
}

function featureBars(title, rows, cls) {
  if (!rows.length) return null;
  const top = Math.max(...rows.map((f) => Math.abs(toNumber(f.score)))) || 1;
  return el("div", { class: "sim-feats" }, el("h5", {}, title), el("ol", {}, rows.slice(0, 10).map((f) => {
    const bar = el("span", { class: `sim-bar ${cls}` });
    bar.style.width = `${(Math.abs(toNumber(f.score)) / top) * 100}%`;
    return el("li", {}, el("code", {}, `F${f.feature}`), el("span", { class: "sim-label" }, f.label ? String(f.label) : "unlabelled"), el("span", { class: "sim-track" }, bar), el("span", { class: "num" }, fmt(f.score)));
  })));
}

function prediction(p, title) {
  return el("div", { class: "sim-pred" },
    el("h4", {}, title || `predicted features at ${p.hook}`, el("span", { class: "muted" }, ` ${fmt(p.active_features)} of ${fmt(p.d_sae)} active`)),
    el("div", { class: "sim-pred-cols" }, featureBars("strengthen", list(p.strengthen), "up"), featureBars("suppress", list(p.suppress), "down")),
    el("p", { class: "muted sim-conv" }, String(p.convention ?? "")));
}

// Every flagged row in the quality report (tools/simulate/quality.py: QualityReport), as [flag, rows, field, detail].
function flagRows(q) {
  const out = [];
  for (const [key, name] of [["harmful", "harmful"], ["assistant_speak", "assistant-speak"]]) {
    for (const f of list(isObject(q[key]) ? q[key].flagged : [])) out.push([name, String(f.row), String(f.field ?? ""), `${f.text ?? f.term ?? ""}${f.category ? ` (${f.category})` : ""}`]);
  }
  for (const f of list(isObject(q.lengths) ? q.lengths.over_rows : [])) out.push([`over ${fmt(q.lengths.max_len)} tokens`, String(f.row), String(f.sequence ?? ""), `${fmt(f.tokens)} tokens`]);
  for (const g of list(isObject(q.exact_duplicates) ? q.exact_duplicates.listed : [])) out.push(["exact duplicates", (g.rows || []).slice(0, 8).join(", "), "", `${fmt(g.size)} rows`]);
  for (const p of list(isObject(q.near_duplicates) ? q.near_duplicates.listed : [])) out.push(["near duplicates", `${p.a}, ${p.b}`, "", `Jaccard ${fmt(p.jaccard)}`]);
  for (const b of list(isObject(q.diversity) ? q.diversity.listed : [])) out.push(["paraphrase block", (b.rows || []).slice(0, 8).join(", ") + (b.size > 8 ? " …" : ""), "prompt", `${fmt(b.size)} rows, mean Jaccard ${fmt(b.mean_jaccard)}`]);
  return out;
}

function quality(q) {
  const flags = flagRows(q);
  const d = isObject(q.diversity) ? q.diversity : {};
  return el("div", { class: "sim-quality" },
    el("h4", {}, "dataset quality", el("span", { class: "muted" }, ` ${fmt(q.rows)} rows · diversity ${fmt(d.score)} (${String(d.method ?? "")}) · lists ${String(q.lists_version ?? "")}`)),
    flags.length ? el("table", { class: "rows" },
      el("thead", {}, el("tr", {}, ["flag", "rows", "field", "what"].map((h) => el("th", {}, h)))),
      el("tbody", {}, flags.slice(0, 40).map(([flag, rows, field, what]) => el("tr", {}, el("td", {}, flag), el("td", { class: "num" }, rows), el("td", {}, field), el("td", {}, what)))))
      : el("p", { class: "muted" }, "no flagged rows"),
    flags.length > 40 ? el("p", { class: "muted more" }, `… ${flags.length - 40} more in the result`) : null);
}

function preference(p) {
  const counts = Array.isArray(p.histogram_counts) ? p.histogram_counts.map(toNumber) : [];
  const edges = Array.isArray(p.histogram_edges) ? p.histogram_edges.map(toNumber) : [];
  const top = Math.max(1, ...counts);
  return el("div", { class: "sim-pref" },
    el("h4", {}, `preference margins over ${fmt(p.pairs)} pairs`, el("span", { class: p.negative_share > 0.5 ? "pill sev-warn" : "pill" }, `${fmt(100 * p.negative_share)}% backwards`)),
    el("div", { class: "sim-hist", role: "img", "aria-label": "histogram of log P(chosen) − log P(rejected)" }, counts.map((c, i) => {
      const bar = el("span", { class: edges[i + 1] <= 0 ? "neg" : "pos", title: `${fmt(edges[i])} to ${fmt(edges[i + 1])}: ${c}` });
      bar.style.height = `${(c / top) * 100}%`;
      return bar;
    })),
    el("div", { class: "hm-cols muted" }, el("span", {}, fmt(edges[0])), el("span", {}, "margin (nats)"), el("span", {}, fmt(edges[edges.length - 1]))),
    el("p", { class: "muted" }, `mean ${fmt(p.mean_margin)}, median ${fmt(p.median_margin)}; DPO loss ${fmt(p.dpo_loss_mean)} at β ${fmt(p.beta)}`),
    isObject(p.prediction) ? prediction(p.prediction, "the DPO loss's features") : null);
}

function sharpness(x) {
  const limit = toNumber(x.stability_limit);
  const lam = toNumber(x.lambda_max);
  const top = Math.max(lam, limit) || 1;
  const bar = (cls, v, title) => { const b = el("span", { class: `sim-bar ${cls}`, title }); b.style.width = `${(Math.max(0, v) / top) * 100}%`; return el("span", { class: "sim-track" }, b); };
  return el("div", { class: "sim-sharp" },
    el("h4", {}, `sharpness over ${fmt(x.params)} parameters on ${fmt(x.hessian_rows)} rows`,
      x.unstable ? el("span", { class: "pill sev-warn" }, "unstable at this lr") : null,
      x.ntk_unreliable ? el("span", { class: "pill sev-warn" }, "λ_max > 10: NTK least reliable") : null,
      x.converged ? null : el("span", { class: "pill sev-warn" }, "Lanczos unconverged")),
    el("div", { class: "sim-sharp-rows" },
      el("span", {}, "λ_max"), bar(x.unstable ? "down" : "up", lam, `λ_max ${fmt(lam)}`), el("span", { class: "num" }, fmt(lam)),
      el("span", {}, "2/η"), bar("limit", limit, `2/η = ${fmt(limit)}`), el("span", { class: "num" }, fmt(limit))),
    el("p", { class: "muted" }, `λ_min ${fmt(x.lambda_min)} · ${fmt(x.iterations)} HVPs (budget ${fmt(x.budget)}, tol ${fmt(x.tol)}) · lr ${fmt(x.lr)}`));
}

function influenceRows(title, rows, cls) {
  if (!rows.length) return null;
  const top = Math.max(...rows.map((r) => Math.abs(toNumber(r.score)))) || 1;
  return el("div", { class: "sim-inf-list" }, el("h5", {}, title), el("ol", {}, rows.slice(0, 10).map((r) => {
    const bar = el("span", { class: `sim-bar ${cls}` });
    bar.style.width = `${(Math.abs(toNumber(r.score)) / top) * 100}%`;
    return el("li", {}, el("span", { class: "num" }, `row ${fmt(r.row)}`), el("span", { class: "sim-label", title: String(r.text ?? "") }, String(r.text ?? "")), el("span", { class: "sim-track" }, bar), el("span", { class: "num" }, fmt(r.score)));
  })));
}

function influence(x) {
  const l = isObject(x.lissa) ? x.lissa : {};
  const res = Array.isArray(l.residuals) ? l.residuals : [];
  return el("div", { class: "sim-inf" },
    el("h4", {}, `influence on the test loss: ${fmt(x.harmful)} of ${fmt(x.train_rows)} rows harmful`, el("span", { class: "muted" }, ` test: ${String(x.test ?? "")}`)),
    el("div", { class: "sim-pred-cols" }, influenceRows("most harmful (IF > 0)", list(x.most_harmful), "down"), influenceRows("most helpful (IF < 0)", list(x.most_helpful), "up")),
    res.length ? el("div", { class: "spark-row" }, el("div", { class: "spark-label" }, el("span", {}, "LiSSA relative residual"), el("strong", { class: "num" }, fmt(l.residual))),
      sparkline(res.map((_, i) => i + 1), res, [], { label: "LiSSA residual", logScale: true })) : null,
    el("p", { class: "muted" }, `${fmt(l.iterations)} HVPs of ${fmt(l.budget)} · s ${fmt(l.scale)}, λ ${fmt(l.damping)}: (H + ${fmt(l.effective_damping)}·I)⁻¹ · error bound ${fmt(l.error_bound)}`),
    el("p", { class: "muted sim-conv" }, String(x.convention ?? "")));
}

function delta(d) {
  const rows = list(d.tensors);
  const names = stripPrefix(rows.map((t) => String(t.name)));
  const lr = toNumber(d.lr) || 1;
  const top = Math.max(...rows.map((t) => Math.abs(toNumber(t.eta_eff)) / lr), 1);
  const c = isObject(d.checkpoint) ? d.checkpoint : null;
  return el("div", { class: "sim-delta" },
    el("h4", {}, `effective learning rate per tensor (${String(d.rule ?? "")} rule, ${fmt(d.steps)} steps at lr ${fmt(d.lr)})`,
      Array.isArray(d.clipped) && d.clipped.length ? el("span", { class: "pill sev-warn" }, `${fmt(d.clipped.length)} clipped`) : null),
    el("table", { class: "rows sim-eff" },
      el("thead", {}, el("tr", {}, ["tensor", "η_eff / η", "", "K", "‖Δ‖/‖W‖"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.slice(0, 60).map((t, i) => {
        const ratio = toNumber(t.eta_eff) / lr;
        const bar = el("span", { class: `sim-bar ${t.clipped ? "down" : "up"}` });
        bar.style.width = `${(Math.min(Math.abs(ratio), top) / top) * 100}%`;
        return el("tr", { class: t.clipped ? "clipped" : null }, el("td", {}, el("code", {}, names[i]), t.clipped ? el("span", { class: "pill sev-warn" }, "clipped") : null),
          el("td", { class: "num" }, fmt(ratio)), el("td", {}, el("span", { class: "sim-track" }, bar)), el("td", { class: "num" }, fmt(t.curvature)), el("td", { class: "num" }, fmt(t.relative)));
      }))),
    rows.length > 60 ? el("p", { class: "muted more" }, `… ${rows.length - 60} more tensors in the result`) : null,
    c ? el("p", { class: "sim-ckpt" }, "synthetic checkpoint ", el("code", {}, String(c.path ?? "")), ` (${String(c.format ?? "")}): ${fmt(c.matched)} tensors reloaded equal`,
      list(c.sae_diff).map((x) => el("span", { class: "pill" }, `sae diff ${String(x.hook)}: ${fmt(x.changed)} of ${fmt(x.features)} changed, mean |Δ| ${fmt(x.mean_abs_delta)}`))) : null,
    el("p", { class: "muted sim-conv" }, String(d.convention ?? "")));
}

export function render(card) {
  const s = isObject(card.slim) ? card.slim : {};
  const land = isObject(s.landscape) ? s.landscape : null;
  const signals = mergeSignals(card.live ? card.live.markers : [], list(s.signals));
  const inv = isObject(s.invariant) ? s.invariant : null;
  return el("div", { class: "sim" },
    timeline(list(s.timeline)),
    lines(card, land, signals),
    land ? landscape(land) : null,
    list(s.sae).map((p) => prediction(p)),
    isObject(s.quality) ? quality(s.quality) : null,
    isObject(s.preference) ? preference(s.preference) : null,
    isObject(s.sharpness) ? sharpness(s.sharpness) : null,
    isObject(s.influence) ? influence(s.influence) : null,
    isObject(s.delta) ? delta(s.delta) : null,
    signals.length ? el("ol", { class: "signals" }, signals.slice(0, 30).map((x) => el("li", { class: `sev-${x.severity}` },
      el("span", { class: "sev" }, String(x.severity)), el("span", { class: "sig-step num" }, `batch ${fmt(x.step)}`),
      el("code", { class: "sig-type" }, String(x.type)), el("span", { class: "sig-msg" }, String(x.message ?? ""))))) : null,
    inv ? el("p", { class: "muted sim-inv" }, `no optimiser step: ${fmt(inv.parameters)} parameters unchanged (checksum ${inv.checksum_after})`) : null);
}
