// The p2pstore web UI: every figure comes from the coordinator's JSON API (the same one the
// CLI uses), polled every 2 seconds. No build step; no external assets.
"use strict";

const POLL_MS = 2000;
const history = { audits: [], used: [], online: [] }; // dashboard sparklines, this session
const names = new Map(); // file id → decrypted name, for this page only
let lastHtml = "";

const $ = (html) => { const t = document.createElement("template"); t.innerHTML = html.trim(); return t.content; };
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const short = (id) => `${id.slice(0, 10)}…`;
const bytes = (n) => {
  const u = ["B", "kB", "MB", "GB", "TB", "PB"]; let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
};
const ago = (t) => { const s = Math.max(0, Math.round(Date.now() / 1000 - t)); return s < 90 ? `${s} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`; };
const when = (t) => new Date(t * 1000).toLocaleString();

async function api(path) {
  const r = await fetch(path, { cache: "no-store" });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

function statusPill(p) {
  const cls = { active: "ok", vetting: "info", disqualified: "bad", exiting: "warn", exited: "lost" }[p.status] || "muted";
  const state = p.state === "online" ? "ok" : "bad";
  return `<span class="pill ${state}">${p.state}</span> <span class="pill ${cls}">${p.status}</span>`;
}

function healthClass(healthy, k, n, threshold) {
  if (healthy < k) return "bad";
  if (healthy <= Math.min(k + threshold, n - 1)) return "warn";
  return "ok";
}

function sparkline(canvas, values) {
  const ctx = canvas.getContext("2d"), w = canvas.width = canvas.clientWidth * 2, h = canvas.height = 72;
  ctx.clearRect(0, 0, w, h);
  if (values.length < 2) return;
  const max = Math.max(...values, 1);
  ctx.strokeStyle = "#58a6ff"; ctx.lineWidth = 3; ctx.beginPath();
  values.forEach((v, i) => { const x = (i / (values.length - 1)) * w, y = h - 4 - (v / max) * (h - 8); i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
  ctx.stroke();
}

const push = (series, v) => { series.push(v); if (series.length > 90) series.shift(); };

const views = {
  async dashboard() {
    const s = await api("/v2/stats");
    push(history.audits, s.audits_last_minute); push(history.used, s.used); push(history.online, s.peers_online);
    const tile = (l, v, spark) => `<div class="tile"><div class="v">${v}</div><div class="l">${l}</div>${spark ? `<canvas data-spark="${spark}"></canvas>` : ""}</div>`;
    const maxSeg = Math.max(1, ...s.health.map(([, c]) => c));
    const hist = s.health.length
      ? s.health.map(([h, c]) => `<div title="${c} segments with ${h} healthy shards"><span>${c}</span><b style="height:${(c / maxSeg) * 85}%;background:var(--${h === 0 ? "bad" : "info"})"></b><span>${h}</span></div>`).join("")
      : `<p class="muted">No files yet.</p>`;
    return `<h1>Network</h1>
      <div class="tiles">
        ${tile("peers online", s.peers_online, "online")}
        ${tile("peers offline", s.peers_offline)}
        ${tile("disqualified", s.peers_disqualified)}
        ${tile("capacity used", `${bytes(s.used)} <span class="muted">/ ${bytes(s.capacity)}</span>`, "used")}
        ${tile("files", s.files)}
        ${tile("bytes stored", bytes(s.stored_bytes))}
        ${tile("audits / min", `${s.audits_last_minute} <span class="muted">${(s.audit_pass_rate * 100).toFixed(0)}% passed</span>`, "audits")}
        ${tile("repair queue", s.repair_queue)}
        ${tile("shards repaired", s.repaired_shards)}
      </div>
      <h2>Redundancy: segments by healthy shards</h2>
      <div class="hist">${hist}</div>`;
  },

  async peers() {
    const peers = await api("/v2/peers");
    const rows = peers.map((p) => `<tr>
      <td class="id"><a href="#/peer/${p.peer_id}">${short(p.peer_id)}</a></td><td>${esc(p.address)}</td><td>${statusPill(p)}</td>
      <td>${p.reputation.toFixed(3)}</td><td>${p.online_score.toFixed(3)}</td>
      <td><span class="bar"><i style="width:${p.capacity ? (100 * p.used) / p.capacity : 0}%"></i></span> ${bytes(p.used)} / ${bytes(p.capacity)}</td>
      <td>${p.placed}</td><td>${ago(p.last_heartbeat)}</td></tr>`).join("");
    return `<h1>Peers <span class="muted">(${peers.length})</span></h1><div class="scroll"><table>
      <tr><th>peer</th><th>address</th><th>state</th><th>reputation</th><th>online</th><th>capacity</th><th>shards</th><th>heartbeat</th></tr>
      ${rows || `<tr><td colspan="8" class="muted">No peers registered.</td></tr>`}</table></div>`;
  },

  async peer(id) {
    const [peers, audits] = await Promise.all([api("/v2/peers"), api(`/v2/audits?peer=${id}&limit=100`)]);
    const p = peers.find((x) => x.peer_id === id);
    if (!p) return `<p class="error">No peer ${esc(id)}.</p>`;
    return `<h1>Peer <span class="id">${esc(short(id))}</span></h1>
      <div class="tiles">
        <div class="tile"><div class="v">${statusPill(p)}</div><div class="l">${esc(p.address)}</div></div>
        <div class="tile"><div class="v">${p.reputation.toFixed(3)}</div><div class="l">audit reputation</div></div>
        <div class="tile"><div class="v">${p.online_score.toFixed(3)}</div><div class="l">online score</div></div>
        <div class="tile"><div class="v">${p.audits_passed}</div><div class="l">audits passed</div></div>
        <div class="tile"><div class="v">${bytes(p.used)}</div><div class="l">of ${bytes(p.capacity)}, ${p.placed} shards</div></div>
      </div>
      <h2>Audit history</h2>${auditTable(audits, false)}`;
  },

  async files() {
    const [files, peers] = await Promise.all([api("/v2/files"), api("/v2/peers")]);
    const rows = await Promise.all(files.map(async (f) => {
      const v = await api(`/v2/files/${f.file_id}`);
      const low = Math.min(...v.health.map((h) => h.healthy));
      const name = names.get(f.file_id);
      return `<tr><td class="id"><a href="#/file/${f.file_id}">${short(f.file_id)}</a></td>
        <td>${name ? esc(name) : `<span class="muted">encrypted</span>`}</td><td>${bytes(f.size)}</td><td>${when(f.created)}</td>
        <td>${f.k}-of-${f.n}</td><td class="${healthClass(low, f.k, f.n, 4)}">${low}/${f.n}</td></tr>`;
    }));
    return `<h1>Files <span class="muted">(${files.length} on ${peers.length} peers)</span></h1>
      <form class="pw" onsubmit="return revealNames(event)">
        <input type="password" id="pw" placeholder="password to show file names" autocomplete="current-password">
        <button>Show names</button><span id="pwmsg" class="muted"></span></form>
      <div class="scroll"><table><tr><th>file</th><th>name</th><th>size</th><th>uploaded</th><th>coding</th><th>lowest health</th></tr>
      ${rows.join("") || `<tr><td colspan="6" class="muted">No files yet.</td></tr>`}</table></div>`;
  },

  async file(id) {
    const v = await api(`/v2/files/${id}`);
    const n = v.n;
    const cells = v.shard_states.map((seg, i) => seg.map((st, j) => {
      const state = v.health[i].repair_queued && st !== "healthy" ? "repairing" : st;
      return `<span class="s-${state}" title="segment ${i}, shard ${j}: ${state} on ${short(v.placements[i][j])}"></span>`;
    }).join("")).join("");
    const low = Math.min(...v.health.map((h) => h.healthy));
    const legend = ["healthy", "offline", "failed", "leaving", "lost", "repairing"].map((s) => `<span><i class="s-${s}"></i>${s}</span>`).join("");
    return `<h1>File <span class="id">${esc(short(id))}</span> ${names.get(id) ? esc(names.get(id)) : ""}</h1>
      <div class="tiles">
        <div class="tile"><div class="v">${bytes(v.size)}</div><div class="l">${v.segments} segments</div></div>
        <div class="tile"><div class="v">${v.k}-of-${v.n}</div><div class="l">coding</div></div>
        <div class="tile"><div class="v ${healthClass(low, v.k, v.n, 4)}">${low}/${v.n}</div><div class="l">lowest healthy shards</div></div>
        <div class="tile"><div class="v">${v.health.filter((h) => h.repair_queued).length}</div><div class="l">segments queued for repair</div></div>
      </div>
      <h2>Download</h2>
      <form class="pw" onsubmit="return downloadFile(event, '${esc(id)}')">
        <input type="password" id="pw" placeholder="password" autocomplete="current-password" required>
        <button id="dl">Download and decrypt</button></form>
      <h2>Segments × shards</h2><div class="legend">${legend}</div>
      <div class="grid" style="grid-template-columns:repeat(${n}, minmax(6px, 1fr))">${cells}</div>`;
  },

  async audits() {
    return `<h1>Audits</h1>${auditTable(await api("/v2/audits?limit=200"), true)}`;
  },

  // A form: drawn once, not refreshed by the poll.
  upload() {
    return `<h1>Upload</h1>
      <p class="muted">The file is encrypted in this page; the coordinator receives sealed segments only.</p>
      <form class="pw" id="upform" onsubmit="return uploadFile(event)">
        <input type="file" id="file" required>
        <input type="password" id="pw" placeholder="password" autocomplete="new-password" required>
        <input type="password" id="pw2" placeholder="password again" autocomplete="new-password" required>
        <label>k <input id="k" value="8" size="3"></label> <label>n <input id="n" value="20" size="3"></label>
        <button id="up">Upload</button></form>
      <progress id="prog" value="0" max="1"></progress>
      <p id="upmsg"></p>`;
  },
};
views.upload.isForm = true;

const SEGMENT_SIZE = 8 << 20;
const ITERATIONS = 600000;

async function send(method, path, body, json = true) {
  const r = await fetch(path, { method, body: json ? JSON.stringify(body) : body, headers: json ? { "content-type": "application/json" } : {} });
  const reply = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(reply.error || `HTTP ${r.status}`);
  return reply;
}

function task(text, cls = "muted") {
  const t = document.getElementById("task");
  t.textContent = text;
  t.className = cls;
}

// Seals the file segment by segment in the page and sends the sealed segments.
async function uploadFile(ev) {
  ev.preventDefault();
  const file = document.getElementById("file").files[0], pw = document.getElementById("pw").value;
  const msg = document.getElementById("upmsg"), prog = document.getElementById("prog");
  msg.className = ""; msg.textContent = "";
  if (pw !== document.getElementById("pw2").value) { msg.className = "error"; msg.textContent = "the two passwords differ"; return false; }
  try {
    const k = Number(document.getElementById("k").value), n = Number(document.getElementById("n").value);
    const started = await send("POST", "/v2/browser/uploads", { size: file.size, k, n, segment_size: SEGMENT_SIZE });
    task("deriving the key…");
    const salt = crypto.getRandomValues(new Uint8Array(16));
    const keys = await P2P.fileKeys(pw, salt, ITERATIONS);
    const count = P2P.segmentCount(file.size, SEGMENT_SIZE), per = P2P.plainPerSegment(SEGMENT_SIZE);
    for (let i = 0; i < count; i++) {
      const plain = new Uint8Array(await file.slice(i * per, Math.min(file.size, (i + 1) * per)).arrayBuffer());
      const sealed = await P2P.sealSegment(keys, i, i === count - 1, plain);
      await send("PUT", `/v2/browser/uploads/${started.upload_id}/segments/${i}`, sealed, false);
      prog.value = (i + 1) / count;
      task(`uploading: ${i + 1}/${count} segments`);
    }
    const sealedMeta = await P2P.sealMetadata(keys, { name: file.name, content_type: file.type || "application/octet-stream" });
    const done = await send("POST", `/v2/browser/uploads/${started.upload_id}/commit`, {
      salt: P2P.hex(salt), iterations: ITERATIONS, sealed_meta: P2P.hex(sealedMeta), owner_hash: await P2P.sha256hex(keys.owner),
    });
    names.set(done.file_id, file.name);
    msg.innerHTML = `Uploaded: <a id="newfile" href="#/file/${done.file_id}">${done.file_id}</a>`;
    task("");
  } catch (e) {
    msg.className = "error"; msg.textContent = `upload failed: ${e.message}`; task("");
  }
  return false;
}
window.uploadFile = uploadFile;

// Fetches sealed segments, opens them in the page, and saves the file under its real name.
// Nothing is saved unless the password opens the metadata and every segment authenticates.
async function downloadFile(ev, id) {
  ev.preventDefault();
  const pw = document.getElementById("pw").value;
  try {
    const r = await fetch(`/v2/files/${id}/manifest`);
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || `HTTP ${r.status}`);
    const m = P2P.parseManifest(await r.arrayBuffer());
    task("deriving the key…");
    const keys = await P2P.fileKeys(pw, m.salt, m.iterations);
    const meta = await P2P.openMetadataWith(keys, m.sealedMeta);
    const count = P2P.segmentCount(m.size, m.segmentSize), parts = [];
    for (let i = 0; i < count; i++) {
      const seg = await fetch(`/v2/files/${id}/segments/${i}`);
      if (!seg.ok) throw new Error((await seg.json().catch(() => ({}))).error || `segment ${i}: HTTP ${seg.status}`);
      parts.push(await P2P.openSegment(keys, i, i === count - 1, new Uint8Array(await seg.arrayBuffer())));
      task(`downloading: ${i + 1}/${count} segments`);
    }
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob(parts, { type: meta.content_type || "application/octet-stream" }));
    a.download = meta.name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    names.set(id, meta.name);
    task(`saved ${meta.name}`, "ok");
  } catch (e) {
    task(`download failed: ${e.message}`, "error");
  }
  return false;
}
window.downloadFile = downloadFile;

function auditTable(audits, withPeer) {
  const cls = { success: "ok", failure: "bad", offline: "warn" };
  const rows = audits.map((a) => `<tr><td>${when(a.time)}</td>${withPeer ? `<td class="id"><a href="#/peer/${a.peer_id}">${short(a.peer_id)}</a></td>` : ""}
    <td class="${cls[a.outcome]}">${a.outcome}</td><td>${a.shards}</td><td>${a.reputation.toFixed(3)}</td><td>${esc(a.detail)}</td></tr>`).join("");
  return `<div class="scroll"><table><tr><th>time</th>${withPeer ? "<th>peer</th>" : ""}<th>outcome</th><th>chunks</th><th>reputation after</th><th>detail</th></tr>
    ${rows || `<tr><td colspan="6" class="muted">No audits yet.</td></tr>`}</table></div>`;
}

// Decrypts, in this page, the names of the files the password opens.
async function revealNames(ev) {
  ev.preventDefault();
  const pw = document.getElementById("pw").value, msg = document.getElementById("pwmsg");
  if (!pw) return false;
  msg.textContent = "deriving keys…";
  const files = await api("/v2/files");
  let opened = 0;
  for (const f of files) {
    const r = await fetch(`/v2/files/${f.file_id}/manifest`);
    if (!r.ok) continue;
    try { names.set(f.file_id, (await P2P.openMetadata(await r.arrayBuffer(), pw)).name); opened++; } catch (_) { /* another password */ }
  }
  msg.textContent = opened ? `${opened} of ${files.length} names shown` : "the password opens none of these files";
  render();
  return false;
}
window.revealNames = revealNames;

async function render() {
  const [, page = "", arg] = location.hash.split("/");
  const name = page || "dashboard";
  const view = views[name];
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === name || a.dataset.nav === `${name}s`));
  const main = document.getElementById("view"), status = document.getElementById("status");
  if (!view) { main.replaceChildren($(`<p class="error">No page ${esc(name)}.</p>`)); return; }
  try {
    const html = await view(arg && decodeURIComponent(arg));
    const keep = document.activeElement && document.activeElement.id === "pw" ? document.getElementById("pw").value : null;
    if (keep !== null) return; // do not redraw under someone typing a password
    if (html !== lastHtml) { // unchanged pages are left alone: no flicker, no lost input
      lastHtml = html;
      main.replaceChildren($(html));
    }
    main.querySelectorAll("canvas[data-spark]").forEach((c) => sparkline(c, history[c.dataset.spark]));
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.className = "muted";
  } catch (e) {
    status.textContent = `coordinator unreachable: ${e.message}`;
    status.className = "error";
  }
}

window.addEventListener("hashchange", render);
render();
setInterval(() => {
  const [, page = ""] = location.hash.split("/");
  if (!(views[page] && views[page].isForm)) render();
}, POLL_MS);
