"""Upload storage: one interface, tested against both backends.

The S3 backend talks to a real S3-compatible HTTP server (moto's server as a
subprocess, ``s3_endpoint``), through boto3 exactly as to MinIO or AWS.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest
from redis import Redis

from config import Settings
from storage import LocalStorage, Storage, open_storage, readable_path
from storage.local import SPOOL_FOLDER
from storage.s3 import S3Storage
from tests.conftest import S3

MB = 1024**2


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder as this process's temporary folder (to see what is left behind)."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_save_then_read_back(storage: Storage, scratch: Path) -> None:
    data = os.urandom(300_000)
    stored = storage.save("job-1", "Doe^John 1955.ZIP", io.BytesIO(data))
    assert stored.key == "job-1/upload.zip" and stored.size == len(data)  # client name not kept
    with storage.local_file(stored.key) as path:
        assert path.read_bytes() == data
    assert list(scratch.iterdir()) == []


def test_large_upload_streams_in_parts(storage: Storage) -> None:
    data = os.urandom(9 * MB)  # above the 8 MB multipart threshold on S3
    stored = storage.save("job-big", "study.dcm", io.BytesIO(data))
    assert stored.size == len(data)
    with storage.local_file(stored.key) as path:
        assert path.stat().st_size == len(data) and path.read_bytes() == data


def test_the_download_is_gone_after_reading(storage: Storage) -> None:
    storage.save("job-1", "x.png", io.BytesIO(b"pixels"))
    with storage.local_file("job-1/upload.png") as path:
        assert path.read_bytes() == b"pixels"
    if isinstance(storage, S3Storage):  # an anonymous temporary file, closed now
        assert not path.exists()


def test_missing_upload_is_file_not_found(storage: Storage) -> None:
    with pytest.raises(FileNotFoundError), storage.local_file("nobody/upload.zip") as path:
        path.read_bytes()


def test_discard_removes_one_job_only(storage: Storage) -> None:
    for job in ("a", "b"):
        storage.save(job, "s.zip", io.BytesIO(b"zip"))
    storage.discard("a")
    assert sorted(storage.job_ids(older_than_s=-60)) == ["b"]
    for unsafe in ("", ".", "..", "b/..", "b/upload.zip"):
        storage.discard(unsafe)  # never a parent folder, never the whole prefix
    assert sorted(storage.job_ids(older_than_s=-60)) == ["b"]


def test_release_keeps_uploads_when_asked(storage: Storage) -> None:
    storage.save("kept", "s.png", io.BytesIO(b"png"))
    storage.keep_uploads = True
    storage.release("kept")
    assert list(storage.job_ids(older_than_s=-60)) == ["kept"]
    storage.keep_uploads = False
    storage.release("kept")
    assert list(storage.job_ids(older_than_s=-60)) == []


def test_derived_files_outlive_the_upload_until_the_job_goes(storage: Storage) -> None:
    storage.save("j", "s.zip", io.BytesIO(b"zip"))
    storage.put("j", "images/0.png", b"png0")
    storage.put("j", "heatmaps/0.png", b"heat0")
    assert storage.get("j", "images/0.png") == b"png0" and storage.get("j", "images/1.png") is None
    storage.release("j")  # the job ended: the upload goes, its images stay
    with pytest.raises(FileNotFoundError), storage.local_file("j/upload.zip") as path:
        path.read_bytes()
    assert storage.get("j", "heatmaps/0.png") == b"heat0"
    for bad in ("../x.png", "images/../../x", "upload.zip", "images/a.png"):
        assert storage.get("j", bad) is None
        with pytest.raises(ValueError):
            storage.put("j", bad, b"x")
    storage.discard("j")  # the job was deleted: everything goes
    assert storage.get("j", "images/0.png") is None
    assert list(storage.job_ids(older_than_s=-60)) == []


def test_a_range_of_a_derived_file(storage: Storage) -> None:
    """What a slice pack's reader fetches (storage/packs.py): a seek locally, a Range GET on S3."""
    data = bytes(range(256)) * 40
    storage.put("j", "heatmaps/3.png", data)
    assert storage.get_range("j", "heatmaps/3.png", 0, 16) == data[:16]
    assert storage.get_range("j", "heatmaps/3.png", 5000, 300) == data[5000:5300]
    assert storage.get_range("j", "heatmaps/3.png", len(data) - 10, 100) == data[-10:]  # short
    assert storage.get_range("j", "heatmaps/3.png", len(data) + 5, 10) == b""  # past the end
    assert storage.get_range("j", "heatmaps/3.png", 7, 0) == b""
    assert storage.get_range("j", "heatmaps/4.png", 0, 10) is None  # no such file
    assert storage.get_range("j", "../x.png", 0, 10) is None  # not a derived file
    default = Storage.get_range(storage, "j", "heatmaps/3.png", 5000, 300)  # via get()
    assert default == data[5000:5300]
    storage.discard("j")


