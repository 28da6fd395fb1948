# The vault server in a minimal image.
#
#   docker build -t vault-engine .
#   docker run -p 8200:8200 -v vault-data:/var/lib/vault vault-engine
#
# The runtime image has no shell and no package manager; the server runs
# as an unprivileged user and keeps its database and key file in the
# /var/lib/vault volume (configure a KMS key provider to keep the master
# key out of it; see docs/keys.md). Configuration comes from VAULT__…
# variables or a file passed with `--config`.

# The base images are arguments so that a machine without access to their
# registries can build from equivalents of its own (.ci/image.sh does).
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
# Marks the build stage's images, so they can be pruned by this label.
LABEL vault-engine.stage=build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p vault-server \
    && strip target/release/vault-server \
    && mkdir -p /out/var/lib/vault

FROM ${RUNTIME_IMAGE}
COPY --from=build /src/target/release/vault-server /usr/local/bin/vault-server
COPY --from=build --chown=nonroot:nonroot /out/var/lib/vault /var/lib/vault
WORKDIR /var/lib/vault
ENV VAULT__DATA_DIR=/var/lib/vault \
    VAULT__SERVER__BIND=0.0.0.0:8200 \
    VAULT__LOG__FORMAT=json
USER nonroot
EXPOSE 8200
VOLUME ["/var/lib/vault"]
ENTRYPOINT ["/usr/local/bin/vault-server"]
CMD ["serve"]
