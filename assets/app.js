// The p2pstore web UI: every figure comes from the coordinator's JSON API (the same one the
// CLI uses), polled every 2 seconds. No build step; no external assets.
//
// The pages are built with the DOM API only (createElement, textContent, setAttribute,
// addEventListener): nothing the coordinator, a peer or a link supplies is ever parsed as
// HTML, and the page needs no inline script or style (the server's Content-Security-Policy
// forbids both). Requests for an account's state are signed with the page's account
// (account.js).
"use strict";

const POLL_MS = 2000;
const NAMES_PER_CLICK = 50; // "show names" derives at most this many keys per click
const SEGMENT_SIZE = 8 << 20;
const ITERATIONS = 600000;
const STATES = ["healthy", "offline", "failed", "leaving", "lost", "repairing"];
const TIMEOUT_MS = 30000; // for the small JSON calls; segments take what they take

const history = { audits: [], used: [], online: [] }; // dashboard sparklines, this session
const names = new Map(); // file id → decrypted name, for this page only
let namesMsg = ""; // what "show names" last found
let accountId = null; // the page's account id, once known

const isFileId = (s) => typeof s === "string" && /^[0-9a-f]{64}$/.test(s);
const isPeerId = (s) => typeof s === "string" && /^[0-9a-f]{32}$/.test(s);
const short = (id) => `${String(id).slice(0, 10)}…`;
const clip = (s, max = 200) => { s = String(s); return s.length > max ? `${s.slice(0, max)}…` : s; };
const bytes = (n) => {
  const u = ["B", "kB", "MB", "GB", "TB", "PB"]; let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
};
const ago = (t) => { const s = Math.max(0, Math.round(Date.now() / 1000 - t)); return s < 90 ? `${s} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`; };
const when = (t) => new Date(t * 1000).toLocaleString();

// ---- Building the DOM ----

// An element; `attrs` are set with setAttribute (never an event handler or a style: those
// are refused), children are nodes or text (set as text, never parsed).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (/^on/i.test(k) || k.toLowerCase() === "style") throw new Error(`el: ${k} is not an attribute this page sets`);
    if (k === "href" && !String(v).startsWith("#/")) throw new Error("el: only links within the page");
    e.setAttribute(k, v === true ? "" : String(v));
  }
  add(e, children);
  return e;
}

function add(parent, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    parent.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return parent;
}

function on(e, type, fn) {
  e.addEventListener(type, fn);
  return e;
}

// Sizes computed here (bar widths, column counts) go into CSS custom properties through the
// CSSOM, which the Content-Security-Policy allows; style.css uses them. Numbers only.
function dims(e, props) {
  for (const [k, v] of Object.entries(props)) {
    if (!Number.isFinite(v)) throw new Error(`dims: ${k} is not a number`);
    e.style.setProperty(k, k.endsWith("-pct") ? `${v}%` : String(v));
  }
  return e;
}

const text = (cls, ...children) => el("span", { class: cls }, ...children);
const muted = (...children) => text("muted", ...children);
const peerLink = (id) => (isPeerId(id) ? el("a", { href: `#/peer/${id}` }, short(id)) : clip(id, 40));
const fileLink = (id) => (isFileId(id) ? el("a", { href: `#/file/${id}` }, short(id)) : clip(id, 70));

// ---- Talking to the coordinator ----

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function failure(r) {
  const body = await r.json().catch(() => ({}));
  return new ApiError(r.status, typeof body.error === "string" ? body.error : `HTTP ${r.status}`);
}

// Whether an error is the network's (the coordinator did not answer), not an answer.
const unreachable = (e) => e instanceof TypeError || e.name === "TimeoutError" || e.name === "AbortError";

// A public route.
async function api(path) {
  const r = await fetch(path, { cache: "no-store", signal: AbortSignal.timeout(TIMEOUT_MS) });
  if (!r.ok) throw await failure(r);
  return r.json();
}

// A route for the page's account: JSON in (an object) or raw bytes (a segment), JSON out.
async function signed(method, path, value) {
  const raw = value instanceof Uint8Array;
  const body = value === undefined ? undefined : raw ? value : JSON.stringify(value);
  const type = body === undefined ? null : raw ? "application/octet-stream" : "application/json";
  const r = await Account.send(method, path, body, type, raw ? 0 : TIMEOUT_MS);
  if (!r.ok) throw await failure(r);
  return r.json();
}

