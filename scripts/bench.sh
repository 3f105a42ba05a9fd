#!/usr/bin/env bash
# Measures botline serve (embedded store, durable acknowledgements) with botline-bench on this
# machine: peak throughput, acknowledgement latency at 2,000 updates/s, receipt-to-stored
# latency at 1,000 updates/s, and resident memory idle and under load. Every run starts a fresh
# server on a fresh data directory, and every run checks that each acknowledged update was
# stored exactly once, byte for byte. Results: bench-results/*.json and a summary on stdout.
#
#   scripts/bench.sh            # all scenarios (about 2 minutes after the release build)
#   DURATION=60s scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-20s}
PORT=${PORT:-18080}
OUT=bench-results
mkdir -p "$OUT"
cargo build --release --locked -p botline -p botline-bench >&2
BOTLINE=target/release/botline
BENCH=target/release/botline-bench

server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap stop_server EXIT

start_server() {
  data=$(mktemp -d "${TMPDIR:-/tmp}/botline-bench.XXXXXX")
  "$BOTLINE" serve --data-dir "$data" --listen "127.0.0.1:$PORT" 2>"$OUT/serve-$1.log" &
  server_pid=$!
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "botline serve did not start" >&2
  exit 1
}

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$server_pid/status"; }

# Runs the load (output to the file $1), sampling the server's RSS every 200 ms; prints the peak.
peak_rss_while() {
  local out=$1; shift
  local peak=0 rss
  "$@" >"$out" 2>&1 &
  local load=$!
  while kill -0 "$load" 2>/dev/null; do
    rss=$(rss_kib); [ "${rss:-0}" -gt "$peak" ] && peak=$rss
    sleep 0.2
  done
  wait "$load"
  echo "$peak"
}

run() {
  local name=$1; shift
  start_server "$name"
  sleep 1
  local idle; idle=$(rss_kib)
  local peak
  peak=$(peak_rss_while "$OUT/$name.txt" "$BENCH" --url "http://127.0.0.1:$PORT/telegram/webhook" \
    --verify-data-dir "$data" --botline-bin "$BOTLINE" --json-out "$OUT/$name.json" "$@")
  stop_server
  rm -rf "$data"
  echo "== $name ($*)"
  grep -E 'acknowledged|ack latency|verification|receipt|non-2xx|given up' "$OUT/$name.txt"
  echo "  rss (KiB)           idle $idle  peak under load $peak"
}

echo "machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs), $(free -g | awk '/Mem/ {print $2}') GiB"
echo "botline $("$BOTLINE" --version)"
run peak-throughput --connections 100 --chats 1000 --duration "$DURATION"
run ack-at-2000 --connections 40 --chats 1000 --rate 2000 --duration "$DURATION"
run stored-at-1000 --connections 40 --chats 1000 --rate 1000 --duration "$DURATION"
