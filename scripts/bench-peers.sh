#!/usr/bin/env bash
# Botline beside the webhook receivers people use today: the same botline-bench load (closed
# loop) against
#   - botline     `botline serve`, embedded store on a fresh data directory: 200 only once the
#                 update is on disk (fsync); the store is checked afterwards (every acknowledged
#                 update stored exactly once, byte for byte);
#   - teloxide    bench/peers/teloxide: teloxide's axum webhook listener and dispatcher, counting
#                 updates in memory (200 once parsed and queued in memory);
#   - grammy      bench/peers/grammy: grammY's webhookCallback(bot, "http"), counting updates in
#                 memory (200 once the middleware ran).
# All three check the webhook secret header. Receivers alternate, in a rotating order, for
# ROUNDS rounds; the summary is a markdown table of medians, with ratios against the fastest
# peer. Per-run reports: bench-results/peers/*.json.
#
#   scripts/bench-peers.sh                        # 3 rounds of 10 s, 64 connections, 1000 chats
#   ROUNDS=5 DURATION=20s CONNECTIONS=100 scripts/bench-peers.sh
#   PERF=1 scripts/bench-peers.sh                 # also perf-record Botline in its last round
#   SKIP_BUILD=1 scripts/bench-peers.sh           # use the binaries already built
#   BOTLINE_BASE=/tmp/base/target/release/botline RECEIVERS="botline botline-base teloxide" \
#     scripts/bench-peers.sh                      # also an earlier build of Botline, as a baseline
#
# Needs: cargo, node >= 20 and npm, curl, python3 (for the table); perf for PERF=1. Builds run
# under `nice -n 15` (the load itself does not).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
CHATS=${CHATS:-1000}
PORT=${PORT:-18090}
RECEIVERS=${RECEIVERS:-botline teloxide grammy}
# A fake secret, for this machine's loopback only.
SECRET=bench-peers-secret-$$
OUT=bench-results/peers
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log "$OUT"/runs.tsv

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== building (nice -n 15)" >&2
  nice -n 15 cargo build --release --locked -p botline -p botline-bench >&2
  (cd bench/peers/teloxide && nice -n 15 cargo build --release --locked >&2)
  (cd bench/peers/grammy && nice -n 15 npm ci --no-audit --no-fund --loglevel=error >&2)
fi
BOTLINE=target/release/botline
BENCH=target/release/botline-bench
TELOXIDE=bench/peers/teloxide/target/release/botline-peer-teloxide

server_pid=""
data=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
  if [ -n "$data" ]; then
    rm -rf "$data"
    data=""
  fi
}
trap stop_server EXIT

# Starts receiver $1 on $PORT (log to $2) and waits until it answers.
start() {
  local ready
  case $1 in
    botline | botline-base)
      data=$(mktemp -d "${TMPDIR:-/tmp}/botline-peers.XXXXXX")
      BOTLINE_WEBHOOK_SECRET=$SECRET "$(botline_bin "$1")" serve --data-dir "$data" \
        --listen "127.0.0.1:$PORT" 2>"$2" &
      ready=/health
      ;;
    teloxide)
      WEBHOOK_SECRET=$SECRET "$TELOXIDE" "$PORT" 2>"$2" &
      ready=/count
      ;;
    grammy)
      WEBHOOK_SECRET=$SECRET node bench/peers/grammy/server.js "$PORT" 2>"$2" &
      ready=/count
      ;;
    *) echo "unknown receiver $1 (botline, teloxide, grammy)" >&2; exit 2 ;;
  esac
  server_pid=$!
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$PORT$ready" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$1 did not start; its log:" >&2
  cat "$2" >&2
  exit 1
}

# The binary of receiver botline or botline-base ($BOTLINE_BASE).
botline_bin() {
  if [ "$1" = botline-base ]; then
    [ -x "${BOTLINE_BASE:-}" ] || { echo "botline-base needs BOTLINE_BASE=<a botline binary>" >&2; exit 2; }
    echo "$BOTLINE_BASE"
  else
    echo "$BOTLINE"
  fi
}

# The machine's CPU time so far and the part of it stolen by the hypervisor, from /proc/stat.
cpu_jiffies() { awk '/^cpu / {t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $9}' /proc/stat; }

# Runs the load against receiver $1 in round $2; appends a line to runs.tsv.
run() {
  local receiver=$1 round=$2 name=$1-round$2
  start "$receiver" "$OUT/$name.log"
  sleep 1
  local verify=()
  case $receiver in botline*)
    verify=(--verify-data-dir "$data" --botline-bin "$(botline_bin "$receiver")" --verify-timeout 300s)
  esac
  local perf_pid=""
  if [ "${PERF:-0}" = 1 ] && [ "$receiver" = botline ] && [ "$round" = "$ROUNDS" ]; then
    perf record -F 499 -g -p "$server_pid" -o "$OUT/perf-botline.data" 2>"$OUT/perf-record.log" &
    perf_pid=$!
  fi
  local before after status=0
  before=$(cpu_jiffies)
  # Update ids as Telegram's are, below 2^32: teloxide reads them as u32 and acknowledges (200)
  # but drops an update whose id does not fit. botline-bench's default (unix ms x 1000) does not.
  "$BENCH" --url "http://127.0.0.1:$PORT/telegram/webhook" --secret "$SECRET" \
    --first-update-id $((700000000 + 10000000 * round)) \
    --connections "$CONNECTIONS" --chats "$CHATS" --duration "$DURATION" \
    --json-out "$OUT/$name.json" "${verify[@]}" >"$OUT/$name.txt" 2>&1 || status=$?
  after=$(cpu_jiffies)
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
  fi
  # What the peer's handler counted once the count stood still for 2 s (its queue lags its
  # acks: a shorter wait was seen to read a count that was still rising), at most 30 s on.
  local counted="-" previous="" still=0
  if [ -n "${receiver##botline*}" ]; then
    for _ in $(seq 60); do
      counted=$(curl -fs "http://127.0.0.1:$PORT/count" || echo "?")
      if [ "$counted" = "$previous" ]; then
        still=$((still + 1))
        [ "$still" -ge 4 ] && break
      else
        still=0
      fi
      previous=$counted
      sleep 0.5
    done
  fi
  stop_server
  # And what it had counted when it stopped (SIGTERM): anything acknowledged beyond this was
  # never handled.
  local final="-"
  if [ -n "${receiver##botline*}" ]; then
    final=$(sed -nE 's/.* ([0-9]+) updates counted$/\1/p' "$OUT/$name.log" | tail -1)
    final=${final:-?}
  fi
  local steal
  steal=$(echo "$before $after" | awk '{printf "%.1f", 100 * ($4 - $2) / ($3 - $1)}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$receiver" "$round" "$OUT/$name.json" "$steal" \
    "$counted" "$final" "$status" >>"$OUT/runs.tsv"
  echo "== $name: $(grep -E '^ *(acknowledged|ack latency)' "$OUT/$name.txt" | tr -s ' ' | paste -sd ';')," \
    "steal $steal %, counted $counted (at its stop $final), exit $status" >&2
  sleep 2
}

