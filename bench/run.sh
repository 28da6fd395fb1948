#!/usr/bin/env bash
# The load benchmark, in one run on one machine (docs/benchmarks.md):
#   1. HTTP floor: a minimal actix-web server answering a fixed JSON body of
#      the size of a token response;
#   2. token read: GET /vault/token over 10,000 stored addresses, auditing on;
#   3. store: POST /vault/store of new and replaced tokens, durable;
#   4. scale: reads over 1,000 and 1,000,000 stored tokens (database size
#      per token, the server's peak RSS, start to ready);
#   5. refresh storm: 10,000 tokens due at once, provider answering in 50 ms;
#   and a sweep of 8–256 connections for the floor and the read (SVG chart).
#
#   bash bench/run.sh            # the full run (about 10 minutes)
#   QUICK=1 bash bench/run.sh    # a quick check that it all still works
#   QUICK=1 PROFILE=debug bash bench/run.sh   # the same on debug builds (CI)
#
# Needs wrk (installed from Debian's packages when missing) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    DUR=2s; SWEEP_DUR=1s; SMALL=1000; MID=2000; BIG=20000; STORM=500
    SWEEP="8 64"; OUT_DOC=${OUT_DOC:-/dev/null}; OUT_SVG=${OUT_SVG:-/dev/null}
else
    DUR=15s; SWEEP_DUR=6s; SMALL=1000; MID=10000; BIG=1000000; STORM=10000
    SWEEP="8 16 32 64 128 256"; OUT_DOC=${OUT_DOC:-docs/benchmarks.md}
    OUT_SVG=${OUT_SVG:-docs/bench-read-vs-floor.svg}
fi
CONNS=64
THREADS=2

. bench/lib.sh
ensure_wrk

# PROFILE=debug (with QUICK=1) reuses the test build: a check that the
# script still works, not a measurement.
PROFILE=${PROFILE:-release}
case "$PROFILE" in
    release) PROFILE_FLAG=--release ;;
    debug) PROFILE_FLAG= ;;
    *) echo "PROFILE must be release or debug" >&2; exit 2 ;;
esac
step "building $PROFILE binaries"
cargo build $PROFILE_FLAG -q -p vault-server -p vault-bench
cargo build $PROFILE_FLAG -q -p vault-token-manager --example refresh_storm
BIN=target/$PROFILE

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT


# Starts the vault on data dir $1, port $2; sets VAULT_PID and START_MS.
start_vault() {
    local t0; t0=$(date +%s%N)
    VAULT__DATA_DIR="$1" VAULT__SERVER__BIND="127.0.0.1:$2" VAULT__SERVER__WORKERS=2 \
        VAULT__LOG__LEVEL=warn VAULT__REFRESH__BACKGROUND=false \
        "$BIN/vault-server" serve 2>>"$WORK/vault.log" &
    VAULT_PID=$!
    PIDS+=("$VAULT_PID")
    wait_http "http://127.0.0.1:$2/readyz"
    START_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
}


peak_rss_mb() { awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }


# run_wrk name url connections duration [script] -> prints the parsed line
run_wrk() {
    local out="$WORK/wrk-$1-$3.txt"
    if [ -n "${5:-}" ]; then
        wrk -t"$THREADS" -c"$3" -d"$4" --latency -s "$5" "$2" >"$out"
    else
        wrk -t"$THREADS" -c"$3" -d"$4" --latency "$2" >"$out"
    fi
    parse_wrk "$out"
}

load() { # dir count
    "$BIN/vault-bench" load --data-dir "$1" --count "$2" 2>/dev/null
}

ROWS=()
row() { ROWS+=("$*"); }

