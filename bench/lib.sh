# Shared by bench/run and bench/instructions (sourced, after `wasm` and `api_key` are set): a
# scratch directory and the processes started in it, stopped on exit; free ports; waiting for a
# server to answer; the nginx configs (backend and reverse proxy) and the Sluice configs (no plugins, api-key-auth, the three
# plugins) both benchmarks compare.

# --- processes, and stopping them --------------------------------------------------------------
work=$(mktemp -d /tmp/sluice-bench.XXXXXX)
started=() # every pid this script started, and only those
stop_all() {
    trap - EXIT INT TERM
    local pid
    for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${started[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Free TCP ports on 127.0.0.1, below the kernel's ephemeral range: not listening now, and not
# handed out before. `free_port VAR` sets VAR (no subshell, so `taken` remembers every port).
taken=" $(ss -Htln | awk '{n = split($4, a, ":"); printf "%s ", a[n]}')"
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 12000))
        [[ $taken == *" $port "* ]] && continue
        taken+="$port "
        printf -v "$1" %s "$port"
        return
    done
}

# waits until `address` answers (any status) while `pid` lives; else shows `log` and exits
await() { # address, pid, log, [seconds, default 30]
    local address=$1 pid=$2 log=$3 seconds=${4:-30}
    for _ in $(seq $((seconds * 10))); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "process $pid ($address) died; its log:" >&2
            cat "$log" >&2 || true
            exit 1
        fi
        curl -sk -o /dev/null --max-time 1 "$address" && return
        sleep 0.1
    done
    echo "$address not ready after $seconds s; log:" >&2
    cat "$log" >&2 || true
    exit 1
}

nginx_common() { # prefix directory
    cat <<NGINX
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    sendfile on;
    tcp_nopush on;
NGINX
}

# The backend: /v1/hello and /hello answer the 6-byte "hello\n" from memory, every other path is a
# static file under $work/www (sendfile); / answers 204, for readiness probes.
nginx_backend() { # prefix directory
    nginx_common "$1"
    cat <<NGINX
    server {
        listen 127.0.0.1:$backend_port;
        root $work/www;
        default_type application/octet-stream;
        location = / { return 204; }
        location / { }
        location = /v1/hello { default_type text/plain; return 200 "hello\n"; }
        location = /hello { default_type text/plain; return 200 "hello\n"; }
    }
}
NGINX
}

nginx_proxy() { # prefix directory, listen directive, extra server lines
    nginx_common "$1"
    cat <<NGINX
    upstream backend {
        server 127.0.0.1:$backend_port;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen $2;
        $3
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGINX
}

# --- Sluice's plugins and config -------------------------------------------------------------
plugin_auth="[[plugin]]
name = \"auth\"
path = \"$wasm/api_key_auth.wasm\"
[plugin.config.keys]
bench = \"$api_key\""
plugin_rewrite="[[plugin]]
name = \"rewrite\"
path = \"$wasm/rewrite.wasm\"
[plugin.config]
rules = [{ prefix = \"/v1\", replace = \"/\" }]
response_headers = { set = { x-served-by = \"sluice\" } }"
plugin_limit="[[plugin]]
name = \"limit\"
path = \"$wasm/rate_limit.wasm\"
[plugin.config]
limit = 1000000000      # never reached
window_ms = 60000
key = \"context:consumer\""

sluice_config() { # listen port, admin port, route plugins, [[plugin]] blocks, [listener protocol and tls]
    local protocol=${5:-'protocol = "http"'}
    cat <<TOML
[admin]
listen = "127.0.0.1:$2"

[log]
access = false

[server]
watch = false
drain_timeout_ms = 1000

[[listener]]
name = "bench"
listen = "127.0.0.1:$1"
$protocol

$4

[[upstream]]
name = "backend"
backends = ["127.0.0.1:$backend_port"]

[[route]]
name = "all"
path_prefix = "/"
upstream = "backend"
plugins = [$3]
TOML
}
