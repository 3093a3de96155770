"""Uploads in S3-compatible object storage (AWS S3, MinIO, ...): one key prefix per job.

Objects are ``<prefix>/<job_id>/upload.<ext>`` in one bucket. boto3 reads its
configuration itself: ``AWS_ENDPOINT_URL`` (MinIO and other S3-compatible
servers; requests are then path-style, ``http://host:9000/bucket/key``),
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, or an
instance role. An object appears only once its upload is complete (PutObject,
or CompleteMultipartUpload above 8 MB), so a reader never sees half an upload;
a multipart upload that a killed API process left open is aborted by
:meth:`S3Storage.discard` (the sweeper) or by a bucket lifecycle rule.

The worker reads an upload by downloading it to an anonymous temporary file
(``storage.base.scratch_file``), measured faster than ranged reads for zips
(README, "Multi-host").
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from storage.base import Storage, Stored, scratch_file, stored_name, valid_job_id, valid_name

MB = 1024**2
# Parts of 8 MB (boto3's default), 4 in flight per upload or download.
UPLOAD = TransferConfig(multipart_chunksize=8 * MB, max_concurrency=4)
DOWNLOAD = TransferConfig(multipart_chunksize=8 * MB, max_concurrency=4)
# The variables boto3 reads that change which client we need (tests change them).
AWS_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
)
_client: tuple[tuple[object, ...], Any] | None = None
_client_lock = threading.Lock()


def s3_client() -> Any:
    """This process's S3 client (thread-safe; made again after a fork or an AWS_* change)."""
    global _client
    key = (os.getpid(), *(os.environ.get(name) for name in AWS_ENV))
    with _client_lock:
        if _client is None or _client[0] != key:
            custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            config = Config(
                s3={"addressing_style": "path"} if custom else {},
                retries={"mode": "standard", "max_attempts": 3},
                connect_timeout=5,
                read_timeout=60,
            )
            _client = (key, boto3.session.Session().client("s3", config=config))
        return _client[1]


class _Counted:
    """A read-only view of a stream that counts the bytes read (the upload's size)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream, self.size = stream, 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.size += len(data)
        return data


class S3Storage(Storage):
    """Job prefixes in one bucket (``STORAGE_URL=s3://bucket/prefix``)."""

    def __init__(
        self, bucket: str, prefix: str = "", keep_uploads: bool = False, client: Any = None
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.keep_uploads = keep_uploads
        self._own_client = client

    def __repr__(self) -> str:
        return f"S3Storage('s3://{self.bucket}/{self.prefix}')"

    @property
    def client(self) -> Any:
        return self._own_client or s3_client()

    def object_key(self, key: str) -> str:
        """The object key of a storage key (``<job_id>/upload.zip``) in the bucket."""
        return f"{self.prefix}/{key}" if self.prefix else key

    def prepare(self) -> None:
        """Nothing: the bucket is created by the deployment (docker-compose: bucket-init)."""

    def save(self, job_id: str, filename: str, stream: IO[bytes]) -> Stored:
        """Stream to the bucket: one PutObject, or a multipart upload above 8 MB."""
        key = f"{job_id}/{stored_name(filename)}"
        counted = _Counted(stream)
        self.client.upload_fileobj(counted, self.bucket, self.object_key(key), Config=UPLOAD)
        return Stored(key, counted.size)

    @contextmanager
    def local_file(self, key: str) -> Iterator[Path]:
        """Download to an anonymous temporary file, gone when the context ends."""
        with scratch_file() as (f, path):
            try:
                self.client.download_fileobj(self.bucket, self.object_key(key), f, Config=DOWNLOAD)
            except ClientError as exc:
                if _status(exc) == 404:
                    raise FileNotFoundError(f"no stored upload {key!r}") from None
                raise
            f.flush()
            yield path

    def discard(self, job_id: str) -> None:
        """Delete the job's objects and abort its unfinished multipart uploads."""
        if valid_job_id(job_id):
            self._delete_prefix(self.object_key(job_id) + "/")

    def _delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix`` and abort its unfinished multipart uploads."""
        keys = [obj["Key"] for obj in self._list("list_objects_v2", "Contents", prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            answer = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            if answer.get("Errors"):
                raise RuntimeError(f"could not delete {len(answer['Errors'])} objects of a job")
        for upload in self._list("list_multipart_uploads", "Uploads", prefix):
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )

    def drop_upload(self, job_id: str) -> None:
        """Delete ``<job>/upload*`` and abort unfinished multipart uploads of it."""
        if valid_job_id(job_id):
            self._delete_prefix(self.object_key(job_id) + "/upload")

    def put(self, job_id: str, name: str, data: bytes) -> None:
        if not (valid_job_id(job_id) and valid_name(name)):
            raise ValueError(f"not a derived file of a job: {name!r}")
        self.client.put_object(
            Bucket=self.bucket, Key=self.object_key(f"{job_id}/{name}"), Body=data
        )

    def delete(self, job_id: str, name: str) -> None:
        if valid_job_id(job_id) and valid_name(name):
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(f"{job_id}/{name}"))

    def get(self, job_id: str, name: str) -> bytes | None:
        if not (valid_job_id(job_id) and valid_name(name)):
            return None
        try:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=self.object_key(f"{job_id}/{name}")
            )
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise
        return answer["Body"].read()

    def get_range(self, job_id: str, name: str, offset: int, length: int) -> bytes | None:
        """One ranged GET (``Range: bytes=offset-end``); a range past the end reads nothing."""
        if not (valid_job_id(job_id) and valid_name(name)):
            return None
        if length <= 0:
            return b""
        try:
            answer = self.client.get_object(
                Bucket=self.bucket,
                Key=self.object_key(f"{job_id}/{name}"),
                Range=f"bytes={offset}-{offset + length - 1}",
            )
        except ClientError as exc:
            status = _status(exc)
            if status == 404:
                return None
            if status == 416:  # the object ends before offset
                return b""
            raise
        return answer["Body"].read()

    def job_ids(self, older_than_s: float) -> Iterator[str]:
        """Job prefixes whose newest object or open multipart upload is older than ``older_than_s``.

        Keys directly under the prefix (not in a job's "folder") are ignored.
        """
        base = self.object_key("")
        newest: dict[str, datetime] = {}
        for obj in self._list("list_objects_v2", "Contents", base):
            self._note(newest, obj["Key"][len(base) :], obj["LastModified"])
        for upload in self._list("list_multipart_uploads", "Uploads", base):
            self._note(newest, upload["Key"][len(base) :], upload["Initiated"])
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        yield from (job_id for job_id, when in newest.items() if when < cutoff)

    @staticmethod
    def _note(newest: dict[str, datetime], relative: str, when: datetime) -> None:
        job_id, slash, _ = relative.partition("/")
        if slash and valid_job_id(job_id):
            newest[job_id] = max(when, newest.get(job_id, when))

    def _list(self, operation: str, field: str, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator(operation)
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get(field, [])


def _status(exc: ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
