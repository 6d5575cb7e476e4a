#!/usr/bin/env bash
# Installs Debian's `prometheus` package (`prometheus` and `promtool`) for the Prometheus test
# (tests/tests/prometheus.rs) and for checking deploy/prometheus/alerts.yml, without starting
# the package's system service: the test runs a server of its own on a loopback port.
# Idempotent, and quick when both are already installed.
#
# Run with: bash scripts/install-prometheus.sh   (as root, or with sudo)
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive

# invoke-rc.d asks /usr/sbin/policy-rc.d whether a package may start its service: 101 is no.
# An existing policy is left as it is (and whatever it lets start is stopped below).
policy=/usr/sbin/policy-rc.d
created_policy=false
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    created_policy=true
fi
cleanup() {
    if $created_policy; then
        $SUDO rm -f "$policy"
    fi
}
trap cleanup EXIT

if ! apt-cache show prometheus >/dev/null 2>&1; then
    $SUDO apt-get update -qq
fi
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# Nothing of the package may keep running (it would listen on 0.0.0.0:9090).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl stop prometheus
    $SUDO systemctl disable --quiet prometheus || true
elif [[ -x /etc/init.d/prometheus ]] && $SUDO /etc/init.d/prometheus status >/dev/null 2>&1; then
    $SUDO /etc/init.d/prometheus stop
fi

command -v promtool >/dev/null
prometheus --version 2>&1 | head -n 1
