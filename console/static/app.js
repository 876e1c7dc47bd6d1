// sealflow console: polls the orchestrator's JSON API every 2 s and renders
// the topology, the jobs, the transparency log and an owner's view. No
// framework and no build step; every string from the API is inserted as
// text, never as HTML.
"use strict";

const POLL_MS = 2000;
const TIERS = ["device", "edge", "regional", "cloud"];

// ---------- small helpers ----------

function h(tag, attrs, ...kids) {
  const svg = tag.startsWith("svg:");
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.setAttribute("class", v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === undefined || kid === null || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

function short(id, n = 12) { return id ? String(id).slice(0, n) : ""; }

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new Error((body && body.error) || `${path}: HTTP ${r.status}`);
  return body;
}

async function getText(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.text();
}

function ago(iso) {
  const t = Date.parse(iso);
  if (isNaN(t)) return "";
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m ago`;
}

function b64(s) { return Uint8Array.from(atob(s), (c) => c.charCodeAt(0)); }
function hex(u8) { return Array.from(u8, (b) => b.toString(16).padStart(2, "0")).join(""); }
function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}
function equalBytes(a, b) { return a.length === b.length && a.every((x, i) => x === b[i]); }
async function sha256(u8) { return new Uint8Array(await crypto.subtle.digest("SHA-256", u8)); }

// ---------- RFC 6962 proofs (as golang.org/x/mod/sumdb/tlog) ----------

const leafHash = (rec) => sha256(concat(new Uint8Array([0]), rec));
const nodeHash = (l, r) => sha256(concat(new Uint8Array([1]), l, r));

// maxpow2 is the largest power of two smaller than n (n > 1).
function maxpow2(n) { let k = 1; while (k * 2 < n) k *= 2; return k; }

// runRecordProof mirrors tlog.runRecordProof: the hash of the tree [lo, hi)
// given leaf n's hash and its audit path p (innermost sibling first).
async function runRecordProof(p, lo, hi, n, leaf) {
  if (lo + 1 === hi) {
    if (p.length !== 0) throw new Error("proof has unnecessary hashes");
    return leaf;
  }
  if (p.length === 0) throw new Error("proof too short");
  const k = maxpow2(hi - lo);
  const last = p[p.length - 1], rest = p.slice(0, -1);
  if (n < lo + k) return nodeHash(await runRecordProof(rest, lo, lo + k, n, leaf), last);
  return nodeHash(last, await runRecordProof(rest, lo + k, hi, n, leaf));
}

async function checkInclusion(head, record, proof, index) {
  if (!proof || proof.index !== index || proof.tree_size !== head.size || index < 0 || index >= head.size) return false;
  try {
    const root = await runRecordProof((proof.hashes || []).map(b64), 0, head.size, index, await leafHash(record));
    return equalBytes(root, head.hash);
  } catch (e) {
    return false;
  }
}

// runTreeProof mirrors tlog.runTreeProof: the hashes of the subtree [lo, hi)
// in the old tree (n records, hash old) and in the new tree.
async function runTreeProof(p, lo, hi, n, old) {
  if (n === hi) {
    if (lo === 0) {
      if (p.length !== 0) throw new Error("proof has unnecessary hashes");
      return [old, old];
    }
    if (p.length !== 1) throw new Error("proof has the wrong length");
    return [p[0], p[0]];
  }
  if (p.length === 0) throw new Error("proof too short");
  const k = maxpow2(hi - lo);
  const last = p[p.length - 1], rest = p.slice(0, -1);
  if (n <= lo + k) {
    const [oh, th] = await runTreeProof(rest, lo, lo + k, n, old);
    return [oh, await nodeHash(th, last)];
  }
  const [oh, th] = await runTreeProof(rest, lo + k, hi, n, old);
  return [await nodeHash(last, oh), await nodeHash(last, th)];
}

// checkConsistency mirrors tlog.CheckTree: the tree of size t with hash th
// contains the tree of size n with hash h as a prefix.
async function checkConsistency(hashes, t, th, n, h) {
  if (t < 1 || n < 1 || n > t) return false;
  try {
    const [h2, th2] = await runTreeProof((hashes || []).map(b64), 0, t, n, h);
    return equalBytes(h2, h) && equalBytes(th2, th);
  } catch (e) {
    return false;
  }
}

// witness keeps, in this browser's storage, the last verified tree head of
// the log it pins (its verifier key), and checks every newer head against it
// with a consistency proof: a rolled-back or forked orchestrator shows here.
// It returns {state: "first"|"same"|"consistent"|"rollback"|"fork", size}.
async function witness(head, vkey) {
  const key = "sealflow.witness." + vkey;
  let last = null;
  try { last = JSON.parse(localStorage.getItem(key) || "null"); } catch (e) { last = null; }
  const save = () => localStorage.setItem(key, JSON.stringify({ size: head.size, hash: head.hashB64 }));
  if (!last || !last.size) { save(); return { state: "first", size: head.size }; }
  if (head.size < last.size) return { state: "rollback", size: last.size };
  if (head.size === last.size) return { state: last.hash === head.hashB64 ? "same" : "fork", size: last.size };
  const p = await getJSON(`/v1/log/consistency?old=${last.size}&new=${head.size}`);
  if (!(await checkConsistency(p.hashes || [], head.size, head.hash, last.size, b64(last.hash)))) return { state: "fork", size: last.size };
  save();
  return { state: "consistent", size: last.size };
}

// parseHead reads a signed tree head (a note whose text is tlog.FormatTree).
function parseHead(text) {
  const sep = text.indexOf("\n\n");
  if (sep < 0) throw new Error("tree head: no signature block");
  const body = text.slice(0, sep + 1);
  const lines = body.split("\n");
  if (lines.length < 4) throw new Error("tree head: too few lines");
  const sigs = text.slice(sep + 2).split("\n").filter((l) => l.startsWith("\u2014 ")).map((l) => {
    const [name, sig] = l.slice(2).split(" ");
    return { name, sig: b64(sig) };
  });
  return { text, body, size: Number(lines[1]), hashB64: lines[2], hash: b64(lines[2]), sigs };
}

// verifyHead checks the note signature with the log's verifier key
// "name+hash+base64(0x01||pub)" (golang.org/x/mod/sumdb/note). It returns
// "ok", "bad" or "unsupported" (no Ed25519 in this browser's WebCrypto).
async function verifyHead(head, vkey) {
  if (!vkey) return "unknown";
  // The base64 key may itself contain "+": split at the first two only.
  const i = vkey.indexOf("+"), j = vkey.indexOf("+", i + 1);
  if (i < 0 || j < 0) return "bad";
  const name = vkey.slice(0, i), hashHex = vkey.slice(i + 1, j);
  let key;
  try { key = b64(vkey.slice(j + 1)); } catch (e) { return "bad"; }
  if (key[0] !== 1 || key.length !== 33) return "bad";
  const sig = head.sigs.find((s) => s.name === name && hex(s.sig.slice(0, 4)) === hashHex);
  if (!sig || sig.sig.length !== 68) return "bad";
  let k;
  try {
    k = await crypto.subtle.importKey("raw", key.slice(1), { name: "Ed25519" }, false, ["verify"]);
  } catch (e) {
    return "unsupported";
  }
  const ok = await crypto.subtle.verify({ name: "Ed25519" }, k, sig.sig.slice(4), new TextEncoder().encode(head.body));
  return ok ? "ok" : "bad";
}

// ---------- owner view (the same rules as console.BuildOwnerView) ----------

function buildOwnerView(streams, entries) {
  const mine = new Set(streams);
  const nodes = new Map(), recips = new Map();
  for (const e of entries) {
    const about = (e.subjects || []).filter((s) => s.startsWith("stream:") && mine.has(s.slice(7))).map((s) => s.slice(7));
    if (!about.length || e.type !== "key.released") continue;
    const b = e.body || {};
    const job = ((e.subjects || []).find((s) => s.startsWith("job:")) || "").slice(4);
    if (b.node) {
      const n = nodes.get(b.node) || { node: b.node, direct: false, tasks: new Set(), jobs: new Set() };
      if (b.purpose === "stream" && mine.has(String(b.key).replace(/\/[^/]*$/, ""))) n.direct = true;
      if (b.task) n.tasks.add(b.task);
      if (job) n.jobs.add(job);
      nodes.set(b.node, n);
    } else if (b.recipient) {
      recips.set(b.recipient, true);
    }
  }
  return { nodes, recipients: new Set(recips.keys()) };
}

// ---------- state ----------

const S = {
  attest: null, nodes: [], jobs: [], services: [], parties: [], streams: [], status: new Map(),
  checkpoints: new Map(), // job id → GET /v1/checkpoints?job= view
  owner: null, // {id, warning, view, total, proven, agree, sig, heads} or {id, error}
  headStatus: null,
};

function nodeName(id) {
  const n = S.nodes.find((n) => n.id === id);
  return n ? n.name || short(id) : short(id);
}
function partyName(id) {
  const p = S.parties.find((p) => p.id === id);
  return p ? p.name : short(id);
}

// stateOf returns the short state of a task's latest report ("running",
// "finished", "failed", "stopped"; "pending" before the first report).
function stateOf(task) {
  const st = S.status.get(task);
  if (!st || !st.state) return "pending";
  return st.state.split(":")[0];
}

function rate(x) { return x >= 100 ? Math.round(x).toString() : x.toFixed(1); }

function progressText(task) {
  const st = S.status.get(task);
  if (!st) return "no report yet";
  return `${stateOf(task)} · in ${st.records_in} (${rate(st.records_in_per_second || 0)}/s) · out ${st.records_out} (${rate(st.records_out_per_second || 0)}/s)`;
}

// ---------- orchestrator card ----------

async function loadAttestation() {
  const nonce = hex(crypto.getRandomValues(new Uint8Array(32)));
  const a = await getJSON(`/v1/attest?nonce=${nonce}`);
  S.attest = a;
  S.orchID = hex(await sha256(b64(a.identity.signing_key)));
  const ev = a.evidence || {};
  const g = a.genesis || {};
  document.getElementById("orch-info").replaceChildren(
    kv("Orchestrator", `${a.identity.name} · ${short(S.orchID)}`),
    kv("TEE", String(ev.type || "?").toUpperCase(), "badge tee tee-" + (ev.type || "x")),
    kv("Genesis", `${g.name || ""} · ${short(a.genesis_digest, 16)}`),
    kv("TLS key SHA-256 (bound by the evidence)", short(a.tls_key_sha256, 32) + "…", "mono"),
    kv("Log key", a.log_key, "mono small"),
    h("div", { class: "kv note" }, h("span", { class: "k" }, "Trust"),
      h("span", { class: "v" }, "This page is served with the attested TLS key above; pin it with ", h("code", {}, "sealflow verify"), " before trusting what it shows.")),
  );
}

function kv(k, v, cls) {
  return h("div", { class: "kv" }, h("span", { class: "k" }, k), h("span", { class: "v " + (cls || "") }, v));
}

// ---------- topology ----------

function tasksByNode() {
  const m = new Map();
  for (const j of S.jobs) {
    for (const [task, node] of Object.entries(j.tasks || {})) {
      if (!m.has(node)) m.set(node, []);
      m.get(node).push({ job: j.id, task });
    }
  }
  for (const l of m.values()) l.sort((a, b) => a.task.localeCompare(b.task));
  return m;
}

function renderTopology() {
  const byNode = tasksByNode();
  const hl = S.owner && S.owner.view ? S.owner.view : null;
  const holders = new Map((hl ? hl.nodes : []).map((n) => [n.node, n]));
  const cols = [];
  const tiers = [...TIERS, ...new Set(S.nodes.map((n) => n.location.tier).filter((t) => !TIERS.includes(t)))];
  for (const tier of tiers) {
    const nodes = S.nodes.filter((n) => (n.location.tier || "") === tier);
    if (!nodes.length && (tier === "device")) continue;
    const sites = new Map();
    for (const n of nodes) {
      const key = `${n.location.region || "—"} / ${n.location.site || "—"}`;
      if (!sites.has(key)) sites.set(key, []);
      sites.get(key).push(n);
    }
    cols.push(h("div", { class: "tier", "data-tier": tier },
      h("div", { class: "tier-head" }, h("span", { class: "tier-name" }, tier), h("span", { class: "count" }, `${nodes.length} node${nodes.length === 1 ? "" : "s"}`)),
      nodes.length ? null : h("div", { class: "empty" }, "no nodes"),
      [...sites.entries()].map(([site, ns]) => h("div", { class: "site" },
        h("div", { class: "site-name" }, site),
        ns.map((n) => nodeCard(n, byNode.get(n.id) || [], holders.get(n.id)))))));
  }
  document.getElementById("tiers").replaceChildren(...cols);
  const running = [...byNode.values()].reduce((a, l) => a + l.length, 0);
  document.getElementById("topo-summary").textContent =
    `${S.nodes.length} admitted node${S.nodes.length === 1 ? "" : "s"} · ${running} task${running === 1 ? "" : "s"} placed`;
}

function nodeCard(n, tasks, holder) {
  const expired = Date.parse(n.expires) < Date.now();
  const cls = ["node"];
  if (holder) cls.push(holder.direct ? "holds-key direct" : "holds-key derived");
  if (expired) cls.push("expired");
  return h("div", { class: cls.join(" "), "data-node": n.id, "data-name": n.name, "data-holds-key": holder ? (holder.direct ? "direct" : "derived") : null },
    h("div", { class: "node-head" },
      h("span", { class: "node-name" }, n.name || short(n.id)),
      h("span", { class: `badge tee tee-${n.tee}` }, n.tee.toUpperCase()),
      n.debug ? h("span", { class: "badge warn" }, "DEBUG") : null,
      holder ? h("span", { class: "badge key" }, holder.direct ? "holds your stream key" : "holds job keys") : null),
    h("div", { class: "node-meta mono" }, `id ${short(n.id)} · meas ${short(n.measurement, 16)} · svn ${n.svn}`),
    h("div", { class: "node-meta" }, `admitted ${ago(n.admitted_at)} · ${expired ? "expired" : "expires " + new Date(n.expires).toLocaleTimeString()} · ${tasks.length}/${n.slots} slots`),
    tasks.length ? h("ul", { class: "tasks" }, tasks.map((t) => {
      const hot = holder && holder.tasks.includes(t.task);
      const state = stateOf(t.task);
      return h("li", { class: hot ? "task hot" : "task", "data-task": t.task, title: progressText(t.task) },
        h("span", { class: "job-tag" }, t.job), " ", t.task, " ", h("span", { class: `state state-${state}` }, state));
    })) : h("div", { class: "idle" }, "idle"));
}

// ---------- jobs ----------

function stageSpec(svc, slot) {
  const m = svc.manifest;
  let raw = slot.stage && m.stages ? m.stages[slot.stage] : m.spec;
  if (typeof raw === "string") { try { raw = JSON.parse(raw); } catch (e) { raw = null; } }
  return raw || { nodes: [] };
}

function jobGraph(job, svc) {
  // Vertices: streams (inputs, intermediates, outputs) and tasks; edges from
  // each task's spec sources and sinks. Layers by longest path.
  const verts = new Map(), edges = [];
  const v = (id, kind, label) => { if (!verts.has(id)) verts.set(id, { id, kind, label, layer: 0 }); return verts.get(id); };
  const inputs = new Set(svc ? svc.manifest.inputs : []);
  const outputs = new Set(svc ? svc.manifest.outputs : []);
  const slots = svc ? svc.manifest.tasks : Object.keys(job.tasks).map((id) => ({ id }));
  for (const slot of slots) {
    const t = v("t:" + slot.id, "task", slot.id);
    t.node = job.tasks[slot.id];
    const spec = svc ? stageSpec(svc, slot) : { nodes: [] };
    t.ops = (spec.nodes || []).filter((n) => n.kind !== "source" && n.kind !== "sink").map((n) => n.kind);
    const reads = new Set(slot.reads || []), writes = new Set(slot.writes || []);
    for (const n of spec.nodes || []) {
      const s = n.params && n.params.stream;
      if (!s) continue;
      if (n.kind === "source") reads.add(s);
      if (n.kind === "sink") writes.add(s);
    }
    for (const s of reads) { v("s:" + s, inputs.has(s) ? "input" : outputs.has(s) ? "output" : "exchange", s); edges.push(["s:" + s, t.id]); }
    for (const s of writes) { v("s:" + s, outputs.has(s) ? "output" : inputs.has(s) ? "input" : "exchange", s); edges.push([t.id, "s:" + s]); }
  }
  for (let i = 0; i < verts.size; i++) {
    let changed = false;
    for (const [a, b] of edges) {
      const L = verts.get(a).layer + 1;
      if (verts.get(b).layer < L) { verts.get(b).layer = L; changed = true; }
    }
    if (!changed) break;
  }
  const layers = [];
  for (const x of verts.values()) (layers[x.layer] = layers[x.layer] || []).push(x);
  layers.forEach((l) => l && l.sort((a, b) => a.label.localeCompare(b.label)));
  const W = 210, H = 62, GX = 56, GY = 18;
  const rows = Math.max(...layers.map((l) => (l ? l.length : 0)), 1);
  const width = layers.length * (W + GX) - GX + 20, height = rows * (H + GY) - GY + 20;
  layers.forEach((l, li) => l && l.forEach((x, ri) => {
    x.x = 10 + li * (W + GX);
    x.y = 10 + ri * (H + GY) + ((rows - l.length) * (H + GY)) / 2;
  }));
  const hl = S.owner && S.owner.view ? S.owner.view : null;
  const hotTasks = new Set(hl ? hl.nodes.flatMap((n) => n.tasks) : []);
  const hotStreams = new Set(hl ? hl.streams : []);
  const svg = h("svg:svg", { class: "graph", width, height, viewBox: `0 0 ${width} ${height}` },
    h("svg:defs", {}, h("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      h("svg:path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }))),
    edges.map(([a, b]) => {
      const A = verts.get(a), B = verts.get(b);
      const x1 = A.x + W, y1 = A.y + H / 2, x2 = B.x, y2 = B.y + H / 2, mx = (x1 + x2) / 2;
      return h("svg:path", { class: "edge", d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2 - 2} ${y2}`, "marker-end": "url(#arrow)" });
    }),
    [...verts.values()].map((x) => {
      const hot = x.kind === "task" ? hotTasks.has(x.label) : hotStreams.has(x.label);
      const isTask = x.kind === "task";
      const st = isTask ? S.status.get(x.label) : null;
      const state = isTask ? stateOf(x.label) : null;
      const g = h("svg:g", { class: `v ${x.kind}${hot ? " hot" : ""}`, "data-vertex": x.label, "data-task-state": state,
        transform: `translate(${x.x},${x.y})` },
        h("svg:title", {}, isTask ? `${x.label} on ${nodeName(x.node)}: ${progressText(x.label)}` : x.label),
        h("svg:rect", { width: W, height: H, rx: isTask ? 8 : 24 }),
        isTask ? h("svg:circle", { cx: W - 14, cy: 15, r: 5, class: `dot state-${state}` }) : null,
        h("svg:text", { x: 12, y: 20, class: "label" }, x.label.length > 27 ? x.label.slice(0, 26) + "…" : x.label),
        h("svg:text", { x: 12, y: 37, class: "sub" }, isTask
          ? `on ${nodeName(x.node)}${x.ops && x.ops.length ? " · " + x.ops.join("→") : ""}`.slice(0, 33)
          : x.kind === "input" ? "owner stream (sealed)" : x.kind === "output" ? "output (sealed)" : "exchange (sealed)"),
        isTask ? h("svg:text", { x: 12, y: 53, class: "sub rates" }, st
          ? `${state} · in ${st.records_in} · out ${st.records_out} · ${rate(st.records_in_per_second || 0)}/s`
          : "waiting for the node's report") : null);
      return g;
    }));
  return svg;
}

