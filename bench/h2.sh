#!/usr/bin/env bash
# HTTP/2 (prior knowledge, h2c) through mesh-proxy's inbound and through
# Envoy, to an h2c nginx upstream, in interleaved rounds: throughput and
# CPU per request with h2load (-c16 -m16), latency at a fixed rate
# (h2load --rps). Needs nginx, h2load (Debian nghttp2-client) and Envoy
# (../shared/bench/setup.sh puts it in /opt/bench-envoy).
#   bench/h2.sh            # ROUNDS=2 DUR=10
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
ROUNDS=${ROUNDS:-2}; DUR=${DUR:-10}; RATE=${RATE:-2000}
ENVOY_BIN=${ENVOY_BIN:-/opt/bench-envoy/envoy}
RUN_DIR=${RUN_DIR:-/tmp/mesh-h2-run}
CLIENT_CPU=${CLIENT_CPU:-0}; SERVER_CPU=${SERVER_CPU:-1}
command -v h2load >/dev/null && command -v nginx >/dev/null && [ -x "$ENVOY_BIN" ] \
  || { echo "needs h2load (apt-get install nghttp2-client), nginx and Envoy (../shared/bench/setup.sh)" >&2; exit 2; }
(cd "$root" && cargo build --release -q -p raftmesh-dataplane-proxy --bin mesh-proxy)
rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
            nginx_stop "$RUN_DIR/nginx"; }
trap cleanup EXIT
nginx_upstream "$RUN_DIR/nginx" 18180 http2 "$SERVER_CPU"
printf 'kind: Service\nmetadata: {name: bench}\nspec: {ports: [{port: 80, protocol: http2}]}\n' > "$RUN_DIR/mesh.yaml"
( exec taskset -c "$SERVER_CPU" "$root/target/release/mesh-proxy" --service bench --instance bench-h2 \
    --config-file "$RUN_DIR/mesh.yaml" --inbound 127.0.0.1:18185 --app-port 18180 \
    --outbound 127.0.0.1:18186 --admin 127.0.0.1:18187 --workers 1 > "$RUN_DIR/proxy.log" 2>&1 ) &
pids+=($!); mesh=$!
( exec taskset -c "$SERVER_CPU" "$ENVOY_BIN" -c "$root/bench/conf/envoy-h2.yaml" --concurrency 1 \
    --disable-hot-restart -l warn > "$RUN_DIR/envoy.log" 2>&1 ) &
pids+=($!); envoy=$!
sleep 2
declare -A PORT=([direct]=18180 [envoy]=18183 [mesh-proxy]=18185) PID=([envoy]=$envoy [mesh-proxy]=$mesh)
ticks() { [ -n "${1:-}" ] && awk '{print $14+$15}' "/proc/$1/stat" || echo 0; }
hz=$(getconf CLK_TCK)
echo "# h2c, h2load -c16 -m16 ${DUR}s (throughput) and --rps at ${RATE}/s in all (latency); proxy and nginx on CPU $SERVER_CPU, h2load on CPU $CLIENT_CPU"
printf 'round\ttarget\trps\tproxy_cpu_us_per_req\tlatency_mean\tlatency_sd\trss_kib\n'
for r in $(seq "$ROUNDS"); do
  for t in direct envoy mesh-proxy; do
    url="http://127.0.0.1:${PORT[$t]}/"
    taskset -c "$CLIENT_CPU" h2load -c16 -m16 -D 2 "$url" > /dev/null 2>&1 || true
    c0=$(ticks "${PID[$t]:-}")
    out=$(taskset -c "$CLIENT_CPU" h2load -c16 -m16 -D "$DUR" "$url" 2>&1)
    c1=$(ticks "${PID[$t]:-}")
    rps=$(echo "$out" | awk '/^finished in/ {print $4}')
    done_reqs=$(echo "$out" | awk '/^requests:/ {print $8}')
    cpu=$(awk -v a="$c0" -v b="$c1" -v n="$done_reqs" -v hz="$hz" 'BEGIN{ if (n>0 && b>a) printf "%.1f", (b-a)/hz*1e6/n; else print "-" }')
    # latency: 16 clients at RATE/16 requests/s each, one stream at a time
    lat=$(taskset -c "$CLIENT_CPU" h2load -c16 -m1 --rps=$((RATE / 16)) -D "$DUR" "$url" 2>&1)
    mean=$(echo "$lat" | awk '/^time for request:/ {print $6}')
    sd=$(echo "$lat" | awk '/^time for request:/ {print $7}')
    rss=$([ -n "${PID[$t]:-}" ] && ps -o rss= -p "${PID[$t]}" || echo -)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$rps" "$cpu" "$mean" "$sd" "$rss"
  done
done
echo "# latency at the fixed rate: mean and standard deviation of request time (h2load prints no percentiles)"
