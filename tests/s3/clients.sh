#!/usr/bin/env bash
# End-to-end check of aws-cli, rclone and restic against a running p2pstore gateway.
# Usage: tests/clients.sh [host:port]   (needs: aws, rclone, restic; apt-get install -y rclone restic)
set -euo pipefail
HP=${1:-127.0.0.1:9010}
EP=http://$HP
AK=$S3_ACCESS_KEY SK=$S3_SECRET_KEY
W=$(mktemp -d /tmp/s3clients.XXXXXX)
trap 'rm -rf "$W"' EXIT
pass=0 fail=0
ok() { echo "ok   $1"; pass=$((pass + 1)); }
ko() { echo "FAIL $1"; fail=$((fail + 1)); }
t() { local name=$1; shift; if "$@" >"$W/last.log" 2>&1; then ok "$name"; else ko "$name"; tail -5 "$W/last.log"; fi; }

# test data: small files, names with spaces/plus, one 20 MiB and one 9 MiB file
mkdir -p "$W/src/sub dir/deeper"
for i in $(seq 1 20); do head -c $((i * 5000)) /dev/urandom >"$W/src/f$i.dat"; done
echo a >"$W/src/sub dir/a b+c.txt"
head -c $((20 * 1024 * 1024)) /dev/urandom >"$W/src/big20.bin"
head -c 9000000 /dev/urandom >"$W/src/sub dir/deeper/nine.bin"
# a few hundred files of mixed sizes (empty to 1 MiB) in a small tree, for rclone
for i in $(seq 1 ${S3_TREE_FILES:-300}); do
  d="$W/src/tree/d$((i % 9))/e$((i % 4))"; mkdir -p "$d"
  case $((i % 10)) in 0) n=0 ;; 1) n=1048576 ;; 2) n=$((RANDOM * 8)) ;; *) n=$((RANDOM % 4000)) ;; esac
  head -c $n /dev/urandom >"$d/file-$i.bin"
done

# ---------------- aws-cli ----------------
export AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK AWS_DEFAULT_REGION=us-east-1
export AWS_CONFIG_FILE=$W/awsconfig AWS_SHARED_CREDENTIALS_FILE=/dev/null
cat >"$AWS_CONFIG_FILE" <<EOF
[default]
s3 =
  addressing_style = path
  multipart_threshold = 8MB
  multipart_chunksize = 8MB
EOF
A=(aws --endpoint-url "$EP")
t "aws mb" "${A[@]}" s3 mb s3://awscli
t "aws sync up (20 MiB multipart, 8 MiB parts)" "${A[@]}" s3 sync "$W/src" s3://awscli/src --only-show-errors
etag=$("${A[@]}" s3api head-object --bucket awscli --key src/big20.bin --query ETag --output text)
[[ $etag == *-3\" ]] && ok "aws multipart etag $etag" || ko "aws multipart etag $etag"
n=$("${A[@]}" s3 ls s3://awscli/src/ --recursive --page-size 7 | wc -l)
want=$(find "$W/src" -type f | wc -l)
[[ $n == "$want" ]] && ok "aws ls paging ($want keys, page 7)" || ko "aws ls paging got $n of $want"
t "aws sync down + diff" bash -c "$(printf '%q ' "${A[@]}") s3 sync s3://awscli/src '$W/awsdown' --only-show-errors && diff -r '$W/src' '$W/awsdown'"
"${A[@]}" s3api get-object --bucket awscli --key src/f3.dat --range bytes=10-19 "$W/r.out" >/dev/null
cmp -s "$W/r.out" <(tail -c +11 "$W/src/f3.dat" | head -c 10) && ok "aws ranged get" || ko "aws ranged get"
url=$("${A[@]}" s3 presign s3://awscli/src/f1.dat --expires-in 60)
curl -sf "$url" | cmp -s - "$W/src/f1.dat" && ok "aws presign + curl" || ko "aws presign + curl"
out=$(AWS_SECRET_ACCESS_KEY=wrong "${A[@]}" s3 ls 2>&1 || true)
[[ $out == *SignatureDoesNotMatch* ]] && ok "aws wrong secret -> SignatureDoesNotMatch" || ko "aws wrong secret: $out"
t "aws rm --recursive + rb" bash -c "$(printf '%q ' "${A[@]}") s3 rm s3://awscli --recursive --only-show-errors && $(printf '%q ' "${A[@]}") s3 rb s3://awscli"

# ---------------- rclone ----------------
export RCLONE_CONFIG=$W/rclone.conf
cat >"$RCLONE_CONFIG" <<EOF
[gw]
type = s3
provider = Other
access_key_id = $AK
secret_access_key = $SK
endpoint = $EP
region = us-east-1
force_path_style = true
EOF
# rclone's aws-sdk-go refuses a custom HTTP transport when AWS_CA_BUNDLE is set
R=(env -u AWS_CA_BUNDLE rclone)
t "rclone mkdir" "${R[@]}" mkdir gw:rclone
t "rclone sync up (8M chunks)" "${R[@]}" sync "$W/src" gw:rclone/src --s3-upload-cutoff 8M --s3-chunk-size 8M
t "rclone check (sizes + md5)" "${R[@]}" check "$W/src" gw:rclone/src
echo changed >"$W/src/f1.dat"; rm "$W/src/f2.dat"
t "rclone sync incremental" "${R[@]}" sync "$W/src" gw:rclone/src
t "rclone check after change" "${R[@]}" check "$W/src" gw:rclone/src
t "rclone sync down + diff" bash -c "env -u AWS_CA_BUNDLE rclone sync gw:rclone/src '$W/rdown' && diff -r '$W/src' '$W/rdown'"
t "rclone purge" "${R[@]}" purge gw:rclone

# ---------------- restic ----------------
export RESTIC_PASSWORD=pw RESTIC_REPOSITORY=s3:$EP/restic/repo
RO=(-o s3.bucket-lookup=path -o s3.region=us-east-1)
t "restic init" restic init "${RO[@]}"
t "restic backup" restic backup "${RO[@]}" "$W/src"
echo more >"$W/src/new.txt"
t "restic backup 2" restic backup "${RO[@]}" "$W/src"
t "restic check --read-data" restic check --read-data "${RO[@]}"
t "restic restore + diff" bash -c "restic restore latest --target '$W/rr' ${RO[*]} && diff -r '$W/src' '$W/rr$W/src'"
t "restic forget --prune" restic forget --keep-last 1 --prune "${RO[@]}"
t "restic check after prune" restic check --read-data "${RO[@]}"

echo "$pass passed, $fail failed"
[[ $fail == 0 ]]
