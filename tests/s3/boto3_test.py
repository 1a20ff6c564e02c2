#!/usr/bin/env python3
"""Exercise the p2pstore gateway with boto3.
Usage: python3 tests/boto3_test.py [endpoint [coordinator]] (with the coordinator's URL, also
checks how often the gateway reads its namespace)."""
import base64
import hashlib
import os
import sys
import urllib.error
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

EP = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:9010"
COORD = sys.argv[2] if len(sys.argv) > 2 else None
AK, SK = os.environ["S3_ACCESS_KEY"], os.environ["S3_SECRET_KEY"]
CFG = Config(s3={"addressing_style": "path"}, signature_version="s3v4",
             retries={"max_attempts": 1})


def client(ak=AK, sk=SK, **kw):
    return boto3.client("s3", endpoint_url=EP, aws_access_key_id=ak, aws_secret_access_key=sk,
                        region_name="us-east-1", config=kw.pop("config", CFG), **kw)


s3 = client()
passed = failed = 0


def check(name, cond, extra=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {extra}")


def err(fn, *a, **kw):
    try:
        fn(*a, **kw)
        return None, None
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]


B = "boto"
s3.create_bucket(Bucket=B)
check("create_bucket again -> BucketAlreadyOwnedByYou", err(s3.create_bucket, Bucket=B)[0] == "BucketAlreadyOwnedByYou")
check("list_buckets", B in [b["Name"] for b in s3.list_buckets()["Buckets"]])
s3.head_bucket(Bucket=B)
check("head_bucket missing -> 404", err(s3.head_bucket, Bucket="nope")[1] == 404)

# --- put/get with Content-MD5, metadata, content-type
data = os.urandom(300_000)
md5b64 = base64.b64encode(hashlib.md5(data).digest()).decode()
r = s3.put_object(Bucket=B, Key="a/b c+d.bin", Body=data, ContentMD5=md5b64,
                  ContentType="image/x-test", Metadata={"color": "blue", "Mixed-Case": "V"})
check("put etag = md5", r["ETag"] == f'"{hashlib.md5(data).hexdigest()}"', r["ETag"])
bad = base64.b64encode(hashlib.md5(b"x").digest()).decode()
check("put bad Content-MD5 -> BadDigest", err(s3.put_object, Bucket=B, Key="bad", Body=data, ContentMD5=bad)[0] == "BadDigest")
check("bad object not stored", err(s3.head_object, Bucket=B, Key="bad")[1] == 404)
g = s3.get_object(Bucket=B, Key="a/b c+d.bin")
check("get body", g["Body"].read() == data)
check("get content-type", g["ContentType"] == "image/x-test", g["ContentType"])
check("get metadata", g["Metadata"] == {"color": "blue", "mixed-case": "V"}, g["Metadata"])
g = s3.get_object(Bucket=B, Key="a/b c+d.bin", Range="bytes=1000-1999")
check("range 206", g["ResponseMetadata"]["HTTPStatusCode"] == 206)
check("range body", g["Body"].read() == data[1000:2000])
check("range content-range", g["ContentRange"] == "bytes 1000-1999/300000", g["ContentRange"])
g = s3.get_object(Bucket=B, Key="a/b c+d.bin", Range="bytes=299990-")
check("open range", g["Body"].read() == data[299990:])
check("unsatisfiable range -> 416", err(s3.get_object, Bucket=B, Key="a/b c+d.bin", Range="bytes=400000-")[1] == 416)
h = s3.head_object(Bucket=B, Key="a/b c+d.bin")
check("head length", h["ContentLength"] == 300000)
etag = h["ETag"]
check("If-None-Match -> 304", err(s3.get_object, Bucket=B, Key="a/b c+d.bin", IfNoneMatch=etag)[1] == 304)
check("If-Match wrong -> 412", err(s3.get_object, Bucket=B, Key="a/b c+d.bin", IfMatch='"x"')[1] == 412)
check("get missing -> NoSuchKey", err(s3.get_object, Bucket=B, Key="nope")[0] == "NoSuchKey")
check("get missing bucket -> NoSuchBucket", err(s3.get_object, Bucket="nobucket", Key="x")[0] == "NoSuchBucket")
# checksum mode: boto3 >= 1.36 sends x-amz-checksum-crc32 on PutObject by default
r = s3.put_object(Bucket=B, Key="ck", Body=b"hello", ChecksumAlgorithm="SHA256")
check("put sha256 checksum echoed", "ChecksumSHA256" in r, r.keys())
g = s3.get_object(Bucket=B, Key="ck", ChecksumMode="ENABLED")
check("get with checksum validation", g["Body"].read() == b"hello")

