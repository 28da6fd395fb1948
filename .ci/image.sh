#!/usr/bin/env bash
# Builds the Dockerfile's image and checks what it promises: it runs as a
# non-root user, holds no shell, serves a stored token over HTTP, keeps its
# database and key in its volume across a restart (files owned by that user,
# mode 0600, no token in plain text), logs JSON without the token, and stops
# cleanly on SIGTERM.
#
#   bash .ci/image.sh
#
# Needs a Docker engine; as root on Debian it installs and starts one
# (docker.io) when none answers. The Dockerfile's base images come from
# their registries when those can be reached. Where they cannot, the script
# builds equivalents from Debian's packages instead (a bookworm system with
# gcc and this machine's Rust toolchain for the build stage; libc, libgcc,
# libstdc++, libssl, CA certificates and a `nonroot` user 65532 for the
# runtime, with no shell) and passes them as the Dockerfile's RUST_IMAGE and
# RUNTIME_IMAGE. Every step of the Dockerfile itself runs as written.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${VAULT_IMAGE:-vault-engine:check}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/vault-engine-image
RUST_IMAGE=rust:1.95-slim-bookworm
RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
LOCAL_BASE=vault-engine-base/bookworm:minbase
# Tagged with the toolchain's version: a newer one makes a new base.
LOCAL_RUST=vault-engine-base/rust:$(rustc --version | awk '{print $2}')-bookworm
LOCAL_RUNTIME=vault-engine-base/cc-debian12:nonroot
mkdir -p "$CACHE"

say() { printf '\n-- %s\n' "$*"; }

# Temporary directories, container, volume and the build's intermediate
# images go at exit, whatever happened: the legacy builder keeps the build
# stage (gigabytes of target/) as a dangling image otherwise.
TEMP_DIRS=()
NAME="vault-image-check-$$"
VOLUME="vault-image-check-$$"
cleanup() {
    docker rm -f "$NAME" >/dev/null 2>&1 || true
    docker volume rm -f "$VOLUME" >/dev/null 2>&1 || true
    docker image prune -f --filter label=vault-engine.stage=build >/dev/null 2>&1 || true
    for d in "${TEMP_DIRS[@]:-}"; do
        if [ -n "$d" ]; then rm -rf "$d"; fi
    done
}
trap cleanup EXIT
fail() { printf 'image check FAILED: %s\n' "$*" >&2; exit 1; }
as_root() { [ "$(id -u)" = 0 ]; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# Without buildx the Docker CLI's legacy builder does the build.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi

ensure_engine() {
    if docker info >/dev/null 2>&1; then return; fi
    as_root || fail "no Docker engine answers, and only root may start one"
    if ! command -v dockerd >/dev/null 2>&1; then
        say "installing a Docker engine (docker.io)"
        apt-get update -qq && apt-get install -y -qq docker.io >/dev/null
    fi
    say "starting dockerd (log: $CACHE/dockerd.log)"
    nohup dockerd >"$CACHE/dockerd.log" 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return
        sleep 1
    done
    tail -n 30 "$CACHE/dockerd.log" >&2
    fail "dockerd did not start"
}

# A bookworm system from Debian's mirror, imported once and kept.
local_base() {
    have_image "$LOCAL_BASE" && return
    as_root || fail "building base images needs root (debootstrap)"
    command -v debootstrap >/dev/null 2>&1 || apt-get install -y -qq debootstrap >/dev/null
    local root="$CACHE/bookworm"
    rm -rf "$root"
    say "debootstrap bookworm (minbase)"
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -n 20 "$CACHE/debootstrap.log" >&2; fail "debootstrap"; }
    tar -C "$root" -c . | docker import - "$LOCAL_BASE" >/dev/null
    rm -rf "$root"
}

