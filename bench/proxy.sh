#!/usr/bin/env bash
# mesh-proxy beside nginx, HAProxy and Envoy in one interleaved run, with the
# scripts in ../shared/bench (run its setup.sh once, as root, first).
#
#   bench/proxy.sh                 # one-hop inbound: wrk/oha -> mesh-proxy :18085 -> nginx :18080
#   ROUNDS=3 DUR=10 TARGETS="direct nginx haproxy envoy" bench/proxy.sh
#   PROXY_FLAGS="--http1-fast-path false" bench/proxy.sh   # more mesh-proxy flags
#   MESH_PROXY=/path/to/mesh-proxy bench/proxy.sh          # another build
#
# mesh-proxy runs like the peers: pinned to CPU 1 with the upstream, one
# worker thread, static config (--config-file, no control plane), plaintext
# inbound (no workload identity without a control plane). Results: the
# table run.sh prints, raw rows in $RUN_DIR/results.tsv.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bench=${BENCH_DIR:-$root/../shared/bench}
[ -x "$bench/run.sh" ] || { echo "no $bench/run.sh: set BENCH_DIR to the shared bench scripts" >&2; exit 2; }
if [ -z "${MESH_PROXY:-}" ]; then
  (cd "$root" && cargo build --release -q -p raftmesh-dataplane-proxy --bin mesh-proxy)
  MESH_PROXY=$root/target/release/mesh-proxy
fi
work=$(mktemp -d /tmp/mesh-proxy-bench.XXXXXX)
trap 'kill "$(cat "$work/pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$work"' EXIT
# The proxy's own service; inbound traffic goes to --app-port.
cat > "$work/mesh.yaml" <<YAML
kind: Service
metadata: {name: bench}
spec: {ports: [{port: 80, protocol: http}]}
YAML
( exec taskset -c "${SERVER_CPU:-1}" "$MESH_PROXY" ${PROXY_FLAGS:-} \
    --service bench --instance bench-1 --config-file "$work/mesh.yaml" \
    --inbound 127.0.0.1:18085 --app-port 18080 \
    --outbound 127.0.0.1:18095 --admin 127.0.0.1:18096 --workers 1 \
    > "$work/proxy.log" 2>&1 ) &
echo $! > "$work/pid"
for _ in $(seq 50); do curl -sf http://127.0.0.1:18096/live >/dev/null && break; sleep 0.1; done
EXTRA_TARGET="mesh-proxy:18085:$work/pid" "$bench/run.sh" "$@"
