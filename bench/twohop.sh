#!/usr/bin/env bash
# Two hops over mutual TLS: oha -> client sidecar (outbound, HTTP by Host)
# -> mTLS -> server sidecar (inbound) -> nginx upstream, against the
# upstream alone, at a fixed rate, in interleaved rounds. Needs nginx and
# oha (../shared/bench/setup.sh installs both). Control plane: one
# `meshd dev` node; the proxies get their certificates from it.
#
#   bench/twohop.sh            # ROUNDS=3 DUR=10 RATE=2000
#
# Prints p50/p99 per round and target and the added latency (two-hop minus
# direct); raw oha JSON in $RUN_DIR.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
RUN_DIR=${RUN_DIR:-/tmp/mesh-twohop-run}
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-10}; RATE=${RATE:-2000}; CONNS=${CONNS:-32}
OHA_BIN=${OHA_BIN:-$HOME/.cargo/bin/oha}
CLIENT_CPU=${CLIENT_CPU:-0}; SERVER_CPU=${SERVER_CPU:-1}
command -v nginx >/dev/null && [ -x "$OHA_BIN" ] || { echo "needs nginx and oha: run ../shared/bench/setup.sh" >&2; exit 2; }
(cd "$root" && cargo build --release -q -p raftmesh-controlplane -p raftmesh-ctl -p raftmesh-dataplane-proxy --bins)
bin=$root/target/release
rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done;
            nginx_stop "$RUN_DIR/nginx"; }
trap cleanup EXIT

# Upstream: nginx, one worker, 2-byte answer, on 18080.
nginx_upstream "$RUN_DIR/nginx" 18080 "" "$SERVER_CPU"

# Control plane.
echo "bench-admin-$$" > "$RUN_DIR/admin.token"
"$bin/meshd" dev --listen 127.0.0.1:7391 --http off --admin-token "bench-admin-$$" > "$RUN_DIR/meshd.log" 2>&1 &
pids+=($!)
export RAFTMESH_SERVER=127.0.0.1:7391 RAFTMESH_TOKEN="bench-admin-$$"
for _ in $(seq 100); do "$bin/meshctl" cluster status >/dev/null 2>&1 && break; sleep 0.1; done
printf 'kind: Service\nmetadata: {name: bench}\nspec: {ports: [{port: 80, protocol: http}]}\n' | "$bin/meshctl" apply -f - >/dev/null
server_token=$("$bin/meshctl" token create --service bench 2>/dev/null | tail -1)
client_token=$("$bin/meshctl" token create --service loadgen 2>/dev/null | tail -1)

# Server sidecar (inbound 18085 -> nginx) and client sidecar (outbound 18086), both on the server CPU.
( exec taskset -c "$SERVER_CPU" "$bin/mesh-proxy" --control-plane 127.0.0.1:7391 --service bench \
    --instance bench-1 --token "$server_token" --app-port 18080 --inbound 127.0.0.1:18085 \
    --outbound 127.0.0.1:18185 --admin 127.0.0.1:18285 --state-dir "$RUN_DIR/server" --workers 1 \
    > "$RUN_DIR/server.log" 2>&1 ) & pids+=($!)
( exec taskset -c "$SERVER_CPU" "$bin/mesh-proxy" --control-plane 127.0.0.1:7391 --service loadgen \
    --instance loadgen-1 --token "$client_token" --inbound 127.0.0.1:18186 --outbound 127.0.0.1:18086 \
    --admin 127.0.0.1:18286 --subscribe bench --state-dir "$RUN_DIR/client" --workers 1 \
    > "$RUN_DIR/client.log" 2>&1 ) & pids+=($!)
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench' http://127.0.0.1:18086/)" = 200 ] && break; sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench' http://127.0.0.1:18086/)" = 200 ] || { echo "two-hop path never answered; see $RUN_DIR/*.log" >&2; exit 1; }
curl -s http://127.0.0.1:18286/metrics | grep -q 'tls\|mtls' || true

run() {  # name url host -> "p50_us p99_us rps_ok"
  local j=$RUN_DIR/oha-$1-$r.json
  taskset -c "$CLIENT_CPU" "$OHA_BIN" --no-tui --output-format json -z "${DUR}s" -q "$RATE" --latency-correction -c "$CONNS" \
    -H "Host: $3" "$2" > "$j"
  jq -r '"\(.latencyPercentiles.p50*1e6|floor) \(.latencyPercentiles.p99*1e6|floor) \(.summary.successRate)"' "$j"
}
echo "# two-hop mTLS vs direct, fixed ${RATE} rps, ${DUR}s, oha -c$CONNS --latency-correction; proxies and nginx on CPU $SERVER_CPU, oha on CPU $CLIENT_CPU"
printf '%s\t%s\t%s\t%s\t%s\n' round target p50_us p99_us success
for r in $(seq "$ROUNDS"); do
  read -r d50 d99 dok <<< "$(run direct http://127.0.0.1:18080/ bench)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$r" direct "$d50" "$d99" "$dok"
  read -r t50 t99 tok <<< "$(run twohop http://127.0.0.1:18086/ bench)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$r" two-hop-mtls "$t50" "$t99" "$tok"
  printf '%s\t%s\t%s\t%s\n' "$r" added $((t50 - d50)) $((t99 - d99))
done
echo "# RSS after the run: server sidecar $(ps -o rss= -p "${pids[1]}") KiB, client sidecar $(ps -o rss= -p "${pids[2]}") KiB"

# The same two hops in plaintext: static configs, no identities.
printf 'kind: Service\nmetadata: {name: bench}\nspec: {ports: [{port: 80, protocol: http}]}\n' > "$RUN_DIR/server.yaml"
{ cat "$RUN_DIR/server.yaml"
  printf -- '---\nkind: Endpoint\nmetadata: {name: bench-plain}\nspec: {service: bench, address: 127.0.0.1, port: 18087}\n'; } > "$RUN_DIR/client.yaml"
( exec taskset -c "$SERVER_CPU" "$bin/mesh-proxy" --service bench --instance bench-plain --config-file "$RUN_DIR/server.yaml" \
    --app-port 18080 --inbound 127.0.0.1:18087 --outbound 127.0.0.1:18187 --admin 127.0.0.1:18287 --workers 1 \
    > "$RUN_DIR/server-plain.log" 2>&1 ) & pids+=($!)
( exec taskset -c "$SERVER_CPU" "$bin/mesh-proxy" --service loadgen --instance loadgen-plain --config-file "$RUN_DIR/client.yaml" \
    --inbound 127.0.0.1:18188 --outbound 127.0.0.1:18088 --admin 127.0.0.1:18288 --workers 1 \
    > "$RUN_DIR/client-plain.log" 2>&1 ) & pids+=($!)
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench' http://127.0.0.1:18088/)" = 200 ] && break; sleep 0.1
done
for r in $(seq "$ROUNDS"); do
  read -r p50 p99 ok <<< "$(run plain http://127.0.0.1:18088/ bench)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$r" two-hop-plaintext "$p50" "$p99" "$ok"
done
echo "# throughput, wrk -t1 -c64 ${DUR}s with Host: bench (both sidecars and nginx share CPU $SERVER_CPU)"
for r in $(seq "$ROUNDS"); do
  for t in mtls:18086 plaintext:18088; do
    rps=$(taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d"${DUR}s" -H 'Host: bench' "http://127.0.0.1:${t#*:}/" | awk '/Requests\/sec/ {print $2}')
    printf '%s\ttwo-hop-%s\trps\t%s\n' "$r" "${t%%:*}" "$rps"
  done
done
