"""The one rule that finds a patient's identifiers in text, however they are spelled.

Why a rule and not a string search: the same identifier reaches us spelled by a
PACS in the header and by a person (or another PACS) in folder and file names.
``DOE^JANE`` in PatientName is ``Jane Doe``, ``DOE_JANE``, ``doe.jane`` or
``Doe, Jane`` on disk; ``19480317`` in PatientBirthDate is ``1948-03-17`` or
``17.03.1948``; PatientID ``PX0042`` is ``42``. So identifiers are read from the
headers (:class:`Identifiers`), turned into regular expressions over a folded
form of the text (case-folded, accents removed, any separator between the
parts), and :func:`redact` replaces every path component (or word) that a
match touches by :data:`REDACTED`.

Spellings handled (the README's Privacy section and ingest/README.md list them too):

* names (every PN tag: patient, other/birth names, physicians, operator): each
  family/given/middle word of 3+ letters on its own (not inside a longer word:
  ``ann`` does not hit ``scanner``); all words in any order joined by nothing or
  by up to three separators (``Jane Doe``, ``DOE_JANE``, ``doe.jane``,
  ``Doe, Jane``, ``JaneDoe``); initial + family name (``jdoe``, ``doe_j``); any
  case, accents removed (``Müller`` = ``muller``) and German umlauts also as
  ``ue``/``oe``/``ae`` (``Mueller``);
* dates (PatientBirthDate, and StudyDate with ``REDACT_STUDY_DATE``): year-month-
  day, day-month-year and month-day-year with any or no separator and optional
  leading zeros (``19480317``, ``1948-03-17``, ``17.03.1948``, ``3/17/1948``),
  two-digit years with a separator (``17.03.48``), month names (``17-MAR-1948``,
  ``March 17, 1948``), never inside a longer number;
* IDs (PatientID, OtherPatientIDs, AccessionNumber, MedicalRecordLocator): the
  letters and digits in order with any separators (``PX-0042``, ``px0042``),
  leading zeros optional, and, when the ID has one run of digits worth 10 or
  more, that number alone with or without leading zeros (``PX0042`` as ``42``
  or ``042``), never inside a longer number;
* other text (addresses, phone numbers, institution): the whole value with any
  separators.

Not matched: name words of one or two letters on their own (only inside a full
name), numbers below 10, dates that are only a year. A match is conservative:
``series_42`` is redacted when the PatientID is ``PX0042``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from itertools import permutations
from pathlib import PurePosixPath
from typing import Any

from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from ingest.sniff import ARCHIVE_SUFFIXES, NON_IMAGE_SUFFIXES, OTHER_IMAGE_SUFFIXES

REDACTED = "[redacted]"

NAME_TAGS: tuple[str, ...] = (
    "PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "ReferringPhysicianName", "PerformingPhysicianName", "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy", "RequestingPhysician", "OperatorsName",
)  # fmt: skip
ID_TAGS: tuple[str, ...] = (
    "PatientID", "OtherPatientIDs", "OtherPatientIDsSequence", "AccessionNumber",
    "MedicalRecordLocator",
)  # fmt: skip
DATE_TAGS: tuple[str, ...] = ("PatientBirthDate",)
TEXT_TAGS: tuple[str, ...] = (
    "PatientAddress", "PatientTelephoneNumbers", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName",
)  # fmt: skip
STUDY_DATE_TAG = "StudyDate"
IDENTIFYING_TAGS: tuple[str, ...] = (
    *NAME_TAGS, *ID_TAGS, *DATE_TAGS, *TEXT_TAGS, STUDY_DATE_TAG,
)  # fmt: skip
"""Header fields read only to learn what to redact (never put on a header or a plan).

