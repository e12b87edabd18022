#!/usr/bin/env bash
# Runs `streamhub dev` from this checkout: a local broker open to this machine only, with
# its own redis-server on a free port (data in ./data/dev), the console and an admin key.
# Installs redis-server with apt when it is missing and this runs as root (the way
# scripts/test.sh does); otherwise says exactly what to install. Builds the debug binary
# (target/debug/streamhub) first. Arguments go to `streamhub dev` (see --help), e.g.
# `scripts/dev.sh --temp` or `scripts/dev.sh --listen 127.0.0.1:8081`.
# STREAMHUB_BIN=<path> runs that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "redis-server is missing: installing redis-server and redis-tools with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
  else
    cat >&2 <<'MSG'
error: redis-server (Redis >= 7.0) is not installed, and streamhub dev runs its own.
Install it, then run scripts/dev.sh again:
  Debian/Ubuntu:  sudo apt-get install redis-server
  Fedora:         sudo dnf install redis
  macOS:          brew install redis
(Run as root on Debian/Ubuntu, this script installs it itself.)
MSG
    exit 1
  fi
fi

if [ -n "${STREAMHUB_BIN:-}" ]; then
  exec "$STREAMHUB_BIN" dev "$@"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed: install Rust >= 1.85 (rustup), then run scripts/dev.sh again" >&2
  exit 1
fi
echo "building streamhub (debug; the first build takes a few minutes)…" >&2
cargo build --locked --quiet --bin streamhub
exec target/debug/streamhub dev "$@"
