#!/usr/bin/env bash
# A walkthrough of the vault's HTTP API with curl, against a vault started
# with its embedded default (`cargo run --release -p vault-server`, run from
# the same directory, so vault-data/dev-engine.token is here).
#
#   bash examples/walkthrough.sh [VAULT_URL]
set -euo pipefail

VAULT=${1:-http://127.0.0.1:8200}
TOKEN=$(cat vault-data/dev-engine.token)
auth=(-H "X-Engine-Id: dev" -H "Authorization: Bearer $TOKEN")
say() { printf '\n== %s\n' "$*"; }
call() { curl -sS -w '  [HTTP %{http_code}]\n' "$@"; }

say "health and readiness (no credentials)"
call "$VAULT/healthz"
call "$VAULT/readyz"

say "Integration Manager stores the spec's Slack token (answer: metadata only)"
call -X POST "$VAULT/vault/store" "${auth[@]}" -H 'Content-Type: application/json' -d '{
  "engine_id": "dev",
  "project_id": "pf_203",
  "platform": "Slack",
  "token_data": {
    "access_token": "xoxb-walkthrough",
    "refresh_token": "rt-walkthrough",
    "expires_in": 3600,
    "scopes": ["chat:write", "users:read"]
  }
}'

say "Execution Engine fetches it as 'slack', requiring a scope"
call "$VAULT/vault/token/pf_203/slack?scopes=chat:write" "${auth[@]}"

say "a scope the token lacks: 403 insufficient_scope"
call "$VAULT/vault/token/pf_203/slack?scopes=admin" "${auth[@]}"

say "status without the token"
call "$VAULT/vault/status/pf_203/slack" "${auth[@]}"

say "wrong credentials: 401, nothing said about which part"
call "$VAULT/vault/token/pf_203/slack" -H "X-Engine-Id: dev" -H "Authorization: Bearer wrong"

say "Cleanup Engine deletes it (revocation reported per token)"
call -X DELETE "$VAULT/vault/delete/pf_203/slack" "${auth[@]}"

say "gone: 404"
call "$VAULT/vault/token/pf_203/slack" "${auth[@]}"

say "the usage log of all that"
call "$VAULT/vault/audit?project=pf_203&limit=10" "${auth[@]}"
