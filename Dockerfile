# The operator's image for those who build with Docker (BuildKit). `make image` builds the same
# image without a daemon (scripts/image.sh): a static binary, Debian's CA certificates, user
# nonroot (65532), nothing else.
#
#   docker build -t ghcr.io/coder-operators/workspace-start-operator:0.1.0 \
#     --build-arg REVISION=$(git rev-parse HEAD) .

FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl --bin workspace-start-operator \
 && strip --strip-all -o /workspace-start-operator target/x86_64-unknown-linux-musl/release/workspace-start-operator

FROM debian:bookworm-slim AS certs
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* && install -d -m 1777 /rootfs/tmp && install -d -m 0700 -o 65532 -g 65532 /rootfs/home/nonroot

FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY --from=certs /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=certs /usr/share/doc/ca-certificates/copyright /usr/share/doc/ca-certificates/copyright
COPY --from=certs /rootfs/ /
COPY image/rootfs/etc/passwd image/rootfs/etc/group /etc/
COPY --from=build /workspace-start-operator /usr/local/bin/workspace-start-operator
ENV PATH=/usr/local/bin:/usr/bin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /home/nonroot
ENTRYPOINT ["/usr/local/bin/workspace-start-operator"]
CMD ["run"]
LABEL org.opencontainers.image.title="workspace-start-operator" \
      org.opencontainers.image.description="Kubernetes operator that starts Coder workspaces on request" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/coder-operators/workspace-start-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