def test_dicom_files_are_put_and_deleted_one_by_one(storage: Storage) -> None:
    """The DICOM node's files (dicomnet/): received instances, a header copy, the SR."""
    storage.put("j", "dicom/header.dcm", b"header")
    storage.put("j", "dicom/sr.dcm", b"sr")
    storage.delete("j", "dicom/header.dcm")  # delivered: the patient module goes
    storage.delete("j", "dicom/absent.dcm")  # nothing there: no error
    assert storage.get("j", "dicom/header.dcm") is None
    assert storage.get("j", "dicom/sr.dcm") == b"sr"
    for bad in ("dicom/../x.dcm", "dicom/Doe^Jane.dcm", "dicom/a.png"):
        with pytest.raises(ValueError):
            storage.put("j", bad, b"x")
    storage.discard("j")


def test_job_ids_by_age(storage: Storage) -> None:
    storage.save("fresh", "s.png", io.BytesIO(b"png"))
    assert list(storage.job_ids(older_than_s=3600)) == []
    assert list(storage.job_ids(older_than_s=-60)) == ["fresh"]


def test_a_spooled_upload_is_moved_into_its_job_not_copied(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "uploads")
    data = os.urandom(700_000)
    spooled = storage.spool()
    spooled.write(data)  # as werkzeug writes an arriving upload; not flushed yet
    inode = os.fstat(spooled.fileno()).st_ino
    stored = storage.save("job-1", "study.zip", spooled)
    spooled.close()  # the request ends: its file goes, the stored upload stays
    with storage.local_file(stored.key) as path:
        assert path.stat().st_ino == inode and path.read_bytes() == data
    assert stored.size == len(data) and list(storage.job_ids(older_than_s=-60)) == ["job-1"]
    assert list((tmp_path / "uploads" / SPOOL_FOLDER).iterdir()) == []


def test_a_spooled_upload_that_is_not_saved_is_gone_once_closed(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "uploads")
    with storage.spool() as spooled:
        spooled.write(b"a rejected upload")
        assert spooled.path.exists()
    assert not spooled.path.exists() and list(storage.job_ids(older_than_s=-60)) == []


def test_the_sweeper_removes_spooled_uploads_a_killed_process_left(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "uploads")
    left, arriving = storage.spool(), storage.spool()
    hour_ago = time.time() - 3600
    os.utime(left.path, (hour_ago, hour_ago))
    assert storage.remove_stale_spool(older_than_s=600) == 1
    assert not left.path.exists() and arriving.path.exists()
    left.close()
    arriving.close()


def test_s3_abandoned_multipart_upload_is_listed_and_aborted(s3: S3) -> None:
    """An API killed mid-upload leaves a multipart upload and no object."""
    storage = open_storage(Settings())
    client = s3.client()
    client.create_multipart_upload(Bucket=s3.bucket, Key=f"{s3.prefix}/crashed/upload.zip")
    client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}/README", Body=b"not a job")
    client.put_object(Bucket=s3.bucket, Key="elsewhere/job/upload.zip", Body=b"other prefix")
    assert list(storage.job_ids(older_than_s=-60)) == ["crashed"]
    storage.discard("crashed")
    assert s3.open_uploads() == []
    assert sorted(s3.keys()) == ["elsewhere/job/upload.zip", f"{s3.prefix}/README"]


