#!/usr/bin/env bash
# Starts a local Redis Cluster for streamhub-bench: 3 primaries (no replicas, no
# persistence) on ports BASE, BASE+1, BASE+2 of 127.0.0.1, data in a temporary directory,
# and prints the redis-cluster:// URL to pass as --redis-url. Stop it with
# `scripts/bench-cluster.sh stop [BASE]`. Loopback only; for measurements, not production.
set -euo pipefail
base="${2:-${BASE:-7101}}"
if [ "${1:-start}" = stop ]; then
  for p in "$base" $((base + 1)) $((base + 2)); do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
  exit 0
fi
dir="$(mktemp -d /tmp/streamhub-bench-cluster.XXXXXX)"
nodes=()
for p in "$base" $((base + 1)) $((base + 2)); do
  redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file "$dir/nodes-$p.conf" \
    --dir "$dir" --save "" --appendonly no --daemonize yes --logfile "$dir/$p.log" --cluster-require-full-coverage no
  nodes+=("127.0.0.1:$p")
done
for p in "$base" $((base + 1)) $((base + 2)); do
  until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.1; done
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
until [ "$(redis-cli -p "$base" cluster info | tr -d '\r' | grep -c '^cluster_state:ok')" = 1 ]; do sleep 0.1; done
echo "redis-cluster://127.0.0.1:$base?node=127.0.0.1:$((base + 1))&node=127.0.0.1:$((base + 2))"
