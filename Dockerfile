# orderstream: one small binary for every service of the stack (run, produce, migrate,
# reconcile, healthcheck).
#
#   docker build -t orderstream:local .
#
# Stage 1 builds a release binary; librdkafka is compiled from source by rdkafka-sys (hence make,
# a C/C++ compiler, zlib and OpenSSL's headers: TLS to all three stores goes through OpenSSL).
# The `failpoints` feature of the chaos suite is left out, so the fault-injection points do not
# exist in this image.
ARG RUST_VERSION=1.95
ARG DEBIAN_VERSION=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_VERSION} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake make g++ zlib1g-dev pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Everything but what .dockerignore leaves out (target/, .git/, .dev/, .env).
COPY . .
# Cache mounts keep the registry and the target directory between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin orderstream \
 && install -D -m 0755 target/release/orderstream /out/orderstream \
 && strip /out/orderstream

# Stage 2: Debian slim with the binary and nothing else it does not need.
FROM debian:${DEBIAN_VERSION}-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g libssl3 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 orderstream \
 && useradd --system --uid 10001 --gid orderstream --no-create-home --shell /usr/sbin/nologin orderstream
COPY --from=build /out/orderstream /usr/local/bin/orderstream
USER 10001:10001
# Operations port: /metrics, /healthz, /readyz and the web console (sales figures, the last
# failure's text; no authentication). All interfaces inside the container, so Prometheus and
# the health checks reach it on the container network; publish it on 127.0.0.1 only, or put
# it behind an authenticating proxy.
ENV ORDERSTREAM__HTTP__LISTEN=0.0.0.0:9898
EXPOSE 9898
# tini as PID 1 forwards SIGTERM (so `docker stop` starts the drain) and reaps children.
ENTRYPOINT ["/usr/bin/tini", "--", "orderstream"]
CMD ["run"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["orderstream", "healthcheck"]
