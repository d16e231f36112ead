// outpost status page: reads /v1/status/stream (Server-Sent Events over
// fetch, so the admin token travels in a header, never in the URL) and
// renders it. No dependencies, no network beyond this relay.
"use strict";

const KEY = "outpost.token";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(KEY) || "";
let abort = null;
let retryTimer = null;

// ---- small DOM helpers (text only: nothing from the relay becomes HTML)
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") el.style.cssText = v;
    else el.setAttribute(k, v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined) continue;
    el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}
const set = (id, text) => { const el = $(id); if (el.textContent !== String(text)) el.textContent = text; };
const fill = (el, rows) => el.replaceChildren(...rows);

// ---- formatting
function bytes(n) {
  if (n === null || n === undefined) return "?";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0, v = n;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${u[i]}`;
}
function dur(s) {
  s = Math.max(0, Math.floor(s));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}
const ago = (ms, now) => (ms === null || ms === undefined ? "–" : now - ms < 1000 ? "just now" : `${dur((now - ms) / 1000)} ago`);
const rate = (r) => (r >= 100 ? Math.round(r).toLocaleString() : (Math.round(r * 10) / 10).toString());
const num = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString());
const pill = (cls, text) => h("span", { class: `pill ${cls}` }, text);

// ---- the live indicator and login
function live(state, text) {
  const el = $("live");
  el.className = `live ${state}`;
  el.lastElementChild.textContent = text;
}
function showLogin(message) {
  $("main").hidden = true;
  $("login").hidden = false;
  $("logout").hidden = true;
  set("login-error", message || "");
  live("off", "signed out");
  $("token").focus();
}
$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem(KEY, token);
  $("token").value = "";
  connect();
});
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  token = "";
  if (abort) abort.abort();
  showLogin("");
});

// ---- the feed
function retry() {
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, 2000);
}

async function connect() {
  clearTimeout(retryTimer);
  if (abort) abort.abort();
  abort = new AbortController();
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  let resp;
  try {
    resp = await fetch("/v1/status/stream", { headers, signal: abort.signal, cache: "no-store" });
  } catch (e) {
    if (e.name !== "AbortError") { live("off", "relay unreachable"); retry(); }
    return;
  }
  if (resp.status === 401 || resp.status === 403) {
    const why = resp.status === 403 ? "That token lacks the admin scope."
      : token ? "The relay refused that token." : "";
    if (resp.status === 401 || token) { sessionStorage.removeItem(KEY); token = ""; }
    showLogin(why);
    return;
  }
  if (!resp.ok || !resp.body) { live("off", `error ${resp.status}`); retry(); return; }
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = !token;
  live("on", "live");
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        event(buf.slice(0, i));
        buf = buf.slice(i + 2);
      }
    }
  } catch (e) {
    if (e.name === "AbortError") return;
  }
  live("warn", "reconnecting");
  retry();
}

function event(block) {
  let name = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) name = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  let v;
  try { v = JSON.parse(data); } catch { return; }
  if (name === "config") set("config", v.toml);
  else if (name === "status") render(v);
}

// ---- rendering
function render(s) {
  const now = s.now_ms;
  set("node-id", s.node_id);
  document.title = `outpost ${s.node_id.slice(0, 6)} · status`;
  set("uptime", dur(s.uptime_s));
  set("version", `version ${s.version}`);
  set("clients", num(s.clients));
  set("listen", s.listen);
  set("rate-written", rate(s.rates.written_per_s));
  set("rate-delivered", rate(s.rates.delivered_per_s));
  set("store-bytes", bytes(s.data.store_bytes));
  set("data-dir", s.data.dir);
  $("data-dir").title = s.data.dir;
  set("free-bytes", bytes(s.data.free_bytes));
  const free = s.data.free_bytes, min = s.data.min_free_bytes;
  const low = free !== null && free < min * 2;
  set("free-note", free === null ? "unknown" : low ? `nearly full (floor ${bytes(min)})` : `writes stop at ${bytes(min)}`);
  const bar = $("disk-bar");
  const used = free === null ? 0 : s.data.store_bytes / (s.data.store_bytes + free);
  bar.style.width = `${Math.max(1, Math.min(100, used * 100)).toFixed(1)}%`;
  bar.className = low ? "low" : "";
  bar.title = `store is ${(used * 100).toFixed(2)}% of store + free space`;
  set("log-meta", `log: ${num(s.log.entries)} changes held, last seq ${num(s.log.last_seq)}, horizon ${num(s.log.horizon)} · durability ${s.durability} · ${num(s.totals.changes_committed)} changes and ${num(s.totals.deliveries)} deliveries since start`);
  chart(s.rates.series);
  conns(s.connections);
  spaces(s.spaces, now);
  peers(s, now);
  upstream(s.upstream, now);
  jetstream(s.jetstream, now);
  log(s.recent_log, now);
}

function chart(series) {
  const svg = $("chart");
  const W = 600, H = 200, top = 10, bottom = 190;
  const w = series.written, d = series.delivered;
  // Ten minutes once there are that many samples; until then the axis
  // spans what there is (at least a minute), newest at the right.
  const slots = Math.max(30, Math.min(300, w.length));
  const span = (slots * series.interval_ms) / 1000;
  set("axis-left", `−${span >= 120 ? `${Math.round(span / 60)} min` : `${Math.round(span)} s`}`);
  set("axis-mid", `−${span >= 120 ? `${Math.round(span / 120)} min` : `${Math.round(span / 2)} s`}`);
  const max = Math.max(1, ...w, ...d);
  const nice = niceMax(max);
  const x = (i, n) => W - (n - 1 - i) * (W / (slots - 1));
  const y = (v) => bottom - (v / nice) * (bottom - top);
  const pts = (arr) => arr.map((v, i) => `${x(i, arr.length).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  const ns = "http://www.w3.org/2000/svg";
  const el = (tag, attrs) => { const e = document.createElementNS(ns, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); return e; };
  const kids = [];
  const labels = [];
  for (let g = 0; g <= 4; g++) {
    const gy = bottom - (g / 4) * (bottom - top);
    kids.push(el("line", { class: "grid", x1: 0, x2: W, y1: gy, y2: gy }));
    // Labels are HTML over the plot: the SVG stretches, text must not.
    if (g > 0) labels.push(h("span", { style: `top:${(gy / H) * 100}%` }, rate((nice * g) / 4)));
  }
  $("ylabels").replaceChildren(...labels);
  if (w.length > 1) {
    kids.push(el("polygon", { class: "area", points: `${x(0, w.length).toFixed(1)},${bottom} ${pts(w)} ${W},${bottom}` }));
    kids.push(el("polyline", { class: "written", points: pts(w) }));
    kids.push(el("polyline", { class: "delivered", points: pts(d) }));
  }
  svg.replaceChildren(...kids);
  svg.setAttribute("data-points", String(w.length));
  svg.setAttribute("data-peak-written", String(Math.max(0, ...w)));
  svg.setAttribute("data-peak-delivered", String(Math.max(0, ...d)));
}
function niceMax(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function conns(c) {
  const entries = Object.entries(c || {});
  const max = Math.max(1, ...entries.map(([, n]) => n));
  fill($("conns"), entries.length === 0 ? [h("li", { class: "empty" }, "no client has connected yet")]
    : entries.map(([path, n]) => h("li", { "data-endpoint": path },
      h("code", {}, path),
      h("span", { class: "track" }, h("span", { class: "fill", style: `display:block;width:${(n / max) * 100}%` })),
      h("b", {}, n))));
}

function spaces(list, now) {
  fill($("spaces"), list.length === 0 ? [h("tr", {}, h("td", { colspan: 5, class: "empty" }, "no spaces yet: nothing has been written"))]
    : list.map((s) => h("tr", { "data-space": s.name },
      h("td", { "data-label": "Space" }, h("b", {}, s.name)),
      h("td", { class: "n", "data-label": "Entities" }, num(s.entities)),
      h("td", { class: "n", "data-label": "Changes" }, num(s.changes)),
      h("td", { class: "n", "data-label": "Subscribers" }, num(s.subscribers)),
      h("td", { "data-label": "Last write" }, ago(s.last_write_ms, now)))));
}

function peers(s, now) {
  const all = [...s.peers, ...s.peers_gone];
  set("mesh-note", s.mesh.enabled ? `mesh on ${s.mesh.listen}` : "mesh off");
  fill($("peers"), all.length === 0 ? [h("tr", {}, h("td", { colspan: 7, class: "empty" }, s.mesh.enabled ? "no peer connected yet" : "no peers: the mesh is off and there is no upstream"))]
    : all.map((p) => h("tr", { "data-peer": p.node_id || p.addr, "data-connected": String(p.connected) },
      h("td", { "data-label": "Peer" }, h("code", {}, p.addr), " ", h("small", {}, p.kind)),
      h("td", { "data-label": "Node" }, h("code", {}, p.node_id || "–")),
      h("td", { "data-label": "Found" }, p.found),
      h("td", { "data-label": "State" }, p.connected ? pill("ok", "connected") : pill("bad", `disconnected ${ago(p.disconnected_ms, now)}`)),
      h("td", { class: "n", "data-label": "Round trip" }, p.rtt_ms === null || p.rtt_ms === undefined ? "–" : `${p.rtt_ms} ms`),
      h("td", { class: "n", "data-label": "Behind" }, num(p.backlog)),
      h("td", { "data-label": "Last contact" }, ago(p.last_contact_ms, now)))));
}

function kv(el, pairs) {
  fill(el, pairs.flatMap(([k, v, id]) => [h("dt", {}, k), h("dd", id ? { id } : {}, v)]));
}

function upstream(u, now) {
  if (!u) { kv($("upstream"), [["State", h("span", { class: "empty", id: "upstream-state" }, "none configured")]]); return; }
  kv($("upstream"), [
    ["URL", h("code", {}, u.url)],
    ["State", h("span", { id: "upstream-state" }, u.connected ? pill("ok", "connected") : pill("bad", "not connected"))],
    ["Backlog", h("span", { id: "upstream-backlog" }, `${num(u.changes_waiting)} changes`)],
    ["Oldest waiting", u.oldest_waiting_age_s === null ? "–" : dur(u.oldest_waiting_age_s)],
    ["Last contact", ago(u.last_contact_ms, now)],
    ["Hub node", h("code", {}, u.hub_node_id || "–")],
    ["Last error", u.last_error ? h("span", { class: "error" }, u.last_error) : "–"],
  ]);
}

// The JetStream link ([cluster] nats or [upstream] nats): the stream, this
// relay's position in it and its lag, what it published and merged. The
// card is hidden when the relay has no such link (the default build).
function jetstream(j, now) {
  $("jetstream-card").hidden = !j;
  if (!j) return;
  const s = j.stream;
  kv($("jetstream"), [
    ["Role", j.role === "cluster" ? "hub tier member" : "edge (upstream)", "js-role"],
    ["State", h("span", { id: "js-state" }, j.connected ? pill("ok", "connected") : pill("bad", "not connected"))],
    ["Servers", h("code", { id: "js-servers" }, j.servers.join(", "))],
    ["Stream", h("span", { id: "js-stream" }, h("code", {}, s.name), ` · ${s.replicas} replica${s.replicas === 1 ? "" : "s"} · seq ${num(s.first_seq)}–${num(s.last_seq)}`)],
    ["Position", num(j.position), "js-position"],
    ["Lag", `${num(j.lag)} messages`, "js-lag"],
    ["Published", `${num(j.published)} changes`, "js-published"],
    ["Waiting to publish", `${num(j.changes_waiting)} changes`, "js-waiting"],
    ["Merged from the stream", `${num(j.merged)} changes`, "js-merged"],
    ["Gaps pending", num(j.pending_gaps), "js-gaps"],
    ["Bootstrap", j.bootstrap || "–", "js-bootstrap"],
    ["Last contact", ago(j.last_contact_ms, now)],
    ["Last error", j.last_error ? h("span", { class: "error", id: "js-error" }, j.last_error) : "–"],
  ]);
}

function log(lines, now) {
  const rows = [...lines].reverse();
  fill($("log"), rows.length === 0 ? [h("li", { class: "empty" }, "nothing logged: all quiet")]
    : rows.map((l) => h("li", { "data-level": l.level },
      h("span", { class: `lvl ${l.level}` }, l.level),
      h("span", { class: "text" }, l.text),
      h("span", { class: "when" }, `${ago(l.at_ms, now)} · ${l.target}`))));
}

connect();