# --- copy
r = s3.copy_object(Bucket=B, Key="copy1", CopySource={"Bucket": B, "Key": "a/b c+d.bin"})
check("copy etag", r["CopyObjectResult"]["ETag"] == etag)
h = s3.head_object(Bucket=B, Key="copy1")
check("copy keeps metadata", h["Metadata"].get("color") == "blue" and h["ContentType"] == "image/x-test")
s3.copy_object(Bucket=B, Key="copy2", CopySource=f"{B}/a/b c+d.bin", MetadataDirective="REPLACE",
               Metadata={"n": "1"}, ContentType="text/plain")
h = s3.head_object(Bucket=B, Key="copy2")
check("copy REPLACE metadata", h["Metadata"] == {"n": "1"} and h["ContentType"] == "text/plain", h)
c, st = err(s3.copy_object, Bucket=B, Key="copy3", CopySource={"Bucket": B, "Key": "a/b c+d.bin", "VersionId": "v1"})
check("copy of a version -> 400 (no versions kept)", (c, st) == ("InvalidArgument", 400), (c, st))

# --- listing with paging / prefix / delimiter
keys = [f"list/d{i % 3}/k{i:03d}" for i in range(25)] + [f"list/top{i}" for i in range(4)] + ["list/sp ace/x", "list/pl+us"]
for k in keys:
    s3.put_object(Bucket=B, Key=k, Body=k.encode())
seen = []
pages = 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=B, Prefix="list/", PaginationConfig={"PageSize": 7}):
    pages += 1
    seen += [o["Key"] for o in page.get("Contents", [])]
check("v2 paging all keys", seen == sorted(keys), (len(seen), len(keys)))
check("v2 paging pages", pages == 5, pages)
seen, cps = [], []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=B, Prefix="list/", Delimiter="/", PaginationConfig={"PageSize": 2}):
    seen += [o["Key"] for o in page.get("Contents", [])]
    cps += [c["Prefix"] for c in page.get("CommonPrefixes", [])]
check("v2 delimiter prefixes", cps == ["list/d0/", "list/d1/", "list/d2/", "list/sp ace/"], cps)
check("v2 delimiter keys", seen == ["list/pl+us"] + [f"list/top{i}" for i in range(4)], seen)
r = s3.list_objects_v2(Bucket=B, Prefix="list/d1/", MaxKeys=3, StartAfter="list/d1/k004")
check("v2 start-after", [o["Key"] for o in r["Contents"]] == ["list/d1/k007", "list/d1/k010", "list/d1/k013"], r.get("Contents"))
seen = []
for page in s3.get_paginator("list_objects").paginate(Bucket=B, Prefix="list/", PaginationConfig={"PageSize": 6}):
    seen += [o["Key"] for o in page.get("Contents", [])]
check("v1 paging", seen == sorted(keys), len(seen))

# --- delete_objects
r = s3.delete_objects(Bucket=B, Delete={"Objects": [{"Key": k} for k in keys[:10]]})
check("delete_objects", len(r["Deleted"]) == 10)
check("after delete_objects", s3.list_objects_v2(Bucket=B, Prefix="list/")["KeyCount"] == len(keys) - 10)
s3.delete_object(Bucket=B, Key="copy1")
check("delete_object", err(s3.head_object, Bucket=B, Key="copy1")[1] == 404)

