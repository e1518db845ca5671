// The Raftmesh dashboard: reads meshd's read-only JSON every 5 s. The token
// stays in this tab's session storage and goes out as a bearer header only;
// every value is shown with textContent (nothing from the API is markup).
"use strict";

const KEY = "raftmesh-token";
const SVG = "http://www.w3.org/2000/svg";
const $ = (s) => document.querySelector(s);

function el(tag, attrs, ...children) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

const pct = (x) => (x * 100).toFixed(2) + "%";
const ms = (x) => (x >= 1000 ? (x / 1000).toFixed(2) + "s" : x.toFixed(1) + "ms");
const health = (x) => (x >= 0.99 ? "ok" : x >= 0.95 ? "warn" : "bad");
const name = (svc, ns, home) => (ns && ns !== home ? svc + "." + ns : svc);

class Unauthorized extends Error {}

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + sessionStorage.getItem(KEY) }, cache: "no-store" });
  let body = {};
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (r.status === 401 || r.status === 403) throw new Unauthorized(body.error || r.statusText);
  if (!r.ok) throw new Error(path + ": " + (body.error || r.status + " " + r.statusText));
  return body;
}

function renderStat(stat) {
  const rows = stat.rows.map((r) => {
    const whole = r.from === null;
    const tr = el("tr", {
      class: "stat" + (whole ? " whole" : ""),
      "data-namespace": r.namespace,
      "data-service": r.service,
      "data-from": whole ? "" : r.from,
      "data-from-namespace": whole ? "" : r.from_namespace,
      "data-success": r.success_rate,
      "data-rps": r.rps,
      "data-p99": r.p99_ms,
      "data-requests": r.requests,
    },
      el("td", {}, name(r.service, r.namespace, "default")),
      el("td", {}, whole ? "*" : name(r.from, r.from_namespace, r.namespace)),
      el("td", { class: "num " + health(r.success_rate) }, pct(r.success_rate)),
      el("td", { class: "num" }, r.rps.toFixed(1)),
      el("td", { class: "num" }, ms(r.p50_ms)),
      el("td", { class: "num" }, ms(r.p95_ms)),
      el("td", { class: "num" }, ms(r.p99_ms)),
      el("td", { class: "num" }, r.requests));
    return tr;
  });
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no traffic in the last " + stat.window_s + "s")));
  fill($("#stat tbody"), rows);
}

// A label along the edge from a to b, just above it, never upside down.
function edgeLabel(a, b, colour, text) {
  let angle = (Math.atan2(b.y - a.y, b.x - a.x) * 180) / Math.PI;
  if (angle > 90) angle -= 180;
  if (angle < -90) angle += 180;
  const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2;
  return el("svg:text", { x: mx, y: my - 6, fill: colour, transform: "rotate(" + angle.toFixed(1) + " " + mx + " " + my + ")" }, text);
}

