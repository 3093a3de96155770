"""Who may send, who owns what they send, and where results go: parsed from the settings.

Formats (comma-separated lists, docs/dicom.md "Settings"):
``DICOM_ALLOWED_AES``     ``AE`` or ``AE@host``
``DICOM_AE_OWNERS``       ``AE=owner``
``DICOM_DESTINATIONS``    ``name=AE@host:port``
``DICOM_AE_DESTINATIONS`` ``AE=name|name``
A malformed entry raises ValueError naming it, so the node refuses to start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from config import Settings

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class Destination:
    """A DICOM peer that receives results by C-STORE."""

    name: str
    ae_title: str
    host: str
    port: int


def _ae(text: str, what: str) -> str:
    ae = text.strip()
    if not 0 < len(ae) <= 16 or "\\" in ae:
        raise ValueError(f"{what}: {text!r} is not an AE title (1 to 16 characters)")
    return ae


def _pairs(entries: tuple[str, ...], setting: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{setting}: {entry!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def allowed_callers(settings: Settings) -> list[tuple[str, str | None]]:
    """(AE title, host or None) pairs; empty: any caller."""
    out = []
    for entry in settings.dicom_allowed_aes:
        ae, _, host = entry.partition("@")
        out.append((_ae(ae, "DICOM_ALLOWED_AES"), host.strip() or None))
    return out


def caller_allowed(callers: list[tuple[str, str | None]], ae: str, host: str) -> bool:
    """Whether a calling AE title from ``host`` is on the allow-list (empty list: yes)."""
    if not callers:
        return True
    return any(ae == title and (want is None or want == host) for title, want in callers)


def owner_for(settings: Settings, calling_ae: str) -> str:
    """The owner of jobs sent by ``calling_ae``: its DICOM_AE_OWNERS entry, else DICOM_OWNER."""
    return _pairs(settings.dicom_ae_owners, "DICOM_AE_OWNERS").get(calling_ae, settings.dicom_owner)


def destinations(settings: Settings) -> dict[str, Destination]:
    """DICOM_DESTINATIONS by name, in their order."""
    out: dict[str, Destination] = {}
    for name, target in _pairs(settings.dicom_destinations, "DICOM_DESTINATIONS").items():
        match = re.fullmatch(r"([^@]{1,16})@([^:@]+):(\d{1,5})", target)
        if not _NAME.fullmatch(name) or match is None or not 0 < int(match[3]) < 65536:
            raise ValueError(f"DICOM_DESTINATIONS: {name}={target!r} is not name=AE@host:port")
        out[name] = Destination(name, _ae(match[1], "DICOM_DESTINATIONS"), match[2], int(match[3]))
    return out


def destinations_for(settings: Settings, calling_ae: str) -> list[str]:
    """Names of the destinations that get the results of ``calling_ae``'s studies.

    Every destination, unless DICOM_AE_DESTINATIONS names some for this caller.
    """
    known = destinations(settings)
    narrowed = _pairs(settings.dicom_ae_destinations, "DICOM_AE_DESTINATIONS").get(calling_ae)
    if narrowed is None:
        return list(known)
    names = [n.strip() for n in narrowed.split("|") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"DICOM_AE_DESTINATIONS: unknown destination(s) {unknown}")
    return names


def check(settings: Settings) -> None:
    """Refuse to start on malformed settings, or in production without an allow-list."""
    if settings.app_env == "production" and not settings.dicom_allowed_aes:
        raise ValueError(
            "APP_ENV=production refuses to start the DICOM node without DICOM_ALLOWED_AES"
        )
    allowed_callers(settings)
    destinations(settings)
    _pairs(settings.dicom_ae_owners, "DICOM_AE_OWNERS")
    for ae in _pairs(settings.dicom_ae_destinations, "DICOM_AE_DESTINATIONS"):
        destinations_for(settings, ae)
    _ae(settings.dicom_ae_title, "DICOM_AE_TITLE")
