"""One typed settings object, read from environment variables.

Every process (API, worker, migrations, scripts) reads its configuration here,
so a variable means the same thing everywhere. Defaults are safe for a local,
single-machine run: an SQLite file and the storage folder under ``var/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = PROJECT_ROOT / "var"
SOURCE_PATH_MODES = ("full", "redacted", "none")


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _int(name: str, default: int) -> int:
    return int(_env(name, str(default)))


def _float(name: str, default: float) -> float:
    return float(_env(name, str(default)))


def _path(value: str) -> Path:
    """Relative paths are taken from the project root, so every process agrees."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def _paths(name: str, default: str) -> tuple[Path, ...]:
    return tuple(_path(p) for p in _env(name, default).split(os.pathsep) if p)


@dataclass(frozen=True)
class ArchiveLimits:
    """Limits applied to untrusted uploads before and while they are read."""

    max_members: int = 5000
    max_uncompressed_bytes: int = 4 * 1024**3
    max_member_bytes: int = 512 * 1024**2
    max_compression_ratio: float = 200.0
    max_image_pixels: int = 8192 * 8192

    @classmethod
    def from_env(cls) -> ArchiveLimits:
        return cls(
            max_members=_int("MAX_ARCHIVE_MEMBERS", cls.max_members),
            max_uncompressed_bytes=_int(
                "MAX_UNCOMPRESSED_MB", cls.max_uncompressed_bytes // 1024**2
            )
            * 1024**2,
            max_member_bytes=_int("MAX_MEMBER_MB", cls.max_member_bytes // 1024**2) * 1024**2,
            max_compression_ratio=_float("MAX_COMPRESSION_RATIO", cls.max_compression_ratio),
            max_image_pixels=_int("MAX_IMAGE_PIXELS", cls.max_image_pixels),
        )


@dataclass(frozen=True)
class Settings:
    """Configuration of one process; build it with :func:`get_settings`."""

    database_url: str = f"sqlite:///{VAR_DIR / 'lungct.db'}"
    redis_url: str = "redis://127.0.0.1:6379/0"
    storage_dir: Path = VAR_DIR / "uploads"
    models_dirs: tuple[Path, ...] = (PROJECT_ROOT / "models" / "store", VAR_DIR / "models")
    default_model: str = "lungct-cnn6"
    max_upload_bytes: int = 1024 * 1024**2
    batch_size: int = 64
    decode_threads: int = 2
    # DICOM display window (HU) that reproduces how the IQ-OTH/NCCD training
    # JPEGs were exported; measured in ingest/README.md ("Windowing").
    window_center: float = 150.0
    window_width: float = 500.0
    skip_series_types: tuple[str, ...] = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SCANOGRAM")
    allowed_modalities: tuple[str, ...] = ("CT",)
    min_abnormal_slices: int = 2
    top_slices: int = 5
    results_page_size: int = 100
    queue_name: str = "inference"
    keep_uploads: bool = False
    job_time_limit_s: int = 3600
    # What is kept of archive member paths: "full", "redacted" or "none" (see
    # ingest/privacy.py). None (unset): "redacted", and "none" for archives with no
    # DICOM header to learn identifiers from (PNG/JPEG only).
    store_source_paths: str | None = None
    # Also treat the StudyDate as an identifier (it is in every TCIA folder name).
    redact_study_date: bool = False
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)

    def __post_init__(self) -> None:
        """Refuse values that would silently break jobs (e.g. a batch size of 0)."""
        positive = {
            "INFERENCE_BATCH_SIZE": self.batch_size,
            "DECODE_THREADS": self.decode_threads,
            "MAX_UPLOAD_MB": self.max_upload_bytes,
            "DICOM_WINDOW_WIDTH": self.window_width,
            "MIN_ABNORMAL_SLICES": self.min_abnormal_slices,
            "RESULTS_PAGE_SIZE": self.results_page_size,
            "JOB_TIME_LIMIT_S": self.job_time_limit_s,
        }
        bad = [f"{k}={v}" for k, v in positive.items() if v <= 0]
        if bad:
            raise ValueError(f"settings must be positive: {', '.join(bad)}")
        if self.store_source_paths not in (None, *SOURCE_PATH_MODES):
            raise ValueError(
                f"STORE_SOURCE_PATHS={self.store_source_paths!r}; "
                f"use one of {', '.join(SOURCE_PATH_MODES)} (or leave it unset)"
            )

    @classmethod
    def from_env(cls) -> Settings:
        d = cls()
        return cls(
            database_url=_env("DATABASE_URL", d.database_url),
            redis_url=_env("REDIS_URL", d.redis_url),
            storage_dir=_path(_env("STORAGE_DIR", str(d.storage_dir))),
            models_dirs=_paths("MODELS_DIRS", os.pathsep.join(map(str, d.models_dirs))),
            default_model=_env("DEFAULT_MODEL", d.default_model),
            max_upload_bytes=_int("MAX_UPLOAD_MB", d.max_upload_bytes // 1024**2) * 1024**2,
            batch_size=_int("INFERENCE_BATCH_SIZE", d.batch_size),
            decode_threads=_int("DECODE_THREADS", d.decode_threads),
            window_center=_float("DICOM_WINDOW_CENTER", d.window_center),
            window_width=_float("DICOM_WINDOW_WIDTH", d.window_width),
            skip_series_types=tuple(
                s.strip().upper()
                for s in _env("SKIP_IMAGE_TYPES", ",".join(d.skip_series_types)).split(",")
                if s.strip()
            ),
            allowed_modalities=tuple(
                s.strip().upper()
                for s in _env("ALLOWED_MODALITIES", ",".join(d.allowed_modalities)).split(",")
                if s.strip()
            ),
            min_abnormal_slices=_int("MIN_ABNORMAL_SLICES", d.min_abnormal_slices),
            top_slices=_int("SUMMARY_TOP_SLICES", d.top_slices),
            results_page_size=_int("RESULTS_PAGE_SIZE", d.results_page_size),
            queue_name=_env("CELERY_QUEUE", d.queue_name),
            keep_uploads=_env("KEEP_UPLOADS", "0").lower() in ("1", "true", "yes"),
            job_time_limit_s=_int("JOB_TIME_LIMIT_S", d.job_time_limit_s),
            store_source_paths=_env("STORE_SOURCE_PATHS", "").lower() or None,
            redact_study_date=_env("REDACT_STUDY_DATE", "0").lower() in ("1", "true", "yes"),
            limits=ArchiveLimits.from_env(),
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings.from_env()
