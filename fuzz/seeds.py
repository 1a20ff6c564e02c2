#!/usr/bin/env python3
"""Writes the seed corpus, fuzz/corpus/<target>/seed-*: a few valid inputs per target, with
real manifests (tests/vectors) and real P-256 signatures in p2pstore's format. Needs Python 3
and the `cryptography` package (python3-cryptography). Run from anywhere: python3 fuzz/seeds.py
"""

import hashlib
import json
import os
import re
import struct
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
DOMAIN = "p2pstore/v2"
NOW = int(time.time())


class Key:
    def __init__(self):
        self.sk = ec.generate_private_key(ec.SECP256R1())
        self.pub = self.sk.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.hex = self.pub.hex()
        self.id = hashlib.sha256(self.pub).digest()[:16].hex()

    def sign(self, message: bytes) -> str:
        """The fixed-size r‖s signature ring makes (ECDSA_P256_SHA256_FIXED)."""
        r, s = decode_dss_signature(self.sk.sign(message, ec.ECDSA(hashes.SHA256())))
        return (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()

    def signed(self, kind: str, value) -> str:
        """A `Signed<T>` of `kind`, as JSON text."""
        body = json.dumps(value, separators=(",", ":"))
        sig = self.sign(f"{DOMAIN}/{kind}\n{body}".encode())
        return json.dumps({"body": body, "signer": self.hex, "sig": sig}, separators=(",", ":"))


def write(target: str, name: str, data):
    d = FUZZ / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data.encode() if isinstance(data, str) else data)


def vectors():
    for p in sorted((ROOT / "tests" / "vectors").glob("*.json")):
        v = json.loads(p.read_text())
        yield p.stem, v


coord, node, account = Key(), Key(), Key()
names = {stem: v for stem, v in vectors()}
first = next(iter(names.values()))
manifest_hex = first["expected"]["manifest"]
file_id = first["expected"]["file_id"]
shard = first["expected"]["shard_ids"][0][0]
upload = "ab" * 16
nonce = "cd" * 16

# ---- manifest: the known-answer manifests themselves.
for stem, v in names.items():
    write("manifest", stem, bytes.fromhex(v["expected"]["manifest"]))

# ---- wire_json: selector byte (the type's index in wire_json.rs) + JSON.
src = (FUZZ / "fuzz_targets" / "wire_json.rs").read_text()
block = src[src.index("types! {") : src.index("fuzz_target!")]
order = re.findall(r"^\s*([A-Za-z<>]+) =>", block, re.M)

