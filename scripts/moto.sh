#!/usr/bin/env bash
# Installs moto's server mode (the local AWS emulator the botline-aws tests run against) into a
# venv at target/moto-venv, pinned, from PyPI. Idempotent: when the venv already has this
# version it returns at once. Prints nothing unless something fails.
#
#   scripts/moto.sh && cargo test -p botline-aws
#
# The tests find the server at target/moto-venv/bin/moto_server, or at $BOTLINE_MOTO_SERVER.
set -euo pipefail

MOTO_VERSION="5.2.5"

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${BOTLINE_MOTO_VENV:-$root/target/moto-venv}"
stamp="$venv/.botline-moto"
want="moto[server]==$MOTO_VERSION"

if [[ -x "$venv/bin/moto_server" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

python="${PYTHON:-python3}"
command -v "$python" >/dev/null || {
  echo "scripts/moto.sh: $python is missing: install Python 3.9 or newer" >&2
  exit 1
}

mkdir -p "$(dirname "$venv")"
# One installer at a time (test binaries or shells started together).
exec 9>"$venv.lock"
flock 9
if [[ -x "$venv/bin/moto_server" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
rm -rf "$venv"
if ! "$python" -m venv "$venv" >"$log" 2>&1 ||
  ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$want" >>"$log" 2>&1; then
  cat "$log" >&2
  echo "scripts/moto.sh: could not install $want into $venv" >&2
  rm -rf "$venv"
  exit 1
fi
echo "$want" >"$stamp"
