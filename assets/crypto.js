// p2pstore's format in the browser (docs/FORMAT.md): manifest parsing and the metadata key,
// with WebCrypto. The password never leaves the page.
"use strict";
const P2P = (() => {
  const enc = new TextEncoder();

  function parseManifest(buf) {
    const b = new Uint8Array(buf), d = new DataView(buf);
    if (String.fromCharCode(...b.slice(0, 4)) !== "P2PS") throw new Error("not a p2pstore manifest");
    const version = d.getUint16(4);
    if (version !== 1) throw new Error(`unsupported manifest version ${version}`);
    const size = Number(d.getBigUint64(6)), segmentSize = d.getUint32(14), k = b[18], n = b[19];
    const iterations = d.getUint32(21), salt = b.slice(25, 41), metaLen = d.getUint32(41);
    return { size, segmentSize, k, n, iterations, salt, sealedMeta: b.slice(45, 45 + metaLen) };
  }

  async function hkdfKey(password, salt, iterations) {
    const pw = await crypto.subtle.importKey("raw", enc.encode(password), "PBKDF2", false, ["deriveBits"]);
    const master = await crypto.subtle.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt, iterations }, pw, 256);
    return crypto.subtle.importKey("raw", master, "HKDF", false, ["deriveKey", "deriveBits"]);
  }

  async function subkey(prk, salt, label) {
    return crypto.subtle.deriveKey({ name: "HKDF", hash: "SHA-256", salt, info: enc.encode(label) },
      prk, { name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"]);
  }

  // The file's name and type, or an error for a wrong password (or tampered manifest).
  async function openMetadata(manifestBuf, password) {
    const m = parseManifest(manifestBuf);
    const prk = await hkdfKey(password, m.salt, m.iterations);
    const key = await subkey(prk, m.salt, "p2pstore/v1/metadata-key");
    try {
      const plain = await crypto.subtle.decrypt({ name: "AES-GCM", iv: new Uint8Array(12), additionalData: m.salt }, key, m.sealedMeta);
      return JSON.parse(new TextDecoder().decode(plain));
    } catch (_) {
      throw new Error("wrong password, or the manifest was tampered with");
    }
  }

  return { parseManifest, openMetadata };
})();
