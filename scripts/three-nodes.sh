#!/usr/bin/env bash
# Run one Redis and three liveroom nodes sharing it (ports 8080-8082, WHIP/WHEP 8090-8092).
# Redis keeps an AOF fsynced on every write (appendfsync always): an acked DM survives a Redis
# crash. Ctrl-C (or SIGTERM) drains the nodes (clients are told to reconnect, 1012) and stops Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
REDIS_PORT=${REDIS_PORT:-6390}
REDIS_URL="redis://127.0.0.1:${REDIS_PORT}/0"
mkdir -p .run
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
  --appendonly yes --appendfsync always --dir .run --loglevel warning &
pids=($!)
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' INT TERM EXIT
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done
for i in 0 1 2; do
  .venv/bin/python -m server serve --redis "$REDIS_URL" --node-id "node$i" \
    --port "808$i" --http-port "809$i" &
  pids+=($!)
done
wait
