# Multi-stage build: compile with the Rust toolchain, run on a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bench ./bench
COPY config ./config
RUN cargo build --release --locked --bin onboarding-worker

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/onboarding onboarding && mkdir -p /var/lib/onboarding && chown onboarding /var/lib/onboarding
COPY --from=build /src/target/release/onboarding-worker /usr/local/bin/onboarding-worker
COPY config /etc/onboarding-worker
USER onboarding
WORKDIR /var/lib/onboarding
ENV ONBOARDING__METRICS__LISTEN=0.0.0.0:9464
EXPOSE 9464
ENTRYPOINT ["onboarding-worker"]
CMD ["run"]
