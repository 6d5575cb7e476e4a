#!/usr/bin/env bash
# The project's test command (README "Testing"): starts the brokers the tests need, then
# checks formatting, lints, docs and runs every test — the conformance suite on the memory
# broker, Kafka (Tansu), RabbitMQ and Redis included. A broker that cannot be started fails
# the run; no test skips because its broker is missing.
#
# Run with: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "brokers and test tools"
for broker in redis rabbitmq kafka postgres; do
    script=scripts/start-$broker.sh
    if [[ -f $script ]]; then
        bash "$script"
    fi
done
# The Kafka restart test keeps Tansu's log in an S3 server of its own (moto).
if [[ -f scripts/install-moto.sh ]]; then
    bash scripts/install-moto.sh
fi
# messaging-celery's tests start a real Celery worker, from a venv of their own.
bash scripts/install-celery.sh

# The AsyncAPI test validates `consumer asyncapi` with the AsyncAPI parser (npm).
bash scripts/install-asyncapi.sh

# Prometheus and promtool for tests/tests/prometheus.rs (deploy/ rules and a real scrape).
bash scripts/install-prometheus.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps --quiet

step "cargo test"
cargo test --workspace --all-features --no-fail-fast
