#!/usr/bin/env bash
# mesh-proxy's memory over a long run at a fixed rate: RSS every 30 s while
# oha sends 2,000 requests/s through the inbound path to an nginx upstream.
#   bench/rss.sh            # DUR=600 RATE=2000
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
DUR=${DUR:-600}; RATE=${RATE:-2000}; OHA_BIN=${OHA_BIN:-$HOME/.cargo/bin/oha}
RUN_DIR=${RUN_DIR:-/tmp/mesh-rss-run}
rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR"
(cd "$root" && cargo build --release -q -p raftmesh-dataplane-proxy --bin mesh-proxy)
nginx_upstream "$RUN_DIR/nginx" 18090
printf 'kind: Service\nmetadata: {name: bench}\nspec: {ports: [{port: 80}]}\n' > "$RUN_DIR/mesh.yaml"
"$root/target/release/mesh-proxy" --service bench --instance bench-rss --config-file "$RUN_DIR/mesh.yaml" \
  --inbound 127.0.0.1:18091 --app-port 18090 --outbound 127.0.0.1:18092 --admin 127.0.0.1:18093 --workers 1 \
  > "$RUN_DIR/proxy.log" 2>&1 &
px=$!
trap 'kill $px 2>/dev/null; nginx_stop "$RUN_DIR/nginx"' EXIT
sleep 0.5
echo "t_s rss_kib"
echo "0 $(ps -o rss= -p $px)"
"$OHA_BIN" --no-tui -z "${DUR}s" -q "$RATE" -c 32 --output-format json http://127.0.0.1:18091/ > "$RUN_DIR/oha.json" &
oha=$!
for t in $(seq 30 30 "$DUR"); do sleep 30; echo "$t $(ps -o rss= -p $px)"; done
wait $oha
echo "# requests: $(jq '.summary.successRate' "$RUN_DIR/oha.json") success rate, p99 $(jq '.latencyPercentiles.p99*1e6|floor' "$RUN_DIR/oha.json") us"
