# Helpers shared by the load benchmarks (sourced by bench/run.sh and
# bench/replicas.sh).

step() { printf '\n==> %s\n' "$*" >&2; }

# Installs wrk from Debian's packages when it is missing.
ensure_wrk() {
    if ! command -v wrk >/dev/null 2>&1; then
        step "installing wrk"
        apt-get update -qq && apt-get install -y -qq wrk >/dev/null
    fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_http url [timeout in 10 ms steps, default 3000]
wait_http() {
    for _ in $(seq 1 "${2:-3000}"); do
        if curl -fs -o /dev/null "$1"; then return 0; fi
        sleep 0.01
    done
    echo "timed out waiting for $1" >&2; return 1
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# wrk --latency output file -> "rps p50_ms p99_ms errors" (non-2xx answers
# and socket errors both count as errors).
parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) return v / 1000
            if (v ~ /ms$/) return v + 0
            if (v ~ /s$/) return v * 1000
            return v + 0
        }
        /Requests\/sec:/ { rps = $2 }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        /Non-2xx or 3xx responses:/ { bad += $NF }
        /Socket errors:/ { for (i = 3; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) bad += $i + 0 }
        END { printf "%.0f %.2f %.2f %d\n", rps, p50, p99, bad }' "$1"
}

# pct a b -> "a/b as a whole percentage", or "-" when b is 0.
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f %%", 100 * a / b; else print "-" }'; }
