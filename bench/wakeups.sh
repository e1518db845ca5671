#!/usr/bin/env bash
# What a proxy costs the upstream beside it: in bench/proxy.sh the proxy and
# the upstream nginx share one CPU, so requests/s is bounded by the two
# together. This counts, per request, the upstream's system calls and
# epoll_wait calls (`perf stat` tracepoints) and both processes' context
# switches (/proc/<pid>/status) while wrk -t1 -c64 runs through nginx and
# mesh-proxy in turn, ROUNDS times.
#   bench/wakeups.sh                   # ROUNDS=2 DUR=4
#   MESH_PROXY=/path/to/mesh-proxy bench/wakeups.sh
# Needs perf, nginx, wrk (../shared/bench/setup.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
conf=${BENCH_DIR:-$root/../shared/bench}/conf
ROUNDS=${ROUNDS:-2}; DUR=${DUR:-4}
command -v perf >/dev/null && command -v nginx >/dev/null && command -v wrk >/dev/null \
  || { echo "needs perf (apt-get install linux-perf), nginx and wrk (../shared/bench/setup.sh)" >&2; exit 2; }
if [ -z "${MESH_PROXY:-}" ]; then
  (cd "$root" && cargo build --release -q -p raftmesh-dataplane-proxy --bin mesh-proxy)
  MESH_PROXY=$root/target/release/mesh-proxy
fi
w=$(mktemp -d /tmp/mesh-wakeups.XXXXXX)
mkdir -p "$w/up/tmp" "$w/px/tmp"
# The ports of ../shared/bench/run.sh: upstream 18080, nginx 18081.
taskset -c 1 nginx -p "$w/up/" -c "$conf/nginx-upstream.conf"
taskset -c 1 nginx -p "$w/px/" -c "$conf/nginx-proxy.conf"
printf 'kind: Service\nmetadata: {name: bench}\nspec: {ports: [{port: 80, protocol: http}]}\n' > "$w/mesh.yaml"
taskset -c 1 "$MESH_PROXY" --service bench --instance bench-1 --config-file "$w/mesh.yaml" \
  --inbound 127.0.0.1:18085 --app-port 18080 --outbound 127.0.0.1:18095 --admin 127.0.0.1:18096 \
  --workers 1 > "$w/proxy.log" 2>&1 &
mp=$!
trap 'kill $mp 2>/dev/null; kill "$(cat "$w/up/nginx-up.pid")" "$(cat "$w/px/nginx-px.pid")" 2>/dev/null; rm -rf "$w"' EXIT
for _ in $(seq 50); do curl -sf http://127.0.0.1:18096/live >/dev/null && break; sleep 0.1; done
up=$(pgrep -P "$(cat "$w/up/nginx-up.pid")")
ngx=$(pgrep -P "$(cat "$w/px/nginx-px.pid")")
switches() { awk '/^(non)?voluntary_ctxt_switches/{printf "%s ", $2}' "/proc/$1/status"; }
printf '%-6s %-10s %9s %9s %9s %9s\n' round proxy rps up_sys up_epoll px_preempt
for r in $(seq "$ROUNDS"); do
  for t in nginx:18081:$ngx mesh-proxy:18085:$mp; do
    IFS=: read -r name port pid <<< "$t"
    taskset -c 0 wrk -t1 -c64 -d2s "http://127.0.0.1:$port/" > /dev/null
    taskset -c 0 wrk -t1 -c64 -d$((DUR + 2))s "http://127.0.0.1:$port/" > "$w/wrk" &
    wrk=$!
    sleep 1
    read -r _ before <<< "$(switches "$pid")"
    perf stat -x, -e 'raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait' -p "$up" -o "$w/perf" sleep "$DUR"
    read -r _ after <<< "$(switches "$pid")"
    wait "$wrk"
    rps=$(awk '/Requests\/sec/{print $2}' "$w/wrk")
    n=$(awk -v r="$rps" -v d="$DUR" 'BEGIN{print r*d}')
    sys=$(awk -F, '/raw_syscalls/{print $1}' "$w/perf")
    ep=$(awk -F, '/epoll_wait/{print $1}' "$w/perf")
    awk -v r="$r" -v t="$name" -v rps="$rps" -v n="$n" -v s="$sys" -v e="$ep" -v p=$((after - before)) \
      'BEGIN{printf "%-6s %-10s %9.0f %9.2f %9.2f %9.2f\n", r, t, rps, s/n, e/n, p/n}'
  done
done
echo "# up_sys, up_epoll: the upstream's system calls and epoll_waits per request;"
echo "# px_preempt: the proxy's involuntary context switches per request (the upstream, woken, took the CPU)."
