#!/usr/bin/env bash
# Memory per open connection: N keep-alive HTTP/1.1 client connections held
# open through each proxy's inbound path, each after one request (so that a
# proxy holding one upstream connection per client connection has opened
# it). Prints each proxy's RSS before, with the N connections open, and the
# difference per connection. One worker each; upstream nginx.
#   bench/conns.sh                 # N=2000: mesh-proxy, nginx, HAProxy, Envoy
#   N=5000 TARGETS="mesh-proxy" bench/conns.sh
#   TARGETS="mesh-proxy mesh-proxy-hyper" bench/conns.sh  # the fast path, and hyper for every request
#   MESH_PROXY=/path/to/mesh-proxy bench/conns.sh         # another build
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
N=${N:-2000}; TARGETS=${TARGETS:-mesh-proxy nginx haproxy envoy}
ENVOY_BIN=${ENVOY_BIN:-/opt/bench-envoy/envoy}
RUN_DIR=${RUN_DIR:-/tmp/mesh-conns-run}
command -v nginx >/dev/null && command -v python3 >/dev/null \
  || { echo "needs nginx and python3 (HAProxy and Envoy optional: ../shared/bench/setup.sh)" >&2; exit 2; }
ulimit -n $((N * 4 + 4096))
if [ -z "${MESH_PROXY:-}" ]; then
  (cd "$root" && cargo build --release -q -p raftmesh-dataplane-proxy --bin mesh-proxy)
  MESH_PROXY=$root/target/release/mesh-proxy
fi
rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR"/px/tmp
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
            nginx_stop "$RUN_DIR/up"; nginx_stop "$RUN_DIR/px"; }
trap cleanup EXIT
# the upstream must take N connections from a proxy that opens one per client
NGINX_CONNS=$((N + 1024)) nginx_upstream "$RUN_DIR/up" 18180
declare -A PORT PID
for t in $TARGETS; do
  case $t in
    mesh-proxy|mesh-proxy-hyper)
      printf 'kind: Service\nmetadata: {name: bench}\nspec: {ports: [{port: 80, protocol: http}]}\n' > "$RUN_DIR/mesh.yaml"
      if [ "$t" = mesh-proxy ]; then ports=(18185 18186 18187); flags=; else ports=(18195 18196 18197); flags="--http1-fast-path false"; fi
      "$MESH_PROXY" --service bench --instance "$t" --config-file "$RUN_DIR/mesh.yaml" \
        --inbound "127.0.0.1:${ports[0]}" --app-port 18180 --outbound "127.0.0.1:${ports[1]}" --admin "127.0.0.1:${ports[2]}" \
        --workers 1 $flags > "$RUN_DIR/$t.log" 2>&1 &
      pids+=($!); PID[$t]=$!; PORT[$t]=${ports[0]} ;;
    nginx)
      cat > "$RUN_DIR/px/nginx.conf" <<CONF
worker_processes 1; pid $RUN_DIR/px/nginx.pid; error_log $RUN_DIR/px/error.log;
events { worker_connections $((N + 1024)); }
http { access_log off; client_body_temp_path $RUN_DIR/px/tmp; proxy_temp_path $RUN_DIR/px/tmp;
  keepalive_timeout 300s; keepalive_requests 100000000;
  upstream app { server 127.0.0.1:18180; keepalive 256; }
  server { listen 127.0.0.1:18181 backlog=4096;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
      nginx -p "$RUN_DIR/px/" -c "$RUN_DIR/px/nginx.conf"; sleep 0.3
      PID[$t]=$(pgrep -P "$(cat "$RUN_DIR/px/nginx.pid")" | head -1); PORT[$t]=18181 ;;
    haproxy)
      command -v haproxy >/dev/null || { echo "# no haproxy, skipped"; continue; }
      cat > "$RUN_DIR/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn $((N + 1024))
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  http-reuse always
frontend f
  bind 127.0.0.1:18182
  default_backend b
backend b
  server app 127.0.0.1:18180
CONF
      haproxy -f "$RUN_DIR/haproxy.cfg" > "$RUN_DIR/haproxy.log" 2>&1 &
      pids+=($!); PID[$t]=$!; PORT[$t]=18182 ;;
    envoy)
      [ -x "$ENVOY_BIN" ] || { echo "# no Envoy at $ENVOY_BIN, skipped"; continue; }
      # the shared bench's Envoy, moved to this script's ports
      sed -e 's/port_value: 18083/port_value: 18183/; s/port_value: 18080/port_value: 18180/; s/port_value: 19901/port_value: 19911/' \
        "$root/../shared/bench/conf/envoy.yaml" > "$RUN_DIR/envoy.yaml"
      "$ENVOY_BIN" -c "$RUN_DIR/envoy.yaml" --concurrency 1 --disable-hot-restart -l warn > "$RUN_DIR/envoy.log" 2>&1 &
      pids+=($!); PID[$t]=$!; PORT[$t]=18183 ;;
    *) echo "unknown target $t (mesh-proxy, mesh-proxy-hyper, nginx, haproxy, envoy)" >&2; exit 2 ;;
  esac
done
sleep 2
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
printf 'target\tconnections\trss_before_kib\trss_open_kib\tkib_per_connection\n'
for t in $TARGETS; do
  [ -n "${PID[$t]:-}" ] || continue
  # warm: the first request's one-time allocations
  curl -sf "http://127.0.0.1:${PORT[$t]}/" > /dev/null || { echo "$t does not answer on ${PORT[$t]}; see $RUN_DIR" >&2; exit 1; }
  before=$(rss "${PID[$t]}")
  # hold N connections open, each after one request; print when all are open
  python3 - "${PORT[$t]}" "$N" "$RUN_DIR/ready-$t" <<'PY' &
import socket, sys, time
port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf or not buf.endswith(b"ok"):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(f"connection {i} closed before its answer")
        buf += chunk
    if b" 200 " not in buf.split(b"\r\n", 1)[0]:
        sys.exit(f"connection {i}: {buf.splitlines()[0]!r}")
    conns.append(s)
open(ready, "w").close()
time.sleep(300)
PY
  client=$!
  for _ in $(seq 600); do [ -f "$RUN_DIR/ready-$t" ] && break; kill -0 "$client" 2>/dev/null || break; sleep 0.1; done
  [ -f "$RUN_DIR/ready-$t" ] || { echo "$t: the client could not open $N connections" >&2; exit 1; }
  sleep 1
  open=$(rss "${PID[$t]}")
  kill "$client" 2>/dev/null || true; wait "$client" 2>/dev/null || true
  printf '%s\t%s\t%s\t%s\t%.1f\n' "$t" "$N" "$before" "$open" "$(awk -v a="$before" -v b="$open" -v n="$N" 'BEGIN{print (b-a)/n}')"
  sleep 1
done
