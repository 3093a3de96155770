"""A typed client of the v1 HTTP API, with retries that never create a second job.

Only ``requests`` is needed: nothing here imports the service's own packages,
so the client runs on any machine that can reach the API.

Retries: connection errors, timeouts, 429 (after its ``Retry-After``) and
502/503/504 are retried with exponential backoff and jitter. A submit always
carries an ``Idempotency-Key`` derived from the upload's SHA-256 (and the
model), so a retried upload whose first attempt did reach the server gets the
original job back (200) instead of a second one.

Many files: :meth:`LungCTClient.submit_many` sends them in one request
(``POST /api/v1/jobs/batch``, one job per file, an answer per file) and
:meth:`LungCTClient.results_many` reads the slices of up to 100 jobs per
request; both raise :class:`NotSupported` against a server without those
routes, so a caller can fall back to one request per file.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.utils import parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import IO, Any, BinaryIO, cast
from urllib.parse import urljoin

import requests
import requests.adapters

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
BATCH_PATH = "/api/v1/jobs/batch"
CHUNK = 1 << 20
LONG_POLL_S = 10.0
"""How long one ``wait`` request asks the server to hold its answer (JOB_WAIT_MAX_S caps it)."""
MAX_IDS = 100
"""Job IDs per :meth:`LungCTClient.jobs_by_id` request (the API's limit)."""
MAX_BATCH_FILES = 100
"""Files per :meth:`LungCTClient.submit_many` request (the API's default BATCH_MAX_FILES;
a server with a lower limit says so, and the batch is split)."""

ProgressCallback = Callable[[int], None]  # called with the number of bytes just sent


class LungCTError(Exception):
    """Base class of the client's errors."""


class ConnectionFailed(LungCTError):
    """The API could not be reached (after retries)."""


class ApiError(LungCTError):
    """The API answered with an error status (after retries, for retried statuses)."""

    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message
        self.detail = detail


class AuthError(ApiError):
    """401: the API key is missing or not valid."""


class NotFound(ApiError):
    """404: no such job (or another owner's)."""


class Conflict(ApiError):
    """409: the job is in the wrong state for this action."""


class NotSupported(ApiError):
    """404 or 405 from a route an older server does not have (the batch routes)."""


def _parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Job:
    """A job as ``GET /api/v1/jobs/<id>`` describes it; ``raw`` keeps every field sent."""

    id: str
    status: str
    kind: str | None = None
    owner: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    done: int = 0
    total: int = 0
    cancel_requested: bool = False
    attempts: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    warnings_count: int = 0
    warnings: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    replayed: bool = False  # True when a submit answered 200: an earlier job for the same key

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def label(self) -> str | None:
        """The model output for the study once the job has succeeded (not a verdict alone)."""
        return (self.summary or {}).get("label")

    @property
    def verdict(self) -> str | None:
        """The study verdict: a class, or "inconclusive" when out of distribution.

        A server older than the ``verdict`` field: the label, marked when flagged.
        """
        summary = self.summary or {}
        if "verdict" in summary:
            return summary["verdict"]
        if summary.get("out_of_distribution") and summary.get("label"):
            return "inconclusive"
        return summary.get("label")

    @property
    def verdict_line(self) -> str:
        """The verdict with what it rests on, for one line of a terminal."""
        verdict = self.verdict
        if verdict is None:
            return ""
        if verdict == "inconclusive":
            share = (self.summary or {}).get("ood_fraction")
            why = f"{share:.0%} of slices " if isinstance(share, (int, float)) else ""
            return f"inconclusive ({why}out of distribution; model output {self.label})"
        return verdict

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, replayed: bool = False) -> Job:
        model = d.get("model") or {}
        progress = d.get("progress") or {}
        return cls(
            id=d["id"],
            status=d["status"],
            kind=d.get("kind"),
            owner=d.get("owner"),
            model_name=model.get("name"),
            model_version=model.get("version"),
            done=progress.get("done") or 0,
            total=progress.get("total") or 0,
            cancel_requested=bool(d.get("cancel_requested")),
            attempts=d.get("attempts") or 0,
            created_at=_parse_time(d.get("created_at")),
            started_at=_parse_time(d.get("started_at")),
            finished_at=_parse_time(d.get("finished_at")),
            error=d.get("error"),
            warnings_count=d.get("warnings_count") or 0,
            warnings=list(d.get("warnings") or []),
            summary=d.get("summary"),
            raw=d,
            replayed=replayed,
        )


