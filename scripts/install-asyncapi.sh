#!/usr/bin/env bash
# Installs the AsyncAPI parser (npm @asyncapi/parser, with @asyncapi/specs) that the AsyncAPI
# test (examples/tests/asyncapi.rs) validates `consumer asyncapi` with, into
# tests/asyncapi/node_modules (git-ignored) at the versions of tests/asyncapi/package-lock.json.
# Idempotent and quick once installed: does nothing when the installed versions are those of
# the lock file. Needs node and npm (apt-get install nodejs npm).
#
# Run with: scripts/install-asyncapi.sh
set -euo pipefail
cd "$(dirname "$0")/../tests/asyncapi"

for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install-asyncapi: $tool is not installed (install it with: apt-get install nodejs npm)" >&2
        exit 1
    fi
done

# npm writes node_modules/.package-lock.json on install: equal to the lock file's packages,
# the tree is the locked one.
installed() {
    [[ -f node_modules/.package-lock.json ]] && node -e '
        const fs = require("fs");
        const lock = JSON.parse(fs.readFileSync("package-lock.json", "utf8")).packages;
        const have = JSON.parse(fs.readFileSync("node_modules/.package-lock.json", "utf8")).packages;
        const wanted = Object.keys(lock).filter((p) => p !== "");
        process.exit(wanted.every((p) => have[p] && have[p].version === lock[p].version) ? 0 : 1);
    '
}

if installed; then
    echo "install-asyncapi: @asyncapi/parser is installed"
    exit 0
fi
echo "install-asyncapi: installing @asyncapi/parser (npm ci)" >&2
# No install scripts (the parser needs none; one dependency's would send telemetry).
SCARF_ANALYTICS=false npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
installed || {
    echo "install-asyncapi: the installed packages do not match package-lock.json" >&2
    exit 1
}
echo "install-asyncapi: @asyncapi/parser installed"
