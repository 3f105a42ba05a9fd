#!/usr/bin/env bash
# Soak: a release `botline serve` under a steady open-loop load for a long time, its resident
# memory sampled every second. botline-bench starts the server itself (fresh data directory, free
# loopback port, generated secret), checks afterwards that every acknowledged update was stored
# exactly once, byte for byte, and stops it with SIGTERM. Look at target/soak/soak.svg
# (throughput, latency p50/p99/max and RSS per second) for a memory that keeps climbing;
# target/soak/soak.json has the same series. Exit code: 0 ok, 1 an acknowledged update lost,
# duplicated or altered (or the server died on its own), 2 the run could not be done.
#
#   scripts/soak.sh                  # 30 minutes at 500 updates/s
#   scripts/soak.sh 5 1000           # 5 minutes at 1,000 updates/s
#   scripts/soak.sh 30 500 --server-env BOTLINE_WORKER_CONCURRENCY=16   # more botline-bench flags
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: scripts/soak.sh [minutes=30] [rate=500] [botline-bench flags...]" >&2
  exit 2
}
minutes=${1:-30}
rate=${2:-500}
[[ $minutes =~ ^[0-9]+$ && $minutes -gt 0 ]] || usage
[[ $rate =~ ^[0-9]+([.][0-9]+)?$ ]] || usage
shift $(($# < 2 ? $# : 2))

out=target/soak
mkdir -p "$out"
cargo build --release --locked -p botline -p botline-bench >&2
status=0
target/release/botline-bench --serve target/release/botline \
  --rate "$rate" --duration "${minutes}m" --connections 40 \
  --plot "$out/soak.svg" --json-out "$out/soak.json" "$@" || status=$?
echo "plot: $out/soak.svg  report: $out/soak.json" >&2
exit "$status"
