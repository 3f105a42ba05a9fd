#!/usr/bin/env bash
# Crash test: a release `botline serve` SIGKILLed at random moments while updates are delivered
# the way Telegram does (per-chat order, every failure retried with the same update), restarted
# each time on the same data directory and port. Afterwards every acknowledged update must be
# stored exactly once, byte for byte. botline-bench starts and kills the server itself; the kills'
# moments follow the run's seed (printed; pass --seed S to replay). A restarted server takes
# back at once the updates the killed one had in hand; the 2 s lease (as in
# crates/botline/tests/crash.rs) only bounds how long the store check waits. Writes target/crash/crash.svg (throughput, latency and RSS per
# second, the kills as dashed lines) and target/crash/crash.json. Exit code: 0 ok, 1 an
# acknowledged update lost, duplicated or altered (or the server died on its own), 2 the run
# could not be done.
#
#   scripts/crash.sh                 # 20 kills over 20,000 updates at 2,000 updates/s
#   scripts/crash.sh 50 100000
#   RATE=5000 scripts/crash.sh 20 20000 --seed 42     # more botline-bench flags
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: [RATE=2000] scripts/crash.sh [kills=20] [updates=20000] [botline-bench flags...]" >&2
  exit 2
}
kills=${1:-20}
updates=${2:-20000}
rate=${RATE:-2000}
[[ $kills =~ ^[0-9]+$ ]] || usage
[[ $updates =~ ^[0-9]+$ && $updates -gt 0 ]] || usage
[[ $rate =~ ^[0-9]+([.][0-9]+)?$ ]] || usage
shift $(($# < 2 ? $# : 2))

out=target/crash
mkdir -p "$out"
cargo build --release --locked -p botline -p botline-bench >&2
status=0
target/release/botline-bench --serve target/release/botline --server-env BOTLINE_LEASE=2s \
  --kills "$kills" --updates "$updates" --rate "$rate" --connections 40 --give-up 120s \
  --plot "$out/crash.svg" --json-out "$out/crash.json" "$@" || status=$?
echo "plot: $out/crash.svg  report: $out/crash.json" >&2
exit "$status"