The direct identifiers of the DICOM PS3.15 confidentiality profile that are plain
text: the patient (names, IDs, birth date, contact data), the order
(AccessionNumber links the study to the hospital's RIS), the people who saw the
patient and the institution. StudyDate is used only with ``REDACT_STUDY_DATE``:
TCIA-style exports put it in every folder name, and alone it names no one.
"""

KNOWN_SUFFIXES = frozenset(
    {".dcm", ".dicom", ".ima", ".png", ".jpg", ".jpeg"}
    | ARCHIVE_SUFFIXES
    | NON_IMAGE_SUFFIXES
    | OTHER_IMAGE_SUFFIXES
)
"""Extensions kept on a redacted name: a fixed list, so an extension never carries text
from the client (``scan.DoeJane`` keeps none)."""

_L = r"[^\W\d_]"  # one letter, in any script
_SEP = r"[\W_]{0,3}"  # what may join the parts of an identifier: nothing or a few separators
_SEP1 = r"[\W_]{1,3}"  # the same, at least one (two-digit years need one to be recognisable)
_PARTS = re.compile(r"[^\W\d_]+|\d+")
_MONTHS = (
    "jan(?:uary)?", "feb(?:ruary)?", "mar(?:ch)?", "apr(?:il)?", "may", "june?", "july?",
    "aug(?:ust)?", "sep(?:t|tember)?", "oct(?:ober)?", "nov(?:ember)?", "dec(?:ember)?",
)  # fmt: skip
_FOLD_EXTRA = {"æ": "ae", "ø": "o", "œ": "oe", "đ": "d", "ð": "d", "ł": "l", "þ": "th", "ı": "i"}
_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue"})
MIN_WORD = 3
"""Name words shorter than this are searched only as part of a full name."""
MIN_NUMBER = 10
"""An ID's number alone is searched from this value up ("PX0007" as "7" would hit
every ``7`` in a path)."""
_MAX_NAME_WORDS = 4

PATH_UNITS = re.compile(r"[^/\\]+")
"""What :func:`redact` replaces in a member path: whole path components."""
TEXT_UNITS = re.compile(r"[^\s/\\'\"(),;:<>\[\]{}=|]+")
"""What it replaces in free text (messages, log lines): words and path components."""


def fold(text: str) -> tuple[str, list[int] | None]:
    """Case-folded, accent-free text, and for each of its characters the index in ``text``.

    The index list is None when the two have the same length (ASCII text).
    """
    if text.isascii():
        return text.lower(), None
    out: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        for c in unicodedata.normalize("NFKD", ch.casefold()):
            if unicodedata.combining(c):
                continue
            c = _FOLD_EXTRA.get(c, c)
            out.append(c)
            index.extend([i] * len(c))
    return "".join(out), index


def known_suffix(name: str) -> str:
    """The extension of ``name`` if it is one of :data:`KNOWN_SUFFIXES`, else ``""``."""
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if suffix in KNOWN_SUFFIXES else ""


class Matcher:
    """Finds where any learned identifier occurs in a text (see the module docstring)."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        ordered = sorted(set(patterns), key=len, reverse=True)  # longest spelling wins a start
        # A lookahead finds a match at every start, so overlapping spellings are all seen.
        self._re = re.compile(f"(?=({'|'.join(ordered)}))") if ordered else None

    def __bool__(self) -> bool:
        return self._re is not None

    def __repr__(self) -> str:
        return f"Matcher(active={bool(self)})"  # never the patterns: they are the identifiers

    def __reduce__(self) -> Any:
        raise TypeError("a Matcher holds patient identifiers and is never pickled")

    def spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) in ``text`` of every identifier found."""
        if self._re is None or not text:
            return []
        folded, index = fold(text)
        found = []
        for m in self._re.finditer(folded):
            start, end = m.span(1)
            if end > start:
                found.append((start, end) if index is None else (index[start], index[end - 1] + 1))
        return found


def redact(text: str, matcher: Matcher, units: re.Pattern[str] = PATH_UNITS) -> str:
    """``text`` with every unit (path component, or word) that a match touches replaced.

    A replaced unit keeps a known extension (``DOE_JANE.dcm`` -> ``[redacted].dcm``).
    """
    spans = matcher.spans(text)
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for unit in units.finditer(text):
        start, end = unit.span()
        if any(s < end and start < e for s, e in spans):
            out.append(text[pos:start] + REDACTED + known_suffix(unit.group()))
            pos = end
    out.append(text[pos:])
    return "".join(out)


class Identifiers:
    """What the headers of one upload say about the patient, as patterns (see module doc).

    Filled while an upload is planned and turned into a :class:`Matcher`; never
    logged (its ``repr`` shows only counts) and never pickled.
    """

    def __init__(self, *, study_date: bool = False) -> None:
        self.study_date = study_date
        self.headers_read = 0
        self._patterns: set[str] = set()
        self._seen: set[tuple[str, str]] = set()  # every file of a study repeats the values

    def __repr__(self) -> str:
        return f"Identifiers(headers_read={self.headers_read}, patterns={len(self._patterns)})"

    def __reduce__(self) -> Any:
        raise TypeError("Identifiers hold patient identifiers and are never pickled")

    def __len__(self) -> int:
        return len(self._patterns)

    def learn(self, ds: Dataset) -> None:
        """Add the identifiers of one header (also counts it as read)."""
        self.headers_read += 1
        self._learn(ds)

    def matcher(self) -> Matcher:
        """A matcher for everything learned so far."""
        return Matcher(self._patterns)

    def clear(self) -> None:
        """Forget the learned identifiers (the matcher keeps its own copy)."""
        self._patterns.clear()
        self._seen.clear()

    def _learn(self, ds: Dataset) -> None:
        dates = DATE_TAGS + ((STUDY_DATE_TAG,) if self.study_date else ())
        for keywords, patterns in (
            (NAME_TAGS, name_patterns),
            (ID_TAGS, id_patterns),
            (dates, date_patterns),
            (TEXT_TAGS, text_patterns),
        ):
            for keyword in keywords:
                if keyword not in ds:
                    continue
                for item in _items(_value(ds, keyword)):
                    if isinstance(item, Dataset):
                        self._learn(item)
                        continue
                    key = (patterns.__name__, str(item))
                    if key not in self._seen:
                        self._seen.add(key)
                        self._patterns |= patterns(key[1])


def name_patterns(value: str) -> set[str]:
    """Patterns of a person name ``family^given^middle^prefix^suffix`` (and ``=`` groups)."""
    found: set[str] = set()
    for group in value.split("="):
        components = group.split("^")[:3]  # prefix and suffix (Dr, Jr) name no one
        for variant in {group, group.translate(_UMLAUTS)}:
            parts = variant.split("^")[:3]
            words = [w for part in parts for w in _PARTS.findall(fold(part)[0])]
            found |= _name_word_patterns(words[:_MAX_NAME_WORDS])
            if len(components) >= 2:
                found |= _initial_patterns(parts)
    return found


def _name_word_patterns(words: list[str]) -> set[str]:
    found = {_edges(re.escape(w), w, w, letters=True) for w in words if len(w) >= MIN_WORD}
    for size in range(2, len(words) + 1):
        for combo in permutations(words, size):
            if sum(map(len, combo)) > MIN_WORD:
                body = _SEP.join(map(re.escape, combo))
                found.add(_edges(body, combo[0], combo[-1], letters=False))
    return found


def _initial_patterns(parts: list[str]) -> set[str]:
    """``jdoe``, ``j.doe``, ``doe_j``: a given-name initial next to the family name."""
    family = _PARTS.findall(fold(parts[0])[0])
    given = [w for p in parts[1:] for w in _PARTS.findall(fold(p)[0]) if w[0].isalpha()]
    found: set[str] = set()
    for f in family:
        if len(f) < 2 or not f[0].isalpha():
            continue
        for g in given:
            for a, b in ((g[0], f), (f, g[0])):
                found.add(_edges(f"{re.escape(a)}{_SEP}{re.escape(b)}", a, b, letters=True))
    return found


def date_patterns(value: str) -> set[str]:
    """Patterns of a DICOM date (DA, ``YYYYMMDD``) in the common spellings."""
    digits = re.sub(r"\D", "", value)
    if len(digits) != 8:
        return set()
    y, m, d = int(digits[:4]), int(digits[4:6]), int(digits[6:])
    if not (1 <= m <= 12 and 1 <= d <= 31):
        return set()
    year, yy, mon = f"{y:04d}", f"{y % 100:02d}", _MONTHS[m - 1]
    mm, dd = (f"0?{v}" if v < 10 else str(v) for v in (m, d))
    orders = [
        (year, _SEP, mm, _SEP, dd), (dd, _SEP, mm, _SEP, year), (mm, _SEP, dd, _SEP, year),
        (yy, _SEP1, mm, _SEP1, dd), (dd, _SEP1, mm, _SEP1, yy), (mm, _SEP1, dd, _SEP1, yy),
        (dd, _SEP, mon, _SEP, year), (mon, _SEP, dd, _SEP, year), (year, _SEP, mon, _SEP, dd),
        (dd, _SEP, mon, _SEP, yy),
    ]  # fmt: skip
    return {_edges("".join(o), o[0], o[-1], letters=True) for o in orders}


def id_patterns(value: str) -> set[str]:
    """Patterns of an identifier: the whole value, and its number alone (module doc)."""
    found = text_patterns(value)
    runs = re.findall(r"\d+", value)
    if len(runs) == 1 and int(runs[0]) >= MIN_NUMBER:
        found.add(rf"(?<!\d)0*{int(runs[0])}(?!\d)")
    return found


def text_patterns(value: str) -> set[str]:
    """The value's letters and digits in order, any separators between them."""
    parts = _PARTS.findall(fold(value)[0])
    if sum(map(len, parts)) < MIN_WORD:
        return set()
    body = _SEP.join(f"0*{p.lstrip('0') or '0'}" if p.isdigit() else re.escape(p) for p in parts)
    return {_edges(body, parts[0], parts[-1], letters=len(parts) == 1)}


