#!/usr/bin/env bash
# `aws s3 cp` of one file up and down through `p2pstore gateway`, against the native
# `p2pstore upload` / `download` of the same file, on the same devnet, in one run.
# Usage: scripts/bench-gateway.sh [SIZE_MIB]   (release build; needs aws-cli; ~9 GB of disk
# for 1 GiB). Prints MB/s of each and the gateway's share of native, and the gateway's peak
# memory. Run it under `flock /tmp/p2pstore-bench.lock` on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
NODES=${NODES:-20}
PORT=${PORT:-18600}
GWPORT=${GWPORT:-18690}
PAUSE=${PAUSE:-30} # seconds between runs (ext4 reuses freshly deleted inodes slowly)
B=${P2PSTORE_BIN:-$(pwd)/target/release/p2pstore}
[ -x "$B" ] || { echo "build it first: cargo build --release" >&2; exit 1; }
W=$(mktemp -d "${TMPDIR:-/tmp}/p2pstore-bench-gw.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

"$B" devnet --nodes "$NODES" --port "$PORT" --data-dir "$W/devnet" >"$W/devnet.log" 2>&1 &
pids+=($!)
export P2PSTORE_COORDINATOR=http://127.0.0.1:$PORT P2PSTORE_PASSWORD=bench-password P2PSTORE_CONFIG=/dev/null
"$B" account new --out "$W/account.p8" >/dev/null 2>&1
for _ in $(seq 100); do "$B" --account "$W/account.p8" peers --json 2>/dev/null | grep -c '"online"' | grep -qx "$NODES" && break; sleep 0.3; done
export AWS_ACCESS_KEY_ID=benchaccesskey AWS_SECRET_ACCESS_KEY=benchsecretkey0123456789 AWS_DEFAULT_REGION=us-east-1
export AWS_CONFIG_FILE=$W/awsconfig AWS_SHARED_CREDENTIALS_FILE=/dev/null
cat >"$AWS_CONFIG_FILE" <<CFG
[default]
s3 =
  addressing_style = path
  multipart_threshold = 8MB
  multipart_chunksize = 8MB
CFG
P2PSTORE_GATEWAY_ACCESS_KEY=$AWS_ACCESS_KEY_ID P2PSTORE_GATEWAY_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
  "$B" --account "$W/account.p8" gateway --port "$GWPORT" --data-dir "$W/gw" >"$W/gw.log" 2>&1 &
GW=$!
pids+=($GW)
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$GWPORT) 2>/dev/null && break; sleep 0.2; done
A=(aws --endpoint-url "http://127.0.0.1:$GWPORT")
"${A[@]}" s3 mb s3://bench >/dev/null

head -c $((SIZE_MIB << 20)) /dev/urandom >"$W/input"
bytes=$((SIZE_MIB << 20))
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
mbps() { echo "scale=0; $bytes / $1 / 1000000" | bc -l; }

sync; sleep "$PAUSE"
t_up=$(secs "$B" --account "$W/account.p8" upload "$W/input")
id=$("$B" --account "$W/account.p8" ls --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["file_id"])')
sync; sleep "$PAUSE"
g_up=$(secs "${A[@]}" s3 cp --only-show-errors "$W/input" s3://bench/input)
sync; sleep "$PAUSE"
t_down=$(secs "$B" --account "$W/account.p8" download "$id" -o "$W/native.out" --force)
rm -f "$W/native.out"; sync; sleep "$PAUSE"
g_down=$(secs "${A[@]}" s3 cp --only-show-errors s3://bench/input "$W/gateway.out")
cmp "$W/input" "$W/gateway.out" || { echo "the gateway's download differs" >&2; exit 1; }
peak=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$GW/status")

printf '%s MiB, %s nodes\n' "$SIZE_MIB" "$NODES"
printf 'upload:   native %4s MB/s   gateway (aws s3 cp) %4s MB/s   %s%%\n' "$(mbps "$t_up")" "$(mbps "$g_up")" \
  "$(echo "scale=0; 100 * $t_up / $g_up" | bc -l)"
printf 'download: native %4s MB/s   gateway (aws s3 cp) %4s MB/s   %s%%\n' "$(mbps "$t_down")" "$(mbps "$g_down")" \
  "$(echo "scale=0; 100 * $t_down / $g_down" | bc -l)"
printf 'gateway peak memory: %s MiB\n' "$peak"