def test_storage_url_chooses_the_backend(tmp_path: Path) -> None:
    s3 = open_storage(Settings(storage_url="s3://scans/lungct/uploads/"))
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == ("scans", "lungct/uploads")
    assert s3.object_key("j/upload.zip") == "lungct/uploads/j/upload.zip"
    assert open_storage(Settings(storage_url="s3://scans")).object_key("j/x") == "j/x"
    folder = open_storage(Settings(storage_url=str(tmp_path / "up")))
    assert isinstance(folder, LocalStorage) and folder.root == tmp_path / "up"
    default = open_storage(Settings(storage_url="", storage_dir=tmp_path / "dir"))
    assert isinstance(default, LocalStorage) and default.root == tmp_path / "dir"
    for bad in ("s3://", "s3:///prefix", "gs://bucket/x", "file:///data"):
        with pytest.raises(ValueError, match="STORAGE_URL"):
            Settings(storage_url=bad)


def test_s3_storage_writes_nothing_locally(s3: S3, tmp_path: Path, scratch: Path) -> None:
    settings = Settings(storage_dir=tmp_path / "uploads")
    storage = open_storage(settings)
    storage.prepare()
    storage.save("j", "s.zip", io.BytesIO(b"zip"))
    with storage.local_file("j/upload.zip") as path:
        path.read_bytes()
    storage.release("j")
    assert not (tmp_path / "uploads").exists() and list(scratch.iterdir()) == []
    assert s3.keys() == []


@pytest.mark.parametrize("size", [100, 2 * MB])
def test_readable_path_uses_the_spooled_file(size: int, scratch: Path) -> None:
    """What werkzeug gives the API: in memory up to 500 KB, an anonymous file above."""
    data = os.urandom(size)
    with tempfile.SpooledTemporaryFile(max_size=500 * 1024) as spooled:
        spooled.write(data)
        spooled.seek(0)
        with readable_path(spooled) as path:  # type: ignore[arg-type]
            assert path.read_bytes() == data
            if size < 500 * 1024 and sys.platform.startswith("linux"):
                # a single slice: copied to a file in memory, never written out to disk
                assert os.readlink(path).startswith("/memfd:lungct-upload")
                assert not spooled._rolled  # type: ignore[attr-defined]
        assert spooled.read() == data  # still readable from the start for the save
    with readable_path(io.BytesIO(data)) as path:  # no file descriptor: a temporary copy
        assert path.read_bytes() == data
    assert list(scratch.iterdir()) == []


@pytest.mark.integration
def test_sweeper_removes_orphans_from_s3(s3: S3, api_env: dict[str, str]) -> None:
    """Old job prefixes with no job row go, with unfinished multipart uploads; the rest stays."""
    from functools import partial

    from db.models import Job
    from db.session import session_scope
    from worker.inference import get_predictor
    from worker.runner import Context
    from worker.sweeper import sweep

    storage = open_storage(Settings())
    client = s3.client()
    storage.save("orphan", "s.zip", io.BytesIO(b"a submit that crashed after the upload"))
    client.create_multipart_upload(Bucket=s3.bucket, Key=f"{s3.prefix}/killed/upload.zip")
    live = storage.save("live", "s.png", io.BytesIO(b"png"))
    with session_scope(api_env["DATABASE_URL"]) as s:
        s.add(
            Job(
                id="live", kind="image", owner="alice", model_name="m", model_version="1",
                upload_key=live.key, upload_bytes=live.size, status="queued", warnings=[],
            )
        )  # fmt: skip
    time.sleep(3)
    storage.save("young", "s.png", io.BytesIO(b"a submit still in progress"))
    settings = Settings(orphan_upload_age_s=1.5, retention_days=0)
    predictor = partial(get_predictor, models_dirs=settings.models_dirs)
    ctx = Context(settings, open_storage(settings), predictor, lambda *job: None)
    report = sweep(ctx, Redis.from_url(api_env["REDIS_URL"]))
    assert report is not None and sorted(report.orphans_removed) == ["killed", "orphan"]
    assert sorted(s3.keys()) == [f"{s3.prefix}/live/upload.png", f"{s3.prefix}/young/upload.png"]
    assert s3.open_uploads() == []
    assert not Path(api_env["STORAGE_DIR"]).exists()
