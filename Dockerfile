# syntax=docker/dockerfile:1

# ---- build --------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build

# Dependencies first, in their own layer: build a dummy crate with the real
# manifest and lock file, so this layer is reused until they change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && echo '//! placeholder' > src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# Then the real source. `touch` makes cargo see it as newer than the dummy's
# build (COPY keeps the files' own, possibly older, modification times).
COPY build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY ui ./ui
COPY openapi ./openapi
# No database at image build time: sqlx query macros, if any, need .sqlx/.
ENV SQLX_OFFLINE=true
RUN find src -type f -exec touch {} + \
    && cargo build --release --locked \
    && cp target/release/executord /usr/local/bin/executord

# ---- run ----------------------------------------------------------------
FROM debian:bookworm-slim

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 executord \
    && useradd --system --uid 10001 --gid executord \
        --home-dir /var/lib/executord --create-home --shell /usr/sbin/nologin executord

COPY --from=builder /usr/local/bin/executord /usr/local/bin/executord

# The image has no PostgreSQL server: give it DATABASE_URL.
USER 10001:10001
WORKDIR /var/lib/executord
ENV EXECUTORD_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["executord"]
CMD ["serve"]
