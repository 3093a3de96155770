"""One typed settings object, read from environment variables (pydantic-settings).

Every process (API, worker, migrations, scripts) reads its configuration here,
so a variable means the same thing everywhere. Each field's environment
variable is its name in upper case (``inference_batch_size`` ->
``INFERENCE_BATCH_SIZE``): a setting is added in one place. Defaults are safe
for a local, single-machine run: an SQLite file and the storage folder under
``var/``. An empty variable means "use the default", as in ``.env.example``.

``APP_ENV=production`` refuses to start with placeholder secrets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = PROJECT_ROOT / "var"
MB = 1024**2

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "password", "secret", "dummy", "admin"}
"""Values that mean "nobody set this"; refused as secrets when APP_ENV=production."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Limits applied to untrusted uploads before and while they are read (in bytes)."""

    max_members: int = 5000
    max_uncompressed_bytes: int = 4 * 1024**3
    max_member_bytes: int = 512 * MB
    max_compression_ratio: float = 200.0
    max_image_pixels: int = 8192 * 8192
    # the slice selection rule, so a single DICOM file that the job would refuse
    # (an MR, a localizer) is refused at upload already
    allowed_modalities: tuple[str, ...] = ("CT",)
    skip_image_types: tuple[str, ...] = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SCANOGRAM")


