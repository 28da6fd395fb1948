#!/usr/bin/env bash
# Sizing figures for docs/deployment.md, in one run on one machine: token
# reads and durable stores on the embedded SQLite node, and on PostgreSQL
# with one and with two replicas (the same 10,000 tokens, copied with
# `vault-server migrate`), all with auditing on.
#
#   bash bench/replicas.sh            # about 3 minutes
#   QUICK=1 bash bench/replicas.sh    # a quick check that it still works
#
# Needs wrk (installed when missing), curl and a PostgreSQL server that
# trusts the caller: BENCH_POSTGRES_SERVER, default
# postgres://postgres@127.0.0.1:5432. Everything runs on the same machine
# (client, replicas and database share its cores): read the ratios, and
# read the replicas' figures as the cost of coordination, not as capacity.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    DUR=2s; COUNT=1000; OUT_DOC=${OUT_DOC:-/dev/null}
else
    DUR=15s; COUNT=10000; OUT_DOC=${OUT_DOC:-docs/deployment.md}
fi
CONNS=64
SERVER=${BENCH_POSTGRES_SERVER:-postgres://postgres@127.0.0.1:5432}

. bench/lib.sh
ensure_wrk

step "building release binaries"
cargo build --release -q -p vault-server -p vault-bench
BIN=target/release

WORK=$(mktemp -d)
DB="vault_bench_$(date +%s)_$$"
PIDS=()
pg() { python3 .ci/pgexec.py "$SERVER/postgres" "$1"; }
cleanup() {
    # Subshells ($(…), <(…)) may run this trap too: only the script cleans up.
    [ "$BASHPID" = "$$" ] || return 0
    for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
    pg "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT


# start_vault port [extra VAR=value…]: sets VAULT_PID.
start_vault() {
    local port=$1; shift
    env VAULT__DATA_DIR="$WORK/data" VAULT__SERVER__BIND="127.0.0.1:$port" \
        VAULT__SERVER__WORKERS=2 VAULT__LOG__LEVEL=warn VAULT__REFRESH__BACKGROUND=false \
        "$@" "$BIN/vault-server" serve >/dev/null 2>>"$WORK/vault.log" &
    VAULT_PID=$!
    PIDS+=("$VAULT_PID")
    wait_http "http://127.0.0.1:$port/readyz"
}



# measure name script port… : wrk on each port at once (the connections
# split between them); prints "total_rps worst_p99 errors".
measure() {
    local name=$1 script=$2; shift 2
    local n=$# conns=$(( CONNS / $# )) i=0 files=()
    for port in "$@"; do
        i=$((i + 1))
        local out="$WORK/wrk-$name-$i.txt"
        files+=("$out")
        wrk -t1 -c"$conns" -d"$DUR" --latency -s "$script" "http://127.0.0.1:$port" >"$out" &
    done
    for _ in $(seq 1 "$n"); do wait -n; done
    local total=0 worst=0 errs=0
    for f in "${files[@]}"; do
        read -r r _ p e < <(parse_wrk "$f")
        total=$((total + r)); errs=$((errs + e))
        worst=$(awk -v a="$worst" -v b="$p" 'BEGIN { print (b > a) ? b : a }')
    done
    echo "$total $worst $errs"
}

step "loading $COUNT tokens, copying them to PostgreSQL ($DB)"
"$BIN/vault-bench" load --data-dir "$WORK/data" --count "$COUNT" 2>/dev/null
pg "CREATE DATABASE $DB"
URL="$SERVER/$DB"
VAULT__DATA_DIR="$WORK/data" "$BIN/vault-server" migrate --to "$URL" 2>>"$WORK/migrate.log"
export BENCH_ENGINE_TOKEN=""
export BENCH_TOKENS=$COUNT
PGENV=(VAULT__STORAGE__BACKEND=postgres "VAULT__STORAGE__URL=$URL")

ROWS=()
run_case() { # label, sqlite|postgres, replicas
    local label=$1 kind=$2 replicas=$3
    local ports=() pids=()
    for _ in $(seq 1 "$replicas"); do
        local port; port=$(free_port)
        if [ "$kind" = sqlite ]; then start_vault "$port"; else start_vault "$port" "${PGENV[@]}"; fi
        ports+=("$port"); pids+=("$VAULT_PID")
    done
    # The development engine's token, written by the first start.
    BENCH_ENGINE_TOKEN=$(tr -d '\n' <"$WORK/data/dev-engine.token")
    step "$label: token reads"
    measure warm bench/read.lua "${ports[@]}" >/dev/null
    read -r rr rp re < <(measure "read-$kind-$replicas" bench/read.lua "${ports[@]}")
    step "$label: stores"
    read -r sr sp se < <(measure "store-$kind-$replicas" bench/store.lua "${ports[@]}")
    for pid in "${pids[@]}"; do stop "$pid"; done
    ROWS+=("$label|$rr|$rp|$re|$sr|$sp|$se")
}

run_case "SQLite, one node" sqlite 1
run_case "PostgreSQL, one replica" postgres 1
run_case "PostgreSQL, two replicas" postgres 2

BASE_READ=$(echo "${ROWS[0]}" | cut -d'|' -f2)
BASE_STORE=$(echo "${ROWS[0]}" | cut -d'|' -f5)
TABLE="| setup | reads/s | read p99 ms | stores/s | store p99 ms | errors | reads vs SQLite | stores vs SQLite |
|---|---:|---:|---:|---:|---:|---:|---:|"
for row in "${ROWS[@]}"; do
    IFS='|' read -r label rr rp re sr sp se <<<"$row"
    TABLE+=$'\n'"| $label | $rr | $rp | $sr | $sp | $((re + se)) | $(pct "$rr" "$BASE_READ") | $(pct "$sr" "$BASE_STORE") |"
done

echo
echo "$TABLE"

if [ "$OUT_DOC" != /dev/null ]; then
    CPU=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
    BLOCK=$(cat <<BLOCK
<!-- sizing:start -->
$(date -u +%Y-%m-%d), $(nproc) vCPU ($CPU), $COUNT tokens, $CONNS connections split over the replicas, auditing on; client, replicas and PostgreSQL on the same machine. Command: \`bash bench/replicas.sh\`.

$TABLE
<!-- sizing:end -->
BLOCK
)
    python3 - "$OUT_DOC" "$BLOCK" <<'PY'
import re, sys
path, block = sys.argv[1], sys.argv[2]
text = open(path).read()
text = re.sub(r"<!-- sizing:start -->.*?<!-- sizing:end -->", lambda _: block, text, flags=re.S)
open(path, "w").write(text)
PY
    echo "wrote $OUT_DOC" >&2
fi
