"""Settings of the DICOM node: allow-list, owners, destinations, production check."""

from __future__ import annotations

import pytest

from config import Settings
from dicomnet import peers


def settings(**values: str) -> Settings:
    """Settings with an SQLite URL, whatever the environment (production checks it)."""
    values.setdefault("database_url", "sqlite:///unused.db")
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_allow_list_with_and_without_host() -> None:
    s = settings(dicom_allowed_aes="PACS@10.0.0.5, MODALITY")
    callers = peers.allowed_callers(s)
    assert callers == [("PACS", "10.0.0.5"), ("MODALITY", None)]
    assert peers.caller_allowed(callers, "PACS", "10.0.0.5")
    assert not peers.caller_allowed(callers, "PACS", "10.0.0.6")
    assert peers.caller_allowed(callers, "MODALITY", "anywhere")
    assert not peers.caller_allowed(callers, "OTHER", "10.0.0.5")
    assert peers.caller_allowed([], "ANYONE", "anywhere")  # unset: any caller


def test_owners_and_destinations_per_calling_ae() -> None:
    s = settings(
        dicom_owner="imaging",
        dicom_ae_owners="PACS=radiology",
        dicom_destinations="main=ORTHANC@pacs.local:4242,archive=ARCH@10.0.0.9:104",
        dicom_ae_destinations="CT2=archive",
    )
    assert peers.owner_for(s, "PACS") == "radiology"
    assert peers.owner_for(s, "CT2") == "imaging"
    dest = peers.destinations(s)["main"]
    assert (dest.ae_title, dest.host, dest.port) == ("ORTHANC", "pacs.local", 4242)
    assert peers.destinations_for(s, "PACS") == ["main", "archive"]  # every one by default
    assert peers.destinations_for(s, "CT2") == ["archive"]


@pytest.mark.parametrize(
    "values",
    [
        {"dicom_destinations": "main=ORTHANC@host"},
        {"dicom_destinations": "main=WAY_TOO_LONG_AE_TITLE@h:1"},
        {"dicom_ae_owners": "PACS"},
        {"dicom_ae_destinations": "PACS=nowhere"},
        {"app_env": "production"},
    ],
)
def test_the_node_refuses_to_start_on_bad_settings(values: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        peers.check(settings(**values))


def test_production_starts_with_an_allow_list() -> None:
    peers.check(settings(app_env="production", dicom_allowed_aes="PACS"))
