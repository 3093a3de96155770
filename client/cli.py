"""``lungct``: submit CT slices and studies, follow jobs and export results from a shell.

Reads ``LUNGCT_URL`` (default http://127.0.0.1:8000) and ``LUNGCT_API_KEY``.
Errors are one line on stderr and a non-zero exit code: 1 for errors, 2 for
bad usage, 130 when interrupted (``lungct submit`` can then be run again with
the same arguments to resume).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from client.api import (
    LONG_POLL_S,
    MAX_BATCH_FILES,
    MAX_IDS,
    ApiError,
    AuthError,
    ConnectionFailed,
    Job,
    LungCTClient,
    NotFound,
    NotSupported,
    Retry,
    SliceResult,
    Upload,
    idempotency_key,
)
from client.export import JobResults, format_for, write
from client.inputs import Input, Skipped, discover
from client.progress import Progress
from client.state import Entry, State, StateNotSaved
from client.text import shown

DEFAULT_URL = "http://127.0.0.1:8000"
STATE_NAME = ".lungct-state.json"
KEY_MESSAGE = "invalid or missing API key: set LUNGCT_API_KEY"
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class CliError(Exception):
    """A problem worth one line to the user and exit code 1."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except AuthError:
        return _fail(KEY_MESSAGE)
    except NotFound as exc:
        return _fail(exc.message)
    except ApiError as exc:
        return _fail(f"{exc.message} (HTTP {exc.status})")
    except (CliError, ConnectionFailed) as exc:
        return _fail(str(exc))
    except BrokenPipeError:  # `lungct jobs | head`
        sys.stderr.close()
        return 1
    except (OSError, requests.RequestException) as exc:  # unreadable input, malformed URL
        return _fail(str(exc) or type(exc).__name__)
    except KeyboardInterrupt:
        state = getattr(args, "state_path", None)
        hint = f"; run the same command again to resume (state: {state})" if state else ""
        return _fail(f"interrupted{hint}", code=130)


def _fail(message: str, code: int = 1) -> int:
    print(f"lungct: error: {message}", file=sys.stderr, flush=True)
    return code


def _client(args: argparse.Namespace) -> LungCTClient:
    key = os.environ.get("LUNGCT_API_KEY", "").strip()
    if not key:
        raise CliError(KEY_MESSAGE)
    url = args.url or os.environ.get("LUNGCT_URL") or DEFAULT_URL
    workers = getattr(args, "concurrency", 1)
    return LungCTClient(
        url, key, timeout=args.timeout, retries=args.retries, pool_size=workers, on_retry=_say_retry
    )


def _say_retry(retry: Retry) -> None:
    """Each retry on stderr: a CLI waiting for an API that is down says so (issue 20)."""
    print(f"lungct: {retry}", file=sys.stderr, flush=True)


# -- submit --------------------------------------------------------------------


@dataclass
class Outcome:
    """What became of one input: its job, or why the API refused it."""

    item: Input
    sha256: str
    job: Job | None = None
    error: str | None = None


def cmd_submit(args: argparse.Namespace) -> int:
    skipped: list[Skipped] = []
    try:
        inputs = discover(args.paths, study_per_path=args.study_per_path, skipped=skipped)
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    for s in skipped:
        print(f"skipped {s.path}: {s.reason}", file=sys.stderr)
    out = args.out
    wait = args.wait or bool(out)
    args.state_path = Path(args.state) if args.state else _default_state(out)
    try:
        state = State(args.state_path)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    api = _client(args)
    with (
        tempfile.TemporaryDirectory(prefix="lungct-") as tmp,
        Progress(enabled=not args.quiet) as progress,
    ):
        progress.add_inputs(len(inputs), sum(i.size for i in inputs))
        upload = _uploader(api, args.model, state, progress, Path(tmp))
        send = _batch_sender(api, args.model, state, progress)
        pool = ThreadPoolExecutor(max_workers=args.concurrency)
        try:
            outcomes = _upload_all(inputs, upload, send, pool, args.concurrency)
        finally:  # on Ctrl-C or a fatal error, start no further uploads
            pool.shutdown(wait=False, cancel_futures=True)
        if wait:
            _wait_all(api, outcomes, state, args.model, progress, args.poll)
    if out:
        fetched = _fetch_results(api, outcomes, args.concurrency)
        slices = write(fetched, out, format_for(out, None))
        print(f"wrote {slices} slices of {len(fetched)} jobs to {out}", file=sys.stderr)
    else:
        _print_outcomes(outcomes)
    return _report(outcomes, wait)


