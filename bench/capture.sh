#!/usr/bin/env bash
# What transparent capture adds: the same proxy, the same upstream, reached
# (a) explicitly (oha -> 127.0.0.1:15001 with Host: web) and (b) captured
# (oha -> http://web/: mesh DNS gives web's virtual address, iptables
# redirects the connection to the capture listener, which reads the
# original destination and the Host), new connection per request and
# keep-alive, in interleaved rounds; then a DNS query answered by the
# proxy, straight to its port and through capture's redirect. Root only
# (a network namespace and iptables); needs nginx, oha, jq and python3.
#
#   sudo bench/capture.sh       # ROUNDS=3 DUR=8 RATE=1000
#
# Prints p50/p99 per round and path; raw oha JSON in $RUN_DIR.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"
RUN_DIR=${RUN_DIR:-/tmp/mesh-capture-run}
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-8}; RATE=${RATE:-1000}; CONNS=${CONNS:-16}
OHA_BIN=${OHA_BIN:-$HOME/.cargo/bin/oha}
CLIENT_CPU=${CLIENT_CPU:-0}; SERVER_CPU=${SERVER_CPU:-1}
[ "$(id -u)" = 0 ] || { echo "needs root (a network namespace, iptables)" >&2; exit 2; }
for t in nginx jq python3 iptables setpriv; do
  command -v "$t" >/dev/null || { echo "needs $t" >&2; exit 2; }
done
[ -x "$OHA_BIN" ] || { echo "needs oha: run ../shared/bench/setup.sh" >&2; exit 2; }
(cd "$root" && cargo build --release -q -p raftmesh-dataplane-proxy --bins)
bin=$root/target/release
ns=rmbench-cap-$$
rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR"; chmod 755 "$RUN_DIR"
in_ns() { ip netns exec "$ns" "$@"; }
cleanup() { [ -n "${proxy:-}" ] && kill "$proxy" 2>/dev/null || true
            in_ns sh -c "[ -f $RUN_DIR/nginx/nginx.pid ] && kill \$(cat $RUN_DIR/nginx/nginx.pid)" 2>/dev/null || true
            ip netns del "$ns" 2>/dev/null || true; rm -rf "/etc/netns/$ns"; }
trap cleanup EXIT

# A host of its own: loopback, an interface with a default route (virtual
# addresses must route somewhere), a resolver capture sends to the proxy.
ip netns add "$ns"
in_ns ip link set lo up
in_ns ip link add v0 type veth peer name v1
in_ns ip addr add 10.99.0.1/24 dev v0; in_ns ip link set v0 up; in_ns ip link set v1 up
in_ns ip route add default dev v0
mkdir -p "/etc/netns/$ns"; echo "nameserver 10.99.0.2" > "/etc/netns/$ns/resolv.conf"

# Upstream nginx in the host; web's endpoint.
in_ns bash -c ". '$root/bench/lib.sh'; nginx_upstream '$RUN_DIR/nginx' 18080 '' '$SERVER_CPU'"
cat > "$RUN_DIR/mesh.yaml" <<'YAML'
kind: Service
metadata: {name: web}
spec: {vip: 240.240.0.7, ports: [{port: 80, protocol: http}]}
---
kind: Endpoint
metadata: {name: web-1}
spec: {service: web, address: 127.0.0.1, port: 18080}
YAML
chmod 644 "$RUN_DIR/mesh.yaml"
# The proxy as uid 4242 (capture leaves its own connections alone).
in_ns setpriv --reuid=4242 --regid=4242 --clear-groups taskset -c "$SERVER_CPU" "$bin/mesh-proxy" \
  --config-file "$RUN_DIR/mesh.yaml" --service bench --workers 1 \
  --capture 127.0.0.1:15002 --dns 127.0.0.1:15053 --dns-upstream 10.99.0.2:53 \
  > "$RUN_DIR/proxy.log" 2>&1 & proxy=$!
in_ns "$bin/mesh-proxy" capture install --proxy-uid 4242 --dns-port 15053 >/dev/null
for _ in $(seq 100); do
  [ "$(in_ns curl -s -o /dev/null -w '%{http_code}' http://web/)" = 200 ] && break; sleep 0.1
done
[ "$(in_ns curl -s -o /dev/null -w '%{http_code}' http://web/)" = 200 ] || { echo "http://web/ never answered; see $RUN_DIR/proxy.log" >&2; exit 1; }

run() {  # name url extra-oha-flags... -> "p50_us p99_us success"
  local name=$1 url=$2; shift 2
  local j=$RUN_DIR/oha-$name-$r.json
  in_ns taskset -c "$CLIENT_CPU" "$OHA_BIN" --no-tui --output-format json -z "${DUR}s" -q "$RATE" \
    --latency-correction -c "$CONNS" "$@" "$url" > "$j"
  jq -r '"\(.latencyPercentiles.p50*1e6|floor) \(.latencyPercentiles.p99*1e6|floor) \(.summary.successRate)"' "$j"
}

printf '%-6s %-32s %9s %9s %8s\n' round path p50_us p99_us success
for r in $(seq "$ROUNDS"); do
  for mode in close keepalive; do
    flags=(); [ "$mode" = close ] && flags=(--disable-keepalive)
    read -r a50 a99 aok < <(run "explicit-$mode" http://127.0.0.1:15001/ -H "Host: web" "${flags[@]}")
    read -r b50 b99 bok < <(run "captured-$mode" http://web/ "${flags[@]}")
    printf '%-6s %-32s %9s %9s %8s\n' "$r" "explicit :15001 ($mode)" "$a50" "$a99" "$aok"
    printf '%-6s %-32s %9s %9s %8s\n' "$r" "captured http://web/ ($mode)" "$b50" "$b99" "$bok"
  done
done

# DNS: the proxy's answer for `web`, asked at its port and through capture.
in_ns python3 - <<'PY'
import socket, struct, time, random
def query(name):
    q = struct.pack(">HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack(">HH", 1, 1)
def measure(addr, n=3000):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    out = []
    for _ in range(n):
        t = time.perf_counter(); s.sendto(query("web"), addr); s.recv(512)
        out.append((time.perf_counter() - t) * 1e6)
    out.sort(); return out[len(out)//2], out[int(len(out)*0.99)]
for label, addr in [("dns at the proxy's port", ("127.0.0.1", 15053)),
                    ("dns to the host resolver (captured)", ("10.99.0.2", 53))]:
    p50, p99 = measure(addr)
    print(f"{label:<38} p50 {p50:7.1f} us  p99 {p99:7.1f} us")
PY
