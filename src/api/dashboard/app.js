// The dashboard: polls /v1/cluster and /v1/cluster/shards, reads each member's /metrics for
// request rates, and follows /v1/events with fetch() streaming so the bearer token travels in
// the Authorization header, never in a URL. The token is kept in sessionStorage only.
"use strict";

const TOKEN_KEY = "customer-cluster-token";
const POLL_MS = 1000;
const MAX_EVENTS = 300;
const PALETTE = ["#3b7dd8", "#e67e22", "#27ae60", "#8e44ad", "#c0392b", "#16a085", "#d35400", "#2c3e50"];
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(TOKEN_KEY);
let pollTimer = null;
let eventsAbort = null;
const colours = new Map();
const lastCounts = new Map(); // node -> {at, total, errors}
let lastOwners = null;
const movedAt = new Map(); // shard -> when its owner last changed (ms), highlighted a while
const MOVED_HIGHLIGHT_MS = 5000;

function colourOf(node) {
  if (!node) return "#bbb";
  if (!colours.has(node)) colours.set(node, PALETTE[colours.size % PALETTE.length]);
  return colours.get(node);
}

function headers() {
  return token ? { Authorization: "Bearer " + token } : {};
}

async function getJson(path) {
  const res = await fetch(path, { headers: headers() });
  if (res.status === 401) throw new Error("token refused (401): enter the API token");
  if (!res.ok) throw new Error(path + ": HTTP " + res.status);
  return res.json();
}

function setStatus(text, bad) {
  $("status").textContent = text;
  $("status").style.color = bad ? "#ff8a80" : "#b9f6ca";
}

// ---- members and request rates ----

function metricsUrl(httpAddr) {
  const [host, port] = splitHostPort(httpAddr);
  const reachable = host === "0.0.0.0" || host === "::" ? location.hostname : host;
  return location.protocol + "//" + reachable + ":" + port + "/metrics";
}

function splitHostPort(addr) {
  const at = addr.lastIndexOf(":");
  return [addr.slice(0, at).replace(/^\[|\]$/g, ""), addr.slice(at + 1)];
}

// Sums customer requests (routes under /v1/customers) and their 5xx answers.
function requestCounts(text) {
  let total = 0, errors = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith("customer_http_requests_total{") || !line.includes('route="/v1/customers')) continue;
    const value = Number(line.slice(line.lastIndexOf(" ") + 1));
    total += value;
    if (/status="5/.test(line)) errors += value;
  }
  return { total, errors };
}

// Only a plain host:port is fetched (the page's policy allows no other source anyway).
const PLAIN_ADDR = /^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$/;

async function rateOf(member) {
  if (!PLAIN_ADDR.test(member.http_addr)) return null;
  try {
    const res = await fetch(metricsUrl(member.http_addr), { mode: "cors" });
    if (!res.ok) return null;
    const now = { at: performance.now(), ...requestCounts(await res.text()) };
    const before = lastCounts.get(member.name);
    lastCounts.set(member.name, now);
    if (!before) return null;
    const secs = Math.max((now.at - before.at) / 1000, 0.001);
    return { req: (now.total - before.total) / secs, err: (now.errors - before.errors) / secs };
  } catch (_) {
    lastCounts.delete(member.name);
    return null;
  }
}

async function renderMembers(cluster) {
  $("served-by").textContent = "served by " + cluster.node;
  $("epoch").textContent = "epoch " + cluster.epoch;
  const rates = await Promise.all(cluster.members.map(rateOf));
  const body = $("members").querySelector("tbody");
  body.replaceChildren(...cluster.members.map((m, i) => memberRow(m, rates[i])));
}

function memberRow(m, rate) {
  const tr = document.createElement("tr");
  tr.className = "member";
  tr.dataset.name = m.name;
  tr.dataset.status = m.status;
  const fmt = (x) => (x == null ? "–" : x.toFixed(1));
  const cells = [
    m.name + (m.this_node ? " (this)" : ""), m.status, m.http_addr, m.db ? "yes" : "",
    (m.owned_share * 100).toFixed(1) + "%", m.active_customers ?? "–", m.leases_held ?? "–",
    fmt(rate && rate.req), fmt(rate && rate.err),
  ];
  cells.forEach((text, i) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (i === 1) td.className = m.status;
    if (i === 0) td.style.borderLeft = "6px solid " + colourOf(m.name);
    tr.appendChild(td);
  });
  return tr;
}

