#!/usr/bin/env bash
# Runs streamhub's whole test suite on a fresh machine: installs what the tests need
# (redis-server and redis-cli; prometheus and promtool for the dashboard and alert
# checks — with apt when missing and running as root), checks formatting and lints
# (cargo fmt, clippy -D warnings), then runs every test against real Redis servers (and a
# real Prometheus) that the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need_apt[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "error: ${need_apt[*]} missing; install them (Redis >= 7.0, Prometheus >= 2.42)" >&2
    exit 1
  fi
fi
# The package may start a system redis-server on 6379; the tests never use that port.
# The prometheus package may start a system Prometheus on 9090; the tests use free ports.
redis-server --version
prometheus --version 2>&1 | head -1

# Style first: formatting and lints are part of passing (cheap next to the suite).
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets "$@"