# --- multipart, low level
P = 8 * 1024 * 1024
big = os.urandom(2 * P + 4 * 1024 * 1024)
up = s3.create_multipart_upload(Bucket=B, Key="mp/big", ContentType="application/x-big", Metadata={"m": "1"})
uid = up["UploadId"]
ups = s3.list_multipart_uploads(Bucket=B)
check("list_multipart_uploads", [u["UploadId"] for u in ups.get("Uploads", [])] == [uid])
parts = []
for i, off in enumerate(range(0, len(big), P), 1):
    chunk = big[off:off + P]
    r = s3.upload_part(Bucket=B, Key="mp/big", UploadId=uid, PartNumber=i, Body=chunk,
                       ContentMD5=base64.b64encode(hashlib.md5(chunk).digest()).decode())
    parts.append({"PartNumber": i, "ETag": r["ETag"]})
lp = s3.list_parts(Bucket=B, Key="mp/big", UploadId=uid)
check("list_parts", [p["PartNumber"] for p in lp["Parts"]] == [1, 2, 3] and lp["Parts"][2]["Size"] == 4 * 1024 * 1024)
lp = s3.list_parts(Bucket=B, Key="mp/big", UploadId=uid, MaxParts=2)
check("list_parts paging", lp["IsTruncated"] and lp["NextPartNumberMarker"] == 2, lp.get("NextPartNumberMarker"))
code = err(s3.complete_multipart_upload, Bucket=B, Key="mp/big", UploadId=uid,
           MultipartUpload={"Parts": [parts[0], {"PartNumber": 2, "ETag": '"deadbeef"'}, parts[2]]})[0]
check("complete with wrong etag -> InvalidPart", code == "InvalidPart", code)
code = err(s3.complete_multipart_upload, Bucket=B, Key="mp/big", UploadId=uid,
           MultipartUpload={"Parts": [parts[2], parts[0]]})[0]
check("complete with parts out of order -> InvalidPartOrder (before any size check)", code == "InvalidPartOrder", code)
r = s3.complete_multipart_upload(Bucket=B, Key="mp/big", UploadId=uid, MultipartUpload={"Parts": parts})
md5s = b"".join(hashlib.md5(big[o:o + P]).digest() for o in range(0, len(big), P))
want = f'"{hashlib.md5(md5s).hexdigest()}-3"'
check("multipart etag md5-of-md5s-N", r["ETag"] == want, (r["ETag"], want))
g = s3.get_object(Bucket=B, Key="mp/big")
check("multipart body", g["Body"].read() == big)
check("multipart content-type/metadata", g["ContentType"] == "application/x-big" and g["Metadata"] == {"m": "1"})
check("upload gone", err(s3.list_parts, Bucket=B, Key="mp/big", UploadId=uid)[0] == "NoSuchUpload")
# too-small part
uid2 = s3.create_multipart_upload(Bucket=B, Key="mp/small")["UploadId"]
e1 = s3.upload_part(Bucket=B, Key="mp/small", UploadId=uid2, PartNumber=1, Body=b"a" * 100)["ETag"]
e2 = s3.upload_part(Bucket=B, Key="mp/small", UploadId=uid2, PartNumber=2, Body=b"b" * 100)["ETag"]
code = err(s3.complete_multipart_upload, Bucket=B, Key="mp/small", UploadId=uid2,
           MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})[0]
check("complete small part -> EntityTooSmall", code == "EntityTooSmall", code)
s3.abort_multipart_upload(Bucket=B, Key="mp/small", UploadId=uid2)
check("abort", err(s3.list_parts, Bucket=B, Key="mp/small", UploadId=uid2)[0] == "NoSuchUpload")
# high-level transfer (s3transfer) with 8 MiB parts
from boto3.s3.transfer import TransferConfig
tc = TransferConfig(multipart_threshold=P, multipart_chunksize=P)
import io
s3.upload_fileobj(io.BytesIO(big), B, "mp/transfer", Config=tc)
buf = io.BytesIO()
s3.download_fileobj(B, "mp/transfer", buf, Config=tc)  # ranged GETs in parallel
check("upload_fileobj/download_fileobj multipart", buf.getvalue() == big)

