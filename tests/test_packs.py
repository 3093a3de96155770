"""Slice packs (storage/packs.py): one stored object per job per stored batch.

A pack round-trips on both storage backends (a local folder and a real
S3-compatible server) and a member is read with two ranged reads, never the
whole pack; the worker's decode keeps exactly the model input's 8-bit image
and its writer stage packs one object per job; the API serves a slice from a
pack and, for jobs stored before packs, from the per-slice files.
"""

from __future__ import annotations

import io
import re
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from config import Settings
from storage import LocalStorage, Storage, packs
from storage.packs import PackSlice, read_pixels, read_view


def gray(seed: int, height: int = 12, width: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def png_of(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, "PNG")
    return buf.getvalue()


def test_a_pack_round_trips_each_member(storage: Storage) -> None:
    slices = [
        PackSlice(7, gray(7), b"\xff\xd8\xff view of 7"),
        PackSlice(3, gray(3, 5, 4), None),  # STORE_SLICE_VIEWS off
        PackSlice(9, None, b"\x89PNG view of 9"),  # STORE_SLICE_IMAGES off
    ]
    names = packs.write(storage, "j", slices)
    assert set(names) == {3, 7, 9} and len(set(names.values())) == 1
    name = names[3]
    assert re.fullmatch(r"packs/3-[0-9a-f]{12}\.pack", name)
    for s in slices:
        pixels = read_pixels(storage, "j", name, s.index)
        if s.pixels is None:
            assert pixels is None
        else:
            assert pixels is not None and pixels.dtype == np.uint8
            assert np.array_equal(pixels, s.pixels)
        assert read_view(storage, "j", name, s.index) == s.view
    assert read_pixels(storage, "j", name, 4) is None and read_view(storage, "j", name, 4) is None
    assert read_pixels(storage, "j", "packs/3-000000000000.pack", 3) is None  # no such pack
    data = storage.get("j", name)
    assert data is not None and [e.slice_index for e in packs.entries(data)] == [3, 7, 9]
    storage.discard("j")
    assert read_view(storage, "j", name, 7) is None  # deleted with the job


class CountingStorage(LocalStorage):
    """A real local storage that remembers which reads a reader made."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[tuple[int, int] | str] = []

    def get(self, job_id: str, name: str) -> bytes | None:
        self.reads.append(name)
        return super().get(job_id, name)

    def get_range(self, job_id: str, name: str, offset: int, length: int) -> bytes | None:
        self.reads.append((offset, length))
        return super().get_range(job_id, name, offset, length)


def test_a_member_costs_two_ranged_reads_and_a_long_table_three(tmp_path: Path) -> None:
    storage = CountingStorage(tmp_path)
    small = packs.write(storage, "j", [PackSlice(i, gray(i), None) for i in range(16)])[0]
    assert read_pixels(storage, "j", small, 5) is not None
    table = packs.HEADER.size + 16 * packs.ENTRY.size
    member = (table + 5 * 120, 120)  # the sixth 12x10 image
    assert storage.reads == [(0, packs.READ_AHEAD), member]
    many = [PackSlice(i, gray(i, 2, 2), bytes([i % 256])) for i in range(300)]
    big = packs.write(storage, "j", many)[0]
    assert packs.HEADER.size + 300 * packs.ENTRY.size > packs.READ_AHEAD
    storage.reads.clear()
    assert read_view(storage, "j", big, 299) == bytes([299 % 256])
    assert len(storage.reads) == 3 and not any(isinstance(r, str) for r in storage.reads)
    pixels = read_pixels(storage, "j", big, 0)
    assert pixels is not None and np.array_equal(pixels, gray(0, 2, 2))


def test_every_write_gets_a_new_name_and_large_batches_several_packs(tmp_path: Path) -> None:
    """Two workers racing on one job after a takeover never replace each other's pack."""
    storage = LocalStorage(tmp_path)
    slices = [PackSlice(i, gray(i, 100, 100), b"v" * 5_000) for i in range(10)]
    first, second = packs.write(storage, "j", slices), packs.write(storage, "j", slices)
    assert len(set(first.values())) == len(set(second.values())) == 1
    assert first[0] != second[0]
    split = packs.write(storage, "j", slices, max_bytes=32_000)  # 15,000 bytes a slice
    assert [sorted(i for i, n in split.items() if n == name) for name in dict.fromkeys(
        split.values()
    )] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]  # fmt: skip
    for i, name in split.items():
        assert read_view(storage, "j", name, i) == b"v" * 5_000
        assert read_view(storage, "j", first[i], i) == b"v" * 5_000


