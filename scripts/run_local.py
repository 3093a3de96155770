"""Run the whole service on one machine: what ``make run`` starts.

Steps: create the ``var/`` folders; find or start a Redis (see
``ensure_redis.py``); apply database migrations (``python -m db.migrate``);
then start and watch three children, each in its own process group:

* one Celery worker          ``python -m worker``
* the API + web UI           ``gunicorn -c python:api.gunicorn_conf api.wsgi:app``
* Flower (task monitoring)   ``python -m worker.flower``, basic auth (``/metrics`` too)

On the first start it creates an API key for the owner ``local`` and prints
it once in the banner (``python -m api.keys create NAME`` makes more).

Ctrl-C (SIGINT) or SIGTERM stops the children gracefully (SIGTERM, then
SIGKILL after a timeout) and the embedded Redis last; a second Ctrl-C kills at
once. If a child dies on its own, the others are stopped and this script exits
non-zero, naming the one that died.

Settings (environment): FLOWER_PORT (5555), FLOWER_USER / FLOWER_PASSWORD
(generated for this run when unset), and everything config/settings.py reads
(API_HOST, API_PORT, WEB_CONCURRENCY, REDIS_URL, ...).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import ensure_redis

ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = ROOT / "var"
STOP_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 120.0
POLL_S = 0.25

log = logging.getLogger("run_local")


class Stopped(Exception):
    """Start-up was interrupted by Ctrl-C / SIGTERM."""


@dataclass(frozen=True)
class Options:
    """The settings only this script reads."""

    api_host: str
    api_port: int
    web_concurrency: int
    flower_port: int
    flower_user: str
    flower_password: str
    flower_password_generated: bool

    @classmethod
    def from_env(cls) -> Options:
        """API_HOST, API_PORT, WEB_CONCURRENCY from the settings; FLOWER_* from the environment."""
        sys.path.insert(0, str(ROOT))
        from config import get_settings

        settings = get_settings()
        password = os.environ.get("FLOWER_PASSWORD", "").strip()
        return cls(
            api_host=settings.api_host,
            api_port=settings.api_port,
            web_concurrency=settings.web_concurrency,
            flower_port=int(os.environ.get("FLOWER_PORT", "").strip() or 5555),
            flower_user=os.environ.get("FLOWER_USER", "").strip() or "admin",
            flower_password=password or secrets.token_urlsafe(18),
            flower_password_generated=not password,
        )

    @property
    def api_url(self) -> str:
        """Base URL of the API as a browser on this machine reaches it."""
        host = "127.0.0.1" if self.api_host in ("0.0.0.0", "", "::") else self.api_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.api_port}"


@dataclass
class Child:
    """A long-running child process the supervisor watches."""

    name: str
    process: subprocess.Popen[bytes]


@dataclass
class Supervisor:
    """Starts children in their own process groups and stops them together."""

    children: list[Child] = field(default_factory=list)
    stop_requested: bool = False
    signals_seen: int = 0

    def install_signal_handlers(self) -> None:
        """Route SIGINT and SIGTERM to :meth:`on_signal`."""
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGTERM, self.on_signal)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """First signal: ask for a graceful stop. Second: kill everything now."""
        self.signals_seen += 1
        self.stop_requested = True
        if self.signals_seen == 1:
            log.info(
                "%s received: stopping (press Ctrl-C again to kill at once)",
                signal.Signals(signum).name,
            )
        else:
            log.warning("second %s: killing all children", signal.Signals(signum).name)
            for child in self.children:
                _kill_group(child.process)

    def check_stop(self) -> None:
        """Raise :class:`Stopped` if a stop was requested during start-up."""
        if self.stop_requested:
            raise Stopped

    def start(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> Child:
        """Start ``args`` as a watched child in a new process group."""
        log.info("starting %s: %s", name, " ".join(args))
        process = subprocess.Popen(
            list(args), cwd=ROOT, env=dict(env), stdin=subprocess.DEVNULL, process_group=0
        )
        child = Child(name, process)
        self.children.append(child)
        return child

    def run_step(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> int:
        """Run a one-shot command to completion (abortable by Ctrl-C); return its exit code."""
        child = self.start(name, args, env)
        try:
            while child.process.poll() is None:
                if self.stop_requested:
                    self.stop_all()
                    raise Stopped
                time.sleep(POLL_S)
        finally:
            self.children.remove(child)
        return child.process.returncode

    def dead_child(self) -> Child | None:
        """The first watched child that has exited, if any."""
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop_all(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every live child (newest first), wait, then SIGKILL their groups."""
        live = [c for c in reversed(self.children) if c.process.poll() is None]
        for child in live:
            log.info("stopping %s (pid %d)", child.name, child.process.pid)
            _signal_leader(child.process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in live:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", child.name, timeout)
                _kill_group(child.process)
                child.process.wait()
        for child in self.children:
            _kill_group(child.process)  # stragglers left in a group whose leader exited


def _signal_leader(process: subprocess.Popen[bytes], signum: int) -> None:
    """Signal the child itself; it stops its own workers (gunicorn, Celery prefork)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signum)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole process group (its pgid is its pid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def ensure_dirs() -> None:
    """Create the storage folder (none for S3), the Redis folder and the SQLite file's folder."""
    sys.path.insert(0, str(ROOT))
    from config import get_settings  # the one settings object (config/settings.py)
    from storage import open_storage

    settings = get_settings()
    open_storage(settings).prepare()
    folders = [VAR_DIR, VAR_DIR / "redis"]
    sqlite_file = _sqlite_path(settings.database_url)
    if sqlite_file is not None:
        folders.append(sqlite_file.parent)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)


