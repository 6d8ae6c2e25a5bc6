# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

PG_URL ?= postgres://postgres@127.0.0.1:5432/portal
REDIS_TEST_URL ?= redis://127.0.0.1:6379/15

.PHONY: run test test-sqlite test-slow test-topology lint migrations-check install bench bench-unkey clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	@$(PY) -m portal_project.devserver

test: $(STAMP)
	DATABASE_URL=$(PG_URL) REDIS_URL=$(REDIS_TEST_URL) $(PY) -m pytest -q

test-sqlite: $(STAMP)
	DATABASE_URL=sqlite:///$(CURDIR)/db-test-embedded.sqlite3 REDIS_URL= $(PY) -m pytest -q

test-slow: $(STAMP)
	DATABASE_URL=$(PG_URL) REDIS_URL=$(REDIS_TEST_URL) $(PY) -m pytest -q -m slow

# deploy/ brought up on this machine (nginx, supervisord, two daphne processes), with its figures printed; part of test-slow.
test-topology: $(STAMP)
	DATABASE_URL=$(PG_URL) REDIS_URL=$(REDIS_TEST_URL) $(PY) -m pytest -q -s -m slow tests/test_topology.py

# mypy's Django plugin imports the settings: DEBUG=1 lets them load without the production secrets, as for
# migrations-check; nothing connects to the database or Redis.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=1 $(VENV)/bin/mypy

migrations-check: $(STAMP)
	DEBUG=1 $(PY) manage.py makemigrations --check --dry-run

clean:
	rm -rf $(VENV) db.sqlite3 test_db.sqlite3 .pytest_cache .ruff_cache .mypy_cache

bench: $(STAMP)
	@command -v wrk >/dev/null || { echo "installing wrk from Debian's packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	$(PY) bench/bench.py --duration 10

# Unkey mode against a fake Unkey 20-40 ms away: the gateway with the verification cache off and on.
bench-unkey: $(STAMP)
	@command -v wrk >/dev/null || { echo "installing wrk from Debian's packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	$(PY) bench/bench.py --unkey --duration 10

# Several processes (issue 15): one, then two gateway processes behind nginx (deploy/nginx rendered), wrk at 64
# connections, each part's CPU per request from /proc; then 1,000 streams held against one process (RSS). ~2 minutes.
.PHONY: bench-scaling
bench-scaling: $(STAMP)
	@command -v wrk >/dev/null || { echo "installing wrk from Debian's packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	$(PY) bench/scaling.py --duration 8 --streams 1000
