#!/usr/bin/env bash
# What observability costs a proxy (issue 17): CPU per request and RSS of
# builds and settings side by side, in interleaved rounds on one machine.
# Each variant runs pinned to CPU 1 with one worker beside an nginx
# upstream; oha (CPU 0) sends N requests on 32 keep-alive connections
# through the outbound path (route, balance, forward), then the inbound
# path; the proxy's CPU time comes from /proc (user + system).
#   VARIANTS="old:/path/to/old/mesh-proxy: new:target/release/mesh-proxy: on:target/release/mesh-proxy:on" bench/observability.sh
# A variant is NAME:BINARY:SETTINGS, SETTINGS "on" adding a MeshConfig
# with 1 % trace sampling (to a collector address nothing answers) and
# access logs to a file. ROUNDS (3), N (200000).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
ROUNDS=${ROUNDS:-3}; N=${N:-200000}; OHA_BIN=${OHA_BIN:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
RUN_DIR=${RUN_DIR:-/tmp/mesh-obs-run}
VARIANTS=${VARIANTS:-"new:$root/target/release/mesh-proxy: on:$root/target/release/mesh-proxy:on"}
[ -x "$OHA_BIN" ] || { echo "needs oha (cargo install oha, or ../shared/bench/setup.sh)" >&2; exit 2; }
rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR"
px=
cleanup() { [ -n "$px" ] && kill "$px" 2>/dev/null; nginx_stop "$RUN_DIR/nginx"; }
trap cleanup EXIT
nginx_upstream "$RUN_DIR/nginx" 18280 "" 1
tick=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
echo "variant direction round requests cpu_us_per_req rss_kib hwm_kib"
for r in $(seq "$ROUNDS"); do
  for v in $VARIANTS; do
    IFS=: read -r name bin settings <<< "$v"
    y="$RUN_DIR/$name.yaml"
    printf 'kind: Service\nmetadata: {name: bench}\nspec: {ports: [{port: 80, protocol: http}]}\n---\nkind: Endpoint\nmetadata: {name: bench-1}\nspec: {service: bench, address: 127.0.0.1, port: 18280}\n' > "$y"
    if [ "$settings" = on ]; then
      printf -- '---\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {trust_domain: bench.mesh, tracing: {collector: "127.0.0.1:4317", sample_percent: 1}, access_log: {file: %s/access.log}}\n' "$RUN_DIR" >> "$y"
    fi
    rm -f "$RUN_DIR/access.log"
    taskset -c 1 "$bin" --service bench --instance bench-obs --config-file "$y" \
      --inbound 127.0.0.1:18285 --app-port 18280 --outbound 127.0.0.1:18286 --admin 127.0.0.1:18287 \
      --workers 1 > "$RUN_DIR/proxy.log" 2>&1 &
    px=$!
    for _ in $(seq 50); do curl -sf http://127.0.0.1:18287/live > /dev/null && break; sleep 0.1; done
    for dir in outbound inbound; do
      if [ $dir = outbound ]; then args=(-H 'Host: bench' http://127.0.0.1:18286/); else args=(http://127.0.0.1:18285/); fi
      taskset -c 0 "$OHA_BIN" --no-tui -n 5000 -c 32 "${args[@]}" > /dev/null
      before=$(cpu_ticks $px)
      taskset -c 0 "$OHA_BIN" --no-tui -n "$N" -c 32 "${args[@]}" > "$RUN_DIR/oha.out"
      after=$(cpu_ticks $px)
      grep -qE 'Success rate:[[:space:]]*100' "$RUN_DIR/oha.out" || echo "# WARN: $name $dir: not every request succeeded"
      us=$(awk -v a="$after" -v b="$before" -v t="$tick" -v n="$N" 'BEGIN {printf "%.2f", (a - b) / t * 1e6 / n}')
      rss=$(awk '/VmRSS/ {print $2}' /proc/$px/status); hwm=$(awk '/VmHWM/ {print $2}' /proc/$px/status)
      echo "$name $dir $r $N $us $rss $hwm"
    done
    kill $px; wait $px 2>/dev/null || true; px=
  done
done