def _sqlite_path(database_url: str) -> Path | None:
    """The database file of an SQLite URL, or None for other databases / in-memory."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def child_env(redis_url: str) -> dict[str, str]:
    """Environment for every child: ours plus the Redis that was found or started."""
    return {**os.environ, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}


def flower_env(env: Mapping[str, str], opts: Options) -> dict[str, str]:
    """Flower reads every FLOWER_* variable as one of its options, so drop ours.

    The credentials go in FLOWER_BASIC_AUTH (same as ``--basic_auth``) rather
    than on the command line, where ``ps`` would show the password.
    """
    own = {"FLOWER_USER", "FLOWER_PASSWORD", "FLOWER_PORT"}
    out = {k: v for k, v in env.items() if k not in own and not (k.startswith("FLOWER_") and not v)}
    out["FLOWER_BASIC_AUTH"] = f"{opts.flower_user}:{opts.flower_password}"
    return out


def commands(opts: Options) -> dict[str, list[str]]:
    """The command line of each long-running child, by name."""
    py = sys.executable
    return {
        "worker": [py, "-m", "worker"],
        "api": [py, "-m", "gunicorn", "-c", "python:api.gunicorn_conf", "api.wsgi:app"],
        "flower": [
            py, "-m", "worker.flower",
            "--address=127.0.0.1", f"--port={opts.flower_port}", "--persistent=False",
        ],
    }  # fmt: skip


LOCAL_OWNER = "local"


def local_api_key(env: Mapping[str, str]) -> str | None:
    """Create the ``local`` owner's API key on the first start; None if it has one already."""
    out = subprocess.run(
        [sys.executable, "-m", "api.keys", "ensure", LOCAL_OWNER],
        cwd=ROOT, env=dict(env), capture_output=True, text=True, check=True,
    )  # fmt: skip
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    return last if last.startswith("lct_") else None


def port_open(host: str, port: int) -> bool:
    """True if something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def describe_exit(returncode: int) -> str:
    """'exit code N' or 'killed by SIGNAME' for a Popen return code."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def banner(opts: Options, redis_url: str, embedded: bool, api_key: str | None) -> str:
    """The text shown once everything is up: URLs, then credentials and the API key last."""
    api = opts.api_url
    if opts.flower_password_generated:
        creds = f"user {opts.flower_user}, password {opts.flower_password} (generated for this run)"
    else:
        creds = f"user {opts.flower_user}, password from FLOWER_PASSWORD"
    redis_note = "embedded, data in var/redis" if embedded else "external"
    more = "more keys: .venv/bin/python -m api.keys create NAME"
    if api_key:
        key_text = f"API key (owner {LOCAL_OWNER}, shown only now; {more}):\n  {api_key}"
    else:
        key_text = f"API key: the one printed at the first start ({more})"
    return "\n".join([
        "",
        "lungct is running",
        f"  Web UI      {api}/",
        f"  API         {api}/",
        f"  API docs    {api}/docs",
        f"  OpenAPI     {api}/openapi.json",
        f"  Flower      http://127.0.0.1:{opts.flower_port}/   {creds}",
        f"  Redis       {ensure_redis.redact(redis_url)} ({redis_note})",
        f"Stop with Ctrl-C (or: kill -TERM {os.getpid()}).",
        "",
        key_text,
        "",
    ])  # fmt: skip


def service_ready(opts: Options) -> bool:
    """True once /readyz answers 200 (a worker consumes the queue) and Flower listens."""
    try:
        with urllib.request.urlopen(f"{opts.api_url}/readyz", timeout=5) as reply:
            ready = reply.status == 200
    except (OSError, ValueError):
        return False
    return ready and port_open("127.0.0.1", opts.flower_port)


def watch(
    sup: Supervisor, opts: Options, redis_url: str, embedded: bool, api_key: str | None
) -> int:
    """Print the banner once the service is ready, then wait for a signal or a death."""
    started = time.monotonic()
    announced = False
    last_check = 0.0
    while not sup.stop_requested:
        dead = sup.dead_child()
        if dead is not None:
            log.error(
                "%s exited unexpectedly (%s); stopping the rest",
                dead.name,
                describe_exit(dead.process.returncode),
            )
            return 1
        if not announced and time.monotonic() - last_check >= 1.0:
            last_check = time.monotonic()
            up = service_ready(opts)
            if up or time.monotonic() - started > READY_TIMEOUT_S:
                if not up:
                    log.warning("service not ready after %.0f s (see /readyz)", READY_TIMEOUT_S)
                print(banner(opts, redis_url, embedded, api_key), flush=True)
                announced = True
        time.sleep(POLL_S)
    return 0


def serve(sup: Supervisor, opts: Options, redis_url: str, embedded: bool) -> int:
    """Migrate, start worker, API and Flower, and watch them until stopped."""
    sup.check_stop()
    env = child_env(redis_url)
    code = sup.run_step("migrate", [sys.executable, "-m", "db.migrate"], env)
    if code != 0:
        log.error("database migration failed (exit code %d); not starting the service", code)
        return code
    api_key = local_api_key(env)
    for name, args in commands(opts).items():
        sup.check_stop()
        sup.start(name, args, flower_env(env, opts) if name == "flower" else env)
    return watch(sup, opts, redis_url, embedded, api_key)


def main() -> int:
    """Entry point of ``make run``; returns the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sup = Supervisor()
    sup.install_signal_handlers()
    opts = Options.from_env()
    ensure_dirs()
    try:
        redis_url, server = ensure_redis.ensure(VAR_DIR / "redis", persistent=True)
    except ensure_redis.RedisUnavailable as exc:
        log.error("%s", exc)
        return 2
    code = 0
    try:
        code = serve(sup, opts, redis_url, embedded=server is not None)
    except Stopped:
        code = 0
    finally:
        sup.stop_all()
        if server is not None:
            server.stop()
    log.info("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