// ---------- operators, watermarks, backpressure, checkpoints ----------

// BP_HIGH is the backpressure ratio above which an operator or task is
// coloured as backpressured.
const BP_HIGH = 0.5;

// seconds formats a duration in seconds ("850 ms", "3.2 s", "4m 05s").
function seconds(x) {
  if (x == null || isNaN(x)) return "—";
  const a = Math.abs(x), sign = x < 0 ? "−" : "";
  if (a < 1) return `${sign}${Math.round(a * 1000)} ms`;
  if (a < 60) return `${sign}${a.toFixed(1)} s`;
  if (a < 3600) return `${sign}${Math.floor(a / 60)}m ${String(Math.floor(a % 60)).padStart(2, "0")}s`;
  return `${sign}${Math.floor(a / 3600)}h ${String(Math.floor((a % 3600) / 60)).padStart(2, "0")}m`;
}

function percent(x) { return `${Math.round((x || 0) * 100)}%`; }

// lagText is an operator's watermark lag as of its node's report.
function lagText(o) {
  if (!o) return "—";
  if (o.ended) return "input ended";
  if (o.watermark_lag_seconds == null) return "no watermark";
  return seconds(o.watermark_lag_seconds);
}

// taskCheckpoint returns the checkpoint view of a job's task, if any.
function taskCheckpoint(job, task) {
  const v = S.checkpoints.get(job);
  return v && v.tasks ? v.tasks.find((t) => t.task === task) : null;
}

