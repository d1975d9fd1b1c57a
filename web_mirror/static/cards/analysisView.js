// The analysisView card, from its slim model (tools/analysis_view/models.py: AnalysisViewCard): the gradient
// waterfall (per-layer grad norm at a few steps) beside the per-layer grad-norm heatmap over every checkpoint; the
// movement ranking beside per-layer movement over time; the sampled weight and gradient grids of one tensor; attention
// entropy per head over time and max-attention at the last step; activation statistics per module. Heatmaps are
// canvases (heatmap.js); lines are Chart.js.
import { el, fmt, isObject, truncate } from "../dom.js";
import { heatmap } from "../heatmap.js";
import { sparkline } from "../sparkline.js";

const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
const list = (v) => (Array.isArray(v) ? v : []);
const text = (v) => (v === null || v === undefined ? "—" : String(v));
// a parameter or module as "L3 mlp.c_fc" (its block and what it is), the full name in its title
const BLOCK = /^(?:.*\.)?(?:h|layers|layer|blocks)\.(\d+)(?:\.(.*))?$/;
function short(name) {
  const m = BLOCK.exec(name);
  const rest = m ? `L${m[1]}${m[2] ? ` ${m[2]}` : ""}` : name;
  return rest.replace(/\.weight$/, "");
}

// light (early) → dark (late), the waterfall's steps and the activations' depth
function shade(i, n) {
  const t = n > 1 ? i / (n - 1) : 1;
  return `hsl(${Math.round(200 - 170 * t)}, 70%, ${Math.round(68 - 36 * t)}%)`;
}

const LEGEND_MAX = 12; // more lines than this: names in the tooltip only

