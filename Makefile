# Tieout: the two commands a new user needs are `make run` and `make test`.
# Both use the machine's PostgreSQL and Redis when DATABASE_URL / REDIS_URL are set, and otherwise
# start private ones under ./var (config/embedded.py).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-requirements.lock
PYTEST_ARGS ?=
# pytest-xdist: one process per core, at most 8 (each has its own test database and its own Redis
# database, TIEOUT_TEST_BROKER_DB counting down from 15). `make test XDIST=` runs in one process.
# worksteal: an idle process takes over queued tests of a busy one (the suite ends with long worker,
# fault and browser tests). Not loadscope/loadgroup: they key tests by node id, and Schemathesis gives
# the fuzz cases of one test function one id, so all but one of them would silently not run.
XDIST ?= -n auto --maxprocesses=8 --dist worksteal
# What `make test-fast` leaves out: real worker processes, the browser, and whatever takes seconds.
FAST_MARKERS := not slow and not worker and not browser
# Exports for the embedded services; empty for the variables that the environment already sets.
EMBEDDED_ENV = exports="$$($(PY) -m config.embedded env)"; eval "$$exports"

.PHONY: help venv install run test test-fast lint bench clean lock

help:
	@echo "make run        start Tieout (web, worker, beat) with demo data at http://127.0.0.1:$${PORT:-8000}/"
	@echo "make test       run the whole test suite in parallel (PYTEST_ARGS=... passes arguments to pytest)"
	@echo "make test-fast  the suite without the slow, worker and browser tests, in parallel"
	@echo "make lint       the import layers (lint-imports) and ruff; make test runs it first"
	@echo "make bench      run the benchmarks in bench/"
	@echo "make clean      stop the embedded services and remove var/"
	@echo "make venv       create .venv and install requirements.lock (run and test do this themselves)"

venv install: $(STAMP)

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Tieout needs Python >= 3.11; set PYTHON=python3.11 or newer")'
	$(PYTHON) -m venv $(VENV)

# The stamp is a copy of the lock it installed: a changed lock reinstalls, an unchanged one is a no-op.
$(STAMP): requirements.lock $(VENV)/bin/python
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	cp requirements.lock $(STAMP)

# Regenerate the pins after changing the ranges in pyproject.toml (and installing into .venv).
lock: $(STAMP)
	{ echo "# Exact pins for the whole project (runtime, embedded services, tests), from \`.venv/bin/pip freeze\`."; \
	  echo "# Ranges live in pyproject.toml; regenerate with \`make lock\` after changing them."; \
	  $(VENV)/bin/pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock
	cp requirements.lock $(STAMP)

# DEMO=0 skips loading the demo data (e.g. on a database that already holds real data).
DEMO ?= 1
# The demo runs without the second factor unless asked (TIEOUT_2FA=on make run); production keeps it on.
run: $(STAMP)
	$(EMBEDDED_ENV); \
	export DJANGO_SETTINGS_MODULE=config.settings.dev; \
	export TIEOUT_2FA="$${TIEOUT_2FA:-off}"; \
	mkdir -p var; \
	$(PY) manage.py migrate --noinput; \
	if [ "$(DEMO)" = 1 ]; then \
	  $(PY) manage.py load_demo > var/demo-logins.txt; cat var/demo-logins.txt; \
	else rm -f var/demo-logins.txt; fi; \
	$(PY) manage.py collectstatic --noinput --verbosity 0; \
	exec $(PY) -m config.devserver

test: $(STAMP) lint
	$(EMBEDDED_ENV); \
	export DJANGO_SETTINGS_MODULE=config.settings.test; \
	exec $(PY) -m pytest -p no:cacheprovider $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP) lint
	$(EMBEDDED_ENV); \
	export DJANGO_SETTINGS_MODULE=config.settings.test; \
	exec $(PY) -m pytest -p no:cacheprovider $(XDIST) -m "$(FAST_MARKERS)" $(PYTEST_ARGS)

# The layers of ARCHITECTURE.md (import-linter contracts in pyproject.toml) and the code rules (ruff: no
# import inside a function, no unused or undefined name). `make test` runs this first.
lint: $(STAMP)
	$(VENV)/bin/ruff check --no-cache .
	PYTHONPATH=. $(VENV)/bin/lint-imports --no-cache

bench: $(STAMP)
	$(EMBEDDED_ENV); \
	shopt -s nullglob; scripts=(bench/*.py bench/*.sh); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "bench: no scripts in bench/ yet"; exit 0; fi; \
	for script in "$${scripts[@]}"; do \
	  case "$${script##*/}" in _*) continue ;; esac; \
	  echo "== $$script"; \
	  case "$$script" in *.py) $(PY) "$$script" ;; *.sh) bash "$$script" ;; esac; \
	done

clean:
	-[ -x $(PY) ] && $(PY) -m config.embedded stop
	rm -rf var
