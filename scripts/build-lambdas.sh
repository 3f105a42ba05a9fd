#!/usr/bin/env bash
# Builds Botline's two Lambda functions as arm64 zips for the provided.al2023 runtime:
#
#   target/lambda/botline-ingest/bootstrap.zip
#   target/lambda/botline-worker/bootstrap.zip
#
# which the CDK app in infra/ deploys. Installs what it needs: cargo-lambda and Zig (the
# cross-linker, glibc 2.34 as on Amazon Linux 2023) from PyPI into target/lambda-venv, and the
# aarch64-unknown-linux-gnu standard library with rustup. Needs Rust (rustup) and Python 3.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/lambda-venv
if [ ! -x "$venv/bin/cargo-lambda" ] || [ ! -x "$venv/bin/python-zig" ]; then
  echo "== installing cargo-lambda and Zig into $venv (PyPI)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "cargo-lambda==1.9.2" "ziglang==0.17.1"
fi
rustup target add aarch64-unknown-linux-gnu >/dev/null

echo "== cargo lambda build --release --arm64 --output-format zip -p botline-lambda"
# Symbols are of no use in a function's zip; line tables stay out too.
PATH="$PWD/$venv/bin:$PATH" \
  CARGO_PROFILE_RELEASE_STRIP=symbols \
  CARGO_PROFILE_RELEASE_DEBUG=false \
  cargo lambda build --release --arm64 --output-format zip -p botline-lambda "$@"

for function in botline-ingest botline-worker; do
  zip="target/lambda/$function/bootstrap.zip"
  [ -f "$zip" ] || { echo "missing $zip" >&2; exit 1; }
  echo "$zip: $(stat -c %s "$zip") bytes"
done
