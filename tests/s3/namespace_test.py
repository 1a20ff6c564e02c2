#!/usr/bin/env python3
"""Two gateways with the same account and password see the same buckets and objects; a
gateway with another password refuses to start (tested in tests/it/gateway.rs). Leaves canary
names in place for the coordinator database scan. Usage: namespace_test.py GW1_URL GW2_URL"""
import os
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

GW1, GW2 = sys.argv[1:3]
AK, SK = os.environ["S3_ACCESS_KEY"], os.environ["S3_SECRET_KEY"]
CFG = Config(s3={"addressing_style": "path"}, signature_version="s3v4", retries={"max_attempts": 1})
passed = failed = 0


def client(ep):
    return boto3.client("s3", endpoint_url=ep, aws_access_key_id=AK, aws_secret_access_key=SK,
                        region_name="us-east-1", config=CFG)


def check(name, cond, extra=""):
    global passed, failed
    passed, failed = (passed + 1, failed) if cond else (passed, failed + 1)
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f" {extra}"))


one, two = client(GW1), client(GW2)
B, K = "clear-name-canary-bucket", "holiday-photos/canary-secret-document.txt"
body = os.urandom(100_000)
one.create_bucket(Bucket=B)
one.put_object(Bucket=B, Key=K, Body=body, ContentType="application/x-canary-type",
               Metadata={"canary": "canary-metadata-value"})
check("second gateway lists the bucket", B in [b["Name"] for b in two.list_buckets()["Buckets"]])
keys = [o["Key"] for o in two.list_objects_v2(Bucket=B, Prefix="holiday-photos/")["Contents"]]
check("second gateway lists the object", keys == [K], keys)
g = two.get_object(Bucket=B, Key=K)
check("second gateway reads the body", g["Body"].read() == body)
check("second gateway reads the metadata", g["Metadata"] == {"canary": "canary-metadata-value"}
      and g["ContentType"] == "application/x-canary-type", (g["Metadata"], g["ContentType"]))
two.put_object(Bucket=B, Key="written-by-second-gateway.txt", Body=b"from two")
check("first gateway reads what the second wrote",
      one.get_object(Bucket=B, Key="written-by-second-gateway.txt")["Body"].read() == b"from two")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