# --- presigned URLs
url = s3.generate_presigned_url("get_object", Params={"Bucket": B, "Key": "a/b c+d.bin"}, ExpiresIn=300)
check("presigned GET", urllib.request.urlopen(url).read() == data)
url = s3.generate_presigned_url("put_object", Params={"Bucket": B, "Key": "presigned"}, ExpiresIn=300)
req = urllib.request.Request(url, data=b"via presigned put", method="PUT")
check("presigned PUT", urllib.request.urlopen(req).status == 200)
check("presigned PUT stored", s3.get_object(Bucket=B, Key="presigned")["Body"].read() == b"via presigned put")
try:
    i = url.index("X-Amz-Signature=") + len("X-Amz-Signature=")
    urllib.request.urlopen(url[:i] + ("0" if url[i] != "0" else "1") + url[i + 1:])  # flip one hex digit
    check("tampered presigned -> 403", False)
except urllib.error.HTTPError as e:
    check("tampered presigned -> 403", e.code == 403, e.code)
# S3's bound on a presigned URL's life: a week.
url = s3.generate_presigned_url("get_object", Params={"Bucket": B, "Key": "a/b c+d.bin"}, ExpiresIn=604801)
try:
    urllib.request.urlopen(url)
    check("presigned for more than a week -> 400", False)
except urllib.error.HTTPError as e:
    check("presigned for more than a week -> 400", e.code == 400 and b"AuthorizationQueryParametersError" in e.read(), e.code)

