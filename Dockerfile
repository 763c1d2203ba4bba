# sluice: one static-ish binary on Debian slim.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sluice

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates zlib1g && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/sluice sluice && mkdir -p /lake && chown sluice /lake
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
USER sluice
WORKDIR /var/lib/sluice
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["run", "--config", "/etc/sluice/sluice.toml", "--lake", "/lake"]
