#!/usr/bin/env bash
# The fleet benchmark: a fresh 3-node cluster, then the fleet simulator.
#   bench/fleet.sh [fleet args...]   e.g. --proxies 10000 --services 200 --subscriptions 3 --changes 100
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release -p raftmesh-controlplane --bins >&2
cargo build --release -p raftmesh-chaos-tests --bin fleet >&2
dir=$(mktemp -d /tmp/raftmesh-fleet.XXXXXX)
trap 'bench/cluster.sh stop "$dir"; rm -rf "$dir"' EXIT
bench/cluster.sh start "$dir" >&2
./target/release/fleet --control-plane 127.0.0.1:7301,127.0.0.1:7302,127.0.0.1:7303 \
  --token-file "$dir/admin.token" "$@"
