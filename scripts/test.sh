#!/usr/bin/env bash
# Runs Botline's whole test suite: formatting, lints, and every test of every crate (unit tests,
# the shared backend suite on SQLite, black-box tests of the real binary, the crash test, the
# fuzz targets' regression tests), the CDK app's offline tests (infra/scripts/test.sh: npm ci,
# Jest on the synthesized templates, cdk synth, cfn-lint from PyPI in a venv), and the AWS
# backend's tests against moto's server mode (installed from PyPI into target/moto-venv by
# scripts/moto.sh). The Postgres tests need the server on 127.0.0.1:5432 (trust auth), the
# shared-limits tests (crates/botline/tests/shared_limits.rs) Redis on 127.0.0.1:6379; they fail
# without them. The alert rules' tests (crates/botline/tests/alerts.rs) need promtool: where it
# is missing, Debian's `prometheus` package is installed (as root, or with sudo), and they fail
# without it. Needs Rust (rustup), Node.js 20+ with npm, Python 3.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || {
  echo "cargo is missing: install Rust with rustup (https://rustup.rs)" >&2
  exit 1
}

echo "== cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --all --manifest-path fuzz/Cargo.toml -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# fuzz/ is a workspace of its own (cargo-fuzz's layout). Its tests replay what fuzzing found
# through the targets' own checks; they build on stable, without cargo-fuzz or a sanitizer.
# Its build shares target/ with the main workspace's.
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --locked --target-dir target -- -D warnings
echo "== fuzz targets' regression tests (fuzz/tests)"
cargo test --manifest-path fuzz/Cargo.toml --locked --target-dir target
# Before cargo test, so that cargo's summary closes the run.
echo "== infra (CDK app: jest, cdk synth, cfn-lint)"
infra/scripts/test.sh
echo "== moto (local AWS emulator for crates/botline-aws)"
scripts/moto.sh
echo "== promtool (Prometheus's rule checker, for deploy/prometheus)"
if ! command -v promtool >/dev/null; then
  # Debian's package installs promtool beside the Prometheus server, which is not needed: a
  # policy-rc.d that refuses every start, for the install only, keeps the server from starting.
  (
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
      trap '$sudo rm -f "$policy"' EXIT
      printf '#!/bin/sh\n# scripts/test.sh: installing prometheus for promtool only\nexit 101\n' |
        $sudo tee "$policy" >/dev/null
      $sudo chmod 755 "$policy"
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  )
  command -v promtool >/dev/null || {
    echo "promtool is missing: install the prometheus package (it ships promtool)" >&2
    exit 1
  }
fi
echo "== examples/grammy-handler (npm ci, tsc): a grammY bot the tests put behind Botline"
(cd examples/grammy-handler && npm ci --no-audit --no-fund && npm run build)
echo "== examples/aiogram-handler (a venv from requirements.txt): an aiogram bot the tests put behind Botline"
(
  cd examples/aiogram-handler
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
)
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
