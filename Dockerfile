# uturn container image: a multi-stage build, a small Debian runtime, a non-root user,
# no capabilities (UDP 3478 and the relay ports are unprivileged; see deploy/README.md).
#
#   docker build -t uturn .
#   docker run --rm --network host uturn --realm example.org --user alice:secret
#
# io_uring: the default seccomp profiles of Docker (25+) and containerd block
# io_uring_setup; uturn then logs "io_uring unavailable (...): using the portable
# backend" at start and relays through epoll. To get the io_uring backend, run with a
# seccomp profile that allows io_uring_setup/io_uring_enter/io_uring_register
# (deploy/README.md).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY benches benches
COPY examples examples
COPY src src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin uturn \
    && cp target/release/uturn /uturn \
    && strip /uturn

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin uturn \
    && mkdir -p /etc/uturn
COPY --from=build /uturn /usr/local/bin/uturn
COPY tuning/turnserver.conf.example /etc/uturn/turnserver.conf.example
USER 10001:10001
# TURN (UDP), metrics and probes (TCP, with --prometheus), relay ports (UDP).
EXPOSE 3478/udp 9641/tcp 49152-65535/udp
# SIGTERM drains (bounded by --drain-timeout), SIGUSR1 drains until the allocations are
# gone, SIGHUP reloads the -c file: uturn is PID 1 here and handles all of them itself.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/uturn"]
CMD ["-c", "/etc/uturn/turnserver.conf"]