@contextmanager
def _recording(state: State, progress: Progress) -> Iterator[None]:
    """One request's answers: their resume entries saved once (client/state.py), then
    their lines printed, so a line the user saw is always in the resume file (when
    it cannot be written, the error is all that is printed)."""
    with progress.held() as lines:
        try:
            with state.grouped():
                yield
        except StateNotSaved:
            lines.clear()
            raise


def _default_state(out: str | None) -> Path:
    folder = Path(out).parent if out and out != "-" else Path.cwd()
    return folder / STATE_NAME


BATCH_FILES = MAX_BATCH_FILES
BATCH_BYTES = 32 * 1024**2
"""A batch of single files holds at most this many files and, beyond its first file,
about this many bytes (a request that a slow link still sends well within --timeout)."""

Uploader = Callable[[Input], Outcome]
BatchSender = Callable[[list[Input]], list[Outcome | Input]]


def _upload_all(
    inputs: list[Input],
    upload: Uploader,
    send: BatchSender,
    pool: ThreadPoolExecutor,
    concurrency: int,
) -> list[Outcome]:
    """Every input's outcome, in order: single files in batches (one request each), DICOM
    folders one by one, ``concurrency`` requests at a time.

    Inputs a batch hands back (the server has no batch route) go one request each.
    """

    def run(group: list[Input]) -> list[Outcome | Input]:
        return send(group) if not group[0].is_dicom_folder else [upload(group[0])]

    done = [r for answers in pool.map(run, _groups(inputs, concurrency)) for r in answers]
    leftover = iter(pool.map(upload, [r for r in done if isinstance(r, Input)]))
    return [r if isinstance(r, Outcome) else next(leftover) for r in done]


def _groups(inputs: list[Input], concurrency: int) -> list[list[Input]]:
    """Inputs in the order given, as upload requests: single files in batches of at most
    BATCH_FILES files and about BATCH_BYTES, spread over ``concurrency`` requests (so the
    first jobs are queued while later batches are still sent); each DICOM folder alone."""
    singles = sum(1 for i in inputs if not i.is_dicom_folder)
    per_batch = max(1, min(BATCH_FILES, math.ceil(singles / concurrency)))
    groups: list[list[Input]] = []
    batch: list[Input] = []
    size = 0
    for item in inputs:
        if item.is_dicom_folder:
            groups.append([item])
            continue
        if batch and (len(batch) >= per_batch or size + item.size > BATCH_BYTES):
            groups.append(batch)
            batch, size = [], 0
        batch.append(item)
        size += item.size
    return [*groups, batch] if batch else groups


def _uploader(
    api: LungCTClient, model: str | None, state: State, progress: Progress, tmp: Path
) -> Uploader:
    """Upload one input unless the state file knows its job; record what happened."""

    def upload(item: Input) -> Outcome:
        sha = item.content_sha256()
        entry = state.find(item.path, sha, model)
        salt = ""
        if entry and entry.job_id:
            resumed, salt = _resume(item, sha, _current(api, entry.job_id), model, state, progress)
            if resumed:
                return resumed
        path = item.materialize(tmp)
        try:
            progress.resize(path.stat().st_size - item.size)
            key = idempotency_key(sha, model, salt)
            job = api.submit(
                path, model, key, filename=item.upload_name, on_sent=progress.sent_bytes
            )
        except (AuthError, ConnectionFailed):
            raise
        except ApiError as exc:
            return _rejected(item, sha, model, exc, state, progress)
        finally:
            if path != item.path:
                path.unlink(missing_ok=True)
        return _submitted(item, sha, job, model, state, progress)

    return upload


def _batch_sender(
    api: LungCTClient, model: str | None, state: State, progress: Progress
) -> BatchSender:
    """Upload single files in one request, those the state file does not know; per input
    the same lines, state entries and outcomes as one upload each would give.

    Against a server without the batch route, hands the inputs it did not resume back
    (and every later batch at once) for one request each.
    """
    unsupported = threading.Event()

    def send(batch: list[Input]) -> list[Outcome | Input]:
        if unsupported.is_set():
            return list(batch)
        shas = [item.content_sha256() for item in batch]
        out, salts = _resume_batch(api, batch, shas, model, state, progress)
        todo = [n for n, o in enumerate(out) if isinstance(o, Input)]
        uploads = [
            Upload(batch[n].path, batch[n].upload_name, idempotency_key(shas[n], model, salts[n]))
            for n in todo
        ]
        try:
            answers = _answers(api, uploads, model, progress) if todo else []
        except NotSupported:
            unsupported.set()
            return out
        with _recording(state, progress):
            for n, answer in zip(todo, answers, strict=True):
                if isinstance(answer, Job):
                    out[n] = _submitted(batch[n], shas[n], answer, model, state, progress)
                else:
                    out[n] = _rejected(batch[n], shas[n], model, answer, state, progress)
        return out

    return send


