#!/usr/bin/env python3
"""Hand-rolled SigV4 requests to exercise s3s payload modes that boto3 does not use
over plain http: signed aws-chunked (what restic/minio-go sends), unsigned aws-chunked
with a checksum trailer (what newer SDKs send over https), and bad single-chunk hashes.
Usage: python3 tests/chunked_test.py [host:port]"""
import base64
import binascii
import datetime
import hashlib
import hmac
import http.client
import os
import sys

HOSTPORT = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9010"
AK, SK, REGION = os.environ["S3_ACCESS_KEY"], os.environ["S3_SECRET_KEY"], "us-east-1"
BUCKET = "chunked"
passed = failed = 0


def check(name, cond, extra=""):
    global passed, failed
    passed, failed = (passed + 1, failed) if cond else (passed, failed + 1)
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f" {extra}"))


def H(b):
    return hashlib.sha256(b).hexdigest()


def key(date):
    k = hmac.new(("AWS4" + SK).encode(), date.encode(), hashlib.sha256).digest()
    for p in (REGION, "s3", "aws4_request"):
        k = hmac.new(k, p.encode(), hashlib.sha256).digest()
    return k


def sign(method, path, headers, payload_hash):
    now = datetime.datetime.now(datetime.UTC)
    amzdate, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = dict(headers, host=HOSTPORT, **{"x-amz-date": amzdate, "x-amz-content-sha256": payload_hash})
    names = sorted(k.lower() for k in headers)
    canon = "\n".join([method, path, "", "".join(f"{n}:{str(headers[n]).strip()}\n" for n in names),
                       ";".join(names), payload_hash])
    scope = f"{date}/{REGION}/s3/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope, H(canon.encode())])
    sig = hmac.new(key(date), sts.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={AK}/{scope}, "
                                f"SignedHeaders={';'.join(names)}, Signature={sig}")
    return headers, sig, amzdate, scope, date


def send(method, path, headers, body=b""):
    c = http.client.HTTPConnection(HOSTPORT)
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def signed_chunked(data, chunk=64 * 1024, corrupt=False):
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)] + [b""]
    enc_len = sum(len(f"{len(c):x};chunk-signature=".encode()) + 64 + 2 + len(c) + 2 for c in chunks)
    headers, prev, amzdate, scope, date = sign("PUT", f"/{BUCKET}/signed", {
        "content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
        "content-length": str(enc_len)}, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
    body = b""
    for c in chunks:
        sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amzdate, scope, prev, H(b""), H(c)])
        prev = hmac.new(key(date), sts.encode(), hashlib.sha256).hexdigest()
        if corrupt and c:
            c = bytes([c[0] ^ 1]) + c[1:]
        body += f"{len(c):x};chunk-signature={prev}\r\n".encode() + c + b"\r\n"
    return send("PUT", f"/{BUCKET}/signed", headers, body)


def unsigned_trailer(data, crc_ok=True):
    crc = binascii.crc32(data) ^ (0 if crc_ok else 1)
    crc_b64 = base64.b64encode(crc.to_bytes(4, "big")).decode()
    body = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n" + f"x-amz-checksum-crc32:{crc_b64}\r\n\r\n".encode()
    headers, *_ = sign("PUT", f"/{BUCKET}/trailer", {
        "content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
        "x-amz-trailer": "x-amz-checksum-crc32", "x-amz-sdk-checksum-algorithm": "CRC32",
        "content-length": str(len(body))}, "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    return send("PUT", f"/{BUCKET}/trailer", headers, body)


def get(path):
    headers, *_ = sign("GET", path, {}, H(b""))
    return send("GET", path, headers)


hdr, *_ = sign("PUT", f"/{BUCKET}", {}, H(b""))
send("PUT", f"/{BUCKET}", hdr)

data = bytes(range(256)) * 1000  # 256000 bytes -> 4 chunks + final
st, body = signed_chunked(data)
check("signed aws-chunked PUT -> 200", st == 200, (st, body))
check("signed aws-chunked stored", get(f"/{BUCKET}/signed") == (200, data))
st, body = signed_chunked(data, corrupt=True)
check("corrupted signed chunk -> 403 SignatureDoesNotMatch", st == 403 and b"SignatureDoesNotMatch" in body, (st, body))

st, body = unsigned_trailer(data)
check("unsigned payload + crc32 trailer -> 200", st == 200, (st, body))
check("trailer object stored", get(f"/{BUCKET}/trailer") == (200, data))
st, body = unsigned_trailer(b"other", crc_ok=False)
check("bad crc32 trailer -> 400 BadDigest", st == 400 and b"BadDigest" in body, (st, body))
check("bad-trailer object not stored", get(f"/{BUCKET}/trailer") == (200, data))

hdr, *_ = sign("PUT", f"/{BUCKET}/single", {"content-length": "5"}, H(b"wrong"))
st, body = send("PUT", f"/{BUCKET}/single", hdr, b"hello")
check("wrong x-amz-content-sha256 -> 400", st == 400, (st, body))
print("   ", body.decode(errors="replace")[:200])

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