echo "machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs)," \
  "$(free -g | awk '/Mem/ {print $2}') GiB; botline $("$BOTLINE" --version);" \
  "node $(node --version); load: closed loop, $CONNECTIONS connections, $CHATS chats, $DURATION"
read -r -a receivers <<<"$RECEIVERS"
count=${#receivers[@]}
for round in $(seq "$ROUNDS"); do
  for i in $(seq 0 $((count - 1))); do
    run "${receivers[$(((i + round - 1) % count))]}" "$round"
  done
done

if [ "${PERF:-0}" = 1 ] && [ -f "$OUT/perf-botline.data" ]; then
  perf report -i "$OUT/perf-botline.data" --no-children --sort comm,dso --stdio \
    >"$OUT/perf-botline-comm-dso.txt" 2>/dev/null || true
  perf report -i "$OUT/perf-botline.data" --no-children --sort sym --stdio \
    >"$OUT/perf-botline-sym.txt" 2>/dev/null || true
  echo "perf: $OUT/perf-botline-comm-dso.txt, $OUT/perf-botline-sym.txt" >&2
fi

python3 - "$OUT/runs.tsv" <<'EOF'
import json, statistics, sys

runs = {}
for line in open(sys.argv[1]):
    receiver, round_, path, steal, counted, final, status = line.rstrip("\n").split("\t")
    report = json.load(open(path))
    verification = report.get("verification")
    runs.setdefault(receiver, []).append({
        "throughput": report["throughput_per_sec"],
        "p50": report["ack_latency"]["p50_ms"],
        "p99": report["ack_latency"]["p99_ms"],
        "acked": report["acknowledged"],
        "non2xx": sum(report["non_2xx_by_status"].values()),
        "errors": report["connection_errors"],
        "steal": float(steal),
        "verified": None if verification is None else (
            verification["missing"] == 0 and verification["duplicated"] == 0
            and verification["raw_mismatches"] == 0),
        "status": int(status),
        "counted": None if counted in ("-", "?") else int(counted),
        "final": None if final in ("-", "?") else int(final),
    })

med = lambda rows, key: statistics.median(r[key] for r in rows)
peers = [r for r in runs if not r.startswith("botline")]
fastest = max(peers, key=lambda r: med(runs[r], "throughput")) if peers else None
names = {"botline": "Botline (embedded, durable ack)",
         "botline-base": "Botline, baseline build (BOTLINE_BASE)",
         "teloxide": "teloxide 0.17 webhook (in-memory ack)",
         "grammy": "grammY 1.46 webhookCallback (in-memory ack)"}
print()
print("| receiver | runs | throughput, median (range) /s | ack p50 (ms) | ack p99 (ms) "
      "| throughput ÷ fastest peer | p99 ÷ fastest peer | non-2xx | steal (median) | check |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for receiver in sorted(runs, key=lambda r: -med(runs[r], "throughput")):
    rows = runs[receiver]
    t, p50, p99 = med(rows, "throughput"), med(rows, "p50"), med(rows, "p99")
    if fastest:
        ft, fp99 = med(runs[fastest], "throughput"), med(runs[fastest], "p99")
        ratio_t, ratio_p = f"{t / ft:.2f}×", f"{p99 / fp99:.2f}×"
    else:
        ratio_t = ratio_p = "—"
    lo, hi = min(r["throughput"] for r in rows), max(r["throughput"] for r in rows)
    if receiver.startswith("botline"):
        check = "stored exactly once: " + ("all runs" if all(r["verified"] for r in rows)
                                           else "FAILED in a run")
    else:
        counted = sum(r["counted"] or 0 for r in rows)
        final = sum(r["final"] or 0 for r in rows)
        acked = sum(r["acked"] for r in rows)
        check = (f"handler counted {counted:,} of {acked:,} acknowledged once its count "
                 f"stood still, {final:,} by its stop")
    print(f"| {names.get(receiver, receiver)} | {len(rows)} | {t:,.0f} ({lo:,.0f}–{hi:,.0f}) "
          f"| {p50:.2f} | {p99:.2f} | {ratio_t} | {ratio_p} "
          f"| {sum(r['non2xx'] + r['errors'] for r in rows)} | {med(rows, 'steal'):.0f} % | {check} |")
if fastest:
    print(f"\nFastest peer: {fastest}.")
EOF