def _resume_batch(
    api: LungCTClient,
    batch: list[Input],
    shas: list[str],
    model: str | None,
    state: State,
    progress: Progress,
) -> tuple[list[Outcome | Input], list[str]]:
    """Per input, its outcome when the state file knows a job that still counts (all of
    them read in one request), else the input; and the salt of each one's key."""
    entries = [state.find(item.path, sha, model) for item, sha in zip(batch, shas, strict=True)]
    known = [e.job_id for e in entries if e and e.job_id]
    current = {job.id: job for job in api.jobs_by_id(known)} if known else {}
    out: list[Outcome | Input] = []
    salts: list[str] = []
    with _recording(state, progress):
        for item, sha, entry in zip(batch, shas, entries, strict=True):
            resumed, salt = None, ""
            if entry and entry.job_id:
                job = current.get(entry.job_id)
                resumed, salt = _resume(item, sha, job, model, state, progress)
            out.append(resumed or item)
            salts.append(salt)
    return out, salts


def _answers(
    api: LungCTClient, uploads: list[Upload], model: str | None, progress: Progress
) -> Sequence[Job | ApiError]:
    """Per upload, its job or its refusal; a request refused whole (an unknown model)
    refuses every file of it. NotSupported, a bad key and an unreachable API propagate."""
    try:
        return api.submit_many(uploads, model, on_sent=progress.sent_bytes)
    except (NotSupported, AuthError):
        raise
    except ApiError as exc:
        return [exc] * len(uploads)


def _resume(
    item: Input, sha: str, job: Job | None, model: str | None, state: State, progress: Progress
) -> tuple[Outcome | None, str]:
    """An input whose job the state file knows: its outcome while that job still counts,
    else None and the salt of its new key (a fresh job, not the failed one again)."""
    if job and job.status not in ("failed", "cancelled"):
        state.put(item.path, Entry(sha, model, job.id, job.status))
        progress.input_done(unsent=item.size)
        progress.log(f"resumed   {item.path} -> job {job.id} ({job.status})")
        return Outcome(item, sha, job), ""
    return None, job.id if job else ""


def _submitted(
    item: Input, sha: str, job: Job, model: str | None, state: State, progress: Progress
) -> Outcome:
    """An input the API took (a new job, or the earlier one for the same key)."""
    state.put(item.path, Entry(sha, model, job.id, job.status))
    progress.input_done()
    verb = "existing " if job.replayed else "submitted"
    progress.log(f"{verb} {item.path} -> job {job.id} ({job.status})")
    return Outcome(item, sha, job)


def _rejected(
    item: Input, sha: str, model: str | None, exc: ApiError, state: State, progress: Progress
) -> Outcome:
    """An input the API refused, with its reason."""
    state.put(item.path, Entry(sha, model, None, "rejected", exc.message))
    progress.input_done()
    progress.log(f"rejected  {item.path}: {exc.message} (HTTP {exc.status})")
    return Outcome(item, sha, error=f"{exc.message} (HTTP {exc.status})")


def _current(api: LungCTClient, job_id: str) -> Job | None:
    """The job now, or None when it is gone (deleted)."""
    try:
        return api.job(job_id)
    except NotFound:
        return None


