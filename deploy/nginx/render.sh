#!/bin/sh
# Renders deploy/nginx/portal.conf.template (and, for a standalone nginx, nginx.conf.template) from the gateway's
# environment, so nginx and the processes agree on body cap, timeouts and ports. POSIX sh and envsubst only: it also
# runs as a start-up hook of the official nginx image (/docker-entrypoint.d/, see docker-compose.yml).
#
#   PORTAL_NGINX_SITE=/etc/nginx/conf.d/default.conf   where portal.conf goes (the default: replaces the image's site)
#   PORTAL_NGINX_MAIN=<dir>                            also write <dir>/nginx.conf and <dir>/portal.conf, prefix <dir>
set -eu
here="${PORTAL_NGINX_TEMPLATES:-$(dirname "$0")}"

# The processes: the same names and defaults as deploy/entrypoint.sh.
: "${PORTAL_GATEWAY_HOST:=127.0.0.1}"
: "${PORTAL_PROCESSES:=2}"
: "${PORTAL_FIRST_PORT:=8001}"
# The gateway's limits (portal_project/settings.py defaults).
: "${PORTAL_MAX_BODY_BYTES:=1048576}"
: "${PORTAL_UPSTREAM_TIMEOUT_S:=120}"
: "${PORTAL_REQUEST_READ_TIMEOUT_S:=30}"
# nginx's own.
: "${NGINX_LISTEN:=8080}"
: "${NGINX_SERVER_NAME:=_}"
: "${NGINX_ACCESS_LOG:=/dev/stdout}"
: "${NGINX_ERROR_LOG:=/dev/stderr}"
: "${NGINX_CACHE_DIR:=/var/cache/nginx/portal-static}"
: "${NGINX_MIME_TYPES:=/etc/nginx/mime.types}"

NGINX_UPSTREAM_SERVERS=""
i=0
while [ "$i" -lt "$PORTAL_PROCESSES" ]; do
  # max_fails=0: a refused connection sends the request to the next process at once and marks nothing down. With
  # failures counted, both processes could be marked down together in a rolling restart (the one that just came back
  # still inside its fail_timeout) and nginx would answer "no live upstreams" although one serves.
  NGINX_UPSTREAM_SERVERS="${NGINX_UPSTREAM_SERVERS}    server ${PORTAL_GATEWAY_HOST}:$((PORTAL_FIRST_PORT + i)) max_fails=0;
"
  i=$((i + 1))
done
# A non-streamed answer may take PORTAL_UPSTREAM_TIMEOUT_S before its first byte: nginx waits longer than that.
NGINX_PROXY_READ_TIMEOUT_S=$((PORTAL_UPSTREAM_TIMEOUT_S + 30))
export NGINX_UPSTREAM_SERVERS NGINX_PROXY_READ_TIMEOUT_S PORTAL_MAX_BODY_BYTES \
  PORTAL_REQUEST_READ_TIMEOUT_S NGINX_LISTEN NGINX_SERVER_NAME NGINX_ACCESS_LOG NGINX_ERROR_LOG NGINX_CACHE_DIR NGINX_MIME_TYPES

# Only these names are replaced: nginx's own $variables stay as they are.
names='${NGINX_UPSTREAM_SERVERS} ${NGINX_PROXY_READ_TIMEOUT_S} ${PORTAL_MAX_BODY_BYTES}
${PORTAL_REQUEST_READ_TIMEOUT_S} ${NGINX_LISTEN} ${NGINX_SERVER_NAME} ${NGINX_ACCESS_LOG} ${NGINX_ERROR_LOG}
${NGINX_CACHE_DIR} ${NGINX_MIME_TYPES} ${NGINX_PREFIX}'

if [ -n "${PORTAL_NGINX_MAIN:-}" ]; then
  NGINX_PREFIX="$PORTAL_NGINX_MAIN"
  export NGINX_PREFIX
  envsubst "$names" < "$here/nginx.conf.template" > "$NGINX_PREFIX/nginx.conf"
  site="$NGINX_PREFIX/portal.conf"
else
  site="${PORTAL_NGINX_SITE:-/etc/nginx/conf.d/default.conf}"
fi
envsubst "$names" < "$here/portal.conf.template" > "$site"
echo "render.sh: wrote $site (${PORTAL_PROCESSES} processes on ${PORTAL_GATEWAY_HOST}:${PORTAL_FIRST_PORT}+, listening on ${NGINX_LISTEN})"