@dataclass(frozen=True)
class Retry:
    """One retry the client is about to wait for (``LungCTClient(on_retry=...)``)."""

    method: str
    url: str
    reason: str
    attempt: int  # 1 for the first retry
    retries: int  # how many retries are allowed in all
    delay_s: float

    def __str__(self) -> str:
        return (
            f"{self.reason} on {self.method} {self.url}; retry {self.attempt} of "
            f"{self.retries} in {self.delay_s:.1f} s"
        )


@dataclass(frozen=True)
class SliceResult:
    """One slice's prediction (or its error); ``raw`` keeps every field sent."""

    slice_index: int
    source: str | None = None
    series_uid: str | None = None
    instance_number: int | None = None
    slice_position: float | None = None
    frame: int | None = None
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    out_of_distribution: bool | None = None  # None while the API does not send it
    ood_score: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SliceResult:
        return cls(
            slice_index=d["slice_index"],
            source=d.get("source"),
            series_uid=d.get("series_uid"),
            instance_number=d.get("instance_number"),
            slice_position=d.get("slice_position"),
            frame=d.get("frame"),
            label=d.get("label"),
            probabilities=dict(d.get("probabilities") or {}),
            error=d.get("error"),
            out_of_distribution=d.get("out_of_distribution"),
            ood_score=d.get("ood_score"),
            raw=d,
        )


@dataclass(frozen=True)
class Upload:
    """One file of :meth:`LungCTClient.submit_many`: a path or bytes, the name to send, and
    its Idempotency-Key (default: derived from the content and the model, as ``submit``)."""

    source: str | os.PathLike[str] | bytes
    filename: str | None = None
    idempotency_key: str | None = None

    @property
    def name(self) -> str:
        if self.filename:
            return self.filename
        return "upload" if isinstance(self.source, bytes) else Path(self.source).name

    @property
    def size(self) -> int:
        if isinstance(self.source, bytes):
            return len(self.source)
        return Path(self.source).stat().st_size

    def open(self) -> BinaryIO:
        if isinstance(self.source, bytes):
            return io.BytesIO(self.source)
        return Path(self.source).open("rb")


