#!/usr/bin/env bash
# User-space instructions per request on mesh-proxy's inbound HTTP/1.1 path,
# counted by valgrind's callgrind: unlike time, the count barely moves on a
# shared, noisy machine, so it tracks regressions and shows where user-space
# work goes. Kernel time (most of a request's cost, see docs/benchmarks.md)
# is not counted.
#   bench/callgrind.sh            # K=20000 requests, top 25 functions
# Needs valgrind (apt-get install valgrind), nginx and oha.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
K=${K:-20000}; TOP=${TOP:-25}
RUN_DIR=${RUN_DIR:-/tmp/mesh-callgrind-run}
OHA_BIN=${OHA_BIN:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null && command -v nginx >/dev/null \
  && [ -x "$OHA_BIN" ] \
  || { echo "needs valgrind (apt-get install valgrind), nginx and oha (../shared/bench/setup.sh)" >&2; exit 2; }
(cd "$root" && cargo build --release -q -p raftmesh-dataplane-proxy --bin mesh-proxy)
rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR"
proxy=
cleanup() { [ -n "$proxy" ] && kill "$proxy" 2>/dev/null; nginx_stop "$RUN_DIR/nginx"; }
trap cleanup EXIT
nginx_upstream "$RUN_DIR/nginx" 18180
printf 'kind: Service\nmetadata: {name: bench}\nspec: {ports: [{port: 80, protocol: http}]}\n' > "$RUN_DIR/mesh.yaml"
valgrind --tool=callgrind --callgrind-out-file="$RUN_DIR/callgrind.out.%p" \
  "$root/target/release/mesh-proxy" --service bench --instance bench-cg --config-file "$RUN_DIR/mesh.yaml" \
  --inbound 127.0.0.1:18185 --app-port 18180 --outbound 127.0.0.1:18186 --admin 127.0.0.1:18187 \
  --workers 1 > "$RUN_DIR/proxy.log" 2>&1 &
proxy=$!
for _ in $(seq 60); do curl -sf http://127.0.0.1:18185/ > /dev/null && break; sleep 0.5; done
curl -sf http://127.0.0.1:18185/ > /dev/null || { echo "mesh-proxy did not start under valgrind: $RUN_DIR/proxy.log" >&2; exit 1; }
echo "# warming up (2,000 requests), then counting $K requests (oha -c8, HTTP/1.1 keep-alive)"
"$OHA_BIN" --no-tui -n 2000 -c 8 http://127.0.0.1:18185/ > /dev/null
callgrind_control -z "$proxy" > /dev/null 2>&1
"$OHA_BIN" --no-tui -n "$K" -c 8 --output-format json http://127.0.0.1:18185/ > "$RUN_DIR/oha.json"
[ "$(jq '.summary.successRate' "$RUN_DIR/oha.json")" = 1 ] || echo "# WARN: not every request succeeded"
callgrind_control -d "$proxy" > /dev/null 2>&1
sleep 1
out=$(ls -t "$RUN_DIR"/callgrind.out."$proxy".* | head -1)
total=$(awk '/^(summary|totals):/ {print $2; exit}' "$out")
echo "user-space instructions per request: $((total / K))"
echo "# top functions by own instructions, per request:"
callgrind_annotate --inclusive=no --threshold=100 --auto=no "$out" \
  | sed -nE 's/^ *([0-9,]+) \( *([0-9.]+)%\) +(.*)$/\1\t\2\t\3/p' \
  | awk -F'\t' -v k="$K" -v top="$TOP" '$2 != "100.0" {
      n = $1; gsub(",", "", n); f = $3; sub(/ \[.*\]$/, "", f); sub(/^.*\/src\//, "", f);
      printf "%8.0f  %5.2f%%  %s\n", n / k, $2, f; if (++c >= top) exit }'
echo "# full profile: callgrind_annotate $out"
