#!/usr/bin/env bash
# The federation benchmark: two fresh 3-node clusters on loopback, peered;
# how long exports take to reach a proxy of the importing cluster, and the
# latency the east-west gateway adds (chaos-tests/src/bin/federation-bench.rs).
#   bench/federation.sh [--services 1000 --gateways 10 --batch 100 --requests 3000] [--nginx]
# --nginx also measures nginx (stream ssl_preread) as the SNI gateway in the
# same run (apt-get install nginx libnginx-mod-stream).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release -p raftmesh-controlplane -p raftmesh-dataplane-proxy --bins >&2
cargo build --release -p raftmesh-chaos-tests --bin federation-bench >&2
RAFTMESH_BIN_DIR="$root/target/release" ./target/release/federation-bench "$@"
