#!/bin/sh
# The gateway's entry: what the image runs (Dockerfile ENTRYPOINT) and what tests/test_topology.py runs on the
# machine. Fills in the deploy settings, applies migrations once however many containers start together, then
# becomes supervisord, which runs PORTAL_PROCESSES daphne processes on ports PORTAL_FIRST_PORT and up.
set -eu
cd "$(dirname "$0")/.."

# One daphne per core by default: each process is one event loop, i.e. one core.
: "${PORTAL_PROCESSES:=$(nproc 2>/dev/null || echo 2)}"
: "${PORTAL_FIRST_PORT:=8001}"
# 127.0.0.1 when nginx runs on the same host; 0.0.0.0 in a container that nginx reaches over the network.
: "${PORTAL_BIND:=127.0.0.1}"
# supervisord's socket and pid file (supervisorctl and deploy/rolling_restart.py find it here).
: "${PORTAL_RUN_DIR:=${TMPDIR:-/tmp}/portal-gateway}"
# Time enough for the longest request to finish (every /v1 request, streams too, ends by PORTAL_UPSTREAM_TIMEOUT_S):
# a restart then cuts nothing. The drain itself lasts only as long as what is in flight (under a second, usually).
: "${PORTAL_SHUTDOWN_GRACE_S:=$((${PORTAL_UPSTREAM_TIMEOUT_S:-120} + 10))}"
# How long supervisord waits after SIGTERM before SIGKILL: the drain (PORTAL_SHUTDOWN_GRACE_S), then up to 2 s for
# cancelled requests to record their usage and the last usage flush (gateway/lifecycle.py), with room to spare.
: "${PORTAL_STOP_WAIT_S:=$((PORTAL_SHUTDOWN_GRACE_S + 15))}"
: "${PORTAL_MIGRATE:=1}"
export PORTAL_PROCESSES PORTAL_FIRST_PORT PORTAL_BIND PORTAL_RUN_DIR PORTAL_SHUTDOWN_GRACE_S PORTAL_STOP_WAIT_S
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-portal_project.settings}"

if [ "$PORTAL_STOP_WAIT_S" -le "$PORTAL_SHUTDOWN_GRACE_S" ]; then
  echo "configuration error: PORTAL_STOP_WAIT_S: must be above PORTAL_SHUTDOWN_GRACE_S ($PORTAL_SHUTDOWN_GRACE_S), got $PORTAL_STOP_WAIT_S" >&2
  exit 2
fi

mkdir -p "$PORTAL_RUN_DIR"
chmod 0700 "$PORTAL_RUN_DIR"

# Static files under their hashed names (WhiteNoise serves them): the image collected them at build and sets this to
# 0 (its code is read-only to the processes' user); on a host, each deploy collects the code it runs.
: "${PORTAL_COLLECTSTATIC:=1}"
if [ "$PORTAL_COLLECTSTATIC" = 1 ]; then
  python manage.py collectstatic --noinput -v 0
fi

if [ "$PORTAL_MIGRATE" = 1 ]; then
  python deploy/migrate.py
fi

exec supervisord -c deploy/supervisord.conf