# --- auth failures
c, st = err(client(sk="wrong-secret").list_buckets)
check("wrong secret -> 403 SignatureDoesNotMatch", (c, st) == ("SignatureDoesNotMatch", 403), (c, st))
c, st = err(client(sk="wrong-secret").put_object, Bucket=B, Key="x", Body=b"x")
check("wrong secret on PUT -> 403 SignatureDoesNotMatch", (c, st) == ("SignatureDoesNotMatch", 403), (c, st))
c, st = err(client(ak="unknownkey").list_buckets)
check("unknown access key -> 403 InvalidAccessKeyId", (c, st) == ("InvalidAccessKeyId", 403), (c, st))
from botocore import UNSIGNED
c, st = err(client(config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"})).list_buckets)
check("anonymous -> 403 AccessDenied", (c, st) == ("AccessDenied", 403), (c, st))

# --- not implemented
c, st = err(s3.get_bucket_tagging, Bucket=B)
check("unimplemented op -> 501 NotImplemented", (c, st) == ("NotImplemented", 501), (c, st))

# --- the cases: segment-boundary ranges, 100 MiB in 8 MiB parts, 1,500 keys
SEG = 8 * 1024 * 1024  # the gateway's files carry 8 MiB of plaintext per segment
BIGN = 100 * 1024 * 1024
hundred = os.urandom(BIGN)
up = s3.create_multipart_upload(Bucket=B, Key="mp/100mib")
uid = up["UploadId"]
parts = []
for i, off in enumerate(range(0, BIGN, P), 1):
    r = s3.upload_part(Bucket=B, Key="mp/100mib", UploadId=uid, PartNumber=i, Body=hundred[off:off + P])
    parts.append({"PartNumber": i, "ETag": r["ETag"]})
r = s3.complete_multipart_upload(Bucket=B, Key="mp/100mib", UploadId=uid, MultipartUpload={"Parts": parts})
md5s = b"".join(hashlib.md5(hundred[o:o + P]).digest() for o in range(0, BIGN, P))
check("100 MiB in 8 MiB parts: etag", r["ETag"] == f'"{hashlib.md5(md5s).hexdigest()}-{len(parts)}"', r["ETag"])
g = s3.get_object(Bucket=B, Key="mp/100mib")
check("100 MiB in 8 MiB parts: body", hashlib.sha256(g["Body"].read()).digest() == hashlib.sha256(hundred).digest())
ranges = [(SEG - 1, SEG), (SEG, SEG), (SEG - 10, SEG + 9), (2 * SEG - 5, 3 * SEG + 4), (100, 4095),
          (SEG + 12345, SEG + 54321), (BIGN - 1, BIGN - 1), (0, 0), (5 * SEG - 1, 9 * SEG)]
for a, b in ranges:
    g = s3.get_object(Bucket=B, Key="mp/100mib", Range=f"bytes={a}-{b}")
    check(f"range {a}-{b} of the multipart object", g["Body"].read() == hundred[a:b + 1])
# a single PUT spanning several segments
single = hundred[:3 * SEG + 777]
s3.put_object(Bucket=B, Key="seg/single", Body=single)
for a, b in [(SEG - 1, SEG), (SEG, 2 * SEG - 1), (2 * SEG - 3, 3 * SEG + 2), (3 * SEG, 3 * SEG + 776), (17, 33)]:
    g = s3.get_object(Bucket=B, Key="seg/single", Range=f"bytes={a}-{b}")
    check(f"range {a}-{b} of a 3-segment PUT", g["Body"].read() == single[a:b + 1])
s3.delete_object(Bucket=B, Key="mp/100mib")
s3.delete_object(Bucket=B, Key="seg/single")

from concurrent.futures import ThreadPoolExecutor
many = [f"many/d{i % 7}/k{i:04d}" for i in range(1400)] + [f"many/top{i:03d}" for i in range(100)]
with ThreadPoolExecutor(16) as ex:
    list(ex.map(lambda k: s3.put_object(Bucket=B, Key=k, Body=b""), many))
seen, pages = [], 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=B, Prefix="many/"):
    pages += 1
    seen += [o["Key"] for o in page.get("Contents", [])]
check("1,500 keys: ListObjectsV2 pages of 1,000", seen == sorted(many) and pages == 2, (len(seen), pages))
seen, cps, pages = [], [], 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=B, Prefix="many/", Delimiter="/",
                                                          PaginationConfig={"PageSize": 30}):
    pages += 1
    seen += [o["Key"] for o in page.get("Contents", [])]
    cps += [c["Prefix"] for c in page.get("CommonPrefixes", [])]
check("1,500 keys with a delimiter: prefixes", cps == [f"many/d{i}/" for i in range(7)], cps)
check("1,500 keys with a delimiter: keys", seen == [f"many/top{i:03d}" for i in range(100)], len(seen))
check("1,500 keys with a delimiter: pages", pages == 4, pages)
seen = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=B, Prefix="many/d3/", PaginationConfig={"PageSize": 150}):
    seen += [o["Key"] for o in page.get("Contents", [])]
check("1,500 keys: one directory", seen == sorted(k for k in many if k.startswith("many/d3/")), len(seen))


def namespace_listings():
    """Namespace listings the coordinator answered so far (its /metrics)."""
    text = urllib.request.urlopen(COORD + "/metrics").read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("p2pstore_coordinator_http_requests_total") and '"/v2/names/list"' in line)