// Services in layers: callers left of what they call.
function renderTopology(stat) {
  const svg = $("#topology");
  const id = (ns, svc) => svc + "." + ns;
  const edges = stat.rows.filter((r) => r.from !== null);
  const nodes = new Map();
  for (const r of stat.rows) nodes.set(id(r.namespace, r.service), { label: name(r.service, r.namespace, "default") });
  for (const e of edges) nodes.set(id(e.from_namespace, e.from), { label: name(e.from, e.from_namespace, "default") });
  const depth = new Map();
  const callers = new Map();
  for (const e of edges) {
    const to = id(e.namespace, e.service);
    if (!callers.has(to)) callers.set(to, []);
    callers.get(to).push(id(e.from_namespace, e.from));
  }
  const depthOf = (n, seen) => {
    if (depth.has(n)) return depth.get(n);
    if (seen.has(n)) return 0;
    seen.add(n);
    const d = Math.max(-1, ...(callers.get(n) || []).map((c) => depthOf(c, seen))) + 1;
    depth.set(n, d);
    return d;
  };
  const layers = [];
  for (const n of [...nodes.keys()].sort()) {
    const d = depthOf(n, new Set());
    (layers[d] = layers[d] || []).push(n);
  }
  const W = Math.max(svg.clientWidth || 900, 300), H = 260;
  const pos = new Map();
  layers.forEach((layer, d) => layer.forEach((n, i) => {
    pos.set(n, { x: (W / (layers.length + 1)) * (d + 1), y: (H / (layer.length + 1)) * (i + 1) });
  }));
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  const defs = el("svg:defs", {}, el("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    el("svg:path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#6b7385" })));
  const items = [defs];
  for (const e of edges) {
    const a = pos.get(id(e.from_namespace, e.from)), b = pos.get(id(e.namespace, e.service));
    if (!a || !b) continue;
    const colour = { ok: "#1f9d55", warn: "#d98b00", bad: "#d64545" }[health(e.success_rate)];
    const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
    const trim = 60 / len;
    items.push(el("svg:g", { class: "edge", "data-from": e.from, "data-to": e.service, "data-success": e.success_rate, "data-rps": e.rps, "data-p99": e.p99_ms },
      el("svg:line", { x1: a.x + dx * trim, y1: a.y + dy * trim, x2: b.x - dx * trim, y2: b.y - dy * trim, stroke: colour, "marker-end": "url(#arrow)" }),
      edgeLabel(a, b, colour, pct(e.success_rate) + " · " + e.rps.toFixed(1) + "/s · p99 " + ms(e.p99_ms))));
  }
  for (const [n, p] of pos) {
    items.push(el("svg:g", { class: "node", "data-service": n },
      el("svg:rect", { x: p.x - 55, y: p.y - 16, width: 110, height: 32 }),
      el("svg:text", { x: p.x, y: p.y }, nodes.get(n).label)));
  }
  svg.replaceChildren(...items);
}

function renderCluster(c) {
  $("#cluster-name").textContent = "cluster " + c.cluster_name;
  $("#cluster-summary").textContent = "leader: " + (c.leader ?? "none") + " · term " + c.term + " · commit " + c.commit_index + " · applied " + c.applied_index + " (node " + c.node_id + ")";
  fill($("#members tbody"), c.members.map((m) => el("tr", { class: "member", "data-id": m.id, "data-state": m.state },
    el("td", {}, m.id),
    el("td", {}, m.addr),
    el("td", { class: m.state === "unreachable" ? "bad" : m.state === "leader" ? "ok" : "" }, m.state),
    el("td", { class: "num" }, m.applied_index),
    el("td", { class: "num" }, m.lag),
    el("td", { class: "num" }, m.last_contact_ms == null ? "-" : m.last_contact_ms + "ms"))));
}

function renderProxies(p) {
  fill($("#proxies tbody"), p.proxies.map((x) => el("tr", { class: "proxy", "data-instance": x.instance },
    el("td", {}, x.instance),
    el("td", {}, name(x.service, x.namespace, "default")),
    el("td", {}, x.node),
    el("td", { class: "num " + (x.acked_revision < x.sent_revision ? "warn" : "") }, x.acked_revision),
    el("td", { class: "num" }, x.sent_revision))));
}

function renderChanges(c) {
  fill($("#changes tbody"), c.changes.map((x) => el("tr", {},
    el("td", {}, x.revision),
    el("td", {}, x.kind),
    el("td", {}, x.namespace),
    el("td", {}, x.name),
    el("td", { class: x.deleted ? "bad" : "" }, x.deleted ? "deleted" : "applied"))));
}

let timer = null;

async function refresh() {
  clearTimeout(timer);
  try {
    const [stat, cluster, proxies, changes] = await Promise.all(["/api/stat", "/api/cluster", "/api/proxies", "/api/changes"].map(api));
    renderStat(stat);
    renderTopology(stat);
    renderCluster(cluster);
    renderProxies(proxies);
    renderChanges(changes);
    $("#error").textContent = stat.unreported_nodes.length ? "nodes " + stat.unreported_nodes.join(", ") + " did not answer: their proxies' traffic is missing" : "";
    $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.ready = "true";
  } catch (e) {
    if (e instanceof Unauthorized) {
      sessionStorage.removeItem(KEY);
      showLogin(e.message);
      return;
    }
    $("#error").textContent = String(e.message || e);
  }
  timer = setTimeout(refresh, 5000);
}

function showLogin(message) {
  $("#main").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  document.body.dataset.login = "true";
}

function start() {
  // `#token=...` (as `meshd demo` prints it): taken into the tab, then
  // removed from the address bar. A fragment never reaches the server.
  if (location.hash.startsWith("#token=")) {
    sessionStorage.setItem(KEY, decodeURIComponent(location.hash.slice(7)));
    history.replaceState(null, "", location.pathname);
  }
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("#token").value.trim());
    $("#token").value = "";
    begin();
  });
  $("#logout").onclick = () => { sessionStorage.removeItem(KEY); clearTimeout(timer); showLogin(""); };
  begin();
}

function begin() {
  if (!sessionStorage.getItem(KEY)) return showLogin("");
  $("#login").hidden = true;
  $("#main").hidden = false;
  $("#logout").hidden = false;
  delete document.body.dataset.login;
  refresh();
}

document.addEventListener("DOMContentLoaded", start);