def _project_path(value: str | Path) -> Path:
    """Relative paths are taken from the project root, so every process agrees."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def _split(value: object, sep: str) -> object:
    """``"A,B"`` from the environment -> ("A", "B"); sequences pass through."""
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(sep) if p.strip())
    return value


CommaList = Annotated[tuple[str, ...], NoDecode]
PathList = Annotated[tuple[Path, ...], NoDecode]


class Settings(BaseSettings):
    """Configuration of one process; build it with :func:`get_settings` or directly."""

    model_config = SettingsConfigDict(
        env_ignore_empty=True, frozen=True, extra="ignore", case_sensitive=False
    )

    app_env: Literal["development", "production"] = "development"

    # --- where things live ---
    database_url: str = f"sqlite:///{VAR_DIR / 'lungct.db'}"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Uploads: "s3://bucket/prefix" (S3-compatible; boto3 reads the AWS_* variables)
    # or a folder path; unset: STORAGE_DIR. See storage/__init__.py.
    storage_url: str = ""
    storage_dir: Path = VAR_DIR / "uploads"
    models_dirs: PathList = (PROJECT_ROOT / "models" / "store", VAR_DIR / "models")
    default_model: str = "lungct-cnn6"
    celery_queue: str = "inference"

    # --- uploads and inference ---
    max_upload_mb: PositiveInt = 1024
    max_form_parts: PositiveInt = 100
    # Files in one POST /api/v1/jobs/batch (api/batch.py): each becomes its own job.
    batch_max_files: PositiveInt = 100
    # "auto": each worker process times a few batch sizes on its own device when it
    # loads a model and keeps the fastest (worker/inference.py batch_size)
    inference_batch_size: PositiveInt | Literal["auto"] = "auto"
    # The worker's forward pass: "auto" runs it on ONNX Runtime where TensorFlow sees
    # no GPU, "onnx" always, "keras" never (models/onnx_runtime.py); the model is
    # converted when a worker loads it and checked against Keras, which it falls back to
    serving_runtime: Literal["auto", "onnx", "keras"] = "auto"
    # Forward passes a worker process runs at once. "auto": on ONNX Runtime one per CPU
    # this process may use (at most 8), each on one thread: sharing the cores with the
    # decode threads, whole batches side by side lose less than one batch split over
    # every core (worker/inference.py forward_lanes); on Keras (a GPU) 1.
    forward_lanes: PositiveInt | Literal["auto"] = "auto"
    decode_threads: PositiveInt = 2
    # DICOM display window (HU) that reproduces how the IQ-OTH/NCCD training
    # JPEGs were exported; measured in ingest/README.md ("Windowing").
    dicom_window_center: float = 150.0
    dicom_window_width: PositiveFloat = 500.0
    skip_image_types: CommaList = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SCANOGRAM")
    allowed_modalities: CommaList = ("CT",)
    min_abnormal_slices: PositiveInt = 2
    # A study's abnormal class also needs this fraction of its readable slices
    # (worker/summary.py; validated in docs/review.md), so size cannot tip it.
    min_abnormal_fraction: float = Field(0.1, ge=0, le=1)
    summary_top_slices: int = Field(5, ge=0)
    results_page_size: PositiveInt = 100
    keep_uploads: bool = False
    # What the result pages show (worker/images.py): each slice as the model saw
    # it (kept in slice packs, storage/packs.py), and Grad-CAM heat maps of the top
    # slices of each series (0: none).
    store_slice_images: bool = True
    heatmap_slices_per_series: int = Field(3, ge=0, le=50)
    heatmaps_for_images: bool = False
    # A full-resolution viewing copy of each slice for the slice viewer
    # (ingest/views.py, stored by worker/runner.py; HU for DICOM, the original bytes
    # for PNG/JPEG).
    store_slice_views: bool = True
    # Cross-request micro-batching of single-image jobs (config/image_queue.py,
    # worker/claimer.py): a worker takes at most this many at once into shared
    # forward passes (1: one at a time), gathering a burst for at most
    # MICROBATCH_WAIT_MS.
    microbatch_max_jobs: PositiveInt = 64
    microbatch_wait_ms: float = Field(10.0, ge=0, le=1000)
    # What is kept of archive member paths: "full", "redacted" or "none" (see
    # ingest/privacy.py). Unset: "redacted", and "none" for archives with no
    # DICOM header to learn identifiers from (PNG/JPEG only).
    store_source_paths: Literal["full", "redacted", "none"] | None = None
    # Also treat the StudyDate as an identifier (it is in every TCIA folder name).
    redact_study_date: bool = False

    # --- archive limits (ingest) ---
    max_archive_members: PositiveInt = 5000
    max_uncompressed_mb: PositiveInt = 4096
    max_member_mb: PositiveInt = 512
    max_compression_ratio: PositiveFloat = 200.0
    max_image_pixels: PositiveInt = 8192 * 8192

    # --- job life cycle (db/lifecycle.py, worker/sweeper.py) ---
    job_time_limit_s: PositiveInt = 3600
    max_attempts: PositiveInt = 3
    heartbeat_interval_s: PositiveFloat = 5.0
    stale_after_s: PositiveFloat = 30.0
    sweep_interval_s: PositiveFloat = 10.0
    orphan_upload_age_s: PositiveFloat = 3600.0
    retention_days: float = Field(30.0, ge=0)
    # socket timeout of the API's Redis calls: a hung Redis answers a submit 503
    # within about 2 x this + 0.5 s (config/celery.py, docs/hardening.md)
    broker_timeout_s: PositiveFloat = 1.5
    readyz_cache_s: float = Field(5.0, ge=0)

    # --- the API server (api/gunicorn_conf.py) ---
    api_host: str = "127.0.0.1"
    api_port: PositiveInt = 8000
    web_concurrency: PositiveInt = 2
    web_threads: PositiveInt = 8
    web_timeout_s: PositiveInt = 30
    # gevent: every connection is a greenlet, so stalled uploads cost no thread
    # (docs/hardening.md); gthread: WEB_THREADS threads per process, the fallback.
    web_worker_class: Literal["gevent", "gthread"] = "gevent"
    # Connections one gevent process holds at once (beyond them it stops accepting).
    web_worker_connections: PositiveInt = 1000
    # An upload that sends nothing for this long is answered 408 and closed.
    upload_idle_timeout_s: PositiveFloat = 30.0
    # GET /api/v1/jobs/<id>?wait=S holds a request until the job ends (config/notices.py):
    # at most this many seconds, and at most this many waiting requests per API process
    # (with gthread each holds a thread; beyond it a wait answers at once, like a plain poll).
    job_wait_max_s: float = Field(20.0, ge=0, le=60)
    job_waiters_per_process: int = Field(4, ge=0)

    # --- worker metrics (worker/metrics.py); 0 disables the endpoint ---
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(9101, ge=0, le=65535)

    # --- access (api/auth.py, api/app.py) ---
    # Submit requests per key (a batch of up to BATCH_MAX_FILES files is one): 10 a second.
    rate_limit_submit: str = "600/minute"
    rate_limit_read: str = "1200/minute"
    max_active_jobs_per_owner: PositiveInt = 50
    idempotency_hours: PositiveFloat = 24.0
    flower_basic_auth: str = ""
    # python -m worker.flower refuses to start without credentials unless this is
    # set, and then listens on the loopback interface only (worker/flower.py).
    # (Not FLOWER_*: Flower reads every FLOWER_ variable as one of its options.)
    allow_unauthenticated_flower: bool = False

    # --- the DICOM node (dicomnet/, docs/dicom.md) ---
    dicom_ae_title: str = Field("LUNGCT", min_length=1, max_length=16)
    dicom_host: str = "127.0.0.1"
    dicom_port: int = Field(11112, ge=1, le=65535)
    # Calling AE titles allowed to associate, "AE" or "AE@host"; unset: any caller
    # (APP_ENV=production refuses to start the node without it).
    dicom_allowed_aes: CommaList = ()
    # Owner of the jobs a caller sends, "AE=owner,..."; others: DICOM_OWNER.
    dicom_owner: str = Field("dicom", min_length=1, max_length=128)
    dicom_ae_owners: CommaList = ()
    # A study's group closes this long after its last instance and becomes a job.
    dicom_study_timeout_s: PositiveFloat = 30.0
    # Where results go by C-STORE, "name=AE@host:port,..."; every DICOM job goes to all
    # of them unless DICOM_AE_DESTINATIONS ("CALLINGAE=name|name,...") narrows it.
    dicom_destinations: CommaList = ()
    dicom_ae_destinations: CommaList = ()
    # The model of DICOM jobs (unset: DEFAULT_MODEL); its series rules pick the series.
    dicom_model: str = ""
    # Also send the top slices' heat maps as Secondary Capture images (viewers without SR).
    dicom_heatmap_images: bool = False
    # Outbox: attempts per export, waits of DICOM_RETRY_BASE_S * 2**n capped at DICOM_RETRY_MAX_S.
    dicom_max_attempts: PositiveInt = 6
    dicom_retry_base_s: PositiveFloat = 5.0
    dicom_retry_max_s: PositiveFloat = 600.0
    dicom_timeout_s: PositiveFloat = 10.0
    dicom_poll_interval_s: PositiveFloat = 1.0
    # Answer A700 (out of resources) beyond these.
    dicom_max_study_instances: PositiveInt = 5000
    dicom_min_free_mb: int = Field(512, ge=0)

    @field_validator("storage_dir", mode="before")
    @classmethod
    def _storage_path(cls, value: str | Path) -> Path:
        return _project_path(value)

    @field_validator("storage_url", mode="before")
    @classmethod
    def _storage_url(cls, value: object) -> object:
        """``s3://bucket[/prefix]`` or a folder (made absolute); other schemes are refused."""
        if not isinstance(value, str | Path) or not str(value).strip():
            return value
        text = str(value).strip()
        if text.startswith("s3://"):
            if not text[len("s3://") :].split("/", 1)[0]:
                raise ValueError("STORAGE_URL s3://... needs a bucket: s3://bucket/prefix")
            return text
        if "://" in text:
            raise ValueError("STORAGE_URL must be s3://bucket/prefix or a folder path")
        return str(_project_path(text))

    @field_validator("models_dirs", mode="before")
    @classmethod
    def _model_paths(cls, value: object) -> object:
        parts = _split(value, os.pathsep)
        return tuple(_project_path(p) for p in parts) if isinstance(parts, tuple | list) else parts

    @field_validator("store_source_paths", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "dicom_allowed_aes",
        "dicom_ae_owners",
        "dicom_destinations",
        "dicom_ae_destinations",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return _split(value, ",")

    @field_validator("skip_image_types", "allowed_modalities", mode="before")
    @classmethod
    def _upper_list(cls, value: object) -> object:
        parts = _split(value, ",")
        return tuple(str(p).upper() for p in parts) if isinstance(parts, tuple | list) else parts

    @model_validator(mode="after")
    def _no_placeholders_in_production(self) -> Settings:
        """A production deployment must not run with a guessable password."""
        if self.app_env != "production":
            return self
        problems = []
        url = make_url(self.database_url)
        if url.get_backend_name() != "sqlite" and (url.password or "") in PLACEHOLDER_SECRETS:
            problems.append("DATABASE_URL has no real password")
        flower_password = self.flower_basic_auth.partition(":")[2]
        if self.flower_basic_auth and flower_password in PLACEHOLDER_SECRETS:
            problems.append("FLOWER_BASIC_AUTH uses a placeholder password")
        if problems:
            raise ValueError("APP_ENV=production refuses to start: " + "; ".join(problems))
        return self

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * MB

    @property
    def limits(self) -> ArchiveLimits:
        """The archive limits in the form ingest takes them."""
        return ArchiveLimits(
            max_members=self.max_archive_members,
            max_uncompressed_bytes=self.max_uncompressed_mb * MB,
            max_member_bytes=self.max_member_mb * MB,
            max_compression_ratio=self.max_compression_ratio,
            max_image_pixels=self.max_image_pixels,
            allowed_modalities=self.allowed_modalities,
            skip_image_types=self.skip_image_types,
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
