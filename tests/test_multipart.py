"""api/multipart.py: the boundary search answers exactly as werkzeug's own patterns do."""

from __future__ import annotations

import io
import random

import pytest
from werkzeug import formparser
from werkzeug.sansio.multipart import MultipartDecoder

from api.multipart import BoundaryFindingDecoder, BoundaryPattern, install
from tests.conftest import TINY_MODEL, png_bytes

BOUNDARIES = [b"a", b"ab", b"-", b"--", b"a-b", b"--a-", b"xyz", b"0123abcd", b"-a--"]
PIECES = [b"\r", b"\n", b"\r\n", b"-", b"--", b" ", b"\t", b"a", b"b", b"x"]


def _as_tuple(match) -> tuple[int, int, bytes] | None:  # type: ignore[no-untyped-def]
    return None if match is None else (match.start(), match.end(), bytes(match.group(1)))


def test_every_search_answers_as_werkzeugs_patterns_do() -> None:
    """Random runs of line breaks, blanks, dashes and delimiters (overlapping ones included,
    boundaries made of dashes), from every start position, against the installed werkzeug's
    compiled patterns: the same match start, end and closing part, or no match."""
    rng = random.Random(17)
    compared = 0
    for _ in range(6000):
        boundary = rng.choice(BOUNDARIES)
        stock = MultipartDecoder(boundary)
        delimiter = b"--" + boundary
        pieces = [delimiter if rng.random() < 0.3 else rng.choice(PIECES) for _ in range(13)]
        data = bytearray(b"".join(pieces[: rng.randint(1, len(pieces))]))
        for pattern, line_break in ((stock.preamble_re, False), (stock.boundary_re, True)):
            ours = BoundaryPattern(boundary, line_break=line_break)
            for pos in range(len(data) + 1):
                expected = _as_tuple(pattern.search(data, pos))
                assert _as_tuple(ours.search(data, pos)) == expected, (boundary, data, pos)
                compared += 1
    assert compared > 100_000


def _body(boundary: bytes, parts: list[tuple[str, str | None, bytes]], epilogue: bytes) -> bytes:
    out = b"preamble\r\n"
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode()
        out += b"\r\n\r\n" + data + b"\r\n"
    return out + b"--" + boundary + b"--" + epilogue


@pytest.mark.parametrize("chunk", [1, 7, 64, 16 * 1024, 64 * 1024])
def test_a_form_parses_the_same_with_either_decoder(chunk: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Whole forms (a file holding near-boundaries, a field, an epilogue), read in pieces of
    every size: the same fields and file bytes as werkzeug's own decoder gives."""
    boundary = b"----7MA4YWxkTrZu0gW"
    tricky = b"\r\n--" + boundary[:-1] + b"\r\n-" + boundary + b"x\r\n" + png_bytes()
    body = _body(boundary, [("file", "s.png", tricky), ("model", None, b"m")], b"\r\nend")
    results = []
    for decoder in (MultipartDecoder, BoundaryFindingDecoder):
        monkeypatch.setattr(formparser, "MultipartDecoder", decoder)
        parser = formparser.MultiPartParser(buffer_size=chunk, max_form_parts=10)
        form, files = parser.parse(io.BytesIO(body), boundary, len(body))
        results.append((form.to_dict(), {k: f.read() for k, f in files.items()}))
        for upload in files.values():
            upload.close()
    assert results[0] == results[1]  # (1-byte reads leave werkzeug a CR on the field)
    assert results[1][1] == {"file": tricky}


def test_the_api_parses_uploads_with_it(client) -> None:  # type: ignore[no-untyped-def]
    """create_app installs it, and a submit still reads its file and fields."""
    assert install() is True
    assert formparser.MultipartDecoder is BoundaryFindingDecoder
    r = client.post(
        "/api/v1/jobs",
        data={"file": (io.BytesIO(png_bytes()), "s.png"), "model": TINY_MODEL},
        content_type="multipart/form-data",
    )
    assert r.status_code == 202, r.json
    assert r.json["model"]["name"] == TINY_MODEL
