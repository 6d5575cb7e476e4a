#!/usr/bin/env bash
# Makes sure RabbitMQ answers on 127.0.0.1:5672; starts the local server when it does not.
# Idempotent: does nothing when the port already answers. Exits non-zero when RabbitMQ
# cannot be reached within RABBITMQ_START_TIMEOUT seconds (default 60).
set -euo pipefail

host=127.0.0.1
port="${RABBITMQ_NODE_PORT:-5672}"  # rabbitmq-server reads the same variable
timeout="${RABBITMQ_START_TIMEOUT:-60}"

answers() {
    # bash's /dev/tcp: no netcat needed.
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

if answers; then
    echo "RabbitMQ answers on $host:$port"
    exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "RabbitMQ is not running on $host:$port and rabbitmq-server is not installed" >&2
    echo "(install it with: apt-get install rabbitmq-server)" >&2
    exit 1
fi

echo "RabbitMQ is not running on $host:$port; starting it"
# Listen on loopback only.
export RABBITMQ_NODE_IP_ADDRESS="${RABBITMQ_NODE_IP_ADDRESS:-$host}"
rabbitmq-server -detached || true

deadline=$((SECONDS + timeout))
while ((SECONDS < deadline)); do
    if answers; then
        # The port opens before the node has finished booting its applications.
        if command -v rabbitmqctl >/dev/null 2>&1; then
            rabbitmqctl await_startup --timeout "$((deadline - SECONDS > 1 ? deadline - SECONDS : 1))" >/dev/null 2>&1 || true
        fi
        echo "RabbitMQ is up on $host:$port"
        exit 0
    fi
    sleep 1
done

echo "RabbitMQ did not come up on $host:$port within ${timeout}s" >&2
exit 1
