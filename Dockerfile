# syntax=docker/dockerfile:1
# A static (musl) koodrive-operator binary in a distroless image, running as a non-root user.

FROM rust:1-bookworm AS builder
RUN rustup target add x86_64-unknown-linux-musl \
    && apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep the registry and build artefacts between builds; the binary is copied
# out in the same step because the target/ cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl --bin koodrive-operator \
    && install -D -m 0755 target/x86_64-unknown-linux-musl/release/koodrive-operator /out/koodrive-operator

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="koodrive-operator" \
      org.opencontainers.image.description="Kubernetes operator that provisions users into Huawei Cloud KooDrive from declarative UserBatch resources" \
      org.opencontainers.image.source="https://github.com/koodrive-operator/koodrive-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/koodrive-operator /koodrive-operator
# Numeric, so Kubernetes can verify runAsNonRoot without resolving a user name.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/koodrive-operator"]
CMD ["run"]
