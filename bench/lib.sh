# Shared by the bench scripts: `. "$(dirname "$0")/lib.sh"`.

# nginx_upstream DIR PORT [LISTEN_FLAGS] [CPU]: a one-worker nginx answering
# "ok" on 127.0.0.1:PORT (LISTEN_FLAGS e.g. "http2" for h2c), pinned to CPU
# when given; config, logs and DIR/nginx.pid in DIR. Stop it with
# nginx_stop DIR. NGINX_CONNS sets worker_connections (default 4096).
nginx_upstream() {
  local dir=$1 port=$2 flags=${3:-} cpu=${4:-}
  mkdir -p "$dir/tmp"
  cat > "$dir/nginx.conf" <<CONF
worker_processes 1; pid $dir/nginx.pid; error_log $dir/error.log;
events { worker_connections ${NGINX_CONNS:-4096}; }
http { access_log off; client_body_temp_path $dir/tmp; keepalive_requests 100000000;
  server { listen 127.0.0.1:$port $flags; location / { return 200 "ok"; } } }
CONF
  if [ -n "$cpu" ]; then
    taskset -c "$cpu" nginx -p "$dir/" -c "$dir/nginx.conf"
  else
    nginx -p "$dir/" -c "$dir/nginx.conf"
  fi
}

nginx_stop() {
  [ -f "$1/nginx.pid" ] && kill "$(cat "$1/nginx.pid")" 2>/dev/null || true
}
