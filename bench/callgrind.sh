#!/usr/bin/env bash
# User-space instructions per request on mesh-proxy's inbound (or outbound)
# HTTP/1.1 path, counted by valgrind's callgrind: unlike time, the count
# barely moves on a shared, noisy machine, so it tracks regressions and shows
# where user-space work goes. Kernel time (most of a request's cost, see
# docs/benchmarks.md) is not counted.
#   bench/callgrind.sh                      # K=20000 requests, top 25 functions
#   DIRECTION=outbound bench/callgrind.sh   # the outbound stack (route .. forward)
#   MESH_PROXY=/path/to/mesh-proxy bench/callgrind.sh   # another build, to compare
#   EXTRA_YAML='kind: MeshConfig ...' bench/callgrind.sh # with more resources (e.g. tracing, access logs)
#   PROXY_FLAGS='--http1-fast-path false' bench/callgrind.sh # more mesh-proxy flags
# Needs valgrind (apt-get install valgrind), nginx, and oha or ab
# (apache2-utils; keep-alive HTTP/1.0).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
K=${K:-20000}; TOP=${TOP:-25}; DIRECTION=${DIRECTION:-inbound}
RUN_DIR=${RUN_DIR:-/tmp/mesh-callgrind-run}
OHA_BIN=${OHA_BIN:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null && command -v nginx >/dev/null \
  && { [ -x "$OHA_BIN" ] || command -v ab >/dev/null; } \
  || { echo "needs valgrind (apt-get install valgrind), nginx, and oha (../shared/bench/setup.sh) or ab (apache2-utils)" >&2; exit 2; }
if [ -z "${MESH_PROXY:-}" ]; then
  (cd "$root" && cargo build --release -q -p raftmesh-dataplane-proxy --bin mesh-proxy)
  MESH_PROXY=$root/target/release/mesh-proxy
fi
case $DIRECTION in
  inbound) url=http://127.0.0.1:18185/; proxy_flag= ;;
  outbound) url=http://bench/; proxy_flag=127.0.0.1:18186 ;;
  *) echo "DIRECTION is inbound or outbound" >&2; exit 2 ;;
esac
# K requests on 8 keep-alive connections: oha when there is one, else ab.
load() {
  local n=$1
  if [ -x "$OHA_BIN" ]; then
    if [ -n "$proxy_flag" ]; then
      "$OHA_BIN" --no-tui -n "$n" -c 8 -H 'Host: bench' "http://$proxy_flag/"
    else
      "$OHA_BIN" --no-tui -n "$n" -c 8 "$url"
    fi
  else
    ab -q -k -n "$n" -c 8 ${proxy_flag:+-X "$proxy_flag"} "$url"
  fi
}
rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR"
proxy=
cleanup() { [ -n "$proxy" ] && kill "$proxy" 2>/dev/null; nginx_stop "$RUN_DIR/nginx"; }
trap cleanup EXIT
nginx_upstream "$RUN_DIR/nginx" 18180
printf 'kind: Service\nmetadata: {name: bench}\nspec: {ports: [{port: 80, protocol: http}]}\n---\nkind: Endpoint\nmetadata: {name: bench-1}\nspec: {service: bench, address: 127.0.0.1, port: 18180}\n' > "$RUN_DIR/mesh.yaml"
if [ -n "${EXTRA_YAML:-}" ]; then printf -- '---\n%s\n' "$EXTRA_YAML" >> "$RUN_DIR/mesh.yaml"; fi
valgrind --tool=callgrind --callgrind-out-file="$RUN_DIR/callgrind.out.%p" \
  "$MESH_PROXY" --service bench --instance bench-cg --config-file "$RUN_DIR/mesh.yaml" \
  --inbound 127.0.0.1:18185 --app-port 18180 --outbound 127.0.0.1:18186 --admin 127.0.0.1:18187 \
  --workers 1 ${PROXY_FLAGS:-} > "$RUN_DIR/proxy.log" 2>&1 &
proxy=$!
for _ in $(seq 60); do curl -sf http://127.0.0.1:18185/ > /dev/null && break; sleep 0.5; done
curl -sf http://127.0.0.1:18185/ > /dev/null || { echo "mesh-proxy did not start under valgrind: $RUN_DIR/proxy.log" >&2; exit 1; }
curl -sf ${proxy_flag:+-x "$proxy_flag"} "$url" > /dev/null || { echo "no answer on the $DIRECTION path: $RUN_DIR/proxy.log" >&2; exit 1; }
echo "# $DIRECTION, $MESH_PROXY: warming up (2,000 requests), then counting $K requests (8 keep-alive connections)"
load 2000 > /dev/null
callgrind_control -z "$proxy" > /dev/null 2>&1
load "$K" > "$RUN_DIR/load.out"
if [ -x "$OHA_BIN" ]; then
  grep -qE 'Success rate:[[:space:]]*100' "$RUN_DIR/load.out" || echo "# WARN: not every request succeeded"
else
  grep -qiE 'Failed requests: +[1-9]|Non-2xx' "$RUN_DIR/load.out" && echo "# WARN: not every request succeeded"
fi
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
