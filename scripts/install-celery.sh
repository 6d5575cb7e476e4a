#!/usr/bin/env bash
# Installs Celery (with its Redis transport; the AMQP one, py-amqp, comes with it) into a venv
# of its own, for messaging-celery's tests, which start a real Celery worker from
# tests/celery/worker_tasks.py. Idempotent: a venv that already has this version is kept, so a
# second run takes a fraction of a second. The tests find it where this script puts it
# (CELERY_VENV, default $HOME/.cache/messaging/celery-venv) and fail without it.
#
# Run with: scripts/install-celery.sh
set -euo pipefail

CELERY_VERSION=5.6.3
venv=${CELERY_VENV:-$HOME/.cache/messaging/celery-venv}
stamp=$venv/.installed-celery-$CELERY_VERSION

if [[ -f $stamp && -x $venv/bin/celery ]]; then
    echo "install-celery: celery $CELERY_VERSION is installed in $venv"
    exit 0
fi
echo "install-celery: installing celery[redis]==$CELERY_VERSION into $venv (pip)" >&2
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "celery[redis]==$CELERY_VERSION"
"$venv/bin/celery" --version >/dev/null
touch "$stamp"
echo "install-celery: celery $("$venv/bin/celery" --version) installed in $venv"
