"""The warm set (config/warm.py) that /readyz reads, against a real Redis."""

from __future__ import annotations


def test_a_warm_process_counts_until_it_leaves_or_goes_quiet(api_env) -> None:  # type: ignore[no-untyped-def]
    from config import Settings, warm

    settings = Settings()
    assert warm.warm_processes(settings) == []
    warm.mark_warm(settings, "host:1", now=1_000.0)
    warm.mark_warm(settings, "host:2", now=1_000.0 + warm.TTL_S - 1)
    assert warm.warm_processes(settings, now=1_000.0 + warm.TTL_S - 1) == ["host:1", "host:2"]
    # host:1 renewed nothing for longer than TTL_S (killed without a goodbye): no longer warm
    assert warm.warm_processes(settings, now=1_000.0 + warm.TTL_S + 1) == ["host:2"]
    warm.forget(settings, "host:2")
    assert warm.warm_processes(settings, now=1_000.0 + warm.TTL_S + 1) == []


def test_marking_drops_expired_entries(api_env) -> None:  # type: ignore[no-untyped-def]
    from redis import Redis

    from config import Settings, warm

    settings = Settings()
    warm.mark_warm(settings, "gone:1", now=10.0)
    warm.mark_warm(settings, "here:2", now=10.0 + warm.TTL_S + 5)
    left = Redis.from_url(api_env["REDIS_URL"]).zrange(warm.warm_key(settings), 0, -1)
    assert left == [b"here:2"]  # the set does not grow with every restarted process