def _wait_all(
    api: LungCTClient,
    outcomes: list[Outcome],
    state: State,
    model: str | None,
    progress: Progress,
    poll: float,
) -> None:
    """Poll every unfinished job until all have ended, showing slices done/total.

    One request per :data:`MAX_IDS` unfinished jobs per round; the first is a
    long poll of up to ``poll`` seconds (the server answers the moment one of
    its jobs ends), which paces the rounds; a round that came back early
    without news waits out the rest of ``poll``.
    """
    jobs: dict[str, list[Outcome]] = {}  # inputs with the same content share one job
    for o in outcomes:
        if o.job:
            jobs.setdefault(o.job.id, []).append(o)
    with _recording(state, progress):
        for group in jobs.values():  # one input's answer may already show the job ended
            latest = next((o.job for o in group if o.job and o.job.finished), None)
            if latest is not None:
                _settle(group, latest, state, model, progress)
    while True:
        started, ended = time.monotonic(), False
        waiting = [jid for jid, group in jobs.items() if not _job(group).finished]
        for i in range(0, len(waiting), MAX_IDS):
            hold = min(poll, LONG_POLL_S) if i == 0 else 0
            asked = waiting[i : i + MAX_IDS]
            answered = api.jobs_by_id(asked, wait=hold)
            if gone := set(asked) - {job.id for job in answered}:
                raise NotFound(404, f"job {sorted(gone)[0]} no longer exists (deleted?)")
            with _recording(state, progress):
                for job in answered:
                    _settle(jobs[job.id], job, state, model, progress)
                    ended = ended or job.finished
        current = [_job(group) for group in jobs.values()]
        progress.slices(sum(j.done for j in current), sum(j.total for j in current))
        if all(j.finished for j in current):
            return
        if not ended and (left := poll - (time.monotonic() - started)) > 0:
            time.sleep(left)


def _settle(
    group: list[Outcome], job: Job, state: State, model: str | None, progress: Progress
) -> None:
    """Every input of ``group`` now sees ``job``; an ended job is recorded once per input."""
    for o in group:
        was_finished = o.job is not None and o.job.finished
        o.job = job
        if job.finished and not was_finished:
            state.put(o.item.path, Entry(o.sha256, model, job.id, job.status))
            progress.log(f"{job.status:<9} {o.item.path} -> job {job.id}{_detail(job)}")


def _job(group: list[Outcome]) -> Job:
    """The job a group of inputs shares, as last seen."""
    job = group[0].job
    assert job is not None
    return job


def _detail(job: Job) -> str:
    if job.status == "succeeded":
        return f": {job.verdict_line} ({job.total} slices)"
    return f": {job.error}" if job.error else ""


def _fetch_results(api: LungCTClient, outcomes: list[Outcome], workers: int) -> list[JobResults]:
    """Every input's slices: :data:`MAX_IDS` jobs per request (``workers`` at a time), or,
    from a server without ``GET /api/v1/results``, one request per job."""
    done = [(o, o.job) for o in outcomes if o.job]
    ids = list(dict.fromkeys(job.id for _, job in done))
    chunks = [ids[i : i + MAX_IDS] for i in range(0, len(ids), MAX_IDS)]
    slices: dict[str, list[SliceResult]] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for part in pool.map(api.results_many, chunks):
                slices |= part
        except NotSupported:
            slices = dict(zip(ids, pool.map(lambda j: list(api.results(j)), ids), strict=True))
    return [
        JobResults(job, str(o.item.path), slices.get(job.id, []), o.item.members())
        for o, job in done
    ]


def _print_outcomes(outcomes: list[Outcome]) -> None:
    for o in outcomes:
        if o.job:
            print(
                f"{o.job.id}\t{o.job.status}\t{shown(o.job.verdict_line)}\t{shown(str(o.item.path))}"
            )
        else:
            print(f"-\trejected\t\t{shown(str(o.item.path))}")


def _report(outcomes: list[Outcome], waited: bool) -> int:
    """A one-line tally on stderr; exit code 1 when any input did not succeed."""
    counts: dict[str, int] = {}
    for o in outcomes:
        status = o.job.status if o.job else "rejected"
        counts[status] = counts.get(status, 0) + 1
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"{len(outcomes)} inputs: {tally}", file=sys.stderr)
    bad = counts.get("rejected", 0)
    if waited:
        bad += sum(n for s, n in counts.items() if s != "succeeded")
    return 1 if bad else 0


# -- other commands ------------------------------------------------------------


