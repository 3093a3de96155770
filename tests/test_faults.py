"""Fault injection (issue 7): the scenarios of bench/faults.py, with fast life-cycle settings.

Each scenario starts its own private Redis (AOF), database, workers and
gunicorn, injects one fault and reports final job states and checks; these
tests assert them. ``python -m bench.faults`` runs the same scenarios with the
default settings and prints the README's table.

Most of a scenario's time is spent waiting (a sweep, a stale heartbeat, a
10-second upload), so the scenarios the selected tests need run
``FAULTS_PARALLEL`` (default 3) at a time, longest first, as soon as the first
test asks; every test then waits for its own scenario.

The three bugs these scenarios found (an owner lock left behind by a frozen
Redis, a handed-back job failed while Redis was down, a prefetched job of a
dead worker hidden until the visibility timeout) are fixed; their tests stay.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.faults import FAST, SCENARIOS, Config, Result
from tests.conftest import POSTGRES_URL, database_backends

# one xdist worker runs them all: the scenarios are shared by a module fixture
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("faults")]

PARALLEL = int(os.environ.get("FAULTS_PARALLEL", "3"))
# test -> scenario, and the scenario's rough cost (seconds, three at a time, 2-core VM)
SCENARIO_OF = {
    "test_redis_restart_loses_no_job": "redis-restart",
    "test_sigkilled_worker_job_is_recovered_by_the_sweeper": "worker-sigkill",
    "test_sigterm_hands_the_job_back_at_once": "worker-sigterm",
    "test_frozen_redis_gives_a_quick_json_503": "redis-sigstop",
    "test_owner_can_submit_right_after_redis_resumes": "redis-sigstop",
    "test_slow_uploads_do_not_slow_healthz": "slow-clients",
    "test_api_killed_mid_upload_leaves_nothing": "api-kill",
    "test_long_member_path_is_stored_in_full": "long-path",
    "test_every_error_is_json": "json-errors",
    "test_job_that_crashes_its_worker_ends_failed": "crash-loop",
    "test_sigterm_while_redis_is_down_keeps_the_job": "sigterm-redis-down",
    "test_job_prefetched_by_a_dead_worker_is_republished": "reserved-dead",
    "test_stalled_uploads_neither_starve_the_api_nor_stay_open": "stalled-uploads",
}
COST = {
    "reserved-dead": 29,
    "crash-loop": 26,
    "api-kill": 23,
    "worker-sigkill": 23,
    "sigterm-redis-down": 20,
    "slow-clients": 18,
    "redis-restart": 16,
    "worker-sigterm": 16,
    "stalled-uploads": 15,
    "redis-sigstop": 13,
    "long-path": 8,
    "json-errors": 3,
}

Run = Callable[..., Result]


@pytest.fixture(scope="module")
def scenario(request: pytest.FixtureRequest, tiny_models_dir: Path) -> Iterator[Run]:
    """``scenario(name, database)``: that scenario's result (each runs once, in the background)."""
    cfg = Config(FAST, tiny_models_dir, POSTGRES_URL)
    wanted: list[tuple[str, str]] = []
    for item in request.session.items:
        name = SCENARIO_OF.get(getattr(item, "originalname", ""))
        if name is None or item.module is not request.module:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        key = (name, params.get("database", "sqlite"))
        if key not in wanted:
            wanted.append(key)
    wanted.sort(key=lambda k: -COST.get(k[0], 30))
    pool = ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="fault")
    futures: dict[tuple[str, str], Future[Result]] = {
        key: pool.submit(SCENARIOS[key[0]], cfg, key[1]) for key in wanted
    }
    try:
        yield lambda name, database="sqlite": futures[name, database].result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # each scenario cleans up after itself


def assert_checks(result: Result) -> None:
    """Every check of the scenario passed."""
    assert result.checks and not result.failed_checks, result.report()


@pytest.mark.parametrize("database", database_backends())
def test_redis_restart_loses_no_job(scenario: Run, database: str) -> None:
    """1. Redis (AOF) restarted while a job runs and ten wait: all succeed, rows == slices."""
    result = scenario("redis-restart", database)
    assert_checks(result)
    assert result.state_summary() == "12 succeeded"