def test_jobs_stored_before_packs_are_read_from_their_files(storage: Storage) -> None:
    pixels = gray(2)
    storage.put("old", "images/2.png", png_of(pixels))
    storage.put("old", "views/2.view", b"HU16 compressed")
    read = read_pixels(storage, "old", None, 2)
    assert read is not None and np.array_equal(read, pixels)
    assert read_view(storage, "old", None, 2) == b"HU16 compressed"
    assert read_pixels(storage, "old", None, 5) is None
    assert read_view(storage, "old", None, 5) is None
    storage.discard("old")


def test_what_is_not_a_pack_is_refused(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("j", "packs/0-0123456789ab.pack", b"PK\x03\x04 a zip, not a pack")
    with pytest.raises(ValueError, match="not a slice pack"):
        read_pixels(storage, "j", "packs/0-0123456789ab.pack", 0)
    for bad in (gray(1).astype(np.float32), np.zeros((4, 4, 3), np.uint8)):
        with pytest.raises(ValueError, match="2-D uint8"):
            packs.build([PackSlice(0, bad, None)])


def test_the_decode_keeps_the_model_input_as_8_bit_pixels(tmp_path: Path) -> None:
    """worker.runner._load: the first channel, rint(x * 255), what the PNG once held."""
    from ingest import plan_upload
    from models.preprocessing import InputSpec
    from tests.fixtures_dicom import write_zip
    from tests.test_views import gradient_slice
    from worker.runner import Stages, _load

    predictor: Any = SimpleNamespace(card=SimpleNamespace(input=InputSpec(16, 16, 3)))
    upload = write_zip(tmp_path / "s.zip", [("a/1.dcm", gradient_slice(1))])
    with plan_upload(upload, Settings(), filename="s.zip") as plan:
        on = _load("job", plan.slices[0], predictor, Settings(), Stages())
        off = _load("job", plan.slices[0], predictor, Settings(store_slice_images=False), Stages())
    assert on.tensor is not None and on.pixels is not None and off.pixels is None
    expected = np.clip(np.rint(on.tensor[..., 0] * 255), 0, 255).astype(np.uint8)
    assert on.pixels.shape == (16, 16) and np.array_equal(on.pixels, expected)
    assert len(np.unique(on.pixels)) > 2  # a gradient, not a constant


def test_the_writer_stores_one_pack_per_job_and_none_for_failed_slices(tmp_path: Path) -> None:
    from worker.runner import Decoded, _store_packs

    storage = LocalStorage(tmp_path)
    tensor = np.zeros((4, 4, 1), np.float32)

    def decoded(job_id: str, index: int, ok: bool = True) -> Decoded:
        source: Any = SimpleNamespace(index=index)
        if not ok:
            return Decoded(job_id, source, None, "could not decode")
        return Decoded(job_id, source, tensor, None, gray(index, 4, 4), f"view {index}".encode())

    batch = [decoded("a", 0), decoded("b", 0), decoded("a", 1), decoded("a", 2, ok=False)]
    names = _store_packs(storage, batch)
    assert set(names) == {("a", 0), ("a", 1), ("b", 0)}  # the failed slice has none
    assert names[("a", 0)] == names[("a", 1)] != names[("b", 0)]
    assert read_view(storage, "a", names[("a", 1)], 1) == b"view 1"
    assert read_view(storage, "b", names[("b", 0)], 0) == b"view 0"
    assert [p.name.split("-")[0] for p in (tmp_path / "a" / "packs").iterdir()] == ["0"]


# -- the API serves slices from packs, and from the files of older jobs -----------


def _job_with_rows(database_url: str, job_id: str, packs_by_index: dict[int, str | None]) -> None:
    """A succeeded job of alice's with one row per slice, naming its pack."""
    from db.models import Job, SlicePrediction
    from db.session import session_scope

    with session_scope(database_url) as s:
        s.add(
            Job(
                id=job_id, kind="study", owner="alice", model_name="m", model_version="1",
                upload_key=f"{job_id}/upload.zip", upload_bytes=1, status="succeeded",
                warnings=[],
            )
        )  # fmt: skip
        s.flush()
        for index, pack in packs_by_index.items():
            s.add(SlicePrediction(job_id=job_id, slice_index=index, source=f"#{index}", pack=pack))


def _served_pixels(response: Any) -> np.ndarray:
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.headers["Cache-Control"] == "private, max-age=3600"
    return np.asarray(Image.open(io.BytesIO(response.data)))


def test_the_api_serves_a_slice_from_its_pack(client, app, api_env) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import authed, new_key

    storage = LocalStorage(Path(api_env["STORAGE_DIR"]))
    job_id = str(uuid.uuid4())
    jpeg = b"\xff\xd8\xff\xe0 a viewing copy"
    names = packs.write(storage, job_id, [PackSlice(0, gray(0), jpeg), PackSlice(1, gray(1), None)])
    _job_with_rows(api_env["DATABASE_URL"], job_id, {**names, 2: None})  # 2: not decodable
    base = f"/api/v1/jobs/{job_id}/slices"
    assert np.array_equal(_served_pixels(client.get(f"{base}/0/image")), gray(0))
    assert np.array_equal(_served_pixels(client.get(f"{base}/1/image")), gray(1))
    view = client.get(f"{base}/0/view")
    assert view.status_code == 200 and view.mimetype == "image/jpeg" and view.data == jpeg
    missing = client.get(f"{base}/1/view")
    assert missing.status_code == 404
    assert missing.json["error"]["message"] == f"no viewing copy for slice 1 of job {job_id!r}"
    for index in (2, 3):  # a slice that failed to decode; a slice with no row
        absent = client.get(f"{base}/{index}/image")
        assert absent.status_code == 404
        assert absent.json["error"]["message"] == f"no image for slice {index} of job {job_id!r}"
    bob = authed(app, new_key(api_env["DATABASE_URL"], "bob"))
    assert bob.get(f"{base}/0/image").status_code == 404
    assert bob.get(f"{base}/0/view").status_code == 404


def test_the_api_still_serves_jobs_stored_before_packs(client, api_env) -> None:  # type: ignore[no-untyped-def]
    """Rows without a pack (migration 0008 left them NULL): the per-slice files answer."""
    from ingest.views import deflated, hu_view, read_hu_view

    storage = LocalStorage(Path(api_env["STORAGE_DIR"]))
    job_id = str(uuid.uuid4())
    hu = np.arange(-600, 600, dtype=np.int16).reshape(30, 40)
    storage.put(job_id, "images/0.png", png_of(gray(5)))
    # stored compressed then (what deflated() makes), and sent as it is, not compressed twice
    storage.put(job_id, "views/0.view", deflated(hu_view(hu, -600.0, 1500.0, False)))
    storage.put(job_id, "images/1.png", png_of(gray(6)))  # no viewing copy (STORE_SLICE_VIEWS=0)
    _job_with_rows(api_env["DATABASE_URL"], job_id, {0: None, 1: None})
    base = f"/api/v1/jobs/{job_id}/slices"
    assert np.array_equal(_served_pixels(client.get(f"{base}/0/image")), gray(5))
    assert np.array_equal(_served_pixels(client.get(f"{base}/1/image")), gray(6))
    view = client.get(f"{base}/0/view")
    assert view.status_code == 200 and view.mimetype == "application/vnd.lungct.hu16"
    assert view.headers["Content-Encoding"] == "deflate"
    assert np.array_equal(read_hu_view(view.data)[0], hu)
    assert client.get(f"{base}/1/view").status_code == 404


def test_a_racing_write_never_replaces_the_pack_a_row_names(api_env) -> None:  # type: ignore[no-untyped-def]
    """Two workers store slice 0 of one job (a takeover): the row that won keeps its pack."""
    from sqlalchemy import select

    from db.models import SlicePrediction
    from db.records import SliceResult
    from db.session import session_scope
    from worker.runner import insert_rows

    url, storage = api_env["DATABASE_URL"], LocalStorage(Path(api_env["STORAGE_DIR"]))
    job_id = str(uuid.uuid4())
    _job_with_rows(url, job_id, {})
    for seed in (1, 2):  # the first worker, then the one that took the job over
        names = packs.write(storage, job_id, [PackSlice(0, gray(seed), None)])
        with session_scope(url) as s:
            insert_rows(s, [SliceResult(0, "#0").row(job_id, names[0])])  # insert-or-ignore
    with session_scope(url) as s:
        [pack] = s.scalars(select(SlicePrediction.pack).where(SlicePrediction.job_id == job_id))
    assert pack is not None and pack != names[0]
    pixels = read_pixels(storage, job_id, pack, 0)
    assert pixels is not None and np.array_equal(pixels, gray(1))
