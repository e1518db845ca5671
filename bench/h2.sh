#!/usr/bin/env bash
# HTTP/2 (prior knowledge, h2c) or gRPC through mesh-proxy's inbound and
# through Envoy, in interleaved rounds, each proxy with one worker:
#   - throughput and CPU per request with h2load (-c16 -m16, closed loop);
#   - latency at a fixed rate with oha (--http2, -q RATE spread evenly over
#     32 connections, --latency-correction), as p50 and p99.
# h2load's own --rps mode is not used for latency: it fires every client's
# request at the same instant, so a one-core proxy queues a burst of 16 and
# the figure measures the queue, not the proxy.
#
# PROTO=h2 (default): upstream is an h2c nginx answering "ok" to GET /.
# PROTO=grpc: upstream is examples/grpc_upstream (tonic, the standard health
# service); every request is a unary grpc.health.v1.Health/Check.
#
# Needs nginx, h2load (Debian nghttp2-client), oha and Envoy
# (../shared/bench/setup.sh installs oha and puts Envoy in /opt/bench-envoy).
#   bench/h2.sh                  # ROUNDS=2 DUR=10 RATE=2000
#   PROTO=grpc bench/h2.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
PROTO=${PROTO:-h2}; ROUNDS=${ROUNDS:-2}; DUR=${DUR:-10}; RATE=${RATE:-2000}
ENVOY_BIN=${ENVOY_BIN:-/opt/bench-envoy/envoy}
OHA_BIN=${OHA_BIN:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
RUN_DIR=${RUN_DIR:-/tmp/mesh-$PROTO-run}
CLIENT_CPU=${CLIENT_CPU:-0}; SERVER_CPU=${SERVER_CPU:-1}
command -v h2load >/dev/null && command -v nginx >/dev/null && command -v jq >/dev/null \
  && [ -x "$ENVOY_BIN" ] && [ -x "$OHA_BIN" ] \
  || { echo "needs h2load (apt-get install nghttp2-client), nginx, jq, oha and Envoy (../shared/bench/setup.sh)" >&2; exit 2; }
case $PROTO in
  h2) mesh_protocol=http2; path=/ ;;
  grpc) mesh_protocol=grpc; path=/grpc.health.v1.Health/Check ;;
  *) echo "PROTO must be h2 or grpc, not '$PROTO'" >&2; exit 2 ;;
esac
(cd "$root" && cargo build --release -q -p raftmesh-dataplane-proxy --bin mesh-proxy \
  && { [ "$PROTO" = h2 ] || cargo build --release -q -p raftmesh-dataplane-proxy --example grpc_upstream; })
rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
            nginx_stop "$RUN_DIR/nginx"; }
trap cleanup EXIT
# h2load's and oha's request options: a gRPC request is a POST of one
# length-prefixed message (here the empty HealthCheckRequest, 5 bytes).
h2load_req=(); oha_req=()
if [ "$PROTO" = grpc ]; then
  printf '\0\0\0\0\0' > "$RUN_DIR/req.bin"
  h2load_req=(-d "$RUN_DIR/req.bin" -H 'content-type: application/grpc' -H 'te: trailers')
  oha_req=(-m POST -D "$RUN_DIR/req.bin" -H 'content-type: application/grpc' -H 'te: trailers')
  ( exec taskset -c "$SERVER_CPU" "$root/target/release/examples/grpc_upstream" 127.0.0.1:18180 \
      > "$RUN_DIR/grpc_upstream.log" 2>&1 ) &
  pids+=($!)
else
  nginx_upstream "$RUN_DIR/nginx" 18180 http2 "$SERVER_CPU"
fi
printf 'kind: Service\nmetadata: {name: bench}\nspec: {ports: [{port: 80, protocol: %s}]}\n' \
  "$mesh_protocol" > "$RUN_DIR/mesh.yaml"
