#!/usr/bin/env bash
# Installs moto's S3 server (`moto_server`, PyPI moto[server]) unless it is on the PATH. The
# Kafka broker-restart test (tests/tests/reliability_kafka.rs) starts one on a free loopback
# port as durable storage for a Tansu of its own: the prebuilt Tansu has S3 storage but no
# postgres or sqlite storage. Idempotent.
#
# Run with: scripts/install-moto.sh
set -euo pipefail

if command -v moto_server >/dev/null 2>&1; then
    echo "install-moto: moto_server is installed"
    exit 0
fi
echo "install-moto: installing moto[server] (pip)" >&2
python3 -m pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
# pyenv and similar need their shims refreshed before the new script is on the PATH.
if command -v pyenv >/dev/null 2>&1; then
    pyenv rehash
fi
if ! command -v moto_server >/dev/null 2>&1; then
    echo "install-moto: moto_server is still not on the PATH" >&2
    exit 1
fi
echo "install-moto: moto_server installed"
