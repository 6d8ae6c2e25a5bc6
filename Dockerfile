# The gateway image: daphne processes under supervisord (deploy/supervisord.conf), started by deploy/entrypoint.sh,
# the same entry script tests/test_topology.py runs on the CI machine. nginx, PostgreSQL and Redis are other
# containers (docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# Static files are collected into the image (STATIC_ROOT: hashed names, gzip copies and the manifest WhiteNoise
# serves from; deploy/entrypoint.sh skips its own collectstatic, PORTAL_COLLECTSTATIC=0 below). The settings need no
# secret or database for it: a build-only switch and a throwaway SQLite path, never seen at run time.
RUN DJANGO_SETTINGS_MODULE=portal_project.settings PORTAL_ALLOW_DEV_SECRET=1 DATABASE_URL=sqlite:////tmp/collectstatic.sqlite3 python manage.py collectstatic --noinput \
    && rm -f /tmp/collectstatic.sqlite3

# The code stays root's and read-only; the processes run as an unprivileged user (supervisord's socket goes to /tmp).
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin portal
USER 10001

# Two processes by default, reached by nginx over the container network.
ENV PORTAL_PROCESSES=2 \
    PORTAL_FIRST_PORT=8001 \
    PORTAL_BIND=0.0.0.0 \
    PORTAL_COLLECTSTATIC=0
EXPOSE 8001 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s CMD ["python", "deploy/healthcheck.py"]
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
