# syntax=docker/dockerfile:1
#
# Any binary of the workspace in a small runtime image; by default the demo shop API:
#
#   docker build -t idempotency-demo .
#   docker build --build-arg PACKAGE=idempotency-probe -t idempotency-probe .
#
# The package's binary must have the package's name. The gateway has its own Dockerfile
# (crates/kv-rest-gateway/Dockerfile); docker-compose.yml builds both.

# Any stable toolchain at or above the workspace's rust-version (Cargo.toml) builds it.
ARG RUST_IMAGE=rust:1-slim-bookworm

FROM ${RUST_IMAGE} AS build
ARG PACKAGE=idempotency-demo
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target directory between builds; the binary is copied
# out of the cached target directory because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p "${PACKAGE}" \
    && install -D -m 0755 "target/release/${PACKAGE}" /out/app

# Distroless (glibc and libgcc, CA certificates, no shell) matching the builder's Debian
# release; runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/app /usr/local/bin/app
USER nonroot:nonroot
ENV RUST_LOG=info
EXPOSE 3000
ENTRYPOINT ["/usr/local/bin/app"]
