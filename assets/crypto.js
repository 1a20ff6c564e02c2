// p2pstore's format in the browser (docs/FORMAT.md): manifest parsing and the file keys,
// with WebCrypto. The password never leaves the page.
"use strict";
const P2P = (() => {
  const enc = new TextEncoder();

  // The bounds of the format (docs/FORMAT.md §1, §2, §5).
  const MIN_ITERATIONS = 100000, MAX_ITERATIONS = 50000000;
  const MIN_SEGMENT = 4096, MAX_SEGMENT = 64 << 20, MAX_META = 65536;

  function checkIterations(iterations) {
    if (!Number.isInteger(iterations) || iterations < MIN_ITERATIONS || iterations > MAX_ITERATIONS) {
      throw new Error(`refused: PBKDF2 iterations must be between ${MIN_ITERATIONS} and ${MAX_ITERATIONS}, got ${iterations}`);
    }
  }

  const plainPerSegment = (segmentSize) => segmentSize - 16;
  const segmentCount = (size, segmentSize) => Math.max(1, Math.ceil(size / plainPerSegment(segmentSize)));

  // The manifest's header, after checking the whole encoding as a reader must (§6): magic,
  // version, parameters in range, counts and lengths consistent, nothing trailing.
  function parseManifest(buf) {
    const b = buf instanceof Uint8Array ? buf : new Uint8Array(buf);
    const d = new DataView(b.buffer, b.byteOffset, b.byteLength);
    const bad = (why) => { throw new Error(`not a valid p2pstore manifest: ${why}`); };
    if (b.length < 4 || String.fromCharCode(...b.slice(0, 4)) !== "P2PS") throw new Error("not a p2pstore manifest");
    if (b.length < 49) bad("too short");
    const version = d.getUint16(4);
    if (version !== 2 && version !== 3) throw new Error(`unsupported manifest version ${version}`);
    const size64 = d.getBigUint64(6);
    if (size64 > BigInt(Number.MAX_SAFE_INTEGER)) bad("file size out of range");
    const size = Number(size64), segmentSize = d.getUint32(14), k = b[18], n = b[19], kdf = b[20];
    if (segmentSize < MIN_SEGMENT || segmentSize > MAX_SEGMENT) bad(`segment size ${segmentSize} out of range`);
    if (!(k >= 1 && k < n)) bad(`coding ${k}-of-${n} out of range`);
    if (kdf !== 1) bad(`unknown key derivation ${kdf}`);
    const iterations = d.getUint32(21);
    checkIterations(iterations);
    const salt = b.slice(25, 41), metaLen = d.getUint32(41);
    if (metaLen > MAX_META || 49 + metaLen > b.length) bad("sealed metadata length out of range");
    const count = d.getUint32(45 + metaLen);
    if (count !== segmentCount(size, segmentSize)) bad("segment count does not match the size");
    if (version === 3) {
      // The root: the segment table's pages by hash (the coordinator serves the segments).
      if (b.length < 53 + metaLen || d.getUint32(49 + metaLen) !== 1024) bad("page size out of range");
      if (b.length !== 53 + metaLen + 32 * Math.ceil(count / 1024)) bad("length does not match the page count");
    } else {
      const row = 4 + 32 * n, rows = 49 + metaLen;
      if (b.length !== rows + count * row) bad("length does not match the segment count");
      const last = size - (count - 1) * plainPerSegment(segmentSize) + 16;
      for (let i = 0; i < count; i++) {
        if (d.getUint32(rows + i * row) !== (i === count - 1 ? last : segmentSize)) bad(`segment ${i} has a wrong length`);
      }
    }
    return { size, segmentSize, k, n, iterations, salt, sealedMeta: b.slice(45, 45 + metaLen), segments: count };
  }

  // The manifest of the file `fileId`, refused unless its bytes hash to that id (§6).
  async function verifiedManifest(buf, fileId) {
    if ((await sha256hex(buf)) !== fileId) {
      throw new Error("refused: the manifest received is not the one the file id names");
    }
    return parseManifest(buf);
  }

  async function hkdfKey(password, salt, iterations) {
    checkIterations(iterations);
    const pw = await crypto.subtle.importKey("raw", enc.encode(password), "PBKDF2", false, ["deriveBits"]);
    const master = await crypto.subtle.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt, iterations }, pw, 256);
    return crypto.subtle.importKey("raw", master, "HKDF", false, ["deriveKey", "deriveBits"]);
  }

  async function subkey(prk, salt, label) {
    return crypto.subtle.deriveKey({ name: "HKDF", hash: "SHA-256", salt, info: enc.encode(label) },
      prk, { name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"]);
  }

  // The keys of one upload (docs/FORMAT.md §1); an iteration count out of bounds is refused.
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

  return { parseManifest, verifiedManifest, checkIterations, openMetadata, openMetadataWith, fileKeys, sealSegment,
    openSegment, sealMetadata, plainPerSegment, segmentCount, hex, sha256hex, MIN_ITERATIONS, MAX_ITERATIONS };
})();
