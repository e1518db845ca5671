#!/usr/bin/env bash
# Starts a local 3-node meshd cluster (release build) for benchmarks:
#   bench/cluster.sh start DIR    # prints RAFTMESH_SERVER=... on stdout
#   bench/cluster.sh stop DIR
# Nodes listen on 127.0.0.1:7301-7303; state, logs and pids go to DIR.
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
meshd=$root/target/release/meshd
case $cmd in
start)
  [ -x "$meshd" ] && [ -x "$root/target/release/meshctl" ] || (cd "$root" && cargo build --release -p raftmesh-controlplane -p raftmesh-ctl --bins >&2)
  mkdir -p "$dir"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/admin.token"
  initial=1=127.0.0.1:7301,2=127.0.0.1:7302,3=127.0.0.1:7303
  for i in 1 2 3; do
    "$meshd" server --id $i --listen 127.0.0.1:730$i --http off --data-dir "$dir/n$i" \
      --initial-cluster $initial --admin-token-file "$dir/admin.token" >"$dir/n$i.log" 2>&1 &
    echo $! > "$dir/n$i.pid"
  done
  export RAFTMESH_SERVER=127.0.0.1:7301,127.0.0.1:7302,127.0.0.1:7303
  export RAFTMESH_TOKEN=$(cat "$dir/admin.token")
  for _ in $(seq 100); do
    "$root/target/release/meshctl" cluster status >/dev/null 2>&1 && break
    sleep 0.2
  done
  echo "RAFTMESH_SERVER=$RAFTMESH_SERVER"
  ;;
stop)
  for f in "$dir"/n*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; done
  ;;
esac
