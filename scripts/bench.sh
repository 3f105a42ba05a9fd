#!/usr/bin/env bash
# Measures botline serve (embedded store, durable acknowledgements) with botline-bench on this
# machine: peak throughput, acknowledgement latency at 2,000 updates/s, receipt-to-stored
# latency at 1,000 updates/s, and resident memory idle and under load. Every run starts a fresh
# server on a fresh data directory, and every run checks that each acknowledged update was
# stored exactly once, byte for byte. Results: bench-results/*.json and a summary on stdout.
#
# With BACKEND=postgres the server runs `--backend postgres` on a fresh database of the local
# Postgres (PGHOST/PGPORT/PGUSER as psql takes them; 127.0.0.1:5432, user postgres by default),
# created for each scenario and dropped after it (PGSSLMODE, default prefer, is Botline's
# sslmode). The RSS figures are then Botline's alone.
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
# `scripts/bench.sh forward` measures forwarding to a bot's own handler (issue 16): botline with
# BOTLINE_HANDLER_URL pointing at examples/grammy-handler (grammY on node:http, built with npm ci
# and tsc if it is not yet) and BOTLINE_TELEGRAM_API_URL at botline-standin, beside the same load
# on botline without a handler (the baseline), alternating, ROUNDS times (3 by default):
#   backlog: UPDATES updates (10,000) in closed loop over 100 connections. "Processed" is the
#     updates whose reply reached the stand-in (baseline: whose records were stored) per second,
#     from the load's start to the last one (botline-bench's "replies/s" and "stored/s").
#   at-RATE: RATE updates/s (200) in open loop for DURATION over 40 connections: receipt→reply,
#     from the update's first send to its sendMessage's arrival at the stand-in (baseline:
#     receipt→stored, to the records' createdAt).
# Both spread the updates over CHATS chats (200,000), so that few chats get two updates and
# Botline's sender seldom waits for Telegram's per-chat (1 message/s) and per-group (1 per 3 s)
# limits, which are not settings; BOTLINE_TELEGRAM_CALLS_PER_SECOND=1000 (its maximum)
# lifts the overall 30/s.
# botline-bench checks that every acknowledged update was stored exactly once and that every
# acknowledged text message got exactly one reply with the bot's text (`--verify-replies`).
#
#   scripts/bench.sh                    # throughput scenarios (about 2 minutes after the build)
#   DURATION=60s scripts/bench.sh
#   BACKEND=postgres scripts/bench.sh
#   BOT=notes-bot scripts/bench.sh
#   scripts/bench.sh edge
#   ROUNDS=3 DURATION=15s scripts/bench.sh forward
#   BIN=/tmp/kept scripts/bench.sh forward          # binaries built before, copied aside
#   scripts/bench.sh peak-throughput stored-at-1000     # single scenarios
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-20s}
BACKEND=${BACKEND:-embedded}
BOT=${BOT:-botline}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
# Botline's (and the verifier's) sslmode: prefer (libpq's default) encrypts when the server
# offers TLS; disable measures without it.
PGSSLMODE=${PGSSLMODE:-prefer}
PORT=${PORT:-18080}
OUT=bench-results
mkdir -p "$OUT"
# BIN=DIR takes the binaries ($BOT, botline-bench, botline-standin) from DIR, unbuilt: a build
# kept aside while the tree changes.
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -p "$BOT" -p botline-bench >&2
  BIN=target/release
fi
BOTLINE=$BIN/$BOT
BENCH=$BIN/botline-bench

# Set by the edge scenarios: a botline.toml for the server, and the webhook secret.
server_config=""
secret=""
# Set by the forward scenarios: more of the server's environment (KEY=VALUE).
server_env=()

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
# The forward scenarios' Bot API stand-in and grammY handler.
helper_pids=()
stop_helpers() {
  local pid
  for pid in ${helper_pids[@]+"${helper_pids[@]}"}; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  helper_pids=()
}
trap 'stop_server; drop_database; stop_helpers' EXIT