# The build stage's equivalent: gcc and libc headers as in rust:slim, the
# Rust toolchain this machine has (without its documentation), and the CA
# certificates this machine trusts, so that cargo reaches crates.io from
# the build wherever the machine itself does (behind a TLS-inspecting proxy
# too).
local_rust() {
    have_image "$LOCAL_RUST" && return
    local_base
    local sysroot ctx
    sysroot=$(rustc --print sysroot)
    say "build-stage base from $LOCAL_BASE and $(rustc --version)"
    ctx=$(mktemp -d)
    TEMP_DIRS+=("$ctx")
    mkdir -p "$ctx/rust"
    cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/rust/"
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
    cat >"$ctx/Dockerfile" <<EOF
FROM $LOCAL_BASE
RUN apt-get update -qq \\
    && apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates >/dev/null \\
    && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY rust /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
    docker build -q -t "$LOCAL_RUST" "$ctx" >/dev/null
    rm -rf "$ctx"
}

# The runtime's equivalent, built as distroless images are: the files of a
# few packages, a passwd with root and nonroot, and nothing that runs.
local_runtime() {
    have_image "$LOCAL_RUNTIME" && return
    local_base
    say "runtime base: libc6 libgcc-s1 libstdc++6 libssl3 ca-certificates tzdata netbase"
    local work root
    work=$(mktemp -d)
    TEMP_DIRS+=("$work")
    root="$work/root"
    mkdir -p "$root"
    docker run --rm -v "$work:/out" "$LOCAL_BASE" sh -c '
        set -e
        apt-get update -qq
        cd /out && apt-get download -qq libc6 libgcc-s1 libstdc++6 libgomp1 libssl3 ca-certificates tzdata netbase
        chmod 0644 /out/*.deb' >"$CACHE/runtime-base.log" 2>&1
    for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$root"; done
    rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/lintian"
    mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot" "$root/root"
    chmod 1777 "$root/tmp"
    find "$root/usr/share/ca-certificates" -name '*.crt' -print0 | sort -z \
        | xargs -0 cat >"$root/etc/ssl/certs/ca-certificates.crt"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$root/etc/group"
    chown 65532:65532 "$root/home/nonroot"
    [ -e "$root/bin/sh" ] && fail "the runtime base would hold a shell"
    tar -C "$root" -c . | docker import \
        --change 'USER 65532' --change 'WORKDIR /home/nonroot' \
        --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        - "$LOCAL_RUNTIME" >/dev/null
    rm -rf "$work"
}

bases() {
    if { have_image "$RUST_IMAGE" || timeout 120 docker pull -q "$RUST_IMAGE" >/dev/null 2>&1; } \
        && { have_image "$RUNTIME_IMAGE" || timeout 120 docker pull -q "$RUNTIME_IMAGE" >/dev/null 2>&1; }; then
        say "base images from their registries"
        return
    fi
    say "the base images' registries cannot be reached: building equivalents"
    local_rust
    local_runtime
    RUST_IMAGE=$LOCAL_RUST
    RUNTIME_IMAGE=$LOCAL_RUNTIME
}

ensure_engine
bases

say "docker build ($RUST_IMAGE, then $RUNTIME_IMAGE)"
started=$(date +%s)
docker build -q -t "$IMAGE" \
    --build-arg RUST_IMAGE="$RUST_IMAGE" --build-arg RUNTIME_IMAGE="$RUNTIME_IMAGE" . >/dev/null
echo "built in $(($(date +%s) - started)) s; image size $(($(docker image inspect -f '{{.Size}}' "$IMAGE") / 1000000)) MB"

WORK=$(mktemp -d)
TEMP_DIRS+=("$WORK")

say "the image runs as nonroot and holds no shell"
user=$(docker image inspect -f '{{.Config.User}}' "$IMAGE")
case $user in
    nonroot | 65532 | 65532:65532) ;;
    *) fail "the image runs as '${user:-root}', not as nonroot (65532)" ;;
esac
if docker run --rm --entrypoint /bin/sh "$IMAGE" -c true >/dev/null 2>&1; then
    fail "the runtime image has a shell"
fi
docker run --rm "$IMAGE" --version | grep -q '^vault-server ' || fail "--version"

say "serve with a configured engine, a volume and a published port"
TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
HASH=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
cat >"$WORK/vault.toml" <<EOF
[[engines]]
id = "image-check"
token_sha256 = "$HASH"
grants = ["store:*:*:*", "read:*:*:*"]
EOF
chmod 0644 "$WORK/vault.toml"
docker volume create "$VOLUME" >/dev/null
docker run -d --name "$NAME" -p 127.0.0.1::8200 \
    -v "$VOLUME:/var/lib/vault" -v "$WORK/vault.toml:/etc/vault/vault.toml:ro" \
    -e VAULT_CONFIG=/etc/vault/vault.toml "$IMAGE" >/dev/null

wait_ready() {
    local url
    url="http://$(docker port "$NAME" 8200/tcp | head -n 1)"
    for _ in $(seq 100); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz")" = 200 ]; then
            VAULT=$url
            return
        fi
        sleep 0.2
    done
    docker logs "$NAME" >&2 || true
    fail "not ready within 20 s"
}
wait_ready

SECRET="xoxb-image-check-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
auth=(-H "X-Engine-Id: image-check" -H "Authorization: Bearer $TOKEN")
code=$(curl -s -o "$WORK/store.json" -w '%{http_code}' -X POST "$VAULT/vault/store" "${auth[@]}" \
    -H 'Content-Type: application/json' \
    -d "{\"engine_id\":\"image-check\",\"project_id\":\"pf_image\",\"platform\":\"slack\",\"token_data\":{\"access_token\":\"$SECRET\",\"expires_in\":3600}}")
[ "$code" = 201 ] || [ "$code" = 200 ] || { cat "$WORK/store.json" >&2; fail "store answered $code"; }

fetch() {
    curl -s -f "$VAULT/vault/token/pf_image/slack" "${auth[@]}" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
[ "$(fetch)" = "$SECRET" ] || fail "the fetched token is not the stored one"
echo "stored and fetched a token"

say "SIGTERM stops it cleanly; the volume keeps the data across a restart"
docker stop -t 20 "$NAME" >/dev/null
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$NAME")
[ "$exit_code" = 0 ] || { docker logs "$NAME" >&2; fail "exit code $exit_code after SIGTERM"; }
docker start "$NAME" >/dev/null
wait_ready
[ "$(fetch)" = "$SECRET" ] || fail "the token did not survive the restart"
echo "same token after the restart"

say "the volume: files owned by 65532, no access for group or others, no plain text"
docker stop -t 20 "$NAME" >/dev/null
listing=$(docker run --rm -v "$VOLUME:/d:ro" "$RUST_IMAGE" \
    find /d -mindepth 1 -type f -exec stat -c '%u %a %n' {} +)
echo "$listing"
[ -n "$listing" ] || fail "the volume is empty"
echo "$listing" | awk '$1 != 65532 || $2 !~ /^[46]00$/ { bad = 1 } END { exit bad }' \
    || fail "a file in the volume is not 65532-owned with mode 0600/0400"
if docker run --rm -v "$VOLUME:/d:ro" "$RUST_IMAGE" grep -r -q -F "$SECRET" /d; then
    fail "the token is in the volume in plain text"
fi

say "logs are JSON lines and never hold the token"
docker logs "$NAME" >"$WORK/logs" 2>&1
[ -s "$WORK/logs" ] || fail "no logs"
python3 - "$WORK/logs" <<'EOF' || fail "a log line is not JSON"
import json, sys
for line in open(sys.argv[1]):
    if line.strip():
        json.loads(line)
EOF
if grep -q -F -e "$SECRET" -e "$TOKEN" "$WORK/logs"; then
    fail "a token is in the logs"
fi
echo "image check passed"