heartbeat = {"address": "http://127.0.0.1:9001", "capacity": 10**10, "used": 0, "shards": 0, "time": NOW, "seq": 1, "pow": 77}
exit_req = {"coordinator": coord.id, "time": NOW, "seq": 1}
identified = {"coordinator": coord.id, "nonce": nonce, "address": "http://127.0.0.1:9001"}
put_order = {"upload_id": upload, "peer_id": node.id, "max_shard_len": 2048, "expires": NOW + 3600}
receipt = {"upload_id": upload, "shard_id": shard, "len": 2048, "peer_id": node.id}
grant = {"peer_id": node.id, "upload_id": upload, "grantee": account.id, "expires": NOW + 3600}
challenge = {"peer_id": node.id, "nonce": nonce, "items": [{"shard_id": shard, "chunk": 0}], "deadline": NOW + 10}
proof = {"leaf_count": 1, "chunk": "616263", "path": []}
answer = {"nonce": nonce, "proofs": [proof, None]}
copy = {"file_id": file_id, "manifest": manifest_hex, "owner": account.id, "owner_hash": "00" * 32, "upload_id": upload, "created": NOW}
notice_committed = {
    "peer_id": node.id,
    "generation": "ef" * 16,
    "seq": 1,
    "event": {"event": "committed", "upload_id": upload, "file_id": file_id, "shard_ids": [shard], "complete": True, "manifest": json.loads(coord.signed("manifest-copy", copy))},
}
notice_released = {"peer_id": node.id, "generation": "ef" * 16, "seq": 2, "event": {"event": "released", "file_id": file_id, "shard_ids": [shard], "deleted": True}}
inventory_req = {"peer_id": node.id, "after": None, "expires": NOW + 600}
damage = {"coordinator": coord.id, "shard_ids": [shard], "time": NOW}
admin = {"action": {"do": "add_account", "account": account.id, "quota": 1000}, "time": NOW, "nonce": nonce}
commit = {
    "upload_id": upload,
    "manifest": manifest_hex,
    "owner_hash": "00" * 32,
    "placements": [[node.id, coord.id, account.id]],
    "receipts": [json.loads(node.signed("receipt", receipt))],
}
peer_view = {
    "peer_id": node.id, "address": "http://127.0.0.1:9001", "state": "online", "status": "vetting", "reputation": 1.0,
    "online_score": 0.5, "audits_passed": 3, "placed": 4, "capacity": 10**10, "used": 5, "shards": 6, "last_heartbeat": NOW,
}
summary = {"file_id": file_id, "size": 0, "segments": 1, "k": 2, "n": 3, "created": NOW}
wire = {
    "Signed<Heartbeat>": node.signed("heartbeat", heartbeat),
    "Signed<ExitRequest>": node.signed("exit", exit_req),
    "Signed<Identified>": node.signed("identify", identified),
    "PlanRequest": {"size": 1000, "k": 8, "n": 20, "segment_size": 4096},
    "Commit": commit,
    "DeleteRequest": {"owner_token": first["expected"]["owner_token"]},
    "BrowserCommit": {"salt": first["salt"], "iterations": 100000, "sealed_meta": "00" * 40, "owner_hash": "11" * 32},
    "Signed<AdminRequest>": coord.signed("admin", admin),
    "AdminAction": {"do": "recover"},
    "Signed<Notice>": coord.signed("notice", notice_committed),
    "Notice": notice_released,
    "Signed<InventoryRequest>": coord.signed("inventory", inventory_req),
    "Signed<Challenge>": coord.signed("audit-challenge", challenge),
    "IdentifyChallenge": {"coordinator": coord.id, "nonce": nonce},
    "Signed<PutOrder>": coord.signed("put-order", put_order),
    "Signed<ReadGrant>": coord.signed("read-grant", grant),
    "Signed<ManifestCopy>": coord.signed("manifest-copy", copy),
    "Signed<Receipt>": node.signed("receipt", receipt),
    "Signed<AuditAnswer>": node.signed("audit-answer", answer),
    "Inventory": {"shards": [{"shard_id": shard, "len": 2048, "files": [file_id]}], "manifests": [json.loads(coord.signed("manifest-copy", copy))], "generation": "ef" * 16, "last_notice": 3, "more": False},
    "HeartbeatReply": {"peer_id": node.id, "coordinator_key": coord.hex, "generation": "ef" * 16},
    "Plan": {"upload_id": upload, "expires": NOW, "orders": {node.id: json.loads(coord.signed("put-order", put_order))}, "addresses": {node.id: "http://127.0.0.1:9001"}, "segments": [[node.id]]},
    "FileView": {**summary, "placements": [[node.id]], "peers": {node.id: peer_view}, "health": [{"healthy": 3, "total": 3, "repair_queued": False}], "shard_states": [["healthy", "lost", "offline"]], "grants": {node.id: json.loads(coord.signed("read-grant", grant))}},
    "NetworkStats": {"peers_online": 1, "peers_offline": 0, "peers_disqualified": 0, "peers_exiting": 0, "capacity": 1, "used": 0, "files": 1, "stored_bytes": 3, "health": [[3, 1]], "audits_last_minute": 2, "audit_pass_rate": 0.5, "repair_queue": 0, "repaired_shards": 0},
    "Vec<AuditRecord>": [{"peer_id": node.id, "time": NOW, "outcome": "offline", "shards": 2, "detail": "no answer", "reputation": 0.25}],
    "CoordinatorInfo": {"protocol": 2, "coordinator_id": coord.id, "coordinator_key": coord.hex, "accounts": "invite", "node_pow_bits": 16},
    "Signed<DamageReport>": node.signed("damage", damage),
    "DamageClaim": {"peer_id": node.id, "shard_ids": [shard]},
    "AdminReply": {"accounts": [{"account_id": account.id, "quota": 1, "stored": 0, "pending": 0, "files": 0, "created": NOW}], "nodes": [node.id], "recovery": {"peers": 1, "shards": 2, "files_recovered": 3, "placements_filled": 4}, "backup": [{"table": "files", "key": file_id, "value": "{}"}]},
}
for name, value in wire.items():
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    slug = re.sub(r"[^A-Za-z]+", "-", name).strip("-").lower()
    write("wire_json", slug, bytes([order.index(name)]) + text.encode())

