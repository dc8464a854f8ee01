#!/usr/bin/env bash
# RADIUS beside FreeRADIUS (docs/benchmarks.md, "RADIUS beside FreeRADIUS"):
# the same load generator, closed loop, 64 requests outstanding (4 sockets x
# 16), against
#   1. Watchword's RADIUS listener: a token code as the password, each code
#      accepted once (replay state durable before the Access-Accept);
#   2. FreeRADIUS's own PAP with a `files` users file, Message-Authenticator
#      required, its packaged thread pool (5 to 32 threads); Debian 12's
#      3.2.1 signs no reply, so the generator checks only their Response
#      Authenticator there;
# then prints both, and each process's CPU time over its run (how we know
# the generator is not the bottleneck). Everything listens on loopback and
# is stopped by pid at the end.
#
# bash benches/radius/bench.sh            (ROUNDS=3 USERS=300000 DURATION=10s)
# Needs: a release build (cargo build --release -p watchword-gateway
# -p watchword-loadgen) and FreeRADIUS (apt-get install freeradius).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
USERS=${USERS:-300000}
DURATION=${DURATION:-10s}
BIN=target/release
SECRET=bench-radius-secret-0123
FR_PORT=18122
FR=$(command -v freeradius || command -v radiusd || true)
[ -n "$FR" ] || { echo "FreeRADIUS is not installed (apt-get install freeradius)"; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# CPU seconds (user + system) of a process so far.
cpu() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat"; }

# One closed-loop run of the generator; prints its summary and CPU times.
run() {
  local label=$1 server=$2; shift 2
  local s0 g0 gen
  s0=$(cpu "$server")
  "$BIN/watchword-loadgen" --closed -c 4 --depth 16 --duration "$DURATION" --warmup 2s \
    --radius-secret "$SECRET" --users "$USERS" "$@" > "$work/out" 2>&1 &
  gen=$!
  g1=0; s1=$s0
  while kill -0 "$gen" 2>/dev/null; do
    g1=$(cpu "$gen" 2>/dev/null || echo "$g1")
    s1=$(cpu "$server")
    sleep 0.2
  done
  wait "$gen" || { cat "$work/out"; exit 1; }
  echo "== $label: $(grep -E 'achieved' "$work/out" | head -1)"
  grep -E "outcomes|response" "$work/out" | head -2
  echo "   CPU over the run (provisioning and warm-up included): server $(awk "BEGIN { print $s1 - $s0 }") s, generator $g1 s"
}

# FreeRADIUS: its own minimal configuration, PAP from a users file.
fr_dir="$work/freeradius"
mkdir -p "$fr_dir"
awk -v n="$USERS" 'BEGIN { for (k = 0; k < n; k++) printf "lg-totp-%d Cleartext-Password := \"lg-password\"\n", k }' > "$fr_dir/users"
: > "$fr_dir/dictionary"
cat > "$fr_dir/radiusd.conf" <<EOF
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = $fr_dir
sbindir = /usr/sbin
logdir = $fr_dir
raddbdir = $fr_dir
radacctdir = $fr_dir
name = radiusd
confdir = $fr_dir
modconfdir = $fr_dir
run_dir = $fr_dir
db_dir = $fr_dir
libdir = /usr/lib/freeradius
dictdir = /usr/share/freeradius
pidfile = $fr_dir/radiusd.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 65536
hostname_lookups = no
log {
  destination = stdout
  auth = no
}
security {
  allow_core_dumps = no
  max_attributes = 200
  reject_delay = 0
  status_server = no
}
thread pool {
  start_servers = 5
  max_servers = 32
  min_spare_servers = 3
  max_spare_servers = 10
  max_requests_per_server = 0
}
client loadgen {
  ipaddr = 127.0.0.1
  secret = $SECRET
  require_message_authenticator = yes
}
modules {
  files {
    filename = $fr_dir/users
  }
  pap {
  }
}
server default {
  listen {
    type = auth
    ipaddr = 127.0.0.1
    port = $FR_PORT
  }
  authorize {
    files
    pap
  }
  authenticate {
    Auth-Type PAP {
      pap
    }
  }
  post-auth {
  }
}
EOF

for round in $(seq 1 "$ROUNDS"); do
  echo "-- round $round"
  # Watchword, fresh data each round (tokens imported by the generator).
  rm -rf /tmp/watchword-radius-bench
  "$BIN/watchword" serve --config benches/configs/radius.toml > "$work/gw.log" 2>&1 &
  gw=$!; pids+=("$gw")
  for _ in $(seq 50); do grep -q "listening" "$work/gw.log" && break; sleep 0.1; done
  run "watchword (token codes)" "$gw" --target radius://127.0.0.1:18121 --mix totp
  kill "$gw"; wait "$gw" 2>/dev/null || true

  "$FR" -f -d "$fr_dir" -n radiusd -l stdout > "$work/fr.log" 2>&1 &
  fr=$!; pids+=("$fr")
  for _ in $(seq 200); do grep -q "Ready to process requests" "$work/fr.log" && break; sleep 0.1; done
  run "freeradius (PAP, files)" "$fr" --target radius://127.0.0.1:$FR_PORT --mix pap --radius-gateway none \
    --radius-unsigned-replies
  kill "$fr"; wait "$fr" 2>/dev/null || true
done