def _edges(body: str, first: str, last: str, *, letters: bool) -> str:
    """``body`` that starts and ends at a boundary: never inside a longer number, and
    (with ``letters``) never inside a longer word."""
    start = r"(?<!\d)" if first[:1].isdigit() else (f"(?<!{_L})" if letters else "")
    end = r"(?!\d)" if last[-1:].isdigit() else (f"(?!{_L})" if letters else "")
    return f"{start}(?:{body}){end}"


def _value(ds: Dataset, keyword: str) -> Any:
    """The element's value; its raw bytes if it does not decode (bad character set).

    A malformed identifier must neither skip a good slice nor escape redaction.
    """
    try:
        return ds[keyword].value
    except Exception:  # any pydicom conversion failure on untrusted bytes
        raw = ds.get_item(keyword)
        data = getattr(raw, "value", None)
        return data.decode("latin-1").split("\\") if isinstance(data, bytes) else None


def _items(value: Any) -> Iterator[Any]:
    """Single values, multi-values and sequence items alike, skipping empty ones."""
    if value is None or value == "":
        return
    # PersonName iterates over its characters, and str/bytes too: they are one value.
    if isinstance(value, str | bytes | PersonName | Dataset) or not hasattr(value, "__iter__"):
        yield value.decode(errors="ignore") if isinstance(value, bytes) else value
        return
    for item in value:
        yield from _items(item)
