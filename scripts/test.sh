#!/usr/bin/env bash
# Runs Botline's whole test suite: formatting, lints, and every test of every crate (unit tests,
# the shared backend suite on SQLite, black-box tests of the real binary, the crash test).
# Installs nothing the machine's Rust toolchain does not already have.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || {
  echo "cargo is missing: install Rust with rustup (https://rustup.rs)" >&2
  exit 1
}

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
