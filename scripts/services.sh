#!/usr/bin/env bash
# Start the services the test suite talks to, if they are not running: PostgreSQL
# (127.0.0.1:5432, database `test`) and Redis (127.0.0.1:6379); install the one Debian tool the
# tests use (pdftoppm). Idempotent.
set -euo pipefail

# pdftoppm (Debian's poppler-utils) turns the PDF statement into page images in its test.
if ! command -v pdftoppm >/dev/null 2>&1; then
  echo "installing poppler-utils (pdftoppm, for the PDF statement test)"
  apt-get update -qq && apt-get install -y -qq poppler-utils >/dev/null
fi

# promtool (Debian's prometheus) checks the /metrics exposition in its test.
if ! command -v promtool >/dev/null 2>&1; then
  echo "installing prometheus (promtool, for the /metrics format test)"
  apt-get update -qq && apt-get install -y -qq prometheus >/dev/null
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
pg_isready -h 127.0.0.1 -p 5432 -q || { echo "PostgreSQL did not come up" >&2; exit 1; }
if ! psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
  createdb -h 127.0.0.1 -U postgres test
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { echo "Redis did not come up" >&2; exit 1; }