# ---- headers: selector byte + text.
body_hash = hashlib.sha256(b"{}").hexdigest()
path = "/v2/uploads"
message = f"{DOMAIN}/request\n{coord.id}\nPOST\n{path}\n{NOW}\n{nonce}\n{body_hash}"
auth = f"account={account.hex} time={NOW} nonce={nonce} body={body_hash} sig={account.sign(message.encode())}"
headers = [
    ("auth", 0, auth),
    ("address-v4", 1, "http://127.0.0.1:9001"),
    ("address-v6", 1, "https://[2001:db8::1]:443"),
    ("address-name", 1, "http://node.example.org:9000"),
    ("shard-id", 2, shard),
    ("query", 3, f"peer={node.id}&limit=5"),
    ("order", 4, coord.signed("put-order", put_order)),
    ("grant", 5, coord.signed("read-grant", grant)),
]
for name, which, text in headers:
    write("headers", name, bytes([which]) + text.encode())

# ---- signed: kind, signer, signature mode, aux, expected signer, then the body.
kinds = ["heartbeat", "exit", "put-order", "receipt", "notice", "manifest-copy", "inventory", "audit-challenge", "audit-answer", "read-grant", "identify", "admin", "damage"]
bodies = [heartbeat, exit_req, put_order, receipt, notice_released, copy, inventory_req, challenge, answer, grant, identified, admin, damage]
for i, (kind, body) in enumerate(zip(kinds, bodies)):
    write("signed", kind, bytes([i, i % 3, 0, i, 0]) + json.dumps(body, separators=(",", ":")).encode())
write("signed", "other-kind", bytes([0, 0, 2, 1, 0]) + json.dumps(heartbeat).encode())
write("signed", "flipped", bytes([4, 1, 4, 9, 1]) + json.dumps(notice_committed).encode())

