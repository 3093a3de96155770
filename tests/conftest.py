"""Shared fixtures: settings isolated per test, a tiny model, and the real stack.

Integration tests run against a real Redis (REDIS_URL), a real Celery worker
started as a subprocess, and a real database: SQLite always, PostgreSQL too
when TEST_POSTGRES_URL is set (CI sets it). Each stack gets its own queue name
and its own database (an SQLite file, or a fresh PostgreSQL schema).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.e2e import spawn, stop

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODELS = ROOT / "models" / "store"
TINY_MODEL = "tiny-test"
DATA_DIR = Path(os.environ.get("DATA_DIR", str(ROOT.parent / "shared" / "data")))
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``--dist loadfile``: whole modules, the slowest first (tests/xdist_plan.py)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from tests.xdist_plan import SlowestModuleFirst

    return SlowestModuleFirst(config, log)  # type: ignore[arg-type]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Keep each phase's report on the test (``item.rep_call``), for fixtures that
    attach logs to a failure (tests/test_dicomnet.py)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@contextmanager
def served(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """``app`` served over real HTTP on a loopback port; yields its base URL."""
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join()


def new_key(database_url: str, owner: str = "alice", admin: bool = False) -> str:
    """Create an API key for ``owner`` directly in the database; return the key."""
    from api.auth import create_key
    from db.session import session_scope

    with session_scope(database_url) as s:
        return create_key(s, owner, admin=admin)[1]


def authed(app, key: str):  # type: ignore[no-untyped-def]
    """A Flask test client that sends ``Authorization: Bearer <key>`` with every request."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


def png_bytes(seed: int = 0, size: int = 64) -> bytes:
    """A small random grayscale PNG (a stand-in CT slice)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip archive holding ``members`` (name -> content)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with a small untrained model, built in a subprocess.

    A subprocess keeps TensorFlow out of the test process, so API tests see
    exactly what the API process would import. Under xdist the first worker
    builds it in the run's shared temp folder and the others use that one
    (each build imports TensorFlow: seconds of CPU the other tests need).
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    out = root / "tiny-models" / TINY_MODEL
    with _locked(root / "tiny-models.lock"):
        if not (out / "card.json").exists():  # written last
            subprocess.run(
                [sys.executable, str(ROOT / "tests" / "make_tiny_model.py"), str(out)],
                check=True,
                cwd=ROOT,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )
    return out.parent


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if need be) while the block runs."""
    import fcntl

    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def default_model() -> str:
    """The shipped default model when it is there, else the tiny test model."""
    return "lungct-cnn6" if (SHIPPED_MODELS / "lungct-cnn6" / "card.json").exists() else TINY_MODEL


def base_env(tmp: Path, models_dir: Path, database_url: str) -> dict[str, str]:
    """Environment of one isolated stack (the API in-process and its worker)."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "STORAGE_DIR": str(tmp / "uploads"),
        "MODELS_DIRS": os.pathsep.join([str(SHIPPED_MODELS), str(models_dir)]),
        "DEFAULT_MODEL": default_model(),
        "CELERY_QUEUE": f"test-{uuid.uuid4().hex[:8]}",
        "INFERENCE_BATCH_SIZE": "8",
        # one key submits for a whole session; tests of the limits set their own
        "RATE_LIMIT_SUBMIT": "100000/minute",
        "WORKER_METRICS_PORT": str(free_port()),
    }


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Database:
    url: str
    cleanup: Callable[[], None]


def _sqlite(tmp: Path) -> Database:
    return Database(f"sqlite:///{tmp / 'test.db'}", lambda: None)


def _postgres() -> Database:
    """A fresh schema in the test database, dropped afterwards."""
    from sqlalchemy import create_engine, text

    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in POSTGRES_URL else "?"

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()

    return Database(f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}", drop)


def database_backends() -> list[str]:
    return ["sqlite", "postgresql"] if POSTGRES_URL else ["sqlite"]


@pytest.fixture
def api_env(tmp_path: Path, tiny_models_dir: Path) -> Iterator[dict[str, str]]:
    """An isolated SQLite database and storage folder for one API test (no worker)."""
    from db.migrate import upgrade
    from db.session import dispose

    env = base_env(tmp_path, tiny_models_dir, f"sqlite:///{tmp_path / 'api.db'}")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        upgrade(env["DATABASE_URL"], timeout_s=5)
        yield env
        _drop_queue(env)
    dispose(env["DATABASE_URL"])  # close the finished database's connections


def _drop_queue(env: dict[str, str]) -> None:
    """Forget the stack's Celery queue and its single-image lists."""
    from redis import Redis

    redis = Redis.from_url(env["REDIS_URL"])
    redis.delete(env["CELERY_QUEUE"], *redis.keys(f"lungct:images:{env['CELERY_QUEUE']}:*"))


@pytest.fixture
def app(api_env: dict[str, str]):  # type: ignore[no-untyped-def]
    """The isolated API (its settings passed in, as a deployment would)."""
    from api import create_app
    from config import Settings

    app = create_app(Settings())
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app, api_env: dict[str, str]):  # type: ignore[no-untyped-def]
    """A test client of the isolated API, authenticated as owner ``alice``."""
    return authed(app, new_key(api_env["DATABASE_URL"], "alice"))