def cmd_jobs(args: argparse.Namespace) -> int:
    api = _client(args)
    jobs: list[Job] = []
    for job in api.jobs(status=args.status, model=args.model, since=args.since):
        jobs.append(job)
        if len(jobs) >= args.limit:
            break
    if args.json:
        print(json.dumps([j.raw for j in jobs], indent=1))
        return 0
    rows = [("ID", "STATUS", "KIND", "MODEL", "PROGRESS", "CREATED", "VERDICT")]
    rows += [
        (
            j.id,
            j.status,
            j.kind or "",
            j.model_name or "",
            f"{j.done}/{j.total}",
            j.created_at.strftime("%Y-%m-%d %H:%M:%S") if j.created_at else "",
            j.verdict_line,
        )
        for j in jobs
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    job = _client(args).job(args.job_id)
    if args.json:
        print(json.dumps(job.raw, indent=1))
        return 0
    fields = [
        ("id", job.id),
        ("status", job.status + (" (cancel requested)" if job.cancel_requested else "")),
        ("kind", job.kind),
        ("model", f"{job.model_name} {job.model_version}"),
        ("progress", f"{job.done}/{job.total} slices"),
        ("created", job.created_at and job.created_at.isoformat()),
        ("finished", job.finished_at and job.finished_at.isoformat()),
        ("verdict", job.verdict_line),
        ("evidence", (job.summary or {}).get("verdict_text")),
        ("warnings", job.warnings_count),
        ("error", job.error),
    ]
    for name, value in fields:
        if value not in (None, ""):
            print(f"{name:<9} {shown(str(value))}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    api = _client(args)
    job = api.job(args.job_id)
    results = [JobResults(job, "", list(api.results(job.id)))]
    slices = write(results, args.out, format_for(args.out, args.format))
    if args.out and args.out != "-":
        print(f"wrote {slices} slices to {args.out}", file=sys.stderr)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = _client(args).cancel(args.job_id)
    note = " (stops after its current batch)" if not job.finished else ""
    print(f"{job.id}\t{job.status}{note}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    _client(args).delete(args.job_id)
    print(f"{args.job_id}\tdeleted")
    return 0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"API base URL (default: $LUNGCT_URL or {DEFAULT_URL})")
    common.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    common.add_argument(
        "--retries", type=int, default=6, help="retries on connection errors, 429 and 502-504"
    )
    p = argparse.ArgumentParser(
        prog="lungct",
        description="Client of the lung-CT classifier API (research use only; not for "
        "clinical diagnosis). Needs LUNGCT_API_KEY; LUNGCT_URL defaults to " + DEFAULT_URL,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("submit", parents=[common], help="upload files and folders")
    s.add_argument("paths", nargs="+", metavar="PATH", help="file or folder")
    s.add_argument("--model", help="model name (default: the API's default model)")
    s.add_argument("--wait", action="store_true", help="wait until every job has ended")
    s.add_argument("--out", metavar="FILE", help="write results (.csv or .json); implies --wait")
    s.add_argument(
        "--concurrency",
        type=_positive,
        default=4,
        help="parallel upload requests (single files go up to 100 per request)",
    )
    s.add_argument("--state", metavar="FILE", help=f"resume file (default: {STATE_NAME} "
                   "next to --out, else in the current folder)")  # fmt: skip
    s.add_argument(
        "--poll",
        type=float,
        default=2.0,
        help="seconds per status round (a long poll: a round ends early when a job ends)",
    )
    s.add_argument(
        "--study-per-path",
        action="store_true",
        help="each folder given is one DICOM study (default: each folder holding DICOM files)",
    )
    s.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    s.set_defaults(run=cmd_submit)

    j = sub.add_parser("jobs", parents=[common], help="list your jobs, newest first")
    j.add_argument("--status", choices=JOB_STATUSES)
    j.add_argument("--model")
    j.add_argument("--since", help="ISO 8601 time with zone, e.g. 2026-01-31T00:00:00Z")
    j.add_argument("--limit", type=_positive, default=50, help="at most this many (default 50)")
    j.add_argument("--json", action="store_true")
    j.set_defaults(run=cmd_jobs)

    st = sub.add_parser("status", parents=[common], help="show one job")
    st.add_argument("job_id", metavar="ID")
    st.add_argument("--json", action="store_true")
    st.set_defaults(run=cmd_status)

    r = sub.add_parser("results", parents=[common], help="per-slice results of a job")
    r.add_argument("job_id", metavar="ID")
    r.add_argument("--format", choices=("csv", "json"), help="default: from --out, else csv")
    r.add_argument("--out", metavar="FILE", help="default: standard output")
    r.set_defaults(run=cmd_results)

    c = sub.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    c.add_argument("job_id", metavar="ID")
    c.set_defaults(run=cmd_cancel)

    d = sub.add_parser("delete", parents=[common], help="delete an ended job and its results")
    d.add_argument("job_id", metavar="ID")
    d.set_defaults(run=cmd_delete)
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


if __name__ == "__main__":
    sys.exit(main())