function checkpointText(tc) {
  if (!tc) return "checkpoints unknown";
  if (!tc.checkpoint) return "no checkpoint yet";
  return `checkpoint #${tc.checkpoint} · ${seconds(tc.age_seconds || 0)} ago`;
}

function jobCheckpointText(job) {
  const v = S.checkpoints.get(job);
  if (!v) return null;
  const parts = [v.complete ? `last complete checkpoint #${v.complete.id} · ${seconds(v.complete.age_seconds)} ago` : "no complete checkpoint yet"];
  if (v.pending && v.pending.length) {
    const p = v.pending[v.pending.length - 1];
    parts.push(`#${p.id} in progress (${p.acknowledged}/${p.tasks} tasks)`);
  }
  return parts.join(" · ");
}

// operatorGraph draws a task's JobSpec nodes in their spec order, layered
// by their inputs, with each operator's rates, watermark lag and
// backpressure from the latest report (ops, by node id).
function operatorGraph(task, spec, ops) {
  const nodes = spec.nodes || [];
  const byID = new Map(nodes.map((n, i) => [n.id, { n, i, layer: 0 }]));
  for (let k = 0; k < nodes.length; k++) {
    let changed = false;
    for (const x of byID.values()) {
      for (const inp of x.n.inputs || []) {
        const from = byID.get(inp);
        if (from && x.layer < from.layer + 1) { x.layer = from.layer + 1; changed = true; }
      }
    }
    if (!changed) break;
  }
  const layers = [];
  for (const x of byID.values()) (layers[x.layer] = layers[x.layer] || []).push(x);
  layers.forEach((l) => l && l.sort((a, b) => a.i - b.i));
  const W = 168, H = 58, GX = 34, GY = 10;
  const rows = Math.max(...layers.map((l) => (l ? l.length : 0)), 1);
  const width = Math.max(layers.length * (W + GX) - GX + 12, 60), height = rows * (H + GY) - GY + 12;
  layers.forEach((l, li) => l && l.forEach((x, ri) => {
    x.x = 6 + li * (W + GX);
    x.y = 6 + ri * (H + GY) + ((rows - l.length) * (H + GY)) / 2;
  }));
  const edges = [];
  for (const x of byID.values()) for (const inp of x.n.inputs || []) if (byID.has(inp)) edges.push([byID.get(inp), x]);
  return h("svg:svg", { class: "graph ops", width, height, viewBox: `0 0 ${width} ${height}` },
    h("svg:defs", {}, h("svg:marker", { id: "op-arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse" },
      h("svg:path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }))),
    edges.map(([A, B]) => {
      const x1 = A.x + W, y1 = A.y + H / 2, x2 = B.x, y2 = B.y + H / 2, mx = (x1 + x2) / 2;
      return h("svg:path", { class: "edge", d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2 - 2} ${y2}`, "marker-end": "url(#op-arrow)" });
    }),
    [...byID.values()].map((x) => {
      const o = ops.get(x.n.id);
      const bp = o ? o.backpressure || 0 : 0;
      const io = x.n.kind === "source" ? `out ${rate(o ? o.records_out_per_second || 0 : 0)}/s`
        : x.n.kind === "sink" ? `in ${rate(o ? o.records_in_per_second || 0 : 0)}/s`
          : `in ${rate(o ? o.records_in_per_second || 0 : 0)}/s · out ${rate(o ? o.records_out_per_second || 0 : 0)}/s`;
      return h("svg:g", { class: `op${bp > BP_HIGH ? " bp-high" : ""}${o ? "" : " unreported"}`, "data-op": `${task}:${x.n.id}`, transform: `translate(${x.x},${x.y})` },
        h("svg:title", {}, `${x.n.id} (${x.n.kind}): ${o ? `in ${o.records_in}, out ${o.records_out}, watermark lag ${lagText(o)}, backpressure ${percent(bp)}` : "no report yet"}`),
        h("svg:rect", { width: W, height: H, rx: 6 }),
        h("svg:text", { x: 9, y: 16, class: "label" }, x.n.id.length > 14 ? x.n.id.slice(0, 13) + "…" : x.n.id,
          h("svg:tspan", { class: "kind", dx: 6 }, x.n.kind)),
        h("svg:text", { x: 9, y: 33, class: "sub rates" }, o ? io : "no report yet"),
        h("svg:text", { x: 9, y: 49, class: "sub" }, o ? `wm ${lagText(o)} · bp ${percent(bp)}` : ""));
    }));
}

// operatorTable lists a task's operators in JobSpec order: counts, rates,
// watermark lag and the backpressure of the chain that runs each.
function operatorTable(task, spec, ops) {
  const th = (...cols) => h("tr", {}, cols.map((c) => h("th", {}, c)));
  return h("table", { class: "ops" },
    h("thead", {}, th("operator", "kind", "records in", "in/s", "records out", "out/s", "watermark lag", "backpressure")),
    h("tbody", {}, (spec.nodes || []).map((n) => {
      const o = ops.get(n.id);
      const bp = o ? o.backpressure || 0 : 0;
      return h("tr", { class: bp > BP_HIGH ? "bp-high" : null, "data-operator": `${task}:${n.id}` },
        h("td", { class: "mono" }, n.id), h("td", {}, n.kind),
        h("td", { class: "num" }, o ? o.records_in : "—"),
        h("td", { class: "num rate" }, o ? `${rate(o.records_in_per_second || 0)}/s` : "—"),
        h("td", { class: "num" }, o ? o.records_out : "—"),
        h("td", { class: "num rate" }, o ? `${rate(o.records_out_per_second || 0)}/s` : "—"),
        h("td", { class: "num lag" }, lagText(o)),
        h("td", { class: "num bp" }, o ? percent(bp) : "—"));
    })));
}

// stagesView shows each task of a job (manifest order) with its node, state,
// backpressure, latest checkpoint and its operator graph and table.
function stagesView(job, svc) {
  const slots = svc ? svc.manifest.tasks : Object.keys(job.tasks || {}).sort().map((id) => ({ id }));
  return h("div", { class: "stages" }, slots.map((slot) => {
    const spec = svc ? stageSpec(svc, slot) : { nodes: [] };
    const st = S.status.get(slot.id);
    const ops = new Map(((st && st.operators) || []).map((o) => [o.id, o]));
    const state = stateOf(slot.id);
    const bp = st ? st.backpressure || 0 : 0;
    const tc = taskCheckpoint(job.id, slot.id);
    return h("div", { class: "stage" + (bp > BP_HIGH ? " bp-high" : ""), "data-stage": slot.id },
      h("div", { class: "stage-head" },
        h("span", { class: "stage-name mono" }, slot.id),
        h("span", { class: `state state-${state}` }, state),
        h("span", { class: "small" }, `on ${nodeName(job.tasks[slot.id])}`),
        h("span", { class: "badge bp" + (bp > BP_HIGH ? " warn" : ""), title: "share of time the task's most backpressured chain spent blocked sending downstream, over the last report interval" }, `backpressure ${percent(bp)}`),
        h("span", { class: "badge ckpt" + (tc && tc.checkpoint ? " ok" : ""), "data-checkpoint": tc ? tc.checkpoint || 0 : null, "data-checkpoint-age": tc && tc.checkpoint ? (tc.age_seconds || 0).toFixed(1) : null }, checkpointText(tc))),
      h("div", { class: "stage-body" },
        h("div", { class: "graph-wrap" }, operatorGraph(slot.id, spec, ops)),
        operatorTable(slot.id, spec, ops)));
  }));
}

function summarizeStates(tasks) {
  const n = {};
  for (const t of tasks) n[stateOf(t)] = (n[stateOf(t)] || 0) + 1;
  return Object.entries(n).sort().map(([k, v]) => `${v} ${k}`).join(" · ");
}

function renderJobs() {
  const list = S.jobs.map((j) => {
    // The version the job runs (earlier versions stay listed while jobs run them).
    const svc = S.services.find((s) => s.digest === j.digest) || S.services.find((s) => s.manifest.id === j.service);
    const ckpt = jobCheckpointText(j.id);
    const hot = S.owner && S.owner.view && S.owner.view.nodes.some((n) => n.jobs.includes(j.id));
    return h("div", { class: "job" + (hot ? " hot" : ""), "data-job": j.id },
      h("div", { class: "job-head" },
        h("span", { class: "job-name" }, j.id),
        h("span", { class: "badge ok" }, "deployed"),
        Object.keys(j.tasks || {}).length ? h("span", { class: "small" }, summarizeStates(Object.keys(j.tasks))) : null,
        h("span", { class: "mono small" }, `service ${j.service} · digest ${short(j.digest, 16)} · key epoch ${j.epoch}`),
        svc && svc.manifest.recipients ? h("span", { class: "small" }, "recipients: " + svc.manifest.recipients.map(partyName).join(", ")) : null),
      h("div", { class: "graph-wrap" }, jobGraph(j, svc)),
      ckpt ? h("div", { class: "job-ckpt small", "data-job-checkpoint": j.id }, ckpt) : null,
      stagesView(j, svc),
      h("div", { class: "hint" }, `Task states, per-operator rates, watermark lag (event time behind the report's time) and backpressure (red above ${percent(BP_HIGH)}) come from the nodes' signed status reports (GET /v1/status); checkpoints from the orchestrator's accepted acknowledgements (GET /v1/checkpoints).`));
  });
  document.getElementById("job-list").replaceChildren(...(list.length ? list : [h("div", { class: "empty" }, "no jobs deployed")]));
  document.getElementById("jobs-summary").textContent = `${S.jobs.length} job${S.jobs.length === 1 ? "" : "s"} · ${S.services.length} service${S.services.length === 1 ? "" : "s"} submitted`;
}

// ---------- transparency log ----------

async function loadLog() {
  const head = parseHead(await getText("/v1/log/head"));
  const from = Math.max(0, head.size - 40);
  const es = await getJSON(`/v1/log/entries?from=${from}`);
  const th = parseHead(es.tree_head);
  const sig = await verifyHead(th, S.attest && S.attest.log_key);
  const wit = sig === "ok" ? await witness(th, S.attest.log_key) : null;
  let proven = 0;
  const rows = [];
  for (const e of (es.entries || []).slice().reverse()) {
    const rec = b64(e.record);
    const ok = await checkInclusion(th, rec, e.proof, e.index);
    if (ok) proven++;
    let ent = {};
    try { ent = JSON.parse(new TextDecoder().decode(rec)); } catch (err) { ent = { type: "(undecodable)" }; }
    rows.push(h("tr", { "data-index": e.index },
      h("td", { class: "num" }, e.index),
      h("td", { class: "small" }, ent.time ? new Date(ent.time).toLocaleTimeString() : ""),
      h("td", {}, h("span", { class: "etype " + String(ent.type || "").replace(/\W/g, "-") }, ent.type)),
      h("td", { class: "small subj" }, (ent.subjects || []).map((s) => subjectLabel(s)).join("  ")),
      h("td", { class: "small mono body" }, summarize(ent)),
      h("td", {}, ok ? h("span", { class: "proof ok", title: "inclusion proof verified in this browser" }, "✓ proof") : h("span", { class: "proof bad" }, "✗ proof"))));
  }
  document.getElementById("tree-head").replaceChildren(
    h("div", { class: "th-grid" },
      kv("Tree size", th.size),
      kv("Root hash", th.hashB64, "mono"),
      kv("Signature", sig === "ok" ? "✓ Ed25519 verified in this browser" : sig === "unsupported" ? "not checked (no Ed25519 in this browser)" : "✗ does not verify", sig === "ok" ? "good" : sig === "bad" ? "badtext" : ""),
      kv("Proofs", `${proven} of ${rows.length} entries shown proven against this head`, proven === rows.length ? "good" : "badtext"),
      kv("Witness (this browser)", witnessText(wit), wit && (wit.state === "rollback" || wit.state === "fork") ? "badtext" : "good")),
    h("pre", { class: "note" }, th.text));
  S.headStatus = sig;
  document.body.dataset.witness = wit ? wit.state : "none";
  const table = h("table", { class: "log" },
    h("thead", {}, h("tr", {}, ["#", "time", "type", "subjects", "details", ""].map((x) => h("th", {}, x)))),
    h("tbody", {}, rows));
  document.getElementById("log-entries").replaceChildren(table);
  document.getElementById("log-summary").textContent = `latest ${rows.length} of ${th.size} entries`;
}

function witnessText(w) {
  if (!w) return "not updated (signature not verified)";
  switch (w.state) {
    case "first": return "✓ first head seen here; later heads must extend it";
    case "same": return `✓ same head as last seen (size ${w.size})`;
    case "consistent": return `✓ consistent with the head seen before (size ${w.size} → proof verified)`;
    case "rollback": return `✗ ROLLED BACK: this browser saw size ${w.size} before`;
    default: return `✗ FORK: not consistent with the head of size ${w.size} seen before`;
  }
}

function subjectLabel(s) {
  const [k, v] = [s.slice(0, s.indexOf(":")), s.slice(s.indexOf(":") + 1)];
  if (k === "node") return "node:" + nodeName(v);
  if (k === "party") return "party:" + partyName(v);
  return s;
}

function summarize(e) {
  const b = e.body || {};
  switch (e.type) {
    case "key.released":
      return `${b.purpose} key ${b.key} → ${b.node ? "node " + nodeName(b.node) + " task " + b.task : "recipient " + partyName(b.recipient)}`;
    case "node.admitted":
      return `${b.name || ""} ${b.tee || ""} ${b.tier || (b.location && b.location.tier) || ""}`.trim();
    case "job.deployed":
      return `${b.job} (${Object.keys(b.tasks || {}).length} tasks)`;
    case "job.refused": case "output.refused": case "node.refused":
      return `${b.rule || ""}: ${b.reason || ""}`.slice(0, 140);
    default: {
      const s = JSON.stringify(b);
      return s.length > 140 ? s.slice(0, 139) + "…" : s;
    }
  }
}

// ---------- owner view ----------

async function ownerIdFrom(input) {
  const s = input.trim();
  if (/^[0-9a-f]{64}$/.test(s)) return { id: s };
  let obj;
  try { obj = JSON.parse(s); } catch (e) { throw new Error("not a 64-hex-digit id and not JSON"); }
  if (obj.signing_key) return { id: hex(await sha256(b64(obj.signing_key))) };
  if (obj.signing_seed || obj.hpke_private) {
    if (obj.id) return { id: obj.id, warning: "That was a private key file: only its id was read, nothing was sent. Paste the id or the public identity instead." };
    throw new Error("that is a private key file without an id; paste your public identity instead");
  }
  if (obj.id) return { id: obj.id };
  throw new Error("JSON has neither signing_key nor id");
}

async function loadOwner() {
  if (!S.owner) return;
  const id = S.owner.id;
  let view;
  try {
    view = await getJSON(`/console/api/owner?owner=${encodeURIComponent(id)}`);
  } catch (e) {
    S.owner = { id, warning: S.owner && S.owner.warning, error: e.message };
    return;
  }
  // Fetch every entry about the owner's streams, check each proof against
  // the signed head it came with, and recompute the view from what verified.
  let total = 0, proven = 0, sigs = new Set(), heads = new Set();
  const verified = [];
  for (const s of view.streams) {
    const es = await getJSON(`/v1/log/entries?subject=${encodeURIComponent("stream:" + s)}`);
    const th = parseHead(es.tree_head);
    sigs.add(await verifyHead(th, S.attest && S.attest.log_key));
    heads.add(`${th.size} ${th.hashB64}`);
    for (const e of es.entries || []) {
      total++;
      const rec = b64(e.record);
      if (await checkInclusion(th, rec, e.proof, e.index)) {
        proven++;
        try { verified.push(JSON.parse(new TextDecoder().decode(rec))); } catch (err) { /* counted as proven, ignored */ }
      }
    }
  }
  const mine = buildOwnerView(view.streams, verified);
  const serverNodes = new Set(view.nodes.map((n) => n.node));
  const serverRecips = new Set(view.recipients.map((r) => r.recipient));
  const agree = serverNodes.size === mine.nodes.size && [...serverNodes].every((n) => mine.nodes.has(n)) &&
    view.nodes.every((n) => mine.nodes.get(n.node).direct === n.direct) &&
    serverRecips.size === mine.recipients.size && [...serverRecips].every((r) => mine.recipients.has(r));
  S.owner = { id, warning: S.owner && S.owner.warning, view, total, proven, agree, sig: [...sigs].join(","), heads: [...heads] };
}

function renderOwner() {
  const out = document.getElementById("owner-result");
  const o = S.owner;
  if (!o) { out.replaceChildren(); return; }
  if (o.error) {
    out.replaceChildren(h("div", { class: "alert bad" }, `Owner ${short(o.id)}: ${o.error}`));
    return;
  }
  if (!o.view) { out.replaceChildren(h("div", { class: "hint" }, "loading…")); return; }
  const v = o.view;
  const allProven = o.total > 0 && o.proven === o.total;
  out.setAttribute("data-owner", o.id);
  out.setAttribute("data-proofs", allProven ? "ok" : "fail");
  out.setAttribute("data-agree", o.agree ? "yes" : "no");
  out.setAttribute("data-nodes", v.nodes.map((n) => n.node).join(","));
  out.replaceChildren(...[
    o.warning ? h("div", { class: "alert warnbox" }, o.warning) : null,
    h("div", { class: "owner-summary" },
      h("div", { class: "big" }, `${partyName(v.owner)} owns `, v.streams.map((s, i) => [i ? ", " : "", h("code", {}, s)])),
      h("div", { class: "small", id: "owner-services" }, "Services approved to read them: ", approvedServices(v.streams)),
      h("div", { class: allProven ? "alert good" : "alert bad", id: "owner-proofs" },
        allProven ? `✓ ${o.proven} of ${o.total} log entries about these streams verified in this browser (RFC 6962 inclusion in tree ${o.heads.map((x) => x.split(" ")[0]).join(", ")}; head signature ${o.sig})`
          : `✗ only ${o.proven} of ${o.total} inclusion proofs verified`),
      h("div", { class: o.agree ? "alert good" : "alert bad", id: "owner-agree" },
        o.agree ? "✓ the highlighted nodes equal those recomputed here from the verified entries"
          : "✗ the orchestrator's owner view differs from the one recomputed from verified entries")),
    h("table", { class: "log keys" },
      h("thead", {}, h("tr", {}, ["holder", "kind", "tasks", "keys released (log entry)"].map((x) => h("th", {}, x)))),
      h("tbody", {},
        v.nodes.map((n) => h("tr", { class: n.direct ? "direct" : "derived", "data-holder": n.node },
          h("td", {}, h("b", {}, nodeName(n.node)), h("div", { class: "mono small" }, short(n.node))),
          h("td", {}, n.direct ? "node · reads your records" : "node · job keys (derived data)"),
          h("td", { class: "small" }, n.tasks.join(", ")),
          h("td", { class: "small mono" }, n.keys.map((k) => `${k.purpose} ${k.key} (#${k.index})`).join("  ")))),
        v.recipients.map((r) => h("tr", { class: "recipient" },
          h("td", {}, h("b", {}, partyName(r.recipient)), h("div", { class: "mono small" }, short(r.recipient))),
          h("td", {}, "recipient · output key"),
          h("td", {}, ""),
          h("td", { class: "small mono" }, r.keys.map((k) => `${k.purpose} ${k.key} (#${k.index})`).join("  ")))),
        v.nodes.length + v.recipients.length ? null : h("tr", {}, h("td", { colspan: 4, class: "empty" }, "no key to these streams has been released")))),
  ].filter(Boolean));
}

// approvedServices lists, per stream, the services whose exact digest the
// owner approved (from /v1/streams), with the revoked ones struck through.
function approvedServices(streams) {
  const out = [];
  for (const name of streams) {
    const st = S.streams.find((x) => x.name === name);
    if (!st) continue;
    for (const d of st.approved || []) {
      const svc = S.services.find((x) => x.digest === d);
      out.push(h("span", { class: "svc" }, `${svc ? svc.manifest.id : "unknown service"} (${short(d, 10)}) on ${name}`));
    }
    for (const d of st.revoked || []) {
      const svc = S.services.find((x) => x.digest === d);
      out.push(h("span", { class: "svc revoked" }, `${svc ? svc.manifest.id : "unknown service"} (${short(d, 10)}) revoked on ${name}`));
    }
  }
  return out.length ? out : "none";
}

function setupOwnerForm() {
  const form = document.getElementById("owner-form");
  const input = document.getElementById("owner-input");
  const pick = document.getElementById("owner-pick");
  pick.addEventListener("change", () => { if (pick.value) { input.value = pick.value; form.requestSubmit(); } });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const r = await ownerIdFrom(input.value);
      S.owner = { id: r.id, warning: r.warning };
      input.value = r.id;
      history.replaceState(null, "", `?owner=${r.id}${location.hash}`);
    } catch (e) {
      S.owner = { id: "", error: e.message };
    }
    await refresh();
  });
  document.getElementById("owner-clear").addEventListener("click", () => {
    S.owner = null; input.value = ""; pick.value = "";
    history.replaceState(null, "", location.pathname + location.hash);
    document.getElementById("owner-result").replaceChildren();
    refresh();
  });
  const q = new URLSearchParams(location.search).get("owner");
  if (q) { input.value = q; S.owner = { id: q }; }
}

function renderOwnerPicker() {
  const pick = document.getElementById("owner-pick");
  const owners = S.parties.filter((p) => p.role === "owner");
  const want = ["", ...owners.map((p) => p.id)].join(",");
  if (pick.dataset.ids === want) return;
  pick.dataset.ids = want;
  pick.replaceChildren(h("option", { value: "" }, "— registered owners —"),
    ...owners.map((p) => h("option", { value: p.id, selected: S.owner && S.owner.id === p.id }, `${p.name} (${short(p.id, 8)})`)));
}

// ---------- polling ----------

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  const status = document.getElementById("status");
  try {
    if (!S.attest) await loadAttestation();
    const [nodes, jobs, services, parties, streams] = await Promise.all(
      ["/v1/nodes", "/v1/jobs", "/v1/services", "/v1/parties", "/v1/streams"].map(getJSON));
    S.nodes = nodes || []; S.jobs = jobs || []; S.services = services || []; S.streams = streams || [];
    // Task progress: the latest signed status report of each task's node.
    const reports = await Promise.all(S.jobs.map((j) => getJSON(`/v1/status?job=${encodeURIComponent(j.id)}`).catch(() => [])));
    S.status = new Map(reports.flat().filter(Boolean).map((t) => [t.task, t]));
    const ckpts = await Promise.all(S.jobs.map((j) => getJSON(`/v1/checkpoints?job=${encodeURIComponent(j.id)}`).catch(() => null)));
    S.checkpoints = new Map(ckpts.filter(Boolean).map((v) => [v.job, v]));
    S.parties = await Promise.all((parties || []).map(async (p) => ({ ...p, id: hex(await sha256(b64(p.signing_key))) })));
    await loadOwner();
    renderOwnerPicker();
    renderTopology();
    renderJobs();
    renderOwner();
    await loadLog();
    status.textContent = `live · ${new Date().toLocaleTimeString()}`;
    status.dataset.state = "live";
    document.body.dataset.loaded = "yes";
  } catch (e) {
    status.textContent = `error: ${e.message}`;
    status.dataset.state = "error";
    console.error(e);
  } finally {
    busy = false;
  }
}

function main() {
  setupOwnerForm();
  refresh();
  setInterval(refresh, POLL_MS);
}

// The console page has a status line; other pages (the verifier's browser
// test) load this file for its functions only.
function start() { if (document.getElementById("status")) main(); }
if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
