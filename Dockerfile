# syntax=docker/dockerfile:1
# koodrive-operator as one static binary in an otherwise empty image, running as 65532:65532.
#
#   docker build -t koodrive-operator:0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#
# The same image that scripts/build-image.sh builds without a container engine (and that
# tests/it/image.rs starts): glibc linked statically (`-C target-feature=+crt-static`, for the
# target only), built without the `dev-tools` feature when the manifest has it, `FROM scratch`,
# numeric user 65532:65532 (so Kubernetes can check runAsNonRoot), entrypoint the binary,
# `CMD ["run"]`, port 8080. Static glibc rather than musl: it is the target our toolchains
# have, glibc >= 2.34 resolves names from /etc/hosts and /etc/resolv.conf without any NSS
# module on disk, and its allocator copes with tokio's threads. TLS needs no /etc/ssl: the
# WebPKI roots are compiled in (private CAs: --ca-bundle or SSL_CERT_FILE).
#
# Keep ARG VERSION equal to the version in Cargo.toml (tests/it/image.rs checks it).
#
# Multi-arch, where a buildx builder exists:
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t REPO/koodrive-operator:0.1.0 --push .
#
# The builder stage compiles natively for the platform it runs on (the target triple comes
# from `rustc -vV`), so the arm64 stage needs an arm64 build node: a native one
# (`docker buildx create --append --platform linux/arm64 ssh://arm64-host`), or QEMU binfmt
# emulation on an amd64 machine (`docker run --privileged --rm tonistiigi/binfmt --install
# arm64`), which works unchanged but compiles several times slower. (Cross-compiling from
# amd64 instead would need the aarch64-unknown-linux-gnu Rust target, gcc-aarch64-linux-gnu
# and libc6-dev-arm64-cross, with CC_aarch64_unknown_linux_gnu and
# CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER set to aarch64-linux-gnu-gcc.)

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the registry and build artefacts between builds; the binary is copied
# out in the same step because the target/ cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eu; \
    host="$(rustc -vV | sed -n 's/^host: //p')"; \
    features=""; \
    if grep -q 'dev-tools' Cargo.toml; then features="--no-default-features"; fi; \
    env "CARGO_TARGET_$(echo "${host}" | tr 'a-z-' 'A-Z_')_RUSTFLAGS=-C target-feature=+crt-static" \
        cargo build --release --locked -p koodrive-operator --bin koodrive-operator \
        --target "${host}" ${features}; \
    binary="target/${host}/release/koodrive-operator"; \
    if ldd "${binary}" 2>&1 | grep -q '=>'; then echo "${binary} is not static" >&2; exit 1; fi; \
    install -D -m 0755 "${binary}" /out/koodrive-operator

FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="koodrive-operator" \
      org.opencontainers.image.description="Kubernetes operator that provisions users into Huawei Cloud KooDrive from declarative UserBatch resources" \
      org.opencontainers.image.source="https://github.com/koodrive-operator/koodrive-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=builder --chown=0:0 --chmod=0755 /out/koodrive-operator /koodrive-operator
# Numeric, so Kubernetes can verify runAsNonRoot without resolving a user name.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/koodrive-operator"]
CMD ["run"]
