"""Privacy battery: no spelling of a header identifier survives a job, anywhere.

Synthetic DICOM studies carry a patient name, ID and birth date in their headers,
in a private tag and in the SeriesDescription, and are exported into folders and
file names written in every spelling the README lists. Three jobs run through the
real stack (API in-process, Redis, ``python -m worker``, SQLite or PostgreSQL) while
a real Flower process watches the task events:

* a DICOM study (default ``redacted`` mode) with a corrupt slice, a scout series,
  a note, a preview PNG and a DICOMDIR named after the patient;
* a PNG-only archive with the same names (default ``none`` mode: no paths kept);
* a DICOM archive whose only series has an odd Modality holding the name, so the
  job fails with a message about it;
* the DICOM node's path (``python -m dicomnet``): the same identified slices sent
  by C-STORE, the job, its SR built and sent to a storescp destination.

Then the database (the SQLite file and its WAL, or every row of the PostgreSQL
schema), the API responses (status, results, list), the worker log, the API's log
records, every Redis key and value (message bodies decoded), Flower's task list,
task API and task pages, the DICOM node's log and the SR that ``GET .../sr`` serves
are searched for every spelling (the SR sent to the PACS must carry the patient).
The ID is ``PX0097531`` rather than the README's ``PX0042`` so that its bare
number can be searched for without hitting ordinary numbers (the unit tests in
tests/test_ingest_redact.py cover ``42``).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset

from bench.e2e import spawn, stop
from tests.conftest import Stack, zip_bytes
from tests.fixtures_dicom import ct_slice, image_bytes, to_bytes
from tests.test_pipeline import all_results, submit, wait_done

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME, PATIENT_ID, BIRTH_DATE = "DOE^JANE", "PX0097531", "19480317"
NAMES = ["DOE^JANE", "Jane Doe", "DOE_JANE", "doe.jane", "Doe, Jane"]
DATES = ["19480317", "1948-03-17", "17.03.1948", "03-17-1948", "03/17/1948"]
IDS = ["PX0097531", "97531", "0097531"]
SPELLINGS = NAMES + DATES + IDS
PNG_STEM = "zz_member"  # the PNG job's file names: none of it may be kept
FLOWER_AUTH = ("battery", "battery-secret")


def _needle(spelling: str) -> re.Pattern[str]:
    """How a spelling is searched for: numbers not inside longer numbers or decimals,
    name words not inside longer words, everything case-insensitively."""
    if spelling.isdigit():
        return re.compile(rf"(?<![\d.]){spelling}(?!\d)")
    return re.compile(rf"(?<![a-z]){re.escape(spelling)}(?![a-z])", re.IGNORECASE)


NEEDLES = {s: _needle(s) for s in [*SPELLINGS, "doe", "jane", PNG_STEM]}


def findings(where: str, text: str) -> list[str]:
    """Every needle found in ``text``, with some context, for an assertion message."""
    found = []
    for spelling, needle in NEEDLES.items():
        for m in needle.finditer(text):
            context = text[max(0, m.start() - 60) : m.end() + 60].replace("\n", " ")
            found.append(f"{where}: {spelling!r} in ...{context}...")
    return found


# --- the uploads -------------------------------------------------------------------------


def _identified(ds: Dataset) -> Dataset:
    ds.PatientName = NAME
    ds.PatientID = PATIENT_ID
    ds.OtherPatientIDs = "97531"
    ds.PatientBirthDate = BIRTH_DATE
    ds.AccessionNumber = "ACC19480317"
    ds.SeriesDescription = "Chest of Jane Doe"
    block = ds.private_block(0x0011, "LUNGCT BATTERY", create=True)
    block.add_new(0x01, "LO", "Doe, Jane 17.03.1948")
    return ds


def _slice(series: str, instance: int, **kwargs: object) -> bytes:
    ds = ct_slice(series_uid=series, instance=instance, z=float(instance), **kwargs)
    return to_bytes(_identified(ds))


def dicom_study() -> bytes:
    """Every spelling as a folder (series 2) and in a file name (series 3), plus extras."""
    members = [(f"{s}/IM{i}.dcm", _slice("1.2.3.4.2", i)) for i, s in enumerate(SPELLINGS, 1)]
    members += [(f"series/{s}_{i}.dcm", _slice("1.2.3.4.3", i)) for i, s in enumerate(SPELLINGS, 1)]
    broken = _slice("1.2.3.4.2", 99)[:-200]  # header fine, pixel data short: a slice error
    scout = _slice("1.2.3.4.9", 1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    members += [
        ("Doe, Jane/broken.dcm", broken),
        (f"{PATIENT_ID}/scout.dcm", scout),
        ("Jane Doe/notes.txt", b"Jane Doe, born 1948-03-17"),
        ("DOE_JANE/preview.png", image_bytes()),
        ("03/17/1948/DICOMDIR", b"x" * 200),
    ]
    return _zip(members)


def png_study() -> bytes:
    """The same names on PNG slices: no header, so no path may be kept at all."""
    return _zip([(f"{s}/{PNG_STEM}_{i}.png", image_bytes()) for i, s in enumerate(SPELLINGS, 1)])


def failing_study() -> bytes:
    """Only a series whose Modality holds the name: the job fails, and says why."""
    return _zip([(f"{NAMES[2]}/IM1.dcm", _slice("1.2.3.4.5", 1, modality="DOE_JANE"))])


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    return zip_bytes(dict(members))


# --- what is collected after the jobs ----------------------------------------------------


@dataclass
class Collected:
    """Everything that left the worker, by place, as text."""

    jobs: dict[str, dict] = field(default_factory=dict)
    results: dict[str, list[dict]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    flower_tasks: dict[str, dict] = field(default_factory=dict)
    named: dict[str, dict] = field(default_factory=dict)  # submitted only for their input names


class _Records(logging.Handler):
    """Every log record of this process (the API's), formatted as a handler would."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def flower(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Flower on the stack's Redis, basic auth, that already sees the worker."""
    tmp = tmp_path_factory.mktemp("flower")
    port = _free_port()
    argv = [sys.executable, "-m", "worker.flower"]
    argv += [f"--port={port}", "--address=127.0.0.1", f"--db={tmp / 'flower.db'}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env.update(stack.env, FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH))
    proc = spawn(argv, env, tmp / "flower.log")
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_worker_events(base, proc, tmp / "flower.log")
        yield base
    finally:
        stop(proc)


def _wait_for_worker_events(base: str, proc, log: Path, timeout_s: float = 90) -> None:  # type: ignore[no-untyped-def]
    """Until Flower lists a live worker from its heartbeat events (so it hears task events)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower exited:\n{log.read_text()[-3000:]}")
        try:
            r = requests.get(f"{base}/workers?json=1", auth=FLOWER_AUTH, timeout=5)
            if r.ok and any(w.get("status") for w in r.json()["data"]):
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"flower saw no worker in {timeout_s}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def collected(
    stack: Stack, flower: str, tmp_path_factory: pytest.TempPathFactory
) -> Collected:
    """Run the three jobs, then gather every place their data could have reached."""
    records = _Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)
    out = Collected()
    try:
        api = stack.client()
        for kind, data in (("dicom", dicom_study()), ("png", png_study())):
            name = f"{NAME}_{BIRTH_DATE}_{PATIENT_ID}.zip"  # the client's name is never kept
            out.jobs[kind] = wait_done(api, submit(api, data, name)["id"])
        out.jobs["failed"] = wait_done(api, submit(api, failing_study(), "Jane Doe.zip")["id"])
        # issue 20: the job list's input name (one file, named after the patient in the header)
        single = submit(api, _slice("1.2.3.4.9", 1), f"x/{NAME}_{BIRTH_DATE}_{PATIENT_ID}.dcm")
        out.named["dicom file"] = wait_done(api, single["id"])
        node_api = _dicom_node_path(stack, tmp_path_factory.mktemp("dicomnet"), out)
        api_text = [json.dumps(out.named["dicom file"])]
        for kind, job in out.jobs.items():
            reader = node_api if kind == "dicomnet" else api
            out.results[kind] = all_results(reader, job["id"])
            api_text.append(json.dumps(reader.get(f"/api/v1/jobs/{job['id']}").json))
            api_text.append(json.dumps(out.results[kind]))
        listing = api.get("/api/v1/jobs")  # the job list, where the API has one
        if listing.status_code == 200:
            api_text.append(json.dumps(listing.json))
        out.texts["api responses"] = "\n".join(api_text)
        out.texts["flower"] = _flower_text(flower, [j["id"] for j in out.jobs.values()])
        out.flower_tasks = requests.get(f"{flower}/api/tasks", auth=FLOWER_AUTH, timeout=10).json()
        served = node_api.get(f"/api/v1/jobs/{out.jobs['dicomnet']['id']}/sr")
        assert served.status_code == 200
        out.texts["served SR"] = served.data.decode("latin-1")
    finally:
        root.removeHandler(records)
        root.setLevel(level)
    out.texts["api log"] = "\n".join(records.lines)
    out.texts["worker log"] = stack.log.read_text(errors="replace")
    out.texts["database"] = _database_text(stack)
    out.texts["redis"] = _redis_text(stack.env["REDIS_URL"])
    return out