( exec taskset -c "$SERVER_CPU" "$root/target/release/mesh-proxy" --service bench --instance bench-h2 \
    --config-file "$RUN_DIR/mesh.yaml" --inbound 127.0.0.1:18185 --app-port 18180 \
    --outbound 127.0.0.1:18186 --admin 127.0.0.1:18187 --workers 1 > "$RUN_DIR/proxy.log" 2>&1 ) &
pids+=($!); mesh=$!
( exec taskset -c "$SERVER_CPU" "$ENVOY_BIN" -c "$root/bench/conf/envoy-h2.yaml" --concurrency 1 \
    --disable-hot-restart -l warn > "$RUN_DIR/envoy.log" 2>&1 ) &
pids+=($!); envoy=$!
sleep 2
declare -A PORT=([direct]=18180 [envoy]=18183 [mesh-proxy]=18185) PID=([envoy]=$envoy [mesh-proxy]=$mesh)
if [ "$PROTO" = grpc ]; then  # the upstream must answer SERVING through each target
  for t in direct envoy mesh-proxy; do
    curl -sf --http2-prior-knowledge -X POST -H 'content-type: application/grpc' -H 'te: trailers' \
      --data-binary @"$RUN_DIR/req.bin" -o "$RUN_DIR/check-$t.bin" "http://127.0.0.1:${PORT[$t]}$path"
    [ "$(od -An -tx1 "$RUN_DIR/check-$t.bin" | tr -d ' \n')" = 00000000020801 ] \
      || { echo "$t: Health/Check did not answer SERVING" >&2; exit 1; }
  done
fi
ticks() { [ -n "${1:-}" ] && awk '{print $14+$15}' "/proc/$1/stat" || echo 0; }
hz=$(getconf CLK_TCK)
echo "# $PROTO: h2load -c16 -m16 ${DUR}s (throughput); oha --http2 -c32 -q$RATE --latency-correction ${DUR}s (latency); proxies and upstream on CPU $SERVER_CPU, load on CPU $CLIENT_CPU"
printf 'round\ttarget\trps\tproxy_cpu_us_per_req\tp50_us\tp99_us\trss_kib\n'
for r in $(seq "$ROUNDS"); do
  for t in direct envoy mesh-proxy; do
    url="http://127.0.0.1:${PORT[$t]}$path"
    taskset -c "$CLIENT_CPU" h2load -c16 -m16 -D 2 "${h2load_req[@]}" "$url" > /dev/null 2>&1 || true
    c0=$(ticks "${PID[$t]:-}")
    out=$(taskset -c "$CLIENT_CPU" h2load -c16 -m16 -D "$DUR" "${h2load_req[@]}" "$url" 2>&1)
    c1=$(ticks "${PID[$t]:-}")
    rps=$(echo "$out" | awk '/^finished in/ {print $4}')
    ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
    done_reqs=$(echo "$out" | awk '/^requests:/ {print $8}')
    [ "${ok:-0}" -ge "${done_reqs:-1}" ] || echo "# WARN $t: $ok of $done_reqs answered 2xx"
    cpu=$(awk -v a="$c0" -v b="$c1" -v n="$done_reqs" -v hz="$hz" 'BEGIN{ if (n>0 && b>a) printf "%.1f", (b-a)/hz*1e6/n; else print "-" }')
    j=$RUN_DIR/oha-$r-$t.json
    taskset -c "$CLIENT_CPU" "$OHA_BIN" --no-tui --http2 -p 1 -c 32 -q "$RATE" --latency-correction \
      -z "${DUR}s" --output-format json "${oha_req[@]}" "$url" > "$j"
    p50=$(jq '.latencyPercentiles.p50 * 1e6 | floor' "$j")
    p99=$(jq '.latencyPercentiles.p99 * 1e6 | floor' "$j")
    [ "$(jq '.summary.successRate' "$j")" = 1 ] || echo "# WARN $t: oha successRate $(jq '.summary.successRate' "$j")"
    rss=$([ -n "${PID[$t]:-}" ] && ps -o rss= -p "${PID[$t]}" | tr -d ' ' || echo -)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$rps" "$cpu" "$p50" "$p99" "$rss"
  done
done