# Starts a fresh server and sets verify_args to the store it writes.
start_server() {
  local store_args
  if [ "$BACKEND" = postgres ]; then
    database="botline_bench_$$_$1"
    database=${database//-/_}
    psql -q -d postgres -c "CREATE DATABASE $database" >/dev/null
    export BOTLINE_DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$database?sslmode=$PGSSLMODE"
    store_args=(--backend postgres)
    verify_args=(--verify-database-url "$BOTLINE_DATABASE_URL")
  else
    data=$(mktemp -d "${TMPDIR:-/tmp}/botline-bench.XXXXXX")
    store_args=(--data-dir "$data")
    verify_args=(--verify-data-dir "$data")
  fi
  [ -n "$server_config" ] && store_args+=(--config "$server_config")
  env ${secret:+BOTLINE_WEBHOOK_SECRET="$secret"} ${server_env[@]+"${server_env[@]}"} \
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
  local peak before after load_at_start
  load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
  before=$(cpu_jiffies)
  peak=$(peak_rss_while "$OUT/$name.txt" "$BENCH" --url "http://127.0.0.1:$PORT/telegram/webhook" \
    "${verify_args[@]}" --botline-bin "$BOTLINE" --verify-timeout 300s --json-out "$OUT/$name.json" \
    ${secret:+--secret "$secret"} "$@")
  after=$(cpu_jiffies)
  stop_server
  drop_database
  [ -n "${data:-}" ] && rm -rf "$data"
  stop_helpers
  echo "== $name ($*)"
  echo "  load average at start $load_at_start"
  grep -E 'acknowledged|ack latency|verification|receipt|non-2xx|given up|flood|stored/s|replies|replied|missing|duplicated|unexpected|failed calls' "$OUT/$name.txt"
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

# Starts botline-standin (as the Bot API, answering getMe as @botline_bench_bot, which the load's
# group commands address) and the grammY example handler, and points the next server at them.
start_forwarding() {
  local token=123456:bench-token handler_secret=bench-handler-secret-$$
  local standin_port=$((PORT + 1)) handler_port=$((PORT + 2))
  BOTLINE_STANDIN_TOKEN=$token "$BIN/botline-standin" --listen "127.0.0.1:$standin_port" \
    --username botline_bench_bot >/dev/null 2>"$OUT/standin-$1.log" &
  helper_pids+=($!)
  (cd examples/grammy-handler && BOT_TOKEN=$token SECRET_TOKEN=$handler_secret PORT=$handler_port \
    TELEGRAM_API_ROOT="http://127.0.0.1:$standin_port" exec node dist/bot.js) \
    >"$OUT/grammy-$1.log" 2>&1 &
  helper_pids+=($!)
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$standin_port/_standin/webhook" >/dev/null 2>&1 &&
      curl -s -o /dev/null "http://127.0.0.1:$handler_port/" 2>/dev/null && break
    sleep 0.1
  done
  standin_url="http://127.0.0.1:$standin_port"
  server_env=(BOTLINE_HANDLER_URL="http://127.0.0.1:$handler_port/"
    BOTLINE_HANDLER_SECRET_TOKEN="$handler_secret" BOTLINE_BOT_TOKEN="$token"
    BOTLINE_TELEGRAM_API_URL="$standin_url" BOTLINE_TELEGRAM_CALLS_PER_SECOND=1000)
}

ROUNDS=${ROUNDS:-3}
UPDATES=${UPDATES:-10000}
RATE=${RATE:-200}
CHATS=${CHATS:-200000}
forward() {
  [ "$BIN" != target/release ] || cargo build --release --locked -p botline-standin >&2
  [ -f examples/grammy-handler/dist/bot.js ] ||
    (cd examples/grammy-handler && npm ci --no-audit --no-fund && npm run build) >&2
  echo "grammY handler: node $(node --version), grammy $(node -p 'require("./examples/grammy-handler/node_modules/grammy/package.json").version')"
  local backlog=(--connections 100 --chats "$CHATS" --updates "$UPDATES")
  local at_rate=(--connections 40 --chats "$CHATS" --rate "$RATE" --duration "$DURATION")
  local round
  for round in $(seq "$ROUNDS"); do
    run "baseline-backlog-$round" "${backlog[@]}"
    start_forwarding "forward-backlog-$round"
    run "forward-backlog-$round" "${backlog[@]}" --verify-replies "$standin_url"
    server_env=()
    run "baseline-at-$RATE-$round" "${at_rate[@]}"
    start_forwarding "forward-at-$RATE-$round"
    run "forward-at-$RATE-$round" "${at_rate[@]}" --verify-replies "$standin_url"
    server_env=()
  done
}

for scenario in "${@:-throughput}"; do
  case $scenario in
    throughput | peak-throughput | ack-at-2000 | stored-at-1000 | edge | forward) "$scenario" ;;
    *) echo "unknown scenario $scenario (throughput, peak-throughput, ack-at-2000, stored-at-1000, edge, forward)" >&2; exit 2 ;;
  esac
done
