"""Per-slice results as CSV (one row per slice) or JSON (jobs with their slices).

CSV text cells are neutralised as the web UI's export does (client/text.py):
member names such as ``=HYPERLINK(...).dcm`` come from uploads.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from client.api import Job, SliceResult
from client.text import shown, spreadsheet_safe

BASE_COLUMNS = (
    "job_id",
    "input",
    "input_member",
    "study_verdict",
    "slice_index",
    "source",
    "series_uid",
    "instance_number",
    "slice_position",
    "frame",
    "label",
)
TAIL_COLUMNS = ("out_of_distribution", "ood_score", "error")
POSITION = re.compile(r"#(\d+)(\.[A-Za-z0-9]+)?")
REDACTED = re.escape("[redacted]")


@dataclass(frozen=True)
class JobResults:
    """One job, the input it came from (empty when unknown), its slices, and the
    member names of the uploaded zip as the client has them (``Input.members``)."""

    job: Job
    input: str
    slices: Sequence[SliceResult]
    members: Sequence[str] = ()


def input_member(source: str | None, members: Sequence[str]) -> str:
    """The local member name behind a slice's ``source``, or "" when it cannot be told.

    ``#<n>.ext`` (no paths kept) is the n-th member of the zip; a full path is
    itself; a path with ``[redacted]`` parts is the one member it matches.
    """
    if not source or not members:
        return ""
    if (m := POSITION.fullmatch(source)) is not None:
        n = int(m.group(1))
        return members[n - 1] if 0 < n <= len(members) else ""
    if source in members:
        return source
    if "[redacted]" in source:
        pattern = re.compile(re.escape(source).replace(REDACTED, ".+?"))
        found = [name for name in members if pattern.fullmatch(name)]
        return found[0] if len(found) == 1 else ""
    return ""


def classes(results: Sequence[JobResults]) -> list[str]:
    """Every class that has a probability, in first-seen order (the model's order)."""
    seen: dict[str, None] = {}
    for r in results:
        for s in r.slices:
            seen.update(dict.fromkeys(s.probabilities))
    return list(seen)


def csv_columns(results: Sequence[JobResults]) -> list[str]:
    return [*BASE_COLUMNS, *(f"p_{c}" for c in classes(results)), *TAIL_COLUMNS]


def _cell(value: Any) -> str:
    """A CSV cell; text from the server is shown safely and never read as a formula."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return spreadsheet_safe(shown(value))
    return str(value)


def write_csv(results: Sequence[JobResults], out: IO[str]) -> int:
    """One row per slice; ``p_<class>`` per class; empty cells for absent values.

    ``input_member`` is the file inside the input (zip member, or file of a
    folder) the slice came from, as named on this machine (:func:`input_member`);
    ``study_verdict`` repeats the job's verdict (``inconclusive`` when out of
    distribution) on each of its rows; ``label`` is the slice's own.
    """
    names = classes(results)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_columns(results))
    rows = 0
    for r in results:
        for s in r.slices:
            writer.writerow(
                _cell(v)
                for v in (
                    r.job.id,
                    r.input,
                    input_member(s.source, r.members),
                    r.job.verdict,
                    s.slice_index,
                    s.source,
                    s.series_uid,
                    s.instance_number,
                    s.slice_position,
                    s.frame,
                    s.label,
                    *(s.probabilities.get(c) for c in names),
                    s.out_of_distribution,
                    s.ood_score,
                    s.error,
                )
            )
            rows += 1
    return rows


def write_json(results: Sequence[JobResults], out: IO[str]) -> int:
    """``[{"input", "job", "results": [slices as the API sent them]}]``."""
    doc = [
        {"input": r.input, "job": r.job.raw, "results": [s.raw for s in r.slices]} for r in results
    ]
    json.dump(doc, out, indent=1)
    out.write("\n")
    return sum(len(r.slices) for r in results)


def format_for(path: str | None, explicit: str | None) -> str:
    """``csv`` or ``json``: as asked, else from the file's suffix, else csv."""
    if explicit:
        return explicit
    return "json" if path and path.lower().endswith(".json") else "csv"


@contextmanager
def opened(path: str | None) -> Iterator[IO[str]]:
    """The output file (written whole or not at all), or stdout for None or ``-``."""
    if not path or path == "-":
        yield sys.stdout
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.partial")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            yield fh
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)


def write(results: Sequence[JobResults], path: str | None, fmt: str) -> int:
    """Write the results in ``fmt`` to ``path`` (stdout if None); the number of slices."""
    with opened(path) as out:
        return (write_json if fmt == "json" else write_csv)(results, out)