// A route for the page's account that answers bytes.
async function signedBytes(path, timeout = 0) {
  const r = await Account.send("GET", path, undefined, null, timeout);
  if (!r.ok) throw await failure(r);
  return new Uint8Array(await r.arrayBuffer());
}

// The manifest of the file `id`, refused unless it hashes to `id` and is well-formed with an
// iteration count within the format's bounds (crypto.js).
async function manifestOf(id) {
  if (!isFileId(id)) throw new Error("not a file id");
  return P2P.verifiedManifest(await signedBytes(`/v2/files/${id}/manifest`, TIMEOUT_MS), id);
}

function task(message, cls = "muted") {
  const t = document.getElementById("task");
  t.textContent = message;
  t.className = cls;
}

// ---- Views: each returns the nodes of its page ----

function statusPill(p) {
  const cls = { active: "ok", vetting: "info", disqualified: "bad", exiting: "warn", exited: "lost" }[p.status] || "muted";
  return [text(`pill ${p.state === "online" ? "ok" : "bad"}`, p.state), " ", text(`pill ${cls}`, p.status)];
}

function healthClass(healthy, k, n, threshold) {
  if (healthy < k) return "bad";
  if (healthy <= Math.min(k + threshold, n - 1)) return "warn";
  return "ok";
}

