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
DEVNET=${pids[0]}
# CPU seconds (user + system) a process has used so far.
cpu() { awk '{ print ($14 + $15) / 100 }' "/proc/$1/stat"; }
# Times a command; leaves "wall cpu-of-the-command cpu-of-the-gateway cpu-of-the-devnet" in $REPLY.
secs() {
  local t0 t1 g0 d0 c
  g0=$(cpu "$GW"); d0=$(cpu "$DEVNET"); t0=$(date +%s.%N)
  /usr/bin/time -f '%U %S' -o "$W/time" "$@" >/dev/null
  c=$(awk 'END { print $1 + $2 }' "$W/time")
  t1=$(date +%s.%N)
  REPLY="$(echo "$t1 - $t0" | bc -l) $c $(echo "$(cpu "$GW") - $g0" | bc -l) $(echo "$(cpu "$DEVNET") - $d0" | bc -l)"
}
mbps() { echo "scale=0; $bytes / $1 / 1000000" | bc -l; }

sync; sleep "$PAUSE"
secs "$B" --account "$W/account.p8" upload "$W/input"; read -r t_up c_up _ d_up <<<"$REPLY"
id=$("$B" --account "$W/account.p8" ls --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["file_id"])')
sync; sleep "$PAUSE"
secs "${A[@]}" s3 cp --only-show-errors "$W/input" s3://bench/input; read -r g_up a_up gw_up dg_up <<<"$REPLY"
sync; sleep "$PAUSE"
secs "$B" --account "$W/account.p8" download "$id" -o "$W/native.out" --force; read -r t_down c_down _ d_down <<<"$REPLY"
rm -f "$W/native.out"; sync; sleep "$PAUSE"
secs "${A[@]}" s3 cp --only-show-errors s3://bench/input "$W/gateway.out"; read -r g_down a_down gw_down dg_down <<<"$REPLY"
cmp "$W/input" "$W/gateway.out" || { echo "the gateway's download differs" >&2; exit 1; }
rm -f "$W/gateway.out"
# The same through rclone (Go, its default chunk size and concurrency), when installed.
if command -v rclone >/dev/null; then
  export RCLONE_CONFIG=$W/rclone.conf
  printf '[gw]\ntype = s3\nprovider = Other\naccess_key_id = %s\nsecret_access_key = %s\nendpoint = http://127.0.0.1:%s\nregion = us-east-1\nforce_path_style = true\n' \
    "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" "$GWPORT" >"$RCLONE_CONFIG"
  sync; sleep "$PAUSE"
  secs env -u AWS_CA_BUNDLE rclone copyto "$W/input" gw:bench/rclone-input; read -r r_up ra_up rgw_up rdg_up <<<"$REPLY"
  sync; sleep "$PAUSE"
  secs env -u AWS_CA_BUNDLE rclone copyto gw:bench/rclone-input "$W/gateway.out"; read -r r_down ra_down rgw_down rdg_down <<<"$REPLY"
  cmp "$W/input" "$W/gateway.out" || { echo "rclone's download differs" >&2; exit 1; }
fi
peak=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$GW/status")

printf '%s MiB, %s nodes\n' "$SIZE_MIB" "$NODES"
printf 'upload:   native %4s MB/s   gateway (aws s3 cp) %4s MB/s   %s%%\n' "$(mbps "$t_up")" "$(mbps "$g_up")" \
  "$(echo "scale=0; 100 * $t_up / $g_up" | bc -l)"
printf 'download: native %4s MB/s   gateway (aws s3 cp) %4s MB/s   %s%%\n' "$(mbps "$t_down")" "$(mbps "$g_down")" \
  "$(echo "scale=0; 100 * $t_down / $g_down" | bc -l)"
printf 'gateway peak memory: %s MiB\n' "$peak"
printf 'CPU seconds   upload: native client %s, nodes %s | aws %s, gateway %s, nodes %s\n' "$c_up" "$d_up" "$a_up" "$gw_up" "$dg_up"
printf 'CPU seconds download: native client %s, nodes %s | aws %s, gateway %s, nodes %s\n' "$c_down" "$d_down" "$a_down" "$gw_down" "$dg_down"
if [ -n "${r_up:-}" ]; then
  printf 'rclone:   up %4s MB/s (%s%%), down %4s MB/s (%s%%); CPU seconds up: rclone %s, gateway %s, nodes %s; down: rclone %s, gateway %s, nodes %s\n' \
    "$(mbps "$r_up")" "$(echo "scale=0; 100 * $t_up / $r_up" | bc -l)" "$(mbps "$r_down")" "$(echo "scale=0; 100 * $t_down / $r_down" | bc -l)" \
    "$ra_up" "$rgw_up" "$rdg_up" "$ra_down" "$rgw_down" "$rdg_down"
fi