step "token read: $MID tokens, $CONNS connections, $DUR"
DIR_MID="$WORK/mid"; load "$DIR_MID" "$MID" >&2
PORT=$(free_port); start_vault "$DIR_MID" "$PORT"
export BENCH_ENGINE_TOKEN; BENCH_ENGINE_TOKEN=$(tr -d '\n' <"$DIR_MID/dev-engine.token")
BODY_SIZE=$(curl -fs -H "X-Engine-Id: dev" -H "Authorization: Bearer $BENCH_ENGINE_TOKEN" \
    "http://127.0.0.1:$PORT/vault/token/bench/p1" | wc -c)
export BENCH_TOKENS=$MID
run_wrk warm "http://127.0.0.1:$PORT" "$CONNS" 2s bench/read.lua >/dev/null
read -r READ_RPS READ_P50 READ_P99 READ_ERR < <(run_wrk read "http://127.0.0.1:$PORT" "$CONNS" "$DUR" bench/read.lua)
READ_RSS=$(peak_rss_mb "$VAULT_PID")

step "connection sweep of the token read"
SWEEP_CSV="$WORK/sweep.csv"; echo "series,connections,rps,p99_ms" >"$SWEEP_CSV"
for c in $SWEEP; do
    read -r r _ p99 _ < <(run_wrk sweep-read "http://127.0.0.1:$PORT" "$c" "$SWEEP_DUR" bench/read.lua)
    echo "token read,$c,$r,$p99" >>"$SWEEP_CSV"
done

step "store: new and replaced tokens, $CONNS connections, $DUR"
read -r STORE_RPS STORE_P50 STORE_P99 STORE_ERR < <(run_wrk store "http://127.0.0.1:$PORT" "$CONNS" "$DUR" bench/store.lua)
stop "$VAULT_PID"

step "HTTP floor: fixed $BODY_SIZE-byte JSON body"
FPORT=$(free_port)
"$BIN/vault-bench" floor --bind "127.0.0.1:$FPORT" --workers 2 --body-size "$BODY_SIZE" 2>/dev/null &
FLOOR_PID=$!; PIDS+=("$FLOOR_PID")
wait_http "http://127.0.0.1:$FPORT/"
# The same client work as the token read (the same Lua script, random
# paths), so the ratio compares the servers only.
export BENCH_TOKENS=$MID
read -r FLOOR_RPS FLOOR_P50 FLOOR_P99 FLOOR_ERR < <(run_wrk floor "http://127.0.0.1:$FPORT" "$CONNS" "$DUR" bench/read.lua)
for c in $SWEEP; do
    read -r r _ p99 _ < <(run_wrk sweep-floor "http://127.0.0.1:$FPORT" "$c" "$SWEEP_DUR" bench/read.lua)
    echo "HTTP floor,$c,$r,$p99" >>"$SWEEP_CSV"
done
stop "$FLOOR_PID"

step "scale: reads over $SMALL and $BIG stored tokens"
scale() { # count -> "rps p50 p99 err rss_mb start_ms bytes_per_token"
    local dir="$WORK/scale-$1"
    load "$dir" "$1" >&2
    local port; port=$(free_port)
    start_vault "$dir" "$port"
    local bytes; bytes=$(cat "$dir"/vault.db* | wc -c)
    export BENCH_TOKENS=$1
    BENCH_ENGINE_TOKEN=$(tr -d '\n' <"$dir/dev-engine.token")
    # Warm up (connections, caches) before measuring.
    run_wrk "warm-$1" "http://127.0.0.1:$port" "$CONNS" 2s bench/read.lua >/dev/null
    local r; r=$(run_wrk "scale-$1" "http://127.0.0.1:$port" "$CONNS" "$DUR" bench/read.lua)
    local rss; rss=$(peak_rss_mb "$VAULT_PID")
    stop "$VAULT_PID"
    # Start to ready on the existing database, measured on a fresh start.
    start_vault "$dir" "$port"
    local start_ms=$START_MS
    stop "$VAULT_PID"
    echo "$r $rss $start_ms $(( bytes / $1 ))"
    rm -rf "$dir"
}
read -r S_RPS S_P50 S_P99 S_ERR S_RSS S_START S_BPT < <(scale "$SMALL")
read -r B_RPS B_P50 B_P99 B_ERR B_RSS B_START B_BPT < <(scale "$BIG")