function sparkline(canvas, values) {
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  if (!values || values.length < 2) return;
  const max = Math.max(...values, 1);
  ctx.strokeStyle = "#58a6ff"; ctx.lineWidth = 3; ctx.beginPath();
  values.forEach((v, i) => { const x = (i / (values.length - 1)) * w, y = h - 4 - (v / max) * (h - 8); i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
  ctx.stroke();
}

const push = (series, v) => { series.push(v); if (series.length > 90) series.shift(); };

const tile = (label, value, spark) => el("div", { class: "tile" },
  el("div", { class: "v" }, value), el("div", { class: "l" }, label),
  spark ? el("canvas", { "data-spark": spark, width: 480, height: 72 }) : null);

const table = (head, rows, empty) => el("div", { class: "scroll" }, el("table", null,
  el("tr", null, head.map((h) => el("th", null, h))),
  rows.length ? rows : el("tr", null, el("td", { colspan: head.length, class: "muted" }, empty))));

function auditTable(audits, withPeer) {
  const cls = { success: "ok", failure: "bad", offline: "warn" };
  const rows = audits.map((a) => el("tr", null,
    el("td", null, when(a.time)),
    withPeer ? el("td", { class: "id" }, peerLink(a.peer_id)) : null,
    el("td", { class: cls[a.outcome] || "muted" }, a.outcome), el("td", null, a.shards),
    el("td", null, a.reputation.toFixed(3)), el("td", null, a.detail)));
  const head = ["time", withPeer ? "peer" : null, "outcome", "chunks", "reputation after", "detail"].filter(Boolean);
  return table(head, rows, "No audits yet.");
}

// What to show when the page's account is refused.
function accountHint(status, tag = "p") {
  if (status !== 401 && status !== 403) return null;
  return el(tag, { class: "muted hint" }, "This page's account is ", el("code", { class: "id", id: "account-id" }, accountId || "not ready yet"),
    ". If this coordinator admits invited accounts only, give this id to its operator.");
}

const errorView = (e) => [el("p", { class: "error" }, e.message), accountHint(e.status)];

const views = {
  async dashboard() {
    const s = await api("/v2/stats");
    push(history.audits, s.audits_last_minute); push(history.used, s.used); push(history.online, s.peers_online);
    const maxSeg = Math.max(1, ...s.health.map(([, c]) => c));
    const bars = s.health.map(([h, c]) => el("div", { title: `${c} segments with ${h} healthy shards` },
      el("span", null, c), dims(el("b", { class: h === 0 ? "none" : null }), { "--h-pct": (c / maxSeg) * 85 }), el("span", null, h)));
    return [
      el("h1", null, "Network"),
      el("div", { class: "tiles" },
        tile("peers online", s.peers_online, "online"),
        tile("peers offline", s.peers_offline),
        tile("disqualified", s.peers_disqualified),
        tile("capacity used", [bytes(s.used), " ", muted(`/ ${bytes(s.capacity)}`)], "used"),
        tile("files", s.files),
        tile("bytes stored", bytes(s.stored_bytes)),
        tile("audits / min", [s.audits_last_minute, " ", muted(`${(s.audit_pass_rate * 100).toFixed(0)}% passed`)], "audits"),
        tile("repair queue", s.repair_queue),
        tile("shards repaired", s.repaired_shards)),
      el("h2", null, "Redundancy: segments by healthy shards"),
      el("div", { class: "hist" }, bars.length ? bars : el("p", { class: "muted" }, "No files yet.")),
    ];
  },

  async peers() {
    const peers = await api("/v2/peers");
    const rows = peers.map((p) => el("tr", null,
      el("td", { class: "id" }, peerLink(p.peer_id)), el("td", null, p.address), el("td", null, statusPill(p)),
      el("td", null, p.reputation.toFixed(3)), el("td", null, p.online_score.toFixed(3)),
      el("td", null, el("span", { class: "bar" }, dims(el("i"), { "--w-pct": p.capacity ? Math.min(100, (100 * p.used) / p.capacity) : 0 })),
        ` ${bytes(p.used)} / ${bytes(p.capacity)}`),
      el("td", null, p.placed), el("td", null, ago(p.last_heartbeat))));
    return [
      el("h1", null, "Peers ", muted(`(${peers.length})`)),
      table(["peer", "address", "state", "reputation", "online", "capacity", "shards", "heartbeat"], rows, "No peers registered."),
    ];
  },

  async peer(id) {
    if (!isPeerId(id)) return [el("p", { class: "error" }, "Not a peer id: ", el("code", null, clip(id ?? "", 80)))];
    const [peers, audits] = await Promise.all([api("/v2/peers"), api(`/v2/audits?peer=${id}&limit=100`)]);
    const p = peers.find((x) => x.peer_id === id);
    if (!p) return [el("p", { class: "error" }, `No peer ${id}.`)];
    return [
      el("h1", null, "Peer ", text("id", short(id))),
      el("div", { class: "tiles" },
        tile(p.address, statusPill(p)),
        tile("audit reputation", p.reputation.toFixed(3)),
        tile("online score", p.online_score.toFixed(3)),
        tile("audits passed", p.audits_passed),
        tile(`of ${bytes(p.capacity)}, ${p.placed} shards`, bytes(p.used))),
      el("h2", null, "Audit history"), auditTable(audits, false),
    ];
  },

  // The account's own files (files uploaded elsewhere open by their id: #/file/<id>).
  async files() {
    const [account, files, peers] = await Promise.all([signed("GET", "/v2/account"), signed("GET", "/v2/files"), api("/v2/peers")]);
    const infos = await Promise.all(files.map((f) => (isFileId(f.file_id) ? signed("GET", `/v2/files/${f.file_id}`).catch(() => null) : null)));
    const rows = files.map((f, i) => {
      const v = infos[i], low = v && v.health.length ? Math.min(...v.health.map((h) => h.healthy)) : null;
      const name = names.get(f.file_id);
      return el("tr", null,
        el("td", { class: "id" }, fileLink(f.file_id)), el("td", null, name ? clip(name) : muted("encrypted")),
        el("td", null, bytes(f.size)), el("td", null, when(f.created)), el("td", null, `${f.k}-of-${f.n}`),
        low === null ? el("td", { class: "muted" }, "?") : el("td", { class: healthClass(low, f.k, f.n, 4) }, `${low}/${f.n}`));
    });
    const form = on(el("form", { class: "pw" },
      el("input", { type: "password", id: "pw", placeholder: "password to show file names", autocomplete: "current-password" }),
      el("button", null, "Show names"), el("span", { id: "pwmsg", class: "muted" }, namesMsg)), "submit", revealNames);
    return [
      el("h1", null, "Files ", muted(`(${files.length} of this page's account, on ${peers.length} peers)`)),
      el("div", { class: "tiles" },
        tile("account", el("code", { class: "id", id: "account-id" }, account.account_id)),
        tile(`of ${bytes(account.quota)} quota`, bytes(account.stored)),
        tile("files", account.files),
        tile("in uploads not yet committed", bytes(account.pending))),
      el("p", { class: "muted" }, "This page's account is kept in this browser. A file uploaded elsewhere opens by its id: #/file/<id>."),
      form,
      table(["file", "name", "size", "uploaded", "coding", "lowest health"], rows, "No files yet."),
    ];
  },

  async file(arg) {
    const id = typeof arg === "string" && /^[0-9a-fA-F]{64}$/.test(arg) ? arg.toLowerCase() : null;
    if (!id) {
      return [
        el("h1", null, "File"),
        el("p", { class: "error", id: "badid" }, "Not a file id: ", el("code", null, clip(arg ?? "", 80)),
          ". A file id is 64 hexadecimal digits (the SHA-256 of the file's manifest)."),
      ];
    }
    const v = await signed("GET", `/v2/files/${id}`);
    const cells = v.shard_states.map((seg, i) => seg.map((st, j) => {
      let state = v.health[i] && v.health[i].repair_queued && st !== "healthy" ? "repairing" : st;
      if (!STATES.includes(state)) state = "lost";
      const peer = v.placements[i] && v.placements[i][j];
      return el("span", { class: `s-${state}`, title: `segment ${i}, shard ${j}: ${state} on ${short(peer ?? "?")}` });
    }));
    const low = v.health.length ? Math.min(...v.health.map((h) => h.healthy)) : 0;
    const form = on(el("form", { class: "pw" },
      el("input", { type: "password", id: "pw", placeholder: "password", autocomplete: "current-password", required: true }),
      el("button", { id: "dl" }, "Download and decrypt")), "submit", (ev) => downloadFile(ev, id));
    return [
      el("h1", null, "File ", text("id", short(id)), " ", names.has(id) ? clip(names.get(id)) : null),
      el("div", { class: "tiles" },
        tile(`${v.segments} segments`, bytes(v.size)),
        tile("coding", `${v.k}-of-${v.n}`),
        el("div", { class: "tile" }, el("div", { class: `v ${healthClass(low, v.k, v.n, 4)}` }, `${low}/${v.n}`), el("div", { class: "l" }, "lowest healthy shards")),
        tile("segments queued for repair", v.health.filter((h) => h.repair_queued).length)),
      el("h2", null, "Download"), form,
      el("h2", null, "Segments × shards"),
      el("div", { class: "legend" }, STATES.map((s) => el("span", null, el("i", { class: `s-${s}` }), s))),
      dims(el("div", { class: "grid" }, cells), { "--n": Math.max(1, Math.min(255, Number(v.n) || 1)) }),
    ];
  },

  async audits() {
    return [el("h1", null, "Audits"), auditTable(await api("/v2/audits?limit=200"), true)];
  },

  // A form: drawn once, not refreshed by the poll.
  upload() {
    return [
      el("h1", null, "Upload"),
      el("p", { class: "muted" }, "The file is encrypted in this page; the coordinator receives sealed segments only. ",
        "It belongs to this page's account, kept in this browser."),
      on(el("form", { class: "pw", id: "upform" },
        el("input", { type: "file", id: "file", required: true }),
        el("input", { type: "password", id: "pw", placeholder: "password", autocomplete: "new-password", required: true }),
        el("input", { type: "password", id: "pw2", placeholder: "password again", autocomplete: "new-password", required: true }),
        el("label", null, "k ", el("input", { id: "k", value: "8", size: "3" })), " ",
        el("label", null, "n ", el("input", { id: "n", value: "20", size: "3" })),
        el("button", { id: "up" }, "Upload")), "submit", uploadFile),
      el("progress", { id: "prog", value: "0", max: "1" }),
      el("p", { id: "upmsg" }),
    ];
  },
};
views.upload.isForm = true;

// ---- Actions ----

// Seals the file segment by segment in the page and sends the sealed segments.
async function uploadFile(ev) {
  ev.preventDefault();
  const $ = (id) => document.getElementById(id);
  const file = $("file").files[0], pw = $("pw").value, button = $("up");
  const msg = $("upmsg"), prog = $("prog");
  const fail = (m) => { msg.className = "error"; add(msg, [m]); };
  msg.className = ""; msg.replaceChildren();
  if (!file) return fail("choose a file");
  if (pw !== $("pw2").value) return fail("the two passwords differ");
  const k = Number($("k").value), n = Number($("n").value);
  if (!Number.isInteger(k) || !Number.isInteger(n) || k < 1 || n <= k || n > 255) return fail("k and n are whole numbers with 1 ≤ k < n ≤ 255");
  button.disabled = true;
  try {
    const started = await signed("POST", "/v2/browser/uploads", { size: file.size, k, n, segment_size: SEGMENT_SIZE });
    const up = started.upload_id;
    if (typeof up !== "string" || !/^[0-9a-f]{16,64}$/.test(up)) throw new Error("the coordinator answered a malformed upload id");
    task("deriving the key…");
    const salt = crypto.getRandomValues(new Uint8Array(16));
    const keys = await P2P.fileKeys(pw, salt, ITERATIONS);
    const count = P2P.segmentCount(file.size, SEGMENT_SIZE), per = P2P.plainPerSegment(SEGMENT_SIZE);
    for (let i = 0; i < count; i++) {
      const plain = new Uint8Array(await file.slice(i * per, Math.min(file.size, (i + 1) * per)).arrayBuffer());
      const sealed = await P2P.sealSegment(keys, i, i === count - 1, plain);
      await signed("PUT", `/v2/browser/uploads/${up}/segments/${i}`, sealed);
      prog.value = (i + 1) / count;
      task(`uploading: ${i + 1}/${count} segments`);
    }
    const sealedMeta = await P2P.sealMetadata(keys, { name: file.name, content_type: file.type || "application/octet-stream" });
    const done = await signed("POST", `/v2/browser/uploads/${up}/commit`, {
      salt: P2P.hex(salt), iterations: ITERATIONS, sealed_meta: P2P.hex(sealedMeta), owner_hash: await P2P.sha256hex(keys.owner),
    });
    if (!isFileId(done.file_id)) throw new Error("the coordinator answered a malformed file id");
    names.set(done.file_id, file.name);
    msg.replaceChildren("Uploaded: ", el("a", { id: "newfile", href: `#/file/${done.file_id}` }, done.file_id));
    task("");
  } catch (e) {
    fail([`upload failed: ${e.message}`, " ", accountHint(e.status, "span")]);
    task("");
  } finally {
    button.disabled = false;
  }
}

// Fetches sealed segments, opens them in the page, and saves the file under its real name.
// Nothing is saved unless the manifest is the one the id names, the password opens its
// metadata and every segment authenticates.
async function downloadFile(ev, id) {
  ev.preventDefault();
  if (!isFileId(id)) { task("download refused: not a file id", "error"); return; }
  const pw = document.getElementById("pw").value;
  try {
    task("fetching the manifest…");
    const m = await manifestOf(id);
    task("deriving the key…");
    const keys = await P2P.fileKeys(pw, m.salt, m.iterations);
    const meta = await P2P.openMetadataWith(keys, m.sealedMeta);
    const parts = [];
    for (let i = 0; i < m.segments; i++) {
      const sealed = await signedBytes(`/v2/files/${id}/segments/${i}`).catch((e) => { throw new Error(`segment ${i}: ${e.message}`); });
      parts.push(await P2P.openSegment(keys, i, i === m.segments - 1, sealed));
      task(`downloading: ${i + 1}/${m.segments} segments`);
    }
    const name = typeof meta.name === "string" && meta.name ? meta.name : `${id.slice(0, 16)}.bin`;
    // Saved, never shown: the bytes are typed as opaque whatever the metadata says.
    const url = URL.createObjectURL(new Blob(parts, { type: "application/octet-stream" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    names.set(id, name);
    task(`saved ${clip(name, 80)}`, "ok");
  } catch (e) {
    task(`download failed: ${e.message}`, "error");
  }
}

// Decrypts, in this page, the names of the account's files that the password opens: at most
// NAMES_PER_CLICK files per click, each manifest checked against its id first.
let revealing = false;
async function revealNames(ev) {
  ev.preventDefault();
  const pw = document.getElementById("pw").value;
  if (!pw || revealing) return;
  revealing = true;
  const say = (m) => { namesMsg = m; const e = document.getElementById("pwmsg"); if (e) e.textContent = m; };
  try {
    say("deriving keys…");
    const files = (await signed("GET", "/v2/files")).filter((f) => isFileId(f.file_id) && !names.has(f.file_id));
    const batch = files.slice(0, NAMES_PER_CLICK);
    let opened = 0, refused = 0;
    for (const [i, f] of batch.entries()) {
      say(`trying ${i + 1}/${batch.length}…`);
      let m;
      try { m = await manifestOf(f.file_id); } catch (_) { refused++; continue; }
      try {
        const meta = await P2P.openMetadataWith(await P2P.fileKeys(pw, m.salt, m.iterations), m.sealedMeta);
        if (typeof meta.name === "string") { names.set(f.file_id, meta.name); opened++; }
      } catch (_) { /* another password */ }
    }
    const parts = [batch.length === 0 ? "no file without a name shown" : opened ? `${opened} of ${batch.length} names shown` : "the password opens none of these files"];
    if (files.length > batch.length) parts.push(`${files.length - batch.length} more: click again`);
    if (refused) parts.push(`${refused} manifests refused (not matching their id, or out of bounds)`);
    say(parts.join("; "));
  } catch (e) {
    say(`failed: ${e.message}`);
  } finally {
    revealing = false;
  }
  render();
}

// ---- The page ----

function route() {
  const hash = location.hash;
  if (hash === "" || hash === "#") return { name: "dashboard" };
  const m = /^#\/([a-z]*)(?:\/(.*))?$/s.exec(hash);
  if (!m) return { name: null, arg: hash.slice(1) };
  let arg = m[2];
  if (arg !== undefined) { try { arg = decodeURIComponent(arg); } catch (_) { /* shown as it is */ } }
  return { name: m[1] || "dashboard", arg };
}

let rendered = { key: null, seq: 0 }, renders = 0, inflight = 0;

async function render() {
  const seq = ++renders, key = location.hash, { name, arg } = route();
  if (accountId === null) showAccount(); // not made yet, or it failed: try again
  const view = name && Object.hasOwn(views, name) ? views[name] : null;
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === name || a.dataset.nav === `${name}s`));
  const main = document.getElementById("view"), status = document.getElementById("status");
  let nodes;
  inflight++;
  try {
    nodes = view ? await view(arg) : [el("p", { class: "error" }, "No page ", el("code", null, clip(name ?? arg, 80)), ".")];
  } catch (e) {
    if (unreachable(e)) { // no answer: keep what is shown, say why it is stale
      if (key === location.hash) { status.textContent = `coordinator unreachable: ${e.message}`; status.className = "error"; }
      return;
    }
    nodes = errorView(e);
  } finally {
    inflight--;
  }
  if (key !== location.hash || seq < rendered.seq) return; // the page moved on meanwhile
  const same = key === rendered.key;
  const focus = document.activeElement;
  if (same && focus && main.contains(focus) && focus.matches("input, select, textarea")) return; // someone is typing
  const next = el("main", { id: "view" }, nodes);
  if (!same || !next.isEqualNode(main)) { // unchanged pages are left alone: no flicker, no lost input
    if (same) {
      main.querySelectorAll("input[id]").forEach((i) => {
        const twin = i.type !== "file" && i.value ? next.querySelector(`#${CSS.escape(i.id)}`) : null;
        if (twin && twin.type === i.type) twin.value = i.value;
      });
    }
    main.replaceChildren(...next.childNodes);
  }
  rendered = { key, seq };
  main.querySelectorAll("canvas[data-spark]").forEach((c) => sparkline(c, history[c.dataset.spark]));
  status.textContent = `updated ${new Date().toLocaleTimeString()}`;
  status.className = "muted";
}

// The account, in the header: made (or loaded) on the first visit.
function showAccount() {
  const e = document.getElementById("account");
  Account.ready().then((a) => {
    accountId = a.id;
    e.textContent = `account ${short(a.id)}`;
    e.title = `This page's account: ${a.id}${a.persistent ? "" : " (kept in this tab only: this browser offers no IndexedDB here)"}`;
    e.className = "muted";
  }, (err) => {
    e.textContent = "no account";
    e.title = err.message;
    e.className = "error";
  });
}
showAccount();

window.addEventListener("hashchange", render);
render();
setInterval(() => {
  if (document.hidden || inflight) return;
  const { name } = route();
  if (!(name && Object.hasOwn(views, name) && views[name].isForm)) render();
}, POLL_MS);