@dataclass
class Stack:
    """A running worker plus the environment the in-process API shares with it."""

    env: dict[str, str]
    worker: subprocess.Popen[bytes]
    log: Path
    key: str = ""

    def app(self):  # type: ignore[no-untyped-def]
        from api import create_app
        from config import Settings

        return create_app(Settings())

    def client(self):  # type: ignore[no-untyped-def]
        """A test client of the stack's API with the stack's API key."""
        return authed(self.app(), self.key)

    def http(self):  # type: ignore[no-untyped-def]
        """A requests session that sends the stack's API key."""
        import requests

        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.key}"
        return session


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m worker`` as a real subprocess, logging to ``log``.

    Each gets its own node name (``cpu-<id>@host``): Celery's control replies
    from two workers of one name are an error, so a worker left over by an
    interrupted run could otherwise break every later stack.
    """
    name = f"cpu-{uuid.uuid4().hex[:6]}"
    argv = [sys.executable, "-m", "worker", "--concurrency", "1", "--loglevel", "INFO"]
    argv += ["--name", name]
    return spawn(argv, {**os.environ, **env, "TF_CPP_MIN_LOG_LEVEL": "2"}, log)


def wait_for_worker(proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120) -> None:
    """Block until the worker consumes the queue and a pool process of it has loaded its
    model (config/warm.py: what /readyz waits for)."""
    from api.queue import workers_consuming
    from config import Settings
    from config.warm import warm_processes

    settings = Settings()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{log.read_text()[-3000:]}")
        if workers_consuming(settings, timeout_s=1.0) and warm_processes(settings):
            return
    raise RuntimeError(f"worker did not answer in {timeout_s}s:\n{log.read_text()[-3000:]}")


class StackPool:
    """The session's stacks, one per backend, each started when first asked for.

    A worker outlives the ``stack`` fixture of its backend: with ``--dist loadfile``
    an xdist worker runs whole modules, each switching from SQLite to PostgreSQL,
    and pytest finalizes a session fixture whose parameter changes. Starting a
    worker again for every module would cost a TensorFlow import each time.
    """

    def __init__(self, tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.models_dir = models_dir
        self.stacks: dict[str, Stack] = {}
        self.cleanups: list[Database] = []

    def get(self, backend: str) -> Stack:
        if backend not in self.stacks:
            self.stacks[backend] = self._start(backend)
        return self.stacks[backend]

    def _start(self, backend: str) -> Stack:
        from db.migrate import upgrade

        tmp = self.tmp_path_factory.mktemp(f"stack-{backend}")
        db = _sqlite(tmp) if backend == "sqlite" else _postgres()
        self.cleanups.append(db)
        env = base_env(tmp, self.models_dir, db.url)
        log = tmp / "worker.log"
        with pytest.MonkeyPatch.context() as mp:  # wait_for_worker reads the environment
            for k, v in env.items():
                mp.setenv(k, v)
            upgrade(db.url, timeout_s=10)
            proc = start_worker(env, log)
            try:
                wait_for_worker(proc, log)
            except BaseException:
                stop(proc)
                raise
        return Stack(env, proc, log, key=new_key(db.url, "tester"))

    def close(self) -> None:
        """Stop every worker, forget its queue, drop its database."""
        from db.session import dispose

        for s in self.stacks.values():
            stop(s.worker)
            _drop_queue(s.env)
        for db in self.cleanups:
            dispose(db.url)  # a PostgreSQL schema is dropped only once no one is connected
            db.cleanup()


@pytest.fixture(scope="session")
def stack_pool(
    tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path
) -> Iterator[StackPool]:
    pool = StackPool(tmp_path_factory, tiny_models_dir)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="session", params=database_backends())
def stack(request: pytest.FixtureRequest, stack_pool: StackPool) -> Iterator[Stack]:
    """Real Redis + real Celery worker subprocess + real database, per backend.

    Its environment is set while the fixture lives (the in-process API reads it).
    """
    s = stack_pool.get(request.param)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s.env.items():
            mp.setenv(k, v)
        yield s


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible HTTP server (moto's) on a free loopback port, for the session."""
    from bench.s3_server import moto_server

    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Each storage backend in turn: a local folder, then a fresh S3 bucket (``s3``)."""
    from config import Settings
    from storage import LocalStorage, open_storage

    if request.param == "local":
        return LocalStorage(tmp_path / "uploads")
    request.getfixturevalue("s3")  # sets STORAGE_URL=s3://<fresh bucket>/uploads
    return open_storage(Settings())


@dataclass
class S3:
    """A fresh bucket on the test S3 server, and the variables that point the service at it."""

    env: dict[str, str]  # AWS_* and STORAGE_URL
    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return self.env["STORAGE_URL"]

    def client(self):  # type: ignore[no-untyped-def]
        from storage.s3 import s3_client

        return s3_client()

    def keys(self) -> list[str]:
        """Every object key in the bucket."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def open_uploads(self) -> list[str]:
        """Keys of unfinished multipart uploads in the bucket."""
        answer = self.client().list_multipart_uploads(Bucket=self.bucket)
        return [u["Key"] for u in answer.get("Uploads", [])]


def new_bucket(endpoint: str, prefix: str = "uploads") -> S3:
    """Create a bucket with a unique name; the caller puts ``env`` in the environment."""
    import boto3

    from bench.s3_server import s3_env

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    env = {**s3_env(endpoint), "STORAGE_URL": f"s3://{bucket}/{prefix}"}
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    client.create_bucket(Bucket=bucket)
    return S3(env, bucket, prefix)


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3:
    """A fresh bucket; AWS_* and STORAGE_URL=s3://<bucket>/uploads set for this test."""
    bucket = new_bucket(s3_endpoint)
    for k, v in bucket.env.items():
        monkeypatch.setenv(k, v)
    return bucket
