#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 with the database `test` (user postgres,
# trust authentication on loopback), for messaging-postgres's tests; starts the local
# cluster when it does not answer. Idempotent. Exits non-zero when PostgreSQL cannot be
# reached within POSTGRES_START_TIMEOUT seconds (default 30).
set -euo pipefail

host=127.0.0.1
port="${POSTGRES_PORT:-5432}"
timeout="${POSTGRES_START_TIMEOUT:-30}"

answers() {
    pg_isready -q -h "$host" -p "$port" 2>/dev/null
}

if ! command -v pg_isready >/dev/null 2>&1; then
    echo "PostgreSQL is not installed (install it with: apt-get install postgresql)" >&2
    exit 1
fi

if ! answers; then
    echo "PostgreSQL is not running on $host:$port; starting it"
    if command -v pg_ctlcluster >/dev/null 2>&1 && [[ -d /etc/postgresql ]]; then
        for version in /etc/postgresql/*; do
            pg_ctlcluster "$(basename "$version")" main start || true
        done
    else
        service postgresql start || true
    fi
    deadline=$((SECONDS + timeout))
    until answers; do
        if ((SECONDS >= deadline)); then
            echo "PostgreSQL did not come up on $host:$port within ${timeout}s" >&2
            exit 1
        fi
        sleep 0.2
    done
fi

if ! psql -h "$host" -p "$port" -U postgres -d test -tAc 'select 1' >/dev/null 2>&1; then
    createdb -h "$host" -p "$port" -U postgres test || {
        echo "cannot create the database test as postgres on $host:$port (trust auth on loopback?)" >&2
        exit 1
    }
fi
echo "PostgreSQL is up on $host:$port (database test)"