step "refresh storm: $STORM tokens due at once, provider answering in 50 ms"
STORM_OUT=$("$BIN/examples/refresh_storm" "$STORM" 64)
echo "$STORM_OUT" >&2
STORM_DUE=$(echo "$STORM_OUT" | awk '/due at once/ {print $4}')
STORM_CALLS=$(echo "$STORM_OUT" | awk '/provider calls/ {print $3}')
STORM_SECS=$(echo "$STORM_OUT" | awk '/refreshed in/ {print $3}')
STORM_LEFT=$(echo "$STORM_OUT" | awk '/still due afterwards/ {print $4}')


TABLE=$(cat <<TABLE
| run | requests/s | p50 ms | p99 ms | errors | vs floor | notes |
|---|---:|---:|---:|---:|---:|---|
| HTTP floor (fixed ${BODY_SIZE}-byte JSON) | $FLOOR_RPS | $FLOOR_P50 | $FLOOR_P99 | $FLOOR_ERR | 100 % | minimal actix-web, 2 workers, same wrk script |
| token read, $MID tokens, auditing on | $READ_RPS | $READ_P50 | $READ_P99 | $READ_ERR | $(pct "$READ_RPS" "$FLOOR_RPS") | peak RSS $READ_RSS MB |
| store (new and replaced), durable | $STORE_RPS | $STORE_P50 | $STORE_P99 | $STORE_ERR | $(pct "$STORE_RPS" "$FLOOR_RPS") | committed before the answer (group commit) |
| token read, $SMALL tokens | $S_RPS | $S_P50 | $S_P99 | $S_ERR | $(pct "$S_RPS" "$FLOOR_RPS") | RSS $S_RSS MB, start to ready $S_START ms, $S_BPT B/token |
| token read, $BIG tokens | $B_RPS | $B_P50 | $B_P99 | $B_ERR | $(pct "$B_RPS" "$FLOOR_RPS") | RSS $B_RSS MB, start to ready $B_START ms, $B_BPT B/token; $(pct "$B_RPS" "$S_RPS") of the $SMALL-token rate |
| refresh storm, $STORM_DUE due | - | - | - | - | - | $STORM_CALLS provider calls in $STORM_SECS s, $STORM_LEFT still due afterwards |
TABLE
)

echo
echo "$TABLE"
cp "$SWEEP_CSV" "$WORK/sweep-final.csv"
"$BIN/vault-bench" chart --csv "$SWEEP_CSV" --out "$OUT_SVG"

if [ "$OUT_DOC" != /dev/null ]; then
    MACHINE="$(nproc) vCPU, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
    SECTION=$(cat <<SECTION
<!-- bench:start -->
## Load benchmark (bench/run.sh)

Command: \`bash bench/run.sh\`; $(date -u +%Y-%m-%d), $MACHINE; wrk with
$THREADS threads on the same machine, $CONNS connections, $DUR per run.

$TABLE

Connection sweep ($SWEEP_DUR per point), throughput and p99 latency of the
token read against the floor:

![token read against the HTTP floor]($(basename "$OUT_SVG"))

| series | connections | requests/s | p99 ms |
|---|---:|---:|---:|
$(tail -n +2 "$SWEEP_CSV" | awk -F, '{printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4}')
<!-- bench:end -->
SECTION
)
    python3 - "$OUT_DOC" "$SECTION" <<'PY'
import sys
path, section = sys.argv[1], sys.argv[2]
text = open(path).read()
start, end = "<!-- bench:start -->", "<!-- bench:end -->"
if start in text and end in text:
    a = text.index(start)
    b = text.index(end) + len(end)
    text = text[:a] + section + text[b:]
else:
    text = text.rstrip() + "\n\n" + section + "\n"
open(path, "w").write(text)
PY
    echo "written to $OUT_DOC and $OUT_SVG" >&2
fi