def _flower_text(base: str, job_ids: list[str], timeout_s: float = 30) -> str:
    """Flower's task list, task API and task pages for our jobs' tasks (once all are in)."""
    deadline = time.monotonic() + timeout_s
    while True:
        tasks = requests.get(f"{base}/api/tasks", auth=FLOWER_AUTH, timeout=10).json()
        ours = {t: v for t, v in tasks.items() if any(j in str(v.get("args")) for j in job_ids)}
        done = [v for v in ours.values() if v.get("state") in ("SUCCESS", "FAILURE")]
        if len(done) >= len(job_ids) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(done) >= len(job_ids), f"Flower saw {len(done)} finished tasks: {ours}"
    pages = [json.dumps(tasks)]
    table = {"draw": 1, "start": 0, "length": 1000, "search[value]": ""}
    pages.append(requests.get(f"{base}/tasks/datatable", params=table, auth=FLOWER_AUTH).text)
    for task_id in ours:
        pages.append(requests.get(f"{base}/api/task/info/{task_id}", auth=FLOWER_AUTH).text)
        page = requests.get(f"{base}/task/{task_id}", auth=FLOWER_AUTH)
        assert page.ok and task_id in page.text
        pages.append(page.text)
    return "\n".join(pages)


def _database_text(stack: Stack) -> str:
    """The SQLite file and its WAL as bytes, or every row of the PostgreSQL schema."""
    url = stack.env["DATABASE_URL"]
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
        return "\n".join(f.read_bytes().decode("latin-1") for f in files if f.exists())
    from sqlalchemy import inspect, text

    from db.session import get_engine

    engine = get_engine(url)
    rows = []
    with engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            rows += conn.execute(text(f'SELECT t::text FROM "{table}" t')).scalars().all()
    return "\n".join(rows)