def sha256_of(source: str | os.PathLike[str] | bytes) -> str:
    """Hex SHA-256 of a file's content (read in chunks) or of bytes."""
    h = hashlib.sha256()
    if isinstance(source, bytes):
        h.update(source)
    else:
        with open(source, "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
    return h.hexdigest()


def idempotency_key(content_sha256: str, model: str | None, salt: str = "") -> str:
    """The key sent with a submit: the same content and model give the same key.

    ``salt`` (an earlier job's ID) asks for a fresh job for the same content,
    e.g. after that job failed or was cancelled.
    """
    text = f"{content_sha256}\0{model or ''}\0{salt}"
    return "lungct-" + hashlib.sha256(text.encode()).hexdigest()


FilePart = tuple[str, Callable[[], BinaryIO], int]
"""A file of a multipart body: its name, how to open it, its size in bytes."""


class _MultipartBody:
    """A multipart/form-data body streamed from files, with a known length.

    ``requests`` would read every file into memory to build the body; this
    opens each file when the body reaches it, reads it in chunks while
    sending, closes it, and reports the bytes sent. ``fields`` may repeat a
    name; every file is sent as the field ``file``.
    """

    def __init__(
        self,
        fields: Sequence[tuple[str, str]],
        files: Sequence[FilePart],
        on_sent: ProgressCallback | None,
    ) -> None:
        self.boundary = f"lungct-{os.urandom(12).hex()}"
        text = b"".join(self._field(name, value) for name, value in fields)
        self._parts: list[bytes | Callable[[], BinaryIO]] = []
        self._len = 0
        for filename, opener, size in files:
            head = text + self._file_head(filename)
            self._parts += [head, opener]
            self._len += len(head) + size
            text = b"\r\n"
        tail = text + f"--{self.boundary}--\r\n".encode()
        self._parts.append(tail)
        self._len += len(tail)
        self._current: IO[bytes] | None = None
        self._on_sent = on_sent

    def _field(self, name: str, value: str) -> bytes:
        return (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()

    def _file_head(self, filename: str) -> bytes:
        safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
        return (
            f"--{self.boundary}\r\nContent-Disposition: form-data; "
            f'name="file"; filename="{safe_name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[bytes]:  # makes requests treat the body as a stream
        while chunk := self.read(CHUNK):
            yield chunk

    def read(self, n: int = -1) -> bytes:
        out = b""
        while n < 0 or len(out) < n:
            if self._current is None:
                if not self._parts:
                    break
                part = self._parts.pop(0)
                self._current = io.BytesIO(part) if isinstance(part, bytes) else part()
            chunk = self._current.read(-1 if n < 0 else n - len(out))
            if not chunk:
                self.close()
                continue
            out += chunk
        if out and self._on_sent:
            self._on_sent(len(out))
        return out

    def close(self) -> None:
        """Close the file being read (a body dropped mid-way by a failed attempt)."""
        if self._current is not None:
            self._current.close()
            self._current = None


class LungCTClient:
    """The v1 API: submit, list, poll, wait, page through results, cancel, delete.

    >>> api = LungCTClient("http://127.0.0.1:8000", os.environ["LUNGCT_API_KEY"])
    >>> job = api.wait(api.submit("study.zip").id)
    >>> rows = list(api.results(job.id))
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_retry_after_s: float = 300.0,
        session: requests.Session | None = None,
        pool_size: int = 10,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[Retry], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.on_retry = on_retry  # told before each wait, so a caller can say why it waits
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_retry_after_s = max_retry_after_s
        if session is None:  # one connection per thread that may share this client
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(10, pool_size))
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session
        self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.session.headers.setdefault("User-Agent", "lungct-client/0.1")
        self._sleep = sleep

    # -- jobs ------------------------------------------------------------------

    def submit(
        self,
        source: str | os.PathLike[str] | bytes,
        model: str | None = None,
        idempotency_key: str | None = None,
        *,
        filename: str | None = None,
        on_sent: ProgressCallback | None = None,
    ) -> Job:
        """Upload a file (path) or bytes; the new job, or the earlier one for the same key.

        Without ``idempotency_key`` one is derived from the content's SHA-256 and
        the model. ``on_sent`` is called with each number of bytes sent (it
        counts again from the start when an upload is retried).
        """
        if isinstance(source, bytes):
            name = filename or "upload"
            size = len(source)

            def opener() -> BinaryIO:
                return io.BytesIO(source)

        else:
            path = Path(source)
            name = filename or path.name
            size = path.stat().st_size

            def opener() -> BinaryIO:
                return path.open("rb")

        key = idempotency_key or _key_for(source, model)
        return self._submit_once(opener, size, name, model, key, on_sent)

    def _submit_once(
        self,
        opener: Callable[[], BinaryIO],
        size: int,
        name: str,
        model: str | None,
        key: str,
        on_sent: ProgressCallback | None,
    ) -> Job:
        fields = [("model", model)] if model else []
        bodies: list[_MultipartBody] = []

        def body() -> dict[str, Any]:
            for earlier in bodies:
                earlier.close()
            data = _MultipartBody(fields, [(name, opener, size)], on_sent)
            bodies.append(data)
            headers = {"Content-Type": data.content_type, "Idempotency-Key": key}
            return {"data": data, "headers": headers}

        try:
            resp = self._request("POST", "/api/v1/jobs", build=body)
        finally:
            for data in bodies:
                data.close()
        return Job.from_dict(resp.json(), replayed=resp.status_code == 200)

    def submit_many(
        self,
        uploads: Sequence[Upload],
        model: str | None = None,
        *,
        on_sent: ProgressCallback | None = None,
    ) -> list[Job | ApiError]:
        """Upload many files, :data:`MAX_BATCH_FILES` per request; each becomes its own job.

        Returns, per upload and in order, its job (``replayed`` when an earlier
        job had its key) or the :class:`ApiError` that refused it. Files refused
        with 429 (the per-owner cap) or 503 are sent again, without the others,
        after ``Retry-After`` (else a backoff), up to ``retries`` times. A batch
        the server finds too large (413, or more files than it takes) is split.
        Raises :class:`NotSupported` when the server has no batch route (an
        older one: use :meth:`submit`), and :class:`ApiError` when it refuses
        the whole request (an unknown model).
        """
        keyed = [
            u if u.idempotency_key else replace(u, idempotency_key=_key_for(u.source, model))
            for u in uploads
        ]
        out: list[Job | ApiError] = []
        for i in range(0, len(keyed), MAX_BATCH_FILES):
            out += self._batch_with_retries(keyed[i : i + MAX_BATCH_FILES], model, on_sent)
        return out

    def _batch_with_retries(
        self, uploads: list[Upload], model: str | None, on_sent: ProgressCallback | None
    ) -> list[Job | ApiError]:
        """One batch; the files refused for a while (429, 503) again, after the wait asked."""
        out: list[Job | ApiError] = [ApiError(0, "not sent")] * len(uploads)
        pending = list(range(len(uploads)))
        for attempt in range(self.retries + 1):
            answers, asked = self._batch([uploads[i] for i in pending], model, on_sent)
            for i, answer in zip(pending, answers, strict=True):
                out[i] = answer
            again = [i for i in pending if _retried(out[i])]
            if not again or attempt >= self.retries:
                break
            delay = min(self._backoff(attempt) if asked is None else asked, self.max_retry_after_s)
            if self.on_retry is not None:
                statuses = sorted({cast(ApiError, out[i]).status for i in again})
                why = f"HTTP {'/'.join(map(str, statuses))} for {len(again)} of the files"
                url = self._url(BATCH_PATH)
                self.on_retry(Retry("POST", url, why, attempt + 1, self.retries, delay))
            self._sleep(delay)
            pending = again
        return out

    def _batch(
        self, uploads: list[Upload], model: str | None, on_sent: ProgressCallback | None
    ) -> tuple[list[Job | ApiError], float | None]:
        """One ``POST /api/v1/jobs/batch``: per upload its job or refusal, and Retry-After."""
        fields = [("model", model)] if model else []
        fields += [("idempotency_key", u.idempotency_key or "") for u in uploads]
        files = [(u.name, u.open, u.size) for u in uploads]
        bodies: list[_MultipartBody] = []

        def body() -> dict[str, Any]:
            for earlier in bodies:
                earlier.close()
            bodies.append(_MultipartBody(fields, files, on_sent))
            return {"data": bodies[-1], "headers": {"Content-Type": bodies[-1].content_type}}

        try:
            resp = self._request("POST", BATCH_PATH, build=body)
        except ApiError as exc:
            if exc.status in (404, 405):
                raise NotSupported(exc.status, exc.message, exc.detail) from exc
            if (smaller := _smaller_batch(exc, len(uploads))) is None:
                raise
            parts = [uploads[i : i + smaller] for i in range(0, len(uploads), smaller)]
            answered = [self._batch(part, model, on_sent) for part in parts]
            waits = [w for _, w in answered if w is not None]
            return [a for answers, _ in answered for a in answers], max(waits, default=None)
        finally:
            for data in bodies:
                data.close()
        return [_item_answer(item) for item in resp.json()["items"]], _retry_after(resp)

    def job(self, job_id: str, *, wait: float = 0.0) -> Job:
        """The job as it is; with ``wait`` > 0 the server answers when it ends (or after wait s)."""
        path = f"/api/v1/jobs/{job_id}" + (f"?wait={wait:g}" if wait > 0 else "")
        return Job.from_dict(self._request("GET", path).json())

    def jobs(
        self,
        status: str | None = None,
        model: str | None = None,
        since: datetime | str | None = None,
        *,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Your jobs (every owner's with an admin key), newest first, page after page."""
        params: dict[str, Any] = {"limit": page_size}
        if status:
            params["status"] = status
        if model:
            params["model"] = model
        if since:
            params["since"] = since.isoformat() if isinstance(since, datetime) else since
        for page in self._pages("/api/v1/jobs", params):
            yield from (Job.from_dict(d) for d in page["items"])

    def jobs_by_id(self, job_ids: Sequence[str], *, wait: float = 0.0) -> list[Job]:
        """These jobs (at most :data:`MAX_IDS`) as they are, in one request.

        With ``wait`` > 0 the server answers when one of them has ended (at once
        if one already has), or after ``wait`` seconds: one long poll for many jobs.
        """
        if len(job_ids) > MAX_IDS:
            raise ValueError(f"at most {MAX_IDS} job IDs per request")
        if not job_ids:
            return []
        params: dict[str, Any] = {"id": list(job_ids), "limit": len(job_ids)}
        if wait > 0:  # the server answers well within this client's timeout
            params["wait"] = f"{min(wait, self.timeout / 2):g}"
        resp = self._request("GET", "/api/v1/jobs", lambda: {"params": params})
        return [Job.from_dict(d) for d in resp.json()["items"]]

    def results(self, job_id: str, *, page_size: int = 1000) -> Iterator[SliceResult]:
        """Every slice of a job, in the API's order (series, then position)."""
        for page in self._pages(f"/api/v1/jobs/{job_id}/results", {"limit": page_size}):
            yield from (SliceResult.from_dict(d) for d in page["items"])

    def results_many(
        self, job_ids: Sequence[str], *, page_size: int = 1000
    ) -> dict[str, list[SliceResult]]:
        """Every slice of these jobs (any number; :data:`MAX_IDS` per request), by job ID.

        Jobs that do not exist, or are another owner's, are absent. Raises
        :class:`NotSupported` against a server without ``GET /api/v1/results``.
        """
        out: dict[str, list[SliceResult]] = {}
        unique = list(dict.fromkeys(job_ids))
        for i in range(0, len(unique), MAX_IDS):
            params = {"job": unique[i : i + MAX_IDS], "limit": page_size}
            try:
                for page in self._pages("/api/v1/results", params):
                    for d in page["items"]:
                        out.setdefault(d["job_id"], []).append(SliceResult.from_dict(d))
            except ApiError as exc:
                if exc.status in (404, 405):
                    raise NotSupported(exc.status, exc.message, exc.detail) from exc
                raise
        return out

    def cancel(self, job_id: str) -> Job:
        """Cancel a job (a running one stops after its current batch); 409 once ended."""
        return Job.from_dict(self._request("POST", f"/api/v1/jobs/{job_id}/cancel").json())

    def delete(self, job_id: str) -> None:
        """Remove an ended job, its results and its upload (409 while queued or running)."""
        self._request("DELETE", f"/api/v1/jobs/{job_id}")

    def wait(
        self,
        job_id: str,
        poll: float = 1.0,
        *,
        timeout: float | None = None,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Wait until the job has ended; ``TimeoutError`` after ``timeout`` seconds.

        Long polls: each request is held by the server until the job ends, or
        :data:`LONG_POLL_S` at most, so the end is seen at once. A server that
        answers early (it holds too many waiting requests) is asked again every
        ``poll`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            asked = time.monotonic()
            hold = min(LONG_POLL_S, self.timeout / 2)  # the server answers well within timeout
            if deadline is not None:
                hold = min(hold, deadline - asked)
            job = self.job(job_id, wait=max(0.0, hold))
            if on_update:
                on_update(job)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")
            if (left := poll - (time.monotonic() - asked)) > 0:
                self._sleep(left)

    def models(self) -> list[dict[str, Any]]:
        """The installed models (name, version, classes, ...), as the API describes them."""
        return list(self._request("GET", "/api/v1/models").json()["items"])

    # -- transport -------------------------------------------------------------

    def _url(self, path_or_url: str) -> str:
        return urljoin(self.base_url + "/", path_or_url)

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        url: str | None = path
        while url:
            page = self._request("GET", url, build=partial(dict, params=params)).json()
            yield page
            url, params = page.get("next"), {}  # ``next`` carries its own query

    def _request(
        self,
        method: str,
        path_or_url: str,
        build: Callable[[], dict[str, Any]] = dict,
    ) -> requests.Response:
        """Send, retrying connection errors, 429 and 502/503/504; raise ApiError otherwise."""
        url = self._url(path_or_url)
        attempt = 0
        while True:
            try:
                resp = self.session.request(method, url, timeout=self.timeout, **build())
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= self.retries:
                    raise ConnectionFailed(
                        f"cannot reach the API at {self.base_url}: {type(exc).__name__}"
                    ) from exc
                delay = self._backoff(attempt)
                why = f"cannot reach the API ({type(exc).__name__})"
            else:
                if resp.status_code < 400:
                    return resp
                if resp.status_code not in RETRY_STATUSES or attempt >= self.retries:
                    raise _error(resp)
                asked = _retry_after(resp)
                delay = self._backoff(attempt) if asked is None else asked
                delay = min(delay, self.max_retry_after_s)
                why = f"HTTP {resp.status_code}"
            attempt += 1
            if self.on_retry is not None:
                self.on_retry(Retry(method, url, why, attempt, self.retries, delay))
            self._sleep(delay)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: about backoff_s * 2**attempt, capped."""
        base = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return base * (0.5 + random.random() / 2)


def _key_for(source: str | os.PathLike[str] | bytes, model: str | None) -> str:
    return idempotency_key(sha256_of(source), model)


def _retried(answer: Job | ApiError) -> bool:
    """A file refused for a while (the cap, the queue), worth sending again."""
    return isinstance(answer, ApiError) and answer.status in RETRY_STATUSES


def _item_answer(item: dict[str, Any]) -> Job | ApiError:
    """One file's answer of a batch: its job, or why it was refused."""
    status = int(item["status"])
    if "job" in item and status < 400:
        return Job.from_dict(item["job"], replayed=status == 200)
    message = str((item.get("error") or {}).get("message") or "refused")
    return ApiError(status, message)


def _smaller_batch(exc: ApiError, files: int) -> int | None:
    """How many files to send per request after the server refused a batch as too large.

    413: half as many (the body is over MAX_UPLOAD_MB); 400 with
    ``detail.batch.max_files``: the server's BATCH_MAX_FILES. None: it cannot
    be split (one file, or another refusal).
    """
    if files <= 1:
        return None
    if exc.status == 413:
        return (files + 1) // 2
    detail = exc.detail if isinstance(exc.detail, dict) and exc.status == 400 else {}
    batch = detail.get("batch")
    limit = batch.get("max_files") if isinstance(batch, dict) else None
    return limit if isinstance(limit, int) and 0 < limit < files else None


def _retry_after(resp: requests.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date), if any."""
    value = resp.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error(resp: requests.Response) -> ApiError:
    """The API's JSON error as an exception (any body, even a proxy's HTML page)."""
    message, detail = resp.reason or "error", None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = str(body["error"].get("message") or message)
        detail = body["error"].get("detail")
    cls = {401: AuthError, 404: NotFound, 409: Conflict}.get(resp.status_code, ApiError)
    return cls(resp.status_code, message, detail)
