// p2pstore's format in the browser (docs/FORMAT.md): manifest parsing and the metadata key,
// with WebCrypto. The password never leaves the page.
"use strict";
const P2P = (() => {
  const enc = new TextEncoder();

  function parseManifest(buf) {
    const b = new Uint8Array(buf), d = new DataView(buf);
    if (String.fromCharCode(...b.slice(0, 4)) !== "P2PS") throw new Error("not a p2pstore manifest");
    const version = d.getUint16(4);
    if (version !== 2) throw new Error(`unsupported manifest version ${version}`);
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

  // The keys of one upload (docs/FORMAT.md §1).
  async function fileKeys(password, salt, iterations) {
    const prk = await hkdfKey(password, salt, iterations);
    const owner = await crypto.subtle.deriveBits(
      { name: "HKDF", hash: "SHA-256", salt, info: enc.encode("p2pstore/v1/owner-token") }, prk, 256);
    return {
      salt, iterations,
      segment: await subkey(prk, salt, "p2pstore/v1/segment-key"),
      meta: await subkey(prk, salt, "p2pstore/v1/metadata-key"),
      owner: new Uint8Array(owner),
    };
  }

  // STREAM nonce: 7 zero bytes, the index (u32 big-endian), the last-segment flag.
  function nonce(index, last) {
    const n = new Uint8Array(12);
    new DataView(n.buffer).setUint32(7, index);
    n[11] = last ? 1 : 0;
    return n;
  }

  const plainPerSegment = (segmentSize) => segmentSize - 16;
  const segmentCount = (size, segmentSize) => Math.max(1, Math.ceil(size / plainPerSegment(segmentSize)));

  async function sealSegment(keys, index, last, plain) {
    return new Uint8Array(await crypto.subtle.encrypt({ name: "AES-GCM", iv: nonce(index, last), additionalData: keys.salt }, keys.segment, plain));
  }

  async function openSegment(keys, index, last, sealed) {
    try {
      return new Uint8Array(await crypto.subtle.decrypt({ name: "AES-GCM", iv: nonce(index, last), additionalData: keys.salt }, keys.segment, sealed));
    } catch (_) {
      throw new Error(`segment ${index} failed authentication: tampered data or a wrong password`);
    }
  }

  async function sealMetadata(keys, meta) {
    const plain = enc.encode(JSON.stringify({ name: meta.name, content_type: meta.content_type }));
    return new Uint8Array(await crypto.subtle.encrypt({ name: "AES-GCM", iv: new Uint8Array(12), additionalData: keys.salt }, keys.meta, plain));
  }

  async function openMetadataWith(keys, sealed) {
    try {
      const plain = await crypto.subtle.decrypt({ name: "AES-GCM", iv: new Uint8Array(12), additionalData: keys.salt }, keys.meta, sealed);
      return JSON.parse(new TextDecoder().decode(plain));
    } catch (_) {
      throw new Error("wrong password, or the manifest was tampered with");
    }
  }

  // The file's name and type, or an error for a wrong password (or tampered manifest).
  async function openMetadata(manifestBuf, password) {
    const m = parseManifest(manifestBuf);
    return openMetadataWith(await fileKeys(password, m.salt, m.iterations), m.sealedMeta);
  }

  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  const sha256hex = async (bytes) => hex(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)));

  return { parseManifest, openMetadata, openMetadataWith, fileKeys, sealSegment, openSegment, sealMetadata,
    plainPerSegment, segmentCount, hex, sha256hex };
})();