def _redis_text(url: str) -> str:
    """Every key and value in the Redis, with Celery message bodies base64-decoded."""
    from redis import Redis

    client = Redis.from_url(url)
    out = []
    for key in client.scan_iter(count=1000):
        out.append(key.decode("latin-1"))
        out += [_decoded(v) for v in _values(client, key)]
    return "\n".join(out)


def _values(client, key: bytes) -> list[bytes]:  # type: ignore[no-untyped-def]
    kind = client.type(key).decode()
    if kind == "string":
        return [client.get(key) or b""]
    if kind == "list":
        return client.lrange(key, 0, -1)
    if kind == "hash":
        return [b for kv in client.hgetall(key).items() for b in kv]
    if kind == "set":
        return list(client.smembers(key))
    if kind == "zset":
        return client.zrange(key, 0, -1)
    if kind == "stream":
        return [json.dumps(e, default=repr).encode() for e in client.xrange(key)]
    return []


def _decoded(value: bytes) -> str:
    text = value.decode("latin-1")
    try:
        message = json.loads(text)
    except ValueError:
        return text
    if isinstance(message, list) and message:  # kombu's unacked entries: [message, ...]
        message = message[0]
    if isinstance(message, dict) and isinstance(message.get("body"), str):
        with contextlib.suppress(ValueError):
            text += "\n" + base64.b64decode(message["body"]).decode("latin-1")
    return text


