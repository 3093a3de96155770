"""The slice viewer's viewing copies: made from one decode, lossless, without identifiers.

Unit tests of ingest/views.py and SliceSource.load_with_view on synthetic files,
then the real stack: the worker stores a copy per slice and the owner-checked
``/slices/<i>/view`` route serves it (HU behind ``Content-Encoding: deflate``).
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from config import Settings
from ingest import plan_upload
from ingest.dicom import decode_dicom, decode_dicom_view
from ingest.views import image_view, read_hu_view
from tests.conftest import Stack, authed, new_key, zip_bytes
from tests.fixtures_dicom import PATIENT_ID, PATIENT_NAME, ct_slice, to_bytes, write_zip
from tests.test_pipeline import submit, wait_done

SECRET = PATIENT_NAME.encode()


def gradient_slice(instance: int, size: int = 160) -> bytes:
    """A CT slice whose HU run from -1000 to +1000 across the columns (plus the instance)."""
    ds = ct_slice(series_uid="1.2.826.0.1.3680043.8.498.55", instance=instance, z=float(instance))
    hu = np.tile(np.linspace(-1000, 1000, size).round().astype(np.int16), (size, 1)) + instance
    ds.Rows = ds.Columns = size
    ds.PixelData = (hu + 1024).astype(np.int16).tobytes()  # RescaleIntercept -1024
    return to_bytes(ds)


def jpeg_with_comment() -> bytes:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((40, 30)).save(buf, "JPEG", comment=SECRET)
    return buf.getvalue()


def png_with_text() -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Patient", PATIENT_NAME)
    info.add_itxt("PatientID", PATIENT_ID)
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((40, 30)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def test_dicom_view_is_the_exact_hu_from_the_same_decode() -> None:
    data = gradient_slice(3)
    image, view = decode_dicom_view(data, None, 150.0, 500.0, 10**6)
    assert np.array_equal(image, decode_dicom(data, None, 150.0, 500.0, 10**6))
    assert view is not None and view.startswith(b"HU16") and SECRET not in view  # stored raw
    hu, meta = read_hu_view(view)
    assert hu.shape == (160, 160) and hu.dtype == np.dtype("<i2")
    assert (int(hu[0, 1]), int(hu[0, -1])) == (-1000 + 13 + 3, 1000 + 3)  # exact, lossless
    assert meta == {"center": 150.0, "width": 500.0, "monochrome1": False}


@pytest.mark.parametrize("make", [jpeg_with_comment, png_with_text])
def test_image_view_keeps_the_pixels_and_drops_text(make) -> None:  # type: ignore[no-untyped-def]
    data = make()
    assert SECRET in data or PATIENT_ID.encode() in data
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    view = image_view(data, pixels)
    assert SECRET not in view and PATIENT_ID.encode() not in view
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(view)).convert("L")), pixels)
    assert len(view) <= len(data)  # not re-encoded


def test_unparseable_image_bytes_fall_back_to_a_png_of_the_pixels() -> None:
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    view = image_view(b"\xff\xd8garbage", pixels)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(view))), pixels)


def test_a_plan_slice_loads_image_and_view_from_one_decode(tmp_path: Path) -> None:
    upload = write_zip(tmp_path / "s.zip", [(f"a/{i}.dcm", gradient_slice(i)) for i in (1, 2)])
    with plan_upload(upload, Settings(), filename="s.zip") as plan:
        image, view = plan.slices[0].load_with_view()
        assert np.array_equal(image, plan.slices[0].load())
    assert view is not None and read_hu_view(view)[0].shape == (160, 160)


@pytest.mark.integration
def test_the_worker_keeps_a_viewing_copy_served_to_the_owner_only(stack: Stack) -> None:
    api = stack.client()
    members = {f"s/{i}.dcm": gradient_slice(i) for i in (1, 2, 3)}
    dicom = wait_done(api, submit(api, zip_bytes(members), "ct.zip")["id"])
    assert dicom["status"] == "succeeded", (dicom["error"], dicom["warnings"])
    images = zip_bytes({"j/a.jpg": jpeg_with_comment(), "j/b.jpg": jpeg_with_comment()})
    jpegs = wait_done(api, submit(api, images, "jpegs.zip")["id"])
    hu_index = 2
    r = api.get(f"/api/v1/jobs/{dicom['id']}/slices/{hu_index}/view")
    assert r.status_code == 200 and r.mimetype == "application/vnd.lungct.hu16"
    assert r.headers["Content-Encoding"] == "deflate"  # stored raw, compressed for the wire
    assert zlib.decompress(r.data).startswith(b"HU16") and len(r.data) < 24 + 2 * 160 * 160
    hu, _ = read_hu_view(r.data)
    assert hu.shape == (160, 160) and int(hu[5, -1]) == 1003  # instance 3, exact HU
    jpeg = api.get(f"/api/v1/jobs/{jpegs['id']}/slices/0/view")
    assert jpeg.status_code == 200 and jpeg.mimetype == "image/jpeg" and SECRET not in jpeg.data
    assert Image.open(io.BytesIO(jpeg.data)).size == (40, 30)  # full resolution, as uploaded
    stored = Path(stack.env["STORAGE_DIR"]) / dicom["id"]
    assert (stored / "packs").is_dir() and not (stored / "views").exists()  # kept in a pack
    bob = authed(stack.app(), new_key(stack.env["DATABASE_URL"], "bob"))
    assert bob.get(f"/api/v1/jobs/{dicom['id']}/slices/{hu_index}/view").status_code == 404
    assert api.get(f"/api/v1/jobs/{dicom['id']}/slices/99/view").status_code == 404
    assert api.delete(f"/api/v1/jobs/{dicom['id']}").status_code == 204
    assert not (Path(stack.env["STORAGE_DIR"]) / dicom["id"]).exists()


def test_store_slice_views_off_decodes_without_a_copy(tmp_path: Path) -> None:
    """The worker's decode (worker.runner._load) makes the copy only with STORE_SLICE_VIEWS."""
    from types import SimpleNamespace

    from models.preprocessing import InputSpec
    from worker.runner import Stages, _load

    predictor: Any = SimpleNamespace(card=SimpleNamespace(input=InputSpec(8, 8, 1)))
    upload = write_zip(tmp_path / "s.zip", [("a/1.dcm", gradient_slice(1))])
    with plan_upload(upload, Settings(), filename="s.zip") as plan:
        for views in (True, False):
            settings = Settings(store_slice_views=views)
            decoded = _load("job", plan.slices[0], predictor, settings, Stages())
            assert decoded.error is None and decoded.tensor is not None
            assert (decoded.view is not None) == views
