#!/usr/bin/env bash
# Runs schemathesis against a real vault-server: every operation of the
# server's own /openapi.json, with generated valid and invalid requests and
# stateful sequences along the document's links (store, then read, status,
# refresh and delete what was stored). Every check is on: no 5xx, every
# response matching the schema, schema-valid requests accepted and
# schema-invalid ones refused.
#   .ci/schemathesis.sh [SECONDS]     (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
version="4.32.5"

if ! schemathesis --version 2>/dev/null | grep -q "$version"; then
    python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$version"
fi
cargo build --quiet -p vault-server

# free_port and wait_http.
. bench/lib.sh

dir="$(mktemp -d)"
port="$(free_port)"
# A lockout would turn the generated requests without credentials into
# refusals of the good ones too; everything else is the default.
VAULT__DATA_DIR="$dir" VAULT__SERVER__BIND="127.0.0.1:$port" \
VAULT__ACCESS__MAX_FAILURES=1000000000 VAULT__REFRESH__BACKGROUND=false \
    target/debug/vault-server >"$dir/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$dir"' EXIT
wait_http "http://127.0.0.1:$port/readyz" 1000
token="$(cat "$dir/dev-engine.token")"

status=0
(cd "$dir" && schemathesis run "http://127.0.0.1:$port/openapi.json" \
    -H "X-Engine-Id: dev" -H "Authorization: Bearer $token" \
    --checks all --max-time "$secs" --workers 2 \
    --suppress-health-check all --warnings off) || status=$?

if grep -q "panicked" "$dir/server.log"; then
    echo "the server panicked:"; grep -A5 panicked "$dir/server.log"; status=1
fi
kill -0 $server 2>/dev/null || { echo "the server died"; status=1; }
exit $status
