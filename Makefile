# The two commands people need:
#   make run    start API + web UI, one Celery worker, Flower (and Redis if none runs): honcho + Procfile
#   make test   ruff + mypy + pytest (unit and integration, against a real Redis)
# Helpers: venv bytecode lint migrate bench compose-check clean.  `make help` lists them.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LUNGCT := $(VENV)/bin/lungct
# Extra pytest arguments: make test ARGS="-k jobs -x" (one process; without ARGS the
# whole suite runs on PYTEST_PROCESSES xdist processes, default 3: scripts/test.sh)
ARGS   ?=
UV_VERSION := 0.13.9
# honcho's environment: var/run.env (written by scripts/prestart.py), and .env if you keep one
ENV_FILES = $(if $(wildcard .env),.env$(comma))var/run.env
comma := ,

.PHONY: help run test venv bytecode lint migrate bench compose-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

run: venv bytecode ## run the whole service locally (Ctrl-C stops it): the processes of the Procfile
	$(VPY) scripts/prestart.py
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/honcho -e $(ENV_FILES) -f Procfile start

test: venv bytecode ## ruff + mypy + pytest (starts a private Redis when REDIS_URL is unset)
	bash scripts/test.sh $(ARGS)

venv: $(STAMP) $(LUNGCT) ## create .venv, install requirements-dev.txt and the lungct command

$(VPY):
	@if [ -z "$(PYTHON)" ]; then echo "Python 3.11 not found: apt-get install python3.11" >&2; exit 1; fi
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "$(PYTHON) is older than 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
		echo "Creating the venv failed; on Debian: sudo apt-get install python3-venv" >&2; exit 1; }

# uv installs from its cache in seconds (pip took minutes, TensorFlow most of them);
# --compile-bytecode as pip does: with PYTHONDONTWRITEBYTECODE set, every process
# would otherwise compile TensorFlow from source again (12 s an import instead of 5)
$(STAMP): requirements.txt requirements-dev.txt | $(VPY)
	$(VPY) -m pip install -q uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --python $(VPY) --compile-bytecode -r requirements-dev.txt
	@touch $@

# The client package, editable, for the `lungct` console script (pyproject.toml).
$(LUNGCT): pyproject.toml | $(STAMP)
	$(VENV)/bin/uv pip install --python $(VPY) --no-deps -e .
	@touch $@

TYPED := api worker db ingest storage config models client dicomnet

# Our own sources as bytecode too (up-to-date files are skipped): Python writes it on
# first import, except where PYTHONDONTWRITEBYTECODE is set (containers, CI), and then
# every `lungct` call compiled the client again (~40 ms of its ~200 ms start).
bytecode: venv
	@$(VPY) -m compileall -q $(TYPED) bench scripts

lint: venv ## ruff check . and mypy over the service's packages
	$(VPY) -m ruff check .
	$(VPY) -m mypy $(TYPED)

migrate: venv ## apply database migrations to DATABASE_URL (default: SQLite in var/)
	@mkdir -p var
	$(VPY) -m db.migrate

bench: venv bytecode ## run the benchmarks (python -m bench)
	$(VPY) -m bench

compose-check: ## validate docker-compose.yml (dummy values for required secrets)
	@if command -v docker-compose >/dev/null; then dc=docker-compose; \
	elif docker compose version >/dev/null 2>&1; then dc="docker compose"; \
	else echo "docker-compose not found: apt-get install docker-compose" >&2; exit 1; fi; \
	export POSTGRES_PASSWORD=dummy FLOWER_BASIC_AUTH=dummy:dummy MINIO_ROOT_PASSWORD=dummy123 \
		AWS_SECRET_ACCESS_KEY=dummy123 PRIVATE_ADDR=127.0.0.1; \
	echo "$$dc -f docker-compose.yml config -q"; \
	$$dc -f docker-compose.yml config -q && echo "docker-compose.yml is valid" && \
	echo "$$dc -f docker-compose.yml -f deploy/multi-host.yml config -q" && \
	$$dc -f docker-compose.yml -f deploy/multi-host.yml config -q \
		&& echo "deploy/multi-host.yml is valid"

clean: ## remove caches (keeps .venv and var/, which holds the local database and uploads)
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
