#!/usr/bin/env bash
# System calls per request on the one-hop inbound path, for mesh-proxy
# (fast path and hyper) and the peers, counted by `strace -c` attached to
# each proxy while oha sends N keep-alive requests over C connections.
# strace slows every call down, so time means nothing here; the counts do.
#   bench/syscalls.sh                        # N=20000 C=64: mesh-proxy, mesh-proxy-hyper, nginx, haproxy
#   N=5000 C=8 TARGETS="mesh-proxy nginx" bench/syscalls.sh
#   MESH_PROXY=/path/to/mesh-proxy bench/syscalls.sh
# Needs strace, nginx, oha (../shared/bench/setup.sh); HAProxy optional.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
N=${N:-20000}; C=${C:-64}
TARGETS=${TARGETS:-mesh-proxy mesh-proxy-hyper nginx haproxy}
RUN_DIR=${RUN_DIR:-/tmp/mesh-syscalls-run}
OHA_BIN=${OHA_BIN:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
command -v strace >/dev/null && command -v nginx >/dev/null && [ -x "$OHA_BIN" ] \
  || { echo "needs strace (apt-get install strace), nginx and oha (../shared/bench/setup.sh)" >&2; exit 2; }
if [ -z "${MESH_PROXY:-}" ]; then
  (cd "$root" && cargo build --release -q -p raftmesh-dataplane-proxy --bin mesh-proxy)
  MESH_PROXY=$root/target/release/mesh-proxy
fi
rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR"/px/tmp
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
            nginx_stop "$RUN_DIR/up"; nginx_stop "$RUN_DIR/px"; }
trap cleanup EXIT
nginx_upstream "$RUN_DIR/up" 18280 "" 1
printf 'kind: Service\nmetadata: {name: bench}\nspec: {ports: [{port: 80, protocol: http}]}\n' > "$RUN_DIR/mesh.yaml"
declare -A PORT PID
for t in $TARGETS; do
  case $t in
    mesh-proxy|mesh-proxy-hyper)
      if [ "$t" = mesh-proxy ]; then ports=(18285 18286 18287); flags=; else ports=(18295 18296 18297); flags="--http1-fast-path false"; fi
      taskset -c 1 "$MESH_PROXY" --service bench --instance "$t" --config-file "$RUN_DIR/mesh.yaml" \
        --inbound "127.0.0.1:${ports[0]}" --app-port 18280 --outbound "127.0.0.1:${ports[1]}" \
        --admin "127.0.0.1:${ports[2]}" --workers 1 $flags > "$RUN_DIR/$t.log" 2>&1 &
      pids+=($!); PID[$t]=$!; PORT[$t]=${ports[0]} ;;
    nginx)
      cat > "$RUN_DIR/px/nginx.conf" <<CONF
worker_processes 1; pid $RUN_DIR/px/nginx.pid; error_log $RUN_DIR/px/error.log;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $RUN_DIR/px/tmp; proxy_temp_path $RUN_DIR/px/tmp;
  keepalive_timeout 300s; keepalive_requests 100000000;
  upstream app { server 127.0.0.1:18280; keepalive 256; }
  server { listen 127.0.0.1:18281 backlog=4096;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
      taskset -c 1 nginx -p "$RUN_DIR/px/" -c "$RUN_DIR/px/nginx.conf"; sleep 0.3
      PID[$t]=$(pgrep -P "$(cat "$RUN_DIR/px/nginx.pid")" | head -1); PORT[$t]=18281 ;;
    haproxy)
      command -v haproxy >/dev/null || { echo "# no haproxy, skipped"; continue; }
      sed -e 's/18082/18282/; s/18080/18280/' "$root/../shared/bench/conf/haproxy.cfg" > "$RUN_DIR/haproxy.cfg"
      taskset -c 1 haproxy -f "$RUN_DIR/haproxy.cfg" > "$RUN_DIR/haproxy.log" 2>&1 &
      pids+=($!); PID[$t]=$!; PORT[$t]=18282 ;;
    *) echo "unknown target $t (mesh-proxy, mesh-proxy-hyper, nginx, haproxy)" >&2; exit 2 ;;
  esac
done
sleep 1.5
printf 'target\trequests\tsyscalls_per_request\tby call (per request)\n'
for t in $TARGETS; do
  [ -n "${PID[$t]:-}" ] || continue
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:${PORT[$t]}/" >/dev/null && break; sleep 0.1; done
  # warm the connections to the app, then count
  taskset -c 0 "$OHA_BIN" --no-tui -n 2000 -c "$C" "http://127.0.0.1:${PORT[$t]}/" > /dev/null
  strace -c -f -q -o "$RUN_DIR/strace-$t.txt" -p "${PID[$t]}" &
  st=$!; sleep 1
  taskset -c 0 "$OHA_BIN" --no-tui -n "$N" -c "$C" "http://127.0.0.1:${PORT[$t]}/" > "$RUN_DIR/oha-$t.txt"
  sleep 0.5; kill -INT "$st"; wait "$st" 2>/dev/null || true
  # strace -c's table: % time, seconds, usecs/call, calls, errors, syscall
  awk -v n="$N" -v t="$t" '
    $1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { name=$NF; calls=$4; tot+=calls; by[name]=calls }
    END { s=""; for (k in by) if (by[k]/n >= 0.01) s=s sprintf("%s %.2f  ", k, by[k]/n);
          printf "%s\t%d\t%.2f\t%s\n", t, n, tot/n, s }' "$RUN_DIR/strace-$t.txt"
done
