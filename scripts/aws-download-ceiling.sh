#!/usr/bin/env bash
# How fast `aws s3 cp` can download on this machine at all: the same command against a
# trivial server (Node.js, one file from the page cache, no signature checks), so the
# gateway's download share can be read against aws-cli's own limit.
# Usage: scripts/aws-download-ceiling.sh [SIZE_MIB]   (needs node and aws-cli)
set -euo pipefail
SIZE_MIB=${1:-1024}
PORT=${PORT:-18699}
W=$(mktemp -d "${TMPDIR:-/tmp}/p2pstore-ceiling.XXXXXX")
trap 'kill $SRV 2>/dev/null || true; rm -rf "$W"' EXIT
head -c $((SIZE_MIB << 20)) /dev/urandom >"$W/input"
cat >"$W/serve.js" <<'JS'
const http = require('http'), fs = require('fs');
const file = process.argv[2], size = fs.statSync(file).size;
http.createServer((req, res) => {
  const h = { 'content-type': 'binary/octet-stream', 'etag': '"0"', 'last-modified': new Date(0).toUTCString(), 'accept-ranges': 'bytes' };
  let [start, end, code] = [0, size - 1, 200];
  const m = /bytes=(\d+)-(\d*)/.exec(req.headers['range'] || '');
  if (m) { start = +m[1]; end = m[2] ? Math.min(+m[2], size - 1) : size - 1; code = 206; h['content-range'] = `bytes ${start}-${end}/${size}`; }
  h['content-length'] = end - start + 1;
  res.writeHead(code, h);
  if (req.method === 'HEAD') return res.end();
  fs.createReadStream(file, { start, end, highWaterMark: 1 << 20 }).pipe(res);
}).listen(+process.argv[3], '127.0.0.1');
JS
node "$W/serve.js" "$W/input" "$PORT" &
SRV=$!
export AWS_CONFIG_FILE=$W/awsconfig AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_DEFAULT_REGION=us-east-1
printf '[default]\ns3 =\n  addressing_style = path\n  multipart_threshold = 8MB\n  multipart_chunksize = 8MB\n' >"$AWS_CONFIG_FILE"
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
for run in 1 2 3; do
  t0=$(date +%s.%N)
  /usr/bin/time -f '%U %S' -o "$W/time" aws --no-sign-request --endpoint-url "http://127.0.0.1:$PORT" \
    s3 cp --only-show-errors s3://any/input "$W/out"
  t1=$(date +%s.%N)
  cmp -s "$W/input" "$W/out" || { echo "the download differs" >&2; exit 1; }
  rm -f "$W/out"
  echo "run $run: $(echo "scale=0; ($SIZE_MIB * 1048576) / ($t1 - $t0) / 1000000" | bc -l) MB/s, aws-cli CPU $(awk '{ print $1 + $2 }' "$W/time") s"
done
