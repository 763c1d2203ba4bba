#!/usr/bin/env bash
# Installs what sluice needs on a fresh Debian machine that has Rust, gcc, python3 and git:
# the C build tools librdkafka needs, and (with --test) the independent Delta reader and the
# real Kafka-protocol broker the tests use. Idempotent: reruns skip what is there.
set -euo pipefail

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
[ -f /usr/include/curl/curl.h ] || [ -f /usr/include/x86_64-linux-gnu/curl/curl.h ] || need_apt+=(libcurl4-openssl-dev)
if [ "${1:-}" = "--test" ]; then
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
  # psql: the real Postgres client the tests connect to `sluice serve` with.
  command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ "${1:-}" = "--test" ]; then
  cache="${SLUICE_CACHE:-$HOME/.cache}"
  # DuckDB with its Delta extension: the independent reader the tests check tables with;
  # (pytz: DuckDB's Python results with time zones); PyYAML: the parser the deployment
  # files are checked with; psycopg: a Postgres driver (extended protocol, binary
  # results) for `sluice serve`; moto: an S3-compatible server (conditional writes
  # included) the object-store tests write the lake to, with boto3 to look inside it;
  # azure-storage-blob: the client that makes and lists Azurite's containers.
  if ! "$cache/sluice-venv/bin/python" -c 'import duckdb, duckdb_ext, pytz, yaml, psycopg, moto, boto3, azure.storage.blob' >/dev/null 2>&1; then
    python3 -m venv "$cache/sluice-venv"
    "$cache/sluice-venv/bin/pip" install -q duckdb duckdb-ext-delta pytz pyyaml 'psycopg[binary]' 'moto[server]' azure-storage-blob
  fi
  # Azurite: Azure Blob Storage's emulator (npm), for the Azure lake tests.
  if [ ! -x "$cache/sluice-npm/node_modules/.bin/azurite-blob" ]; then
    if ! command -v npm >/dev/null 2>&1; then
      SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
    fi
    mkdir -p "$cache/sluice-npm"
    npm install --silent --no-audit --no-fund --prefix "$cache/sluice-npm" azurite@3
  fi
  # tansu: a real Kafka-protocol broker (in-memory storage). Cached in ~/.cargo/bin.
  if ! tansu --version >/dev/null 2>&1 && ! "$HOME/.cargo/bin/tansu" --version >/dev/null 2>&1; then
    cargo install --locked tansu --features dynostore
  fi
fi