// ---- shard map ----

function ensureCells() {
  const map = $("shard-map");
  if (map.children.length) return map.children;
  for (let i = 0; i < 1024; i++) {
    const cell = document.createElement("div");
    cell.className = "cell";
    map.appendChild(cell);
  }
  return map.children;
}

function renderShards(table) {
  const cells = ensureCells();
  const counts = new Map();
  for (const row of table.shards) {
    const cell = cells[row.shard];
    if (!cell) continue;
    if (lastOwners && lastOwners[row.shard] !== row.owner) movedAt.set(row.shard, Date.now());
    const moved = Date.now() - (movedAt.get(row.shard) || 0) < MOVED_HIGHLIGHT_MS;
    cell.className = "cell " + row.state + (moved ? " moved" : "");
    cell.dataset.owner = row.owner || "";
    cell.dataset.holder = row.holder || "";
    cell.dataset.state = row.state;
    cell.style.background = colourOf(row.owner);
    cell.title = "shard " + row.shard + "\nowner " + row.owner + "\nlease " + row.state +
      (row.holder ? " by " + row.holder + " (token " + row.token + ")" : "");
    counts.set(row.owner, (counts.get(row.owner) || 0) + 1);
  }
  lastOwners = table.shards.map((r) => r.owner);
  const held = table.shards.filter((r) => r.state === "held").length;
  $("shard-summary").textContent = held + " of " + table.shards.length + " leases held";
  $("legend").replaceChildren(...[...counts].sort().map(([owner, n]) => {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = colourOf(owner);
    span.append(swatch, (owner || "none") + ": " + n);
    return span;
  }));
}

// ---- polling ----

async function poll() {
  try {
    const [cluster, shards] = await Promise.all([getJson("/v1/cluster"), getJson("/v1/cluster/shards")]);
    renderShards(shards);
    await renderMembers(cluster);
    setStatus("connected", false);
  } catch (e) {
    setStatus(e.message, true);
  }
}

// ---- event stream (fetch streaming, Authorization header) ----

async function followEvents() {
  if (eventsAbort) eventsAbort.abort();
  eventsAbort = new AbortController();
  const signal = eventsAbort.signal;
  $("events").replaceChildren();
  try {
    const res = await fetch("/v1/events", { headers: headers(), signal });
    if (!res.ok) throw new Error("HTTP " + res.status);
    $("events-state").textContent = "live";
    await readSse(res.body.getReader(), addEvent);
    $("events-state").textContent = "stream ended; reconnecting";
  } catch (e) {
    if (signal.aborted) return;
    $("events-state").textContent = "stream failed (" + e.message + "); reconnecting";
  }
  if (!signal.aborted) setTimeout(followEvents, 2000);
}

// Reads SSE frames ("event:" and "data:" lines, blank line ends a frame).
async function readSse(reader, onFrame) {
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message", data = "";
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) onFrame(name, data);
    }
  }
}

function addEvent(name, data) {
  const li = document.createElement("li");
  if (name === "dropped") {
    li.className = "dropped";
    li.textContent = "this view fell behind and was dropped: " + data;
  } else {
    const e = JSON.parse(data);
    li.className = e.kind;
    li.textContent = e.time.slice(11, 23) + " " + e.kind + " " + e.detail + " — " + e.cause;
  }
  const list = $("events");
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

// ---- placement search ----

async function search(ev) {
  ev.preventDefault();
  const id = $("customer-id").value.trim();
  if (!id) return;
  try {
    const res = await fetch("/v1/customers/" + encodeURIComponent(id) + "/placement", { headers: headers() });
    const body = await res.json();
    $("placement").textContent = res.ok
      ? "shard " + body.shard + " → owner " + body.owner + "\n" + JSON.stringify(body, null, 2)
      : "HTTP " + res.status + ": " + ((body.error && body.error.message) || JSON.stringify(body));
  } catch (e) {
    $("placement").textContent = e.message;
  }
}

// ---- start ----

function start() {
  if (pollTimer) clearInterval(pollTimer);
  poll();
  pollTimer = setInterval(poll, POLL_MS);
  followEvents();
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  start();
});
$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  setStatus("token forgotten", true);
});
$("search").addEventListener("submit", search);
start();
