// The page's account: an ECDSA P-256 key pair made here with WebCrypto, its private half not
// extractable, kept in this origin's IndexedDB so that it survives reloads. Every request to
// a route that reads or changes an account's state is signed with it, as the CLI signs
// (docs/PROTOCOL.md): the header
//   x-p2pstore-auth: account=<hex public key> time=<unix s> nonce=<hex> body=<hex SHA-256> sig=<hex r‖s>
// over "p2pstore/v2/request", the coordinator's id, the method, the path with its query, time,
// nonce and body hash, one per line.
"use strict";
const Account = (() => {
  const enc = new TextEncoder();
  const DB = "p2pstore", STORE = "keys", SLOT = "account";
  const hex = (bytes) => Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
  let account = null; // Promise<{ keys, publicHex, id, persistent }>
  let info = null; // Promise<the coordinator's /v2/info>
  let skew = 0; // seconds to add to this machine's clock to get the coordinator's

  const done = (r) => new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
  const committed = (tx) => new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });

  async function openDb() {
    const r = indexedDB.open(DB, 1);
    r.onupgradeneeded = () => r.result.createObjectStore(STORE);
    return done(r);
  }

  const usable = (k) => k && k.privateKey instanceof CryptoKey && k.publicKey instanceof CryptoKey
    && k.privateKey.algorithm.name === "ECDSA" && !k.privateKey.extractable;
  const stored = async (db) => done(db.transaction(STORE).objectStore(STORE).get(SLOT));

  // The stored key pair, or a new one stored now (or kept in memory only, without IndexedDB).
  async function loadOrCreate() {
    let db = null;
    try {
      db = await openDb();
      const k = await stored(db);
      if (usable(k)) return { keys: k, persistent: true };
    } catch (_) { db = null; }
    const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
    const keys = { privateKey: pair.privateKey, publicKey: pair.publicKey };
    if (!db) return { keys, persistent: false };
    try {
      const tx = db.transaction(STORE, "readwrite");
      tx.objectStore(STORE).add(keys, SLOT); // fails if another tab stored its key meanwhile
      await committed(tx);
      return { keys, persistent: true };
    } catch (_) {
      const k = await stored(db).catch(() => null);
      return usable(k) ? { keys: k, persistent: true } : { keys, persistent: false };
    }
  }

  // The account: { keys, publicHex, id, persistent }; id is what the coordinator calls it (hex
  // of the first 16 bytes of SHA-256 of the uncompressed public key).
  function ready() {
    if (!account) {
      account = (async () => {
        if (!globalThis.crypto || !crypto.subtle) {
          throw new Error("this page needs WebCrypto, which browsers offer on https:// or http://localhost only");
        }
        const { keys, persistent } = await loadOrCreate();
        const raw = await crypto.subtle.exportKey("raw", keys.publicKey);
        const id = hex(new Uint8Array(await crypto.subtle.digest("SHA-256", raw)).slice(0, 16));
        return { keys, publicHex: hex(raw), id, persistent };
      })();
      account.catch(() => { account = null; }); // try again on the next call
    }
    return account;
  }

  // What the coordinator says of itself, fetched once; its Date header sets the clock skew.
  function coordinator() {
    if (!info) {
      info = (async () => {
        const r = await fetch("/v2/info", { cache: "no-store" });
        if (!r.ok) throw new Error(`the coordinator's /v2/info answered HTTP ${r.status}`);
        const i = await r.json();
        if (i.protocol !== 2) throw new Error(`this page speaks protocol 2, the coordinator ${i.protocol}`);
        if (typeof i.coordinator_id !== "string" || !/^[0-9a-f]{32}$/.test(i.coordinator_id)) {
          throw new Error("the coordinator's id is malformed");
        }
        const date = Date.parse(r.headers.get("date") || "");
        if (Number.isFinite(date) && Math.abs(date - Date.now()) > 30000) skew = Math.round((date - Date.now()) / 1000);
        return i;
      })();
      info.catch(() => { info = null; });
    }
    return info;
  }

  // A request signed by the account: `path` is exactly what is requested (with its query),
  // `body` a string or bytes (none for GET), `timeout` in ms (0: none). Resolves to the fetch
  // Response, whatever its status.
  async function send(method, path, body, contentType, timeout = 0) {
    if (!/^\/v2\/[0-9A-Za-z/_.=&?-]*$/.test(path)) throw new Error(`not a path this page signs: ${path}`);
    const [a, c] = await Promise.all([ready(), coordinator()]);
    const bytes = body === undefined ? new Uint8Array(0) : typeof body === "string" ? enc.encode(body) : body;
    const bodyHash = hex(await crypto.subtle.digest("SHA-256", bytes));
    const time = Math.floor(Date.now() / 1000) + skew;
    const nonce = hex(crypto.getRandomValues(new Uint8Array(16)));
    const message = ["p2pstore/v2/request", c.coordinator_id, method, path, time, nonce, bodyHash].join("\n");
    const sig = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, a.keys.privateKey, enc.encode(message));
    const headers = { "x-p2pstore-auth": `account=${a.publicHex} time=${time} nonce=${nonce} body=${bodyHash} sig=${hex(sig)}` };
    if (contentType) headers["content-type"] = contentType;
    const signal = timeout ? AbortSignal.timeout(timeout) : undefined;
    return fetch(path, { method, headers, body: bytes.length ? bytes : undefined, cache: "no-store", signal });
  }

  return { ready, coordinator, send };
})();
