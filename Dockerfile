# Builds the `gateway` and `worker` binaries into one small runtime image.
# docker-compose.yml picks which one a container runs (`command: gateway` or
# `command: worker`); without a command the image runs the gateway.
#
#   docker build -t amqp-gateway .
#   docker run --rm -e AMQP_URL=amqp://guest:guest@HOST:5672/%2f \
#       -e GATEWAY_ROUTES=echo -p 50051:50051 amqp-gateway

# ---- build ----------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# protoc is not needed: build.rs uses the protoc-bin-vendored crate.
COPY . .
RUN cargo build --release --locked -p gateway -p worker \
    && install -m 0755 target/release/gateway target/release/worker /usr/local/bin/

# ---- runtime --------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates follows Debian's security updates: not pinned on purpose.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin app
COPY --from=builder /usr/local/bin/gateway /usr/local/bin/worker /usr/local/bin/
# the non-root user `app` (numeric, so runAsNonRoot checks can verify it)
USER 10001:10001
# Inside a container the gateway must listen on all interfaces to be reachable.
ENV GATEWAY_LISTEN=0.0.0.0:50051
EXPOSE 50051
CMD ["gateway"]