def _dicom_node_path(stack: Stack, tmp: Path, out: Collected):  # type: ignore[no-untyped-def]
    """The identified slices over C-STORE to the node; its job, log and sent SR.

    Returns an API client of the node's owner (its jobs are not the stack key's).
    """
    from tests.conftest import authed, new_key
    from tests.dicom_peers import send, wait_until
    from tests.test_dicomnet import OWNER, running_node, study

    datasets = [_identified(d) for d in study(n_axial=3)]
    with running_node(stack, tmp) as node:
        assert send(node.port, datasets) == [0] * len(datasets)
        client = authed(stack.app(), new_key(stack.env["DATABASE_URL"], OWNER))
        job_id = wait_until(lambda: _node_job(stack, datasets[0].StudyInstanceUID), 30, "job")
        out.jobs["dicomnet"] = wait_done(client, job_id)
        study_uid = datasets[0].StudyInstanceUID
        sent = wait_until(lambda: node.good.of_study(study_uid), 60, "the SR at the destination")
        sent = [dcmread(io.BytesIO(b)) for b in sent]
        assert str(sent[0].PatientName) == NAME and sent[0].PatientID == PATIENT_ID
        out.texts["dicom node log"] = node.log()
    return client


def _node_job(stack: Stack, study_uid: str) -> str | None:
    from tests.test_dicomnet import job_of

    return job_of(stack, study_uid)


# --- the checks ---------------------------------------------------------------------------


def test_the_jobs_ran_as_intended(collected: Collected) -> None:
    dicom, png, failed = (collected.jobs[k] for k in ("dicom", "png", "failed"))
    assert dicom["status"] == "succeeded" and png["status"] == "succeeded", (dicom, png)
    assert dicom["progress"]["total"] == 2 * len(SPELLINGS) + 1
    assert [r for r in collected.results["dicom"] if r["error"]]  # the broken slice
    assert {r["series_uid"] for r in collected.results["dicom"]} == {"1.2.3.4.2", "1.2.3.4.3"}
    assert len(dicom["warnings"]) >= 4  # scout series, note, preview, DICOMDIR
    assert failed["status"] == "failed" and "[redacted]" in failed["error"], failed


def test_flower_finds_each_job_by_its_id_in_its_true_state(collected: Collected) -> None:
    """The Celery task ID is the job ID; a failed job is a FAILURE task, not SUCCESS."""
    for job in collected.jobs.values():
        task = collected.flower_tasks[job["id"]]
        assert task["state"] == ("FAILURE" if job["status"] == "failed" else "SUCCESS"), task


@pytest.mark.parametrize(
    "place",
    [
        "database",
        "api responses",
        "api log",
        "worker log",
        "redis",
        "flower",
        "dicom node log",
        "served SR",
    ],
)
def test_no_spelling_is_found(collected: Collected, place: str) -> None:
    found = findings(place, collected.texts[place])
    assert not found, "\n".join(found[:20])


def test_png_only_archive_keeps_no_member_path(collected: Collected) -> None:
    """STORE_SOURCE_PATHS unset: an archive without headers gets ``none``."""
    sources = [r["source"] for r in collected.results["png"]]  # in natural order of the names
    assert sorted(sources) == sorted(f"#{i}.png" for i in range(1, len(SPELLINGS) + 1))
    assert collected.jobs["png"]["warnings"] == []


def test_input_names_keep_no_identifier(collected: Collected) -> None:
    """Issue 20: zips (headers unread at submit) keep no name; a DICOM file's is redacted."""
    assert {collected.jobs[k]["input_name"] for k in ("dicom", "png", "failed")} == {None}
    assert collected.named["dicom file"]["input_name"] == "[redacted].dcm"


def test_dicom_sources_are_redacted_components(collected: Collected) -> None:
    sources = {r["source"] for r in collected.results["dicom"]}
    assert sources >= {"[redacted]/IM1.dcm", "series/[redacted].dcm"}
    assert "[redacted]/[redacted]/[redacted]/IM10.dcm" in sources  # "03/17/1948/IM10.dcm"
    assert all(s.startswith(("[redacted]/", "series/[redacted]")) for s in sources), sources
