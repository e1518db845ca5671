#!/usr/bin/env bash
# The large apply (issue 14, item 12): a running mesh (`meshd demo`: three
# nodes, six proxies, live traffic) takes TOTAL Services, applied in files
# of PER_FILE (each all or none; one apply makes one Raft entry of at most
# 1 MiB), while the demo's callers keep calling and every endpoint's health
# is sampled each second. Fails (exit 1) if an apply fails, an endpoint is
# ever seen unhealthy, a caller's success rate drops below 100 %, or the
# cluster does not hold every Service at the end.
#   bench/large-apply.sh [TOTAL] [PER_FILE]     defaults: 120000 5000
set -euo pipefail
total=${1:-120000}
per=${2:-5000}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release -p raftmesh-controlplane -p raftmesh-ctl -p raftmesh-dataplane-proxy --bins >&2
dir=$(mktemp -d /tmp/raftmesh-large-apply.XXXXXX)
demo_pid=
mon_pid=
cleanup() {
  [ -n "$mon_pid" ] && kill "$mon_pid" 2>/dev/null || true
  [ -n "$demo_pid" ] && kill "$demo_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
./target/release/meshd demo --no-story --duration 1800s --base-port 7600 >"$dir/demo.txt" 2>&1 &
demo_pid=$!
for _ in $(seq 60); do
  grep -q "export RAFTMESH_SERVER" "$dir/demo.txt" && break
  sleep 1
done
eval "$(grep -m1 -o 'export RAFTMESH_SERVER=.*' "$dir/demo.txt")"
sleep 5 # the proxies register
meshctl=./target/release/meshctl
(
  while true; do
    echo "$(date +%T) $($meshctl get ep --stale 2>&1 | grep -ci unhealthy || true)"
    sleep 1
  done
) >"$dir/health.txt" &
mon_pid=$!
python3 - "$dir" "$total" "$per" <<'EOF'
import sys
d, total, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for f, start in enumerate(range(0, total, per)):
    docs = ["kind: Service\nmetadata: {name: bulk-%d}\nspec: {ports: [{port: 80, protocol: http}]}\n" % i
            for i in range(start, min(total, start + per))]
    open("%s/part-%04d.yaml" % (d, f), "w").write("---\n".join(docs))
EOF
t0=$(date +%s.%N)
n=0
for f in "$dir"/part-*.yaml; do
  s=$(date +%s.%N)
  $meshctl apply -f "$f" >/dev/null
  n=$((n + 1))
  printf 'applied %s (%d/%d) in %s s\n' "$(basename "$f")" "$n" "$(ls "$dir"/part-*.yaml | wc -l)" \
    "$(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')" >&2
done
elapsed=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
sleep 10 # the endpoints' leases and the callers after the last apply
kill "$mon_pid"; mon_pid=
held=$($meshctl get svc --stale | grep -c bulk- || true)
unhealthy=$(awk '$2 > 0' "$dir/health.txt" | wc -l)
samples=$(wc -l <"$dir/health.txt")
drops=$(grep -o '[0-9.]*% ok' "$dir/demo.txt" | grep -vc '^100.00% ok' || true)
echo "services applied: $held of $total in $elapsed s; health samples: $samples, with an unhealthy endpoint: $unhealthy; caller windows under 100 % ok: $drops"
[ "$held" -eq "$total" ] && [ "$unhealthy" -eq 0 ] && [ "$drops" -eq 0 ]
