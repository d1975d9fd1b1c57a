// One card per call: a shell (title, status, collapsible sync row, progress, findings) and a body drawn
// by the renderer for its kind (cards/<kind>.js, one per registered card kind, found from /api/contract),
// or by the generic table renderer for kinds without one.
import { clock, el, isObject, kvTable, replace, seconds, truncate, valueNode } from "./dom.js";

const RENDERERS = {};
const KIND = /^[A-Za-z][A-Za-z0-9_]*$/;

// Import the renderer module of every kind the server lists; a module that fails to load leaves its kind generic.
export async function loadRenderers(kinds) {
  await Promise.all(kinds.filter((k) => KIND.test(k)).map(async (kind) => {
    try {
      const mod = await import(`./cards/${kind}.js`);
      if (typeof mod.render === "function") RENDERERS[kind] = mod.render;
      else console.error(`cards/${kind}.js exports no render(card, charts)`);
    } catch (e) {
      console.error(`renderer for ${kind} failed to load; its cards use the generic view`, e);
    }
  }));
}

function basename(p) {
  return typeof p === "string" ? p.replace(/[/\\]+$/, "").split(/[/\\]/).pop() : null;
}

function title(card) {
  const a = card.args || {};
  const label = (typeof a.name === "string" && a.name) || basename(a.checkpoint) || (card.live && card.live.label) || (typeof a.run === "string" && a.run) || null;
  return { tool: card.tool || card.kind, label };
}

// Build the card's fixed skeleton once; update() refills it on every change, keeping the sync row's open state.
export function createCard(card, api) {
  const parts = {
    kind: el("span", { class: "kind" }),
    tool: el("span", { class: "tool" }),
    label: el("span", { class: "label" }),
    status: el("span", { class: "status" }),
    syncLine: el("summary", { class: "sync-line" }),
    syncBody: el("div", { class: "sync-body" }),
    progress: el("div", { class: "progress" }),
    error: el("div", { class: "error" }),
    findings: el("ul", { class: "findings" }),
    body: el("div", { class: "body" }),
  };
  const sync = el("details", { class: "sync" }, parts.syncLine, parts.syncBody);
  sync.addEventListener("toggle", () => sync.open && node._syncFor !== syncVersion(node._card) && fillSyncBody(node, node._card, api));
  const node = el("article", { class: "card", "data-call-id": card.call_id },
    el("header", {}, parts.kind, el("h3", {}, parts.tool, parts.label), parts.status),
    sync, parts.progress, parts.error, parts.findings, parts.body);
  node._parts = parts;
  node._sync = sync;
  node._charts = [];
  updateCard(node, card, api);
  return node;
}

export function updateCard(node, card, api) {
  const p = node._parts;
  node._card = card;
  node.dataset.status = card.status;
  node.dataset.kind = card.kind;
  const t = title(card);
  replace(p.kind, card.kind);
  replace(p.tool, t.tool);
  replace(p.label, t.label ? ` · ${t.label}` : "");
  replace(p.status, { running: "running", ok: "done", error: "failed" }[card.status] || card.status);
  p.status.className = `status st-${card.status}`;

  const done = card.status === "running" ? "…" : `${card.status === "error" ? "Failed" : "Completed"} ${clock(card.ended_ts)}`;
  replace(p.syncLine,
    el("span", { class: "sync-when" }, `Invoked ${clock(card.started_ts)} → ${done}`),
    el("span", { class: "sync-dur" }, seconds(card.duration_s)),
    el("code", { class: "sync-id", title: card.call_id }, truncate(card.call_id, 14)));
  if (node._sync.open && node._syncFor !== syncVersion(card)) fillSyncBody(node, card, api);

  const prog = card.status === "running" && card.progress;
  if (prog) {
    const pct = Math.round(Math.min(Math.max(Number(card.progress.fraction) || 0, 0), 1) * 100);
    const fill = el("div", { class: "fill" });
    fill.style.width = `${pct}%`;
    replace(p.progress, el("div", { class: "bar" }, fill), el("span", { class: "progress-msg" }, `${pct}% ${card.progress.message || ""}`));
  } else {
    replace(p.progress);
  }

  replace(p.error, card.error ? [el("strong", {}, card.error), card.hint ? el("div", { class: "hint" }, card.hint) : null] : []);
  replace(p.findings, card.findings.slice(0, 8).map((f) => el("li", { class: `sev-${f.severity || "info"}` }, el("span", { class: "sev" }, f.severity || "info"), String(f.text ?? ""))));

  // the body is redrawn only when its data changes: redrawing charts on every progress tick would flicker
  const version = bodyVersion(card);
  if (node._bodyVersion !== version) {
    node._bodyVersion = version;
    for (const c of node._charts) c.destroy();
    node._charts = [];
    const body = renderBody(card, node._charts);
    node.dataset.renderer = body.by;
    replace(p.body, body.nodes);
  }
}

function bodyVersion(card) {
  const l = card.live;
  return [card.kind, card.status, card.slim === null ? 0 : 1, l ? l.seen : 0, l ? l.markers.length : 0, l && l.summary ? 1 : 0, card.extra.length].join(",");
}

const syncVersion = (card) => `${card.status}|${card.has_result}|${card.args ? 1 : 0}`;

function renderBody(card, charts) {
  const render = RENDERERS[card.kind];
  if (render && (card.slim !== null || card.live)) {
    try {
      return { nodes: render(card, charts), by: card.kind };
    } catch (e) {
      console.error(`renderer ${card.kind} failed; showing the generic view`, e);
    }
  }
  return { nodes: renderGeneric(card), by: "generic" };
}

// What any tool shows before its own renderer exists: the slim payload as tables.
export function renderGeneric(card) {
  const parts = [];
  if (card.slim !== null) parts.push(el("div", { class: "generic" }, valueNode(card.slim)));
  if (card.live) parts.push(el("div", { class: "generic" }, kvTable({ stream: card.live.label, family: card.live.family, points: card.live.seen, markers: card.live.markers, summary: card.live.summary })));
  if (card.extra.length) {
    parts.push(el("ol", { class: "extra" }, card.extra.slice(-12).reverse().map((e) =>
      el("li", {}, el("div", { class: "extra-head" }, el("code", {}, e.type), el("span", { class: "muted" }, clock(e.ts))), isObject(e.data) ? kvTable(e.data, 1) : valueNode(e.data)))));
  }
  return parts;
}

function fillSyncBody(node, card, api) {
  node._syncFor = syncVersion(card);
  const rows = { tool: card.tool, card: card.kind, call_id: card.call_id, session: card.session, invoked: clock(card.started_ts), finished: clock(card.ended_ts), duration: seconds(card.duration_s) };
  const args = card.args ? el("div", {}, el("h4", {}, "arguments"), kvTable(card.args)) : null;
  const out = el("pre", { class: "full-json", hidden: true });
  const button = card.has_result ? el("button", { type: "button", class: "full-btn", onclick: async () => {
    button.disabled = true;
    try {
      const full = await api.json(`/api/calls/${encodeURIComponent(card.call_id)}`);
      replace(out, JSON.stringify(full, null, 2));
      replace(button, "Full result");
    } catch (e) {
      replace(out, `could not load the full result: ${e.message}`);
    }
    out.hidden = false;
  } }, "Load full result JSON") : null;
  replace(node._parts.syncBody, kvTable(rows), args, button, out);
}
