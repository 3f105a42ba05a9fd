#!/usr/bin/env bash
# Runs one cargo-fuzz target of fuzz/ for a while, starting from its committed seed corpus
# (fuzz/seeds/<target>/, generated from the repo's fixtures by fuzz/tests/seeds.rs). New corpus
# entries go to fuzz/corpus/<target>/ and crashes to fuzz/artifacts/<target>/ (both ignored by
# git). Installs cargo-fuzz if it is missing. Uses the nightly toolchain when rustup has one,
# and otherwise stable with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Zsanitizer).
#
#   scripts/fuzz.sh                          # update_parser for 600 s
#   scripts/fuzz.sh webhook_request 600
#   scripts/fuzz.sh update_parser 60 -only_ascii=1   # extra arguments go to libFuzzer
#
# Targets:
#   update_parser     arbitrary bytes -> botline-core's InboundUpdate::parse, and
#                     Handling::records on what parses: what parses must become records, and
#                     a /register token must be gone from every string of what is stored
#   webhook_request   an arbitrary request (method, path, secret header, content type,
#                     content length, chunking, body) -> botline::http::router on a SQLite store
#
# A crash is replayed with `cargo +nightly fuzz run -a <target> fuzz/artifacts/<target>/<file>`
# and minimized with `cargo +nightly fuzz tmin -a <target> <file>`; then it becomes a test in
# fuzz/tests/regressions.rs (or in the crate it belongs to). NICE (default 15) sets the
# priority: the machine is shared with builds.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

target=${1:-update_parser}
seconds=${2:-600}
shift $(($# > 2 ? 2 : $#))
case $target in
  update_parser | webhook_request) ;;
  *) echo "unknown target $target (update_parser, webhook_request)" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  nice -n "${NICE:-15}" cargo install cargo-fuzz --locked
fi
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi

# The webhook target's body limit is 4096 bytes: let inputs be larger, to reach the 413.
max_len=()
[ "$target" = webhook_request ] && max_len=(-max_len=8192)

# The webhook target keeps its SQLite store in a temporary directory; remove it afterwards.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/botline-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
mkdir -p "corpus/$target" "artifacts/$target"

echo "fuzz: $target for ${seconds}s, seeds $(find "seeds/$target" -type f | wc -l)," \
  "corpus $(find "corpus/$target" -type f | wc -l) entries" >&2
status=0
TMPDIR=$scratch nice -n "${NICE:-15}" cargo "${toolchain[@]}" fuzz run --debug-assertions \
  "$target" "corpus/$target" "seeds/$target" -- \
  -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="artifacts/$target/" \
  "${max_len[@]}" "$@" || status=$?
echo "fuzz: $target corpus now $(find "corpus/$target" -type f | wc -l) entries," \
  "$(du -sh "corpus/$target" | cut -f1); artifacts: $(find "artifacts/$target" -type f | wc -l)" >&2
exit "$status"
