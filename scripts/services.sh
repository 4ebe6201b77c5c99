#!/usr/bin/env bash
# Make sure the local services the tests use answer on loopback: Redis (127.0.0.1:6379) and
# PostgreSQL (127.0.0.1:5432). A service that is installed but stopped is started; one that is
# not installed is explained, and the script fails.
set -u

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
  for _ in $(seq 1 50); do answers "$1" && return 0; sleep 0.2; done
  return 1
}

status=0

if ! answers 6379; then
  if command -v redis-server >/dev/null; then
    echo "services: starting redis-server on 127.0.0.1:6379"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp --logfile /tmp/redis-ci.log
    wait_for 6379 || { echo "services: redis did not come up (see /tmp/redis-ci.log)"; status=1; }
  else
    echo "services: Redis is not running on 127.0.0.1:6379 and redis-server is not installed."
    echo "          Install it (Debian: apt-get install redis-server) or set TEST_REDIS_URL."
    status=1
  fi
fi

if ! answers 5432; then
  if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql >/dev/null 2>&1; then
    echo "services: starting PostgreSQL on 127.0.0.1:5432"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    wait_for 5432 || { echo "services: PostgreSQL did not come up"; status=1; }
  else
    # Only the control plane's tests need it; report, but do not fail the edge's suite for it.
    echo "services: PostgreSQL is not running on 127.0.0.1:5432 (Debian: apt-get install postgresql)."
  fi
fi

exit $status