def test_sigkilled_worker_job_is_recovered_by_the_sweeper(scenario: Run) -> None:
    """2. SIGKILL of a worker's process group mid-job; a second worker finishes it."""
    result = scenario("worker-sigkill")
    assert_checks(result)
    # stale after STALE_AFTER_S (6 s), found by the next sweep (every 2 s)
    assert result.measures["requeued after kill s"] < 6 + 2 * 2 + 5, result.report()


def test_sigterm_hands_the_job_back_at_once(scenario: Run) -> None:
    """3. SIGTERM mid-job: back in the queue within a second, the worker exits within seconds."""
    result = scenario("worker-sigterm")
    assert_checks(result)
    assert result.measures["handed back after s"] < 2, result.report()


def test_frozen_redis_gives_a_quick_json_503(scenario: Run) -> None:
    """4. SIGSTOP of Redis during a submit: JSON 503 within 5 s, row failed; SIGCONT heals."""
    result = scenario("redis-sigstop")
    assert_checks(result)
    assert result.checks["another owner's submit after SIGCONT succeeds"]


def test_owner_can_submit_right_after_redis_resumes(scenario: Run) -> None:
    result = scenario("redis-sigstop")
    assert result.checks["same owner's first submit after SIGCONT: 202"], result.report()


def test_slow_uploads_do_not_slow_healthz(scenario: Run) -> None:
    """5. Four clients upload for 10 s, longer than WEB_TIMEOUT_S (8 s in FAST, 30 s by
    default: gunicorn's worker timeout): 202 each; /healthz under 1 s."""
    result = scenario("slow-clients")
    assert_checks(result)
    assert result.measures["upload min s"] > FAST.web_timeout_s


def test_api_killed_mid_upload_leaves_nothing(scenario: Run) -> None:
    """6. gunicorn SIGKILLed mid-upload: no row, no file; an orphan is swept, a live job kept."""
    assert_checks(scenario("api-kill"))


@pytest.mark.parametrize("database", database_backends())
def test_long_member_path_is_stored_in_full(scenario: Run, database: str) -> None:
    """7. A zip member path of 1100 characters: the job succeeds, ``source`` is complete."""
    assert_checks(scenario("long-path", database))


def test_every_error_is_json(scenario: Run) -> None:
    """8. gunicorn's 414/431/400, malformed chunked bodies (400, no traceback) and the
    app's 400/401/404/405: JSON bodies."""
    assert_checks(scenario("json-errors"))


def test_job_that_crashes_its_worker_ends_failed(scenario: Run) -> None:
    """9. A pool child killed at every start of one job: failed after MAX_ATTEMPTS, others run."""
    assert_checks(scenario("crash-loop"))


def test_sigterm_while_redis_is_down_keeps_the_job(scenario: Run) -> None:
    """10. SIGTERM mid-job while Redis is down: the job stays queued; the sweeper republishes."""
    result = scenario("sigterm-redis-down")
    assert_checks(result)


def test_job_prefetched_by_a_dead_worker_is_republished(scenario: Run) -> None:
    """11. Redis restarted, then the worker killed while it holds a prefetched message."""
    result = scenario("reserved-dead")
    if not result.checks["a message prefetched after the reconnect"]:  # the set-up failed
        pytest.fail(result.report())
    assert_checks(result)


def test_stalled_uploads_neither_starve_the_api_nor_stay_open(scenario: Run) -> None:
    """12. Stalled uploads (headers, a few bytes, nothing): /healthz under 1 s throughout,
    another client submits and polls, each stalled one is answered 408 after
    UPLOAD_IDLE_TIMEOUT_S, and a slow but progressing upload succeeds.

    FAST: 24 stalled for 12 s, a 5 s idle timeout, 8 MB at 1 MB/s; ``python -m
    bench.faults --only stalled-uploads`` runs the target (64, 60 s, 30 s, 40 MB).
    """
    result = scenario("stalled-uploads")
    assert_checks(result)
    assert result.measures["stalled closed"] >= 24, result.report()