function lineChart(charts, { labels, datasets, yTitle, log, xTitle, linearX }) {
  const canvas = el("canvas", { role: "img", "aria-label": yTitle });
  charts.push(new window.Chart(canvas, {
    type: "line",
    data: { labels, datasets },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false, parsing: true, spanGaps: false,
      interaction: { mode: "nearest", intersect: false },
      plugins: {
        legend: { display: datasets.length <= LEGEND_MAX, position: "bottom", labels: { boxWidth: 10, font: { size: 11 } } },
        tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${fmt(c.parsed.y)}` } },
      },
      scales: {
        x: { type: linearX ? "linear" : "category", title: { display: Boolean(xTitle), text: xTitle, font: { size: 11 } }, ticks: { font: { size: 11 } } },
        y: { type: log ? "logarithmic" : "linear", title: { display: true, text: yTitle, font: { size: 11 } }, ticks: { font: { size: 11 } } },
      },
    },
  }));
  return el("div", { class: "av-chart" }, canvas);
}

function section(title, ...children) {
  return el("section", { class: "av-section" }, el("h4", {}, title), ...children);
}

function heat(h, options) {
  if (!isObject(h) || !Array.isArray(h.values) || !h.values.length) return el("p", { class: "muted" }, "nothing recorded");
  return heatmap(h.values, { rows: list(h.rows).map(text), cols: list(h.steps).map((s) => `step ${s}`), ...options });
}

function waterfall(s, charts) {
  const steps = list(s.waterfall).filter(isObject);
  const n = Number.isInteger(s.n_layers) ? s.n_layers : 0;
  const labels = Array.from({ length: n }, (_, i) => `L${i}`);
  const datasets = steps.map((w, i) => ({
    label: `step ${w.step}${list(w.reasons).some((r) => r !== "scheduled") ? ` (${list(w.reasons).filter((r) => r !== "scheduled").join(", ")})` : ""}`,
    data: list(w.layers).map((v) => (num(v) !== null && v > 0 ? v : null)),
    borderColor: shade(i, steps.length), backgroundColor: shade(i, steps.length), pointRadius: 2.5, borderWidth: 2,
  }));
  // the parameters outside the blocks at the first and the last waterfall step (the chart holds the rest)
  const outside = [...new Set(steps.flatMap((w) => list(w.outside).filter(isObject).map((o) => String(o.name))))];
  const ends = steps.length > 1 ? [steps[0], steps[steps.length - 1]] : steps;
  const normAt = (w, name) => (list(w.outside).find((o) => isObject(o) && o.name === name) || {}).norm ?? null;
  const table = outside.length ? el("table", { class: "rows av-outside" },
    el("thead", {}, el("tr", {}, el("th", {}, "grad norm outside the blocks"), ends.map((w) => el("th", { class: "num" }, `step ${w.step}`)))),
    el("tbody", {}, outside.map((name) => el("tr", {}, el("td", { title: name }, short(name)), ends.map((w) => el("td", { class: "num" }, fmt(normAt(w, name)))))))) : null;
  return el("div", {}, n && steps.length ? lineChart(charts, { labels, datasets, yTitle: "grad norm (log)", log: true, xTitle: "layer (input → output)" }) : el("p", { class: "muted" }, "no layer gradients"), table);
}

function ranking(s) {
  const top = list(s.movement_top).filter(isObject);
  if (!top.length) return el("p", { class: "muted" }, "no movement recorded (checkpoints from before movement was recorded)");
  const max = Math.max(1e-12, ...top.map((m) => num(m.moved) || 0));
  return el("ol", { class: "av-rank" }, top.map((m) => {
    const bar = el("span", { class: "av-bar" });
    bar.style.width = `${Math.max(1, ((num(m.moved) || 0) / max) * 100)}%`;
    return el("li", { title: `${m.name}${m.exact ? "" : " (estimated on a random sample)"}` },
      el("span", { class: "av-name" }, short(String(m.name ?? ""))),
      el("span", { class: "av-track" }, bar),
      el("span", { class: "num" }, `${m.exact ? "" : "≈"}${fmt(m.moved)}`));
  }));
}

function grids(g) {
  if (!isObject(g)) return null;
  const shape = list(g.shape).join("×");
  const rows = list(g.weight).length;
  const cols = rows ? list(g.weight[0]).length : 0;
  const axis = { rows: list(g.weight).map((_, i) => `row ${i + 1}`), cols: Array.from({ length: cols }, (_, i) => `col ${i + 1}`) };
  return section(["weights and gradients of ", el("code", {}, text(g.tensor)), ` at step ${text(g.step)}`],
    el("p", { class: "muted av-note" }, `${rows} of ${list(g.shape)[0] ?? "?"} rows × ${cols} evenly spaced columns of ${shape}; moved ${fmt(g.moved ?? null)} since the reference`),
    el("div", { class: "av-pair" },
      heatmap(list(g.weight), { ...axis, scale: "diverging", label: "weight", height: 200 }),
      g.gradient ? heatmap(list(g.gradient), { ...axis, scale: "diverging", label: "gradient", height: 200 }) : el("p", { class: "muted" }, "no gradient recorded")));
}

function attention(a, collapsed) {
  if (!isObject(a) || !isObject(a.entropy)) return null;
  const marks = list(a.entropy.rows).map((r, i) => (collapsed.has(r) ? i : -1)).filter((i) => i >= 0);
  const maxAttn = list(a.max_attn).filter(isObject);
  const strip = maxAttn.length ? heatmap([maxAttn.map((h) => h.value)], { rows: ["max attn"], cols: maxAttn.map((h) => text(h.head)), scale: "linear", label: `max attention per head at step ${text(a.max_attn_step)}`, height: 22 }) : null;
  return section("attention",
    el("div", { class: "av-pair" }, heat(a.entropy, { scale: "linear", label: "entropy per head (nats)", marks, unit: " nats" }), strip));
}

const GROUPS = { block: "block outputs", attn: "attention", mlp: "MLP", all: "all modules" };
const group = (module) => (/\.(attn|self_attn|attention)$/.test(module) ? "attn" : /\.mlp$/.test(module) ? "mlp" : "block");

function activations(acts, charts) {
  if (!isObject(acts)) return null;
  const modules = list(acts.modules).filter(isObject);
  const steps = list(acts.steps);
  const box = el("div", {});
  const stat = el("select", { "aria-label": "statistic" }, ["std", "mean", "sparsity"].map((k) => el("option", { value: k }, k)));
  const present = Object.keys(GROUPS).filter((g) => g === "all" || modules.some((m) => group(String(m.module)) === g));
  const which = el("select", { "aria-label": "modules" }, present.map((g) => el("option", { value: g }, GROUPS[g])));
  const draw = () => {
    const index = charts.indexOf(box._chart);
    if (index >= 0) charts.splice(index, 1)[0].destroy();
    const shown = modules.filter((m) => which.value === "all" || group(String(m.module)) === which.value);
    const key = stat.value;
    const node = lineChart(charts, {
      labels: steps, linearX: true, xTitle: "step",
      yTitle: `output ${key}${key === "std" ? " (log)" : ""}`, log: key === "std",
      datasets: shown.map((m, i) => ({
        label: short(text(m.module)), data: steps.map((x, j) => ({ x, y: key === "std" && !(num(list(m[key])[j]) > 0) ? null : num(list(m[key])[j]) })),
        borderColor: shade(i, shown.length), backgroundColor: shade(i, shown.length), pointRadius: 0, borderWidth: 1.5,
      })),
    });
    box._chart = charts[charts.length - 1];
    box.replaceChildren(node);
  };
  stat.addEventListener("change", draw);
  which.addEventListener("change", draw);
  draw();
  return section("activations", el("div", { class: "av-controls" }, stat, which), box);
}

export function render(card, charts) {
  const s = card.slim;
  if (!isObject(s) || !isObject(s.grad_heatmap)) throw new Error("not an analysisView slim payload");
  const movement = isObject(s.movement) ? s.movement : null;
  const meta = [
    ["checkpoints", s.checkpoints], ["steps", `${text(s.first_step)}–${text(s.last_step)}`], ["layers", s.n_layers],
    ["grad clip", s.grad_clip ?? "unknown"],
    ["movement from", movement ? `step ${movement.reference_step} (${movement.sample ? `exact up to ${movement.sample.toLocaleString("en")} elements a tensor, sampled beyond` : "exact"})` : "not recorded"],
  ];
  const pinch = Number.isInteger(s.pinch_layer) ? [s.pinch_layer] : [];
  const t = isObject(s.timeline) ? s.timeline : { steps: [], loss: [], grad_norm: [] };
  const marks = list(s.vanishing_steps).map((x) => ({ x, severity: "warn", label: `vanishing path at step ${x}` }));
  const skipped = list(s.skipped).filter(isObject);
  const still = new Set(list(s.still).map(String));
  return el("div", { class: "av" },
    el("div", { class: "wd-meta" },
      el("span", { title: text(s.dir) }, "dir ", el("strong", {}, truncate(text(s.dir), 60))),
      meta.map(([k, v]) => el("span", {}, `${k} `, el("strong", {}, typeof v === "number" ? fmt(v) : text(v)))),
      s.skipped_total ? el("span", { class: "pill sev-warn" }, `skipped ${s.skipped_total}`) : null,
      still.size ? el("span", { class: "pill sev-warn" }, `never moved ${still.size}`) : null),
    el("div", { class: "sparks" },
      el("div", { class: "spark-row" }, el("div", { class: "spark-label" }, el("span", {}, "loss"), el("strong", { class: "num" }, fmt(list(t.loss).at(-1) ?? null))),
        sparkline(list(t.steps), list(t.loss), marks, { label: "loss" })),
      el("div", { class: "spark-row" }, el("div", { class: "spark-label" }, el("span", {}, "global grad norm"), el("strong", { class: "num" }, fmt(list(t.grad_norm).at(-1) ?? null))),
        sparkline(list(t.steps), list(t.grad_norm), marks, { label: "global grad norm", logScale: true }))),
    section("gradient flow",
      el("div", { class: "av-pair" }, waterfall(s, charts),
        heat(s.grad_heatmap, { scale: "log", label: "per-layer grad norm over checkpoints", marks: pinch }))),
    section("weight movement",
      el("p", { class: "muted av-note" }, movement ? `‖w − w_ref‖ / ‖w_ref‖ since step ${movement.reference_step}: the most moved parameters at step ${text(s.last_step)}, and per layer over the checkpoints` : "not recorded in these checkpoints"),
      el("div", { class: "av-pair" }, ranking(s),
        s.movement_layers ? heat(s.movement_layers, { scale: "linear", label: "per-layer movement over checkpoints" }) : el("p", { class: "muted" }, "per-layer movement needs the reference checkpoint")),
      still.size ? el("p", { class: "av-note" }, el("span", { class: "pill sev-warn" }, "never moved"), " ", [...still].slice(0, 8).join(", ")) : null),
    grids(s.grids),
    attention(s.attention, new Set(list(s.collapsed).map(String))),
    activations(s.activations, charts),
    skipped.length ? el("details", { class: "summary", open: "" }, el("summary", {}, `skipped files (${s.skipped_total})`),
      el("ul", {}, skipped.map((k) => el("li", {}, el("code", {}, text(k.file)), el("span", { class: "muted" }, ` — ${text(k.reason)}`))))) : null);
}
