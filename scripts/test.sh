#!/usr/bin/env bash
# Runs streamhub's whole test suite on a fresh machine: installs what the tests need —
# redis-server and redis-cli; prometheus and promtool for the dashboard and alert checks;
# nginx (nginx-light) as the reverse proxy of tests/reverse_proxy.rs;
# chromium and Node.js for the console's browser tests (with apt when missing and running
# as root), and playwright-core (`npm ci` in tests/browser, from its lock file); Centrifugo's
# clients (`npm ci` in tests/centrifugo; the pinned `cent` in a Python venv) — checks
# formatting and lints (cargo fmt, clippy -D warnings), then runs every test against real
# Redis servers, a real Prometheus and a real browser that the tests start themselves.
# Then runs the tests that do not need a private standalone Redis again against a Redis
# Cluster and a Sentinel set (scripts/test-topologies.sh).
# Ends with one line: `N passed, M failed` (every test of every test binary).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need_apt+=(prometheus)
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v curl >/dev/null 2>&1 || need_apt+=(curl) # the README's commands (tests/readme.rs)
# nginx as the reverse proxy in front of two nodes (tests/reverse_proxy.rs).
{ command -v nginx || [ -x /usr/sbin/nginx ]; } >/dev/null 2>&1 || need_apt+=(nginx-light)
# Python with venv and pip, for the pinned `cent` client (tests/centrifugo.rs).
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need_apt[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "error: ${need_apt[*]} missing; install them (Redis >= 7.0, Prometheus >= 2.42, chromium, Node.js >= 20, nginx >= 1.19.5)" >&2
    exit 1
  fi
fi
# The package may start a system redis-server on 6379; the tests never use that port.
# The prometheus package may start a system Prometheus on 9090; the tests use free ports.
# The nginx package may start a system nginx on port 80; the tests start their own.
redis-server --version
prometheus --version 2>&1 | head -1
"${CHROMIUM:-/usr/bin/chromium}" --version 2>/dev/null || true
echo "node $(node --version)"
# The browser tests' driver, exactly as locked (no browser download: it drives chromium).
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
# Centrifugo's own clients, pinned: centrifuge-js (npm) and cent (PyPI, in a venv).
(cd tests/centrifugo && npm ci --no-audit --no-fund --loglevel=error)
venv=target/centrifugo-venv
if ! "$venv/bin/python" -c 'import cent' >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/centrifugo/requirements.txt
fi

# Style first: formatting and lints are part of passing (cheap next to the suite).
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings

# Every test binary runs even when one fails, so the total below counts them all.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --all-targets --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# The suite again on a Redis Cluster and on a Sentinel set, both at once (each test
# binary starts its own topology on free loopback ports; tests/common/shared.rs).
if [ $# -eq 0 ]; then
  scripts/test-topologies.sh cluster sentinel 2>&1 | tee -a "$log" || status=$?
fi
# One overall line from cargo's per-binary "test result: … N passed; M failed; …" lines.
read -r passed failed < <(awk '/test result:/ {
    for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i }
  } END { print p + 0, f + 0 }' "$log")
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  failed=1 # a binary that did not build or crashed before reporting
fi
echo "${passed} passed, ${failed} failed"
exit "$status"
