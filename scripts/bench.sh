#!/usr/bin/env bash
# Measures botline serve (embedded store, durable acknowledgements) with botline-bench on this
# machine: peak throughput, acknowledgement latency at 2,000 updates/s, receipt-to-stored
# latency at 1,000 updates/s, and resident memory idle and under load. Every run starts a fresh
# server on a fresh data directory, and every run checks that each acknowledged update was
# stored exactly once, byte for byte. Results: bench-results/*.json and a summary on stdout.
#
# With BACKEND=postgres the server runs `--backend postgres` on a fresh database of the local
# Postgres (PGHOST/PGPORT/PGUSER as psql takes them; 127.0.0.1:5432, user postgres by default),
# created for each scenario and dropped after it. The RSS figures are then Botline's alone.
#
# With BOT=notes-bot the server is examples/notes-bot instead of botline: the same command line
# and store, plus its handlers, so that the two side by side show what the handler seam costs.
# The load's `/start` commands (those without `@botline_bench_bot`: no token, so no getMe to say
# the bot's username) then write a reply each, which waits in the outbox, as no token is set.
# Results of a BOT other than botline are named after it: bench-results/notes-bot-embedded-*.
#
# `scripts/bench.sh edge` measures the edge guard instead: Telegram-like updates with the
# webhook secret at 2,000/s over 100 connections from 127.0.0.1, alone and beside a flood of
# 2,000 requests/s without the secret from other loopback addresses (few, or 100,000 distinct
# ones), with the per-address rate limit on, and then with an allowlist of 127.0.0.1 only
# (standing in for Telegram's ranges). Nothing acknowledged may be lost, no flood request may
# get a 2xx; the server's RSS shows what the limiter's table of addresses costs.
#
#   scripts/bench.sh                    # throughput scenarios (about 2 minutes after the build)
#   DURATION=60s scripts/bench.sh
#   BACKEND=postgres scripts/bench.sh
#   BOT=notes-bot scripts/bench.sh
#   scripts/bench.sh edge
#   scripts/bench.sh peak-throughput stored-at-1000     # single scenarios
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-20s}
BACKEND=${BACKEND:-embedded}
BOT=${BOT:-botline}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
PORT=${PORT:-18080}
OUT=bench-results
mkdir -p "$OUT"
cargo build --release --locked -p "$BOT" -p botline-bench >&2
BOTLINE=target/release/$BOT
BENCH=target/release/botline-bench

# Set by the edge scenarios: a botline.toml for the server, and the webhook secret.
server_config=""
secret=""

server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}

database=""
drop_database() {
  if [ -n "$database" ]; then
    psql -q -d postgres -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null
    database=""
  fi
}
trap 'stop_server; drop_database' EXIT

# Starts a fresh server and sets verify_args to the store it writes.
start_server() {
  local store_args
  if [ "$BACKEND" = postgres ]; then
    database="botline_bench_$$_$1"
    database=${database//-/_}
    psql -q -d postgres -c "CREATE DATABASE $database" >/dev/null
    export BOTLINE_DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$database"
    store_args=(--backend postgres)
    verify_args=(--verify-database-url "$BOTLINE_DATABASE_URL")
  else
    data=$(mktemp -d "${TMPDIR:-/tmp}/botline-bench.XXXXXX")
    store_args=(--data-dir "$data")
    verify_args=(--verify-data-dir "$data")
  fi
  [ -n "$server_config" ] && store_args+=(--config "$server_config")
  env ${secret:+BOTLINE_WEBHOOK_SECRET="$secret"} \
    "$BOTLINE" serve "${store_args[@]}" --listen "127.0.0.1:$PORT" 2>"$OUT/serve-$1.log" &
  server_pid=$!
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$BOT serve did not start" >&2
  exit 1
}

# The machine's CPU time so far, and the part of it the hypervisor stole (for another guest):
# "total steal" in jiffies, from /proc/stat.
cpu_jiffies() { awk '/^cpu / {t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $9}' /proc/stat; }

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
  local name=$BACKEND-$1; shift
  [ "$BOT" = botline ] || name=$BOT-$name
  start_server "$name"
  sleep 1
  local idle; idle=$(rss_kib)
  local peak before after
  before=$(cpu_jiffies)
  peak=$(peak_rss_while "$OUT/$name.txt" "$BENCH" --url "http://127.0.0.1:$PORT/telegram/webhook" \
    "${verify_args[@]}" --botline-bin "$BOTLINE" --verify-timeout 300s --json-out "$OUT/$name.json" \
    ${secret:+--secret "$secret"} "$@")
  after=$(cpu_jiffies)
  stop_server
  drop_database
  [ -n "${data:-}" ] && rm -rf "$data"
  echo "== $name ($*)"
  grep -E 'acknowledged|ack latency|verification|receipt|non-2xx|given up|flood' "$OUT/$name.txt"
  echo "  rss (KiB)           idle $idle  peak under load $peak"
  echo "$before $after" | awk '{printf "  cpu stolen by host  %.0f %%\n", 100 * ($4 - $2) / ($3 - $1)}'

}

echo "machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs), $(free -g | awk '/Mem/ {print $2}') GiB"
echo "$BOT: $("$BOTLINE" --version), backend $BACKEND"
[ "$BACKEND" = postgres ] && echo "postgres $(psql -At -d postgres -c 'SHOW server_version'), synchronous_commit $(psql -At -d postgres -c 'SHOW synchronous_commit')"
peak-throughput() { run peak-throughput --connections 100 --chats 1000 --duration "$DURATION"; }
ack-at-2000() { run ack-at-2000 --connections 40 --chats 1000 --rate 2000 --duration "$DURATION"; }
stored-at-1000() {
  run stored-at-1000 --connections 40 --chats 1000 --rate 1000 --duration "$DURATION"
}
throughput() { peak-throughput; ack-at-2000; stored-at-1000; }

edge() {
  secret=bench-secret-$$
  server_config=$(mktemp "${TMPDIR:-/tmp}/botline-edge.XXXXXX.toml")
  local load=(--connections 100 --chats 1000 --rate 2000 --duration "$DURATION")
  printf '[edge.rate_limit]\nenabled = true\n' >"$server_config"
  run edge-limit-no-flood "${load[@]}"
  run edge-limit-flood-16 "${load[@]}" --flood-rate 2000 --flood-sources 16
  run edge-limit-flood-100k "${load[@]}" --flood-rate 2000 --flood-sources 100000
  printf '[edge]\nallowlist = ["127.0.0.1/32"]\n[edge.rate_limit]\nenabled = true\n' >"$server_config"
  run edge-allowlist-flood-100k "${load[@]}" --flood-rate 2000 --flood-sources 100000
  rm -f "$server_config"
  server_config="" secret=""
}

for scenario in "${@:-throughput}"; do
  case $scenario in
    throughput | peak-throughput | ack-at-2000 | stored-at-1000 | edge) "$scenario" ;;
    *) echo "unknown scenario $scenario (throughput, peak-throughput, ack-at-2000, stored-at-1000, edge)" >&2; exit 2 ;;
  esac
done
