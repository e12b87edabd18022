#!/usr/bin/env bash
# Runs streamhub's whole test suite on a fresh machine: installs what the tests need
# (redis-server and redis-cli, with apt when missing and running as root), then runs
# every test against real Redis servers that the test harness starts itself.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need_apt[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "error: ${need_apt[*]} missing; install redis-server and redis-tools (Redis >= 7.0)" >&2
    exit 1
  fi
fi
# The package may start a system redis-server on 6379; the tests never use that port.
redis-server --version

cargo test --locked --all-targets "$@"
