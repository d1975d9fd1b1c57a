// The page: session list on the left, the chosen session's cards (newest first) on the right, kept live
// by the session's SSE stream. The snapshot's last_seq is where the stream starts; EventSource resends
// Last-Event-ID when it reconnects, so a dropped connection misses nothing.
import { createCard, loadRenderers, updateCard } from "./cards.js";
import { clock, el, replace, setSeverities } from "./dom.js";
import { makeFolder } from "./fold.js";

const TOKEN_KEY = "trainspect-mirror-token";
const RECONNECT_MS = 1000;
const $ = (id) => document.getElementById(id);

const state = { sessions: [], current: null, cards: new Map(), nodes: new Map(), lastSeq: 0, stream: null, dirty: new Set(), frame: 0, folder: null };

const api = {
  token: null,
  headers() {
    return this.token ? { Authorization: `Bearer ${this.token}` } : {};
  },
  async json(path) {
    const r = await fetch(path, { headers: this.headers() });
    if (r.status === 401) {
      askToken();
      throw new Error("this mirror needs a token");
    }
    if (!r.ok) throw Object.assign(new Error(`${r.status} ${r.statusText}`), { status: r.status });
    return r.json();
  },
};

function initToken() {
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
    history.replaceState(null, "", `${location.pathname}${params.toString() ? `?${params}` : ""}${location.hash}`);
  }
  api.token = sessionStorage.getItem(TOKEN_KEY);
}

function askToken() {
  const form = $("token-form");
  form.hidden = false;
  form.onsubmit = (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value);
    location.reload();
  };
}

function setConnection(text, cls) {
  const c = $("connection");
  replace(c, text);
  c.className = `connection ${cls}`;
}

async function refreshSessions() {
  try {
    state.sessions = await api.json("/api/sessions");
  } catch (e) {
    setConnection(`mirror unreachable (${e.message})`, "down");
    return;
  }
  const wanted = hashSession();
  // a session named in the URL opens even before it exists: its first cards then arrive live
  const pick = wanted || state.current || (state.sessions[0] && state.sessions[0].id);
  renderSessions();
  if (pick && pick !== state.current) openSession(pick);
  if (!pick) replace($("feed"), el("p", { class: "empty" }, "No tool calls yet. Run one, e.g. ", el("code", {}, "trainspect weight-diff --checkpoint …"), " — its card appears here live."));
}

// "#s=<session>" names the session to show; anything else in the hash names none
function hashSession() {
  const m = /^#s=(.+)$/.exec(location.hash);
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return m[1]; // not percent-encoded after all: take it as typed
  }
}

function renderSessions() {
  replace($("sessions"), state.sessions.map((s) =>
    el("li", { class: s.id === state.current ? "active" : "" },
      el("button", { type: "button", onclick: () => { location.hash = `s=${encodeURIComponent(s.id)}`; openSession(s.id); } },
        el("span", { class: "sid" }, s.id),
        el("span", { class: "smeta" }, `${s.n_cards} card${s.n_cards === 1 ? "" : "s"} · ${clock(s.last_ts)}`)))));
}

async function openSession(id) {
  if (state.stream) state.stream.close();
  state.current = id;
  state.cards = new Map();
  state.nodes = new Map();
  state.dirty.clear();
  renderSessions();
  replace($("session-title"), id);
  const feed = $("feed");
  replace(feed);
  let snapshot;
  try {
    snapshot = await api.json(`/api/sessions/${encodeURIComponent(id)}/cards`);
  } catch (e) {
    if (e.status !== 404) {
      replace(feed, el("p", { class: "empty" }, `could not load ${id}: ${e.message}`));
      return;
    }
    snapshot = { cards: [], last_seq: 0 };
    replace(feed, el("p", { class: "empty" }, "No cards in this session yet: they appear here as tool calls run."));
  }
  if (state.current !== id) return;
  for (const card of snapshot.cards) {
    state.cards.set(card.call_id, card);
    const node = createCard(card, api);
    state.nodes.set(card.call_id, node);
    feed.append(node); // the snapshot is newest first already
  }
  state.lastSeq = snapshot.last_seq;
  connect(id);
}

function connect(id) {
  const q = new URLSearchParams({ after: String(state.lastSeq) });
  if (api.token) q.set("token", api.token);
  const es = new EventSource(`/api/sessions/${encodeURIComponent(id)}/stream?${q}`);
  state.stream = es;
  es.onopen = () => setConnection("live", "live");
  es.onerror = () => {
    setConnection("reconnecting…", "down");
    // EventSource retries a dropped connection by itself but gives up for good on an HTTP error (a
    // proxy's 502 while the mirror restarts, say): then open a new stream after the last event seen
    if (es.readyState === EventSource.CLOSED) setTimeout(() => state.stream === es && connect(id), RECONNECT_MS);
  };
  es.addEventListener("mirror", (msg) => {
    if (state.stream !== es) return;
    for (const ev of JSON.parse(msg.data)) receive(ev);
    if (state.dirty.size && !state.frame) state.frame = requestAnimationFrame(flush);
  });
}

function receive(ev) {
  if (ev.seq <= state.lastSeq || ev.session !== state.current) return;
  state.lastSeq = ev.seq;
  let card = state.cards.get(ev.call_id);
  if (!card) {
    card = state.folder.newCard(ev);
    state.cards.set(ev.call_id, card);
  }
  state.folder.applyEvent(card, ev);
  state.dirty.add(ev.call_id);
}

// Render what changed at most once per frame: a fast stream costs one DOM update per card per frame.
function flush() {
  state.frame = 0;
  const feed = $("feed");
  for (const id of state.dirty) {
    const card = state.cards.get(id);
    let node = state.nodes.get(id);
    if (node) {
      updateCard(node, card, api);
    } else {
      node = createCard(card, api);
      state.nodes.set(id, node);
      feed.querySelector(".empty")?.remove();
      feed.prepend(node);
    }
  }
  state.dirty.clear();
  const s = state.sessions.find((x) => x.id === state.current);
  if (s && s.n_cards !== state.cards.size) {
    s.n_cards = state.cards.size;
    renderSessions();
  }
}

// What the registered tools declare: renderer modules to load and live families to fold. Retried until the
// mirror answers (the page may open before it is up).
async function start() {
  for (;;) {
    try {
      const contract = await api.json("/api/contract");
      await loadRenderers(contract.renderers);
      state.folder = makeFolder(contract.families);
      setSeverities(contract.severities);
      break;
    } catch (e) {
      setConnection(`mirror unreachable (${e.message})`, "down");
      await new Promise((r) => setTimeout(r, RECONNECT_MS));
    }
  }
  refreshSessions();
  setInterval(refreshSessions, 3000);
  window.addEventListener("hashchange", refreshSessions);
}

initToken();
start();
