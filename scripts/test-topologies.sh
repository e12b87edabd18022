#!/usr/bin/env bash
# Runs the integration tests that do not depend on a private standalone Redis against a
# Redis Cluster (3 primaries, 1 replica each) and a Sentinel set (1 primary, 2 replicas,
# 3 sentinels), both at once: each test binary starts one topology of its kind on free
# loopback ports and shares it among its tests (tests/common/shared.rs). Tests that kill
# or inspect a whole server skip themselves there and say why.
# Usage: scripts/test-topologies.sh [cluster|sentinel]...   (default: both)
# Prints cargo's usual per-binary "test result:" lines, prefixed with the topology.
set -euo pipefail
cd "$(dirname "$0")/.."

# The binaries run on every topology: publish, history, resume (one node and across
# nodes), slow subscribers (fanout), consumer groups with every target, retries, DLQ and
# reclaim, retention, the raw FCALL publish, SSE and the WebSocket protocol.
tests=(publish history resume nodes fanout groups_pull groups_webhook groups_ws groups_handler groups_crash
  groups_admin retention redis_function sse ws_protocol)
topologies=("$@")
[ ${#topologies[@]} -gt 0 ] || topologies=(cluster sentinel)

args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
# Build once; the paths of the test executables come from cargo's JSON messages.
mapfile -t binaries < <(cargo test --locked --no-run --message-format=json "${args[@]}" |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')

run_topology() {
  local topology="$1" status=0
  for binary in "${binaries[@]}"; do
    local name
    name="$(basename "$binary" | sed 's/-[0-9a-f]*$//')"
    # Each binary's tests run in parallel threads on the binary's one topology.
    STREAMHUB_TEST_TOPOLOGY="$topology" "$binary" 2>&1 | sed "s/^/[$topology $name] /" || status=1
  done
  return "$status"
}

status=0
pids=()
for topology in "${topologies[@]}"; do
  run_topology "$topology" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit "$status"
