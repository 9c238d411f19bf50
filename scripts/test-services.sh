#!/usr/bin/env bash
# Make sure what the test suite talks to is there: PostgreSQL (unless TEST_DATABASE_URL points
# elsewhere). Starts the local cluster when it is down.
set -euo pipefail
if [ -z "${TEST_DATABASE_URL:-}" ]; then
  if command -v pg_isready >/dev/null && ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    if command -v pg_ctlcluster >/dev/null; then
      echo "starting the local PostgreSQL cluster"
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
      for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
    fi
  fi
fi
# The admin dashboard's browser tests drive Debian's headless Chromium through chromedriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if command -v apt-get >/dev/null; then
    echo "installing chromium and chromium-driver for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
fi
