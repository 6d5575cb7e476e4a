#!/usr/bin/env bash
# Makes sure Redis answers on 127.0.0.1:6379; starts a local redis-server when it does not
# (loopback only, nothing kept on disk). Idempotent: does nothing when Redis already answers.
# Exits non-zero when Redis cannot be reached within REDIS_START_TIMEOUT seconds (default 20).
set -euo pipefail

host=127.0.0.1
port="${REDIS_PORT:-6379}"
timeout="${REDIS_START_TIMEOUT:-20}"

answers() {
    [ "$(redis-cli -h "$host" -p "$port" ping 2>/dev/null)" = "PONG" ]
}

for tool in redis-cli redis-server; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$tool is not installed (install it with: apt-get install redis-server)" >&2
        exit 1
    fi
done

if answers; then
    echo "Redis answers on $host:$port"
    exit 0
fi

echo "Redis is not running on $host:$port; starting it"
redis-server --daemonize yes --bind "$host" --port "$port" --save "" --appendonly no \
    --logfile "${TMPDIR:-/tmp}/redis-$port.log" || {
    echo "redis-server failed to start on $host:$port" >&2
    exit 1
}

deadline=$((SECONDS + timeout))
while ((SECONDS < deadline)); do
    if answers; then
        echo "Redis is up on $host:$port"
        exit 0
    fi
    sleep 0.2
done
echo "Redis did not answer on $host:$port within ${timeout}s (see ${TMPDIR:-/tmp}/redis-$port.log)" >&2
exit 1