# ---- merkle: mode, length / 2 (u16 LE), content seed, index, changes.
for length in [0, 1, 4096, 4097, 3 * 4096 + 5, 8 * 4096, 13 * 4096 + 100]:
    write("merkle", f"prove-{length}", bytes([0]) + struct.pack("<H", length // 2) + bytes([length % 251]))
write("merkle", "tamper-path", bytes([1]) + struct.pack("<H", 5 * 2048) + bytes([7, 3, 3, 0, 9]))
write("merkle", "tamper-chunk", bytes([1]) + struct.pack("<H", 2 * 2048 + 10) + bytes([1, 1, 0, 5, 7, 2, 1, 0]))
abc = hashlib.sha256(b"").digest()  # any 32 bytes: a root to check against
write("merkle", "arbitrary", bytes([2]) + abc + struct.pack("<QQ", 0, 1) + bytes([0]) + b"abc")

# ---- routes: server, how sent, body kind, key, then the request (see routes.rs).
COORD, NODE0, NODE1 = 0, 1, 2
PLAIN, ACCOUNT, FRESH, RAW = 0, 1, 2, 3
K = {k: i + 1 for i, k in enumerate(kinds)}  # the order of KINDS in routes.rs
KEY_COORD, KEY_NODE, KEY_FRESH, KEY_ACCOUNT = 0, 1, 2, 3
J = "content-type: application/json"
routes = {
    # Coordinator, public.
    "info": (COORD, PLAIN, 0, 0, "GET /v2/info"),
    "stats": (COORD, PLAIN, 0, 0, "GET /v2/stats"),
    "peers": (COORD, PLAIN, 0, 0, "GET /v2/peers"),
    "audits": (COORD, PLAIN, 0, 0, "GET /v2/audits?peer={peer0}&limit=5"),
    "metrics": (COORD, PLAIN, 0, 0, "GET /metrics"),
    "page": (COORD, PLAIN, 0, 0, "GET /app.js"),
    # Coordinator, signed by the harness's account.
    "account": (COORD, ACCOUNT, 0, 0, "GET /v2/account"),
    "files": (COORD, ACCOUNT, 0, 0, "GET /v2/files"),
    "file": (COORD, ACCOUNT, 0, 0, "GET /v2/files/{file}"),
    "manifest": (COORD, ACCOUNT, 0, 0, "GET /v2/files/{file}/manifest"),
    "segment": (COORD, ACCOUNT, 0, 0, "GET /v2/files/{file}/segments/1"),
    "plan": (COORD, ACCOUNT, 0, 0, f'POST /v2/uploads\n{J}\n\n{{"size":5000,"k":1,"n":2,"segment_size":4096}}'),
    "commit": (COORD, ACCOUNT, 0, 0, f'POST /v2/uploads/{{upload}}/commit\n{J}\n\n{{"upload_id":"{{upload}}","manifest":"{{manifest}}","owner_hash":"{{zero}}","placements":[["{{peer0}}","{{peer1}}"]],"receipts":[]}}'),
    "delete": (COORD, FRESH, 0, 0, f'DELETE /v2/files/{{file}}\n{J}\n\n{{"owner_token":"{{zero}}"}}'),
    "browser-start": (COORD, ACCOUNT, 0, 0, f'POST /v2/browser/uploads\n{J}\n\n{{"size":5000,"k":1,"n":2,"segment_size":4096}}'),
    "browser-segment": (COORD, ACCOUNT, 0, 0, "PUT /v2/browser/uploads/{bupload}/segments/1\n\n" + "x" * 936),
    "browser-commit": (COORD, ACCOUNT, 0, 0, f'POST /v2/browser/uploads/{{bupload}}/commit\n{J}\n\n{{"salt":"{{salt}}","iterations":100000,"sealed_meta":"{{zero}}","owner_hash":"{{zero}}"}}'),
    # Coordinator, signed messages.
    "heartbeat": (COORD, PLAIN, K["heartbeat"], KEY_NODE, f'POST /v2/heartbeat\n{J}\n\n{{"address":"http://127.0.0.1:1","capacity":1000000,"used":0,"shards":0,"time":{{now}},"seq":{{seq}},"pow":{{pow}}}}'),
    "exit": (COORD, PLAIN, K["exit"], KEY_FRESH, f'POST /v2/peers/exit\n{J}\n\n{{"coordinator":"{{coord}}","time":{{now}},"seq":{{seq}}}}'),
    "admin-list": (COORD, PLAIN, K["admin"], KEY_COORD, f'POST /v2/admin\n{J}\n\n{{"action":{{"do":"list_accounts"}},"time":{{now}},"nonce":"{{nonce}}"}}'),
    "admin-add": (COORD, PLAIN, K["admin"], KEY_COORD, f'POST /v2/admin\n{J}\n\n{{"action":{{"do":"add_account","account":"{{fuzznode}}","quota":5}},"time":{{now}},"nonce":"{{nonce}}"}}'),
    "admin-allow": (COORD, PLAIN, K["admin"], KEY_COORD, f'POST /v2/admin\n{J}\n\n{{"action":{{"do":"allow_node","peer":"{{fuzznode}}"}},"time":{{now}},"nonce":"{{nonce}}"}}'),
    "node-damage": (COORD, PLAIN, K["damage"], KEY_NODE, f'POST /v2/peers/damage\n{J}\n\n{{"coordinator":"{{coord}}","shard_ids":["{{shard0}}"],"time":{{now}}}}'),
    "file-damage": (COORD, ACCOUNT, 0, 0, f'POST /v2/files/{{file}}/damage\n{J}\n\n{{"peer_id":"{{peer0}}","shard_ids":["{{shard0}}"]}}'),
    # Nodes.
    "node-status": (NODE0, PLAIN, 0, 0, "GET /v2/status"),
    "node-metrics": (NODE1, PLAIN, 0, 0, "GET /metrics"),
    "identify": (NODE0, PLAIN, 0, 0, f'POST /v2/identify\n{J}\n\n{{"coordinator":"{{coord}}","nonce":"{{nonce}}"}}'),
    "get-shard": (NODE0, PLAIN, 0, KEY_COORD, 'GET /v2/shards/{shard}\nx-p2pstore-grant: !read-grant {"peer_id":"{peer}","upload_id":"*","grantee":"{accountid}","expires":{later}}'),
    "put-shard": (NODE1, PLAIN, 0, KEY_COORD, 'PUT /v2/shards/{b3}\nx-p2pstore-order: !put-order {"upload_id":"{upload}","peer_id":"{peer}","max_shard_len":4096,"expires":{later}}\n\nsome shard bytes'),
    "notice-abandoned": (NODE0, PLAIN, K["notice"], KEY_COORD, f'POST /v2/notices\n{J}\n\n{{"peer_id":"{{peer}}","generation":"{{gen}}","seq":{{seq}},"event":{{"event":"abandoned","upload_id":"{{upload}}"}}}}'),
    "notice-committed": (NODE1, PLAIN, K["notice"], KEY_COORD, f'POST /v2/notices\n{J}\n\n{{"peer_id":"{{peer}}","generation":"{{gen}}","seq":{{seq}},"event":{{"event":"committed","upload_id":"{{upload}}","file_id":"{{file}}","shard_ids":["{{shard}}"],"complete":false,"manifest":null}}}}'),
    "notice-released": (NODE0, PLAIN, K["notice"], KEY_COORD, f'POST /v2/notices\n{J}\n\n{{"peer_id":"{{peer}}","generation":"{{gen}}","seq":{{seq}},"event":{{"event":"released","file_id":"{{zero}}","shard_ids":["{{zero}}"],"deleted":false}}}}'),
    "inventory": (NODE1, PLAIN, K["inventory"], KEY_COORD, f'POST /v2/inventory\n{J}\n\n{{"peer_id":"{{peer}}","after":null,"expires":{{later}}}}'),
    "audit": (NODE0, PLAIN, K["audit-challenge"], KEY_COORD, f'POST /v2/audit\n{J}\n\n{{"peer_id":"{{peer}}","nonce":"{{nonce}}","items":[{{"shard_id":"{{shard}}","chunk":0}},{{"shard_id":"{{zero}}","chunk":9}}],"deadline":{{later}}}}'),
    # Raw bytes on the socket.
    "raw-pipelined": (COORD, RAW, 0, 0, "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nGET /v2/info HTTP/1.1\r\nhost: x\r\n\r\n"),
    "raw-chunked": (NODE0, RAW, 0, 0, "POST /v2/identify HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"coo\r\n0\r\n\r\n"),
}
for name, (target, how, body, key, text) in routes.items():
    write("routes", name, bytes([target, how, body, key]) + text.encode())

print("seeds written under", FUZZ / "corpus")
