#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS seconds each
# (default 60) with cargo-fuzz on a nightly toolchain; prints one line per
# target. The build and the corpora live in a cache outside the checkout
# (VAULT_FUZZ_CACHE, default ~/.cache/vault-engine-fuzz), so that every
# run, CI's included, starts where the last one stopped.
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
cache="${VAULT_FUZZ_CACHE:-$HOME/.cache/vault-engine-fuzz}"
mkdir -p "$cache"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build -O --target-dir "$cache/target" >/dev/null
for t in "${targets[@]}"; do
    mkdir -p "$cache/corpus/$t"
    log="$(mktemp)"
    if cargo +nightly fuzz run -O --target-dir "$cache/target" "$t" "$cache/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -artifact_prefix="$cache/$t-" >"$log" 2>&1; then
        runs="$(grep -o 'Done [0-9]* runs' "$log" | awk '{print $2}')"
        echo "$t: ok, ${runs:-?} runs in ${secs} s, corpus of $(find "$cache/corpus/$t" -type f | wc -l) inputs"
    else
        echo "$t: FAILED"
        tail -40 "$log"
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
done