if COORD:
    # Encrypted names do not sort as their plaintext: every page needs the whole directory.
    # A listing's later pages take it as its first page read it (with this gateway's own
    # writes applied), so 50 pages read the 1,500 keys once, not 50 times.
    before, seen, pages = namespace_listings(), [], 0
    s3.delete_object(Bucket=B, Key="many/d0/k0000")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=B, Prefix="many/", PaginationConfig={"PageSize": 30}):
        pages += 1
        seen += [o["Key"] for o in page.get("Contents", [])]
        if pages == 2:
            s3.put_object(Bucket=B, Key="many/zz-added-mid-listing", Body=b"")
            s3.delete_object(Bucket=B, Key="many/top099")
    want = sorted(set(many) - {"many/d0/k0000", "many/top099"}) + ["many/zz-added-mid-listing"]
    check("a listing's pages read the directory once", namespace_listings() - before <= 4 and pages == 50,
          (namespace_listings() - before, pages))
    check("a listing's later pages show this gateway's writes", seen == want, (len(seen), len(want)))
    s3.put_object(Bucket=B, Key="many/d0/k0000", Body=b"")
    s3.put_object(Bucket=B, Key="many/top099", Body=b"")
    s3.delete_object(Bucket=B, Key="many/zz-added-mid-listing")

# --- deep and long keys: any key S3 takes, at most 1,024 bytes
deep = "deep/" + "d/" * 300 + "x"
s3.put_object(Bucket=B, Key=deep, Body=b"deep")
check("a key of 300 components", s3.get_object(Bucket=B, Key=deep)["Body"].read() == b"deep")
check("a key of 300 components listed", [o["Key"] for o in s3.list_objects_v2(Bucket=B, Prefix="deep/").get("Contents", [])] == [deep])
s3.delete_object(Bucket=B, Key=deep)
check("a key over 1,024 bytes -> KeyTooLongError", err(s3.put_object, Bucket=B, Key="k" * 1025, Body=b"")[0] == "KeyTooLongError")
# --- races: requests on one key, or one multipart upload, take turns
import concurrent.futures as cf
with cf.ThreadPoolExecutor(8) as ex:
    list(ex.map(lambda i: s3.put_object(Bucket=B, Key="race/k", Body=b"body %d" % i), range(8)))
check("concurrent puts of one key: one object", s3.get_object(Bucket=B, Key="race/k")["Body"].read().startswith(b"body "))
broken = []
for r in range(4):
    k = f"race/mp{r}"
    u = s3.create_multipart_upload(Bucket=B, Key=k)["UploadId"]
    e = s3.upload_part(Bucket=B, Key=k, UploadId=u, PartNumber=1, Body=b"x" * 1000)["ETag"]
    with cf.ThreadPoolExecutor(2) as ex:
        done = ex.submit(err, s3.complete_multipart_upload, Bucket=B, Key=k, UploadId=u,
                         MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e}]})
        ex.submit(err, s3.abort_multipart_upload, Bucket=B, Key=k, UploadId=u)
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=B, Prefix=k).get("Contents", [])] == [k]
    if listed and err(s3.get_object, Bucket=B, Key=k)[0] is not None:
        broken.append(k)
check("complete racing abort: the object is whole or absent", not broken, broken)
# --- multipart upload listings page
ids = [s3.create_multipart_upload(Bucket=B, Key=f"mpl/{i}")["UploadId"] for i in range(3)]
r = s3.list_multipart_uploads(Bucket=B, Prefix="mpl/", MaxUploads=2)
check("list_multipart_uploads max-uploads", len(r["Uploads"]) == 2 and r["IsTruncated"], r.get("Uploads"))
seen = []
for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=B, Prefix="mpl/", PaginationConfig={"PageSize": 1}):
    seen += [u["UploadId"] for u in page.get("Uploads", [])]
check("list_multipart_uploads paging", seen == ids, (seen, ids))
for i, u in enumerate(ids):
    s3.abort_multipart_upload(Bucket=B, Key=f"mpl/{i}", UploadId=u)

# --- delete bucket
check("delete non-empty bucket -> BucketNotEmpty", err(s3.delete_bucket, Bucket=B)[0] == "BucketNotEmpty")
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=B):
    ks = [{"Key": o["Key"]} for o in page.get("Contents", [])]
    if ks:
        s3.delete_objects(Bucket=B, Delete={"Objects": ks, "Quiet": True})
s3.delete_bucket(Bucket=B)
check("delete bucket", B not in [b["Name"] for b in s3.list_buckets()["Buckets"]])

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
