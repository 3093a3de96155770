"""Level 2: a real PACS (Orthanc) sends the real study to the node and gets the SR back.

Skipped unless Debian's ``Orthanc``, dcmtk's ``storescu``/``echoscu`` and the
shared real study (DATA_DIR/lung-pet-ct-dx) are there; ``.ci/run`` installs the
packages. Orthanc runs in the foreground with its own configuration: DICOM port
14242, HTTP 18042, storage in a temporary folder, our node in DicomModalities;
it is stopped by its PID. Every wait is bounded.

1. dcmtk's ``storescu`` loads the study into Orthanc;
2. Orthanc forwards it to the node (``POST /modalities/lungct/store``);
3. the SR comes back into Orthanc, in the same Orthanc study (so its patient
   module matched), found by a query for Modality SR;
4. dcmtk's ``echoscu`` gets an answer from the node.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import dcmread

from bench.e2e import spawn, stop
from tests.conftest import DATA_DIR, Stack, free_port
from tests.dicom_peers import port_open, start_node, wait_until

log = logging.getLogger(__name__)
ORTHANC = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin") or ""
STORESCU, ECHOSCU = shutil.which("storescu") or "", shutil.which("echoscu") or ""
STUDY = DATA_DIR / "lung-pet-ct-dx" / "Lung_Dx-A0001" / "04-04-2007-NA-Chest-07990"
DICOM_PORT, HTTP_PORT = 14242, 18042
REST = f"http://127.0.0.1:{HTTP_PORT}"
STUDY_TIMEOUT_S = 3.0

pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("pacs"),  # fixed ports: one xdist worker runs both backends
    pytest.mark.skipif(not (ORTHANC and STORESCU and ECHOSCU), reason="orthanc/dcmtk absent"),
    pytest.mark.skipif(not STUDY.is_dir(), reason=f"real study not found under {DATA_DIR}"),
]


def orthanc_config(tmp: Path, node_port: int, name: str) -> dict[str, Any]:
    """The lines a PACS administrator adds, plus test-only storage and ports."""
    return {
        "Name": name,
        "StorageDirectory": str(tmp / "storage"),
        "IndexDirectory": str(tmp / "storage"),
        "DicomAet": "ORTHANC",
        "DicomPort": DICOM_PORT,
        "HttpPort": HTTP_PORT,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True,
        "DicomModalities": {"lungct": ["LUNGCT", "127.0.0.1", node_port]},
        "Plugins": [],
    }


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[tuple[Any, int]]:
    """Orthanc in the foreground on 14242/18042; yields (process, the node's port).

    The ports are fixed, so first wait (bounded) until nothing else holds them,
    and then make sure the Orthanc that answers is this one (its Name).
    """
    wait_until(lambda: _ports_free(), 120, f"ports {DICOM_PORT}/{HTTP_PORT} to be free", 1)
    node_port, name = free_port(), f"lungct-level2-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(tmp_path, node_port, name), indent=2))
    proc = spawn([str(ORTHANC), str(config)], {"PATH": "/usr/bin:/bin"}, tmp_path / "orthanc.log")
    try:
        wait_until(lambda: _up(name) or proc.poll() is not None, 30, "Orthanc's REST API")
        assert proc.poll() is None, (tmp_path / "orthanc.log").read_text()[-3000:]
        yield proc, node_port
    finally:
        stop(proc)  # by its PID (its own process group)


def _up(name: str) -> bool:
    try:
        answer = requests.get(f"{REST}/system", timeout=1)
    except requests.ConnectionError:
        return False
    return answer.ok and answer.json().get("Name") == name


def _ports_free() -> bool:
    return not (port_open(DICOM_PORT) or port_open(HTTP_PORT))


def _find(level: str, query: dict[str, str]) -> list[str]:
    body: dict[str, Any] = {"Level": level, "Query": query}
    return list(requests.post(f"{REST}/tools/find", json=body, timeout=10).json())


def test_orthanc_sends_the_study_and_gets_the_sr_back(
    orthanc: tuple[Any, int], stack: Stack, tmp_path: Path, record_property: Any
) -> None:
    _proc, node_port = orthanc
    env = {
        **stack.env,
        "DICOM_PORT": str(node_port),
        "DICOM_ALLOWED_AES": "ORTHANC@127.0.0.1,ECHOSCU",
        "DICOM_DESTINATIONS": f"orthanc=ORTHANC@127.0.0.1:{DICOM_PORT}",
        "DICOM_STUDY_TIMEOUT_S": str(STUDY_TIMEOUT_S),
        "DICOM_POLL_INTERVAL_S": "0.5",
        "DICOM_MIN_FREE_MB": "0",
    }
    node = start_node(env, tmp_path / "node.log")
    try:
        load = [STORESCU, "-aet", "STORESCU", "-aec", "ORTHANC", "+sd", "+r", "-to", "30"]
        load += ["127.0.0.1", str(DICOM_PORT), str(STUDY / "2.000000-5mm-40805")]
        load += [str(STUDY / "3.000000-5mm-41315")]
        subprocess.run(load, check=True, timeout=120, capture_output=True)
        # by its UID: the node may also deliver SRs an earlier node owed (a shared database)
        first = next((STUDY / "2.000000-5mm-40805").glob("*.dcm"))
        study_uid = str(dcmread(first, stop_before_pixels=True).StudyInstanceUID)
        [study_id] = _find("Study", {"StudyInstanceUID": study_uid})
        assert len(requests.get(f"{REST}/studies/{study_id}/instances", timeout=10).json()) == 128

        forward: dict[str, Any] = {"Resources": [study_id], "Synchronous": True}
        answer = requests.post(f"{REST}/modalities/lungct/store", json=forward, timeout=120)
        assert answer.ok, answer.text
        sent_at = time.monotonic()

        srs = wait_until(
            lambda: _find("Series", {"Modality": "SR", "StudyInstanceUID": study_uid}),
            240,
            "the SR in Orthanc",
            every_s=0.5,
        )
        elapsed = time.monotonic() - sent_at
        series = requests.get(f"{REST}/series/{srs[0]}", timeout=10).json()
        assert series["ParentStudy"] == study_id  # the same study, the same patient
        [instance] = series["Instances"]
        tags = requests.get(f"{REST}/instances/{instance}/simplified-tags", timeout=10).json()
        assert tags["VerificationFlag"] == "UNVERIFIED"
        assert tags["StudyInstanceUID"] == study_uid
        record_property("last_instance_to_sr_s", round(elapsed, 2))
        log.info(
            "last instance to SR in Orthanc: %.1fs (study timeout %gs)", elapsed, STUDY_TIMEOUT_S
        )

        echo = [ECHOSCU, "-aet", "ECHOSCU", "-aec", "LUNGCT", "127.0.0.1", str(node_port)]
        assert subprocess.run(echo, timeout=30, capture_output=True).returncode == 0
        wrong = [ECHOSCU, "-aet", "ECHOSCU", "-aec", "NOTUS", "127.0.0.1", str(node_port)]
        assert subprocess.run(wrong, timeout=30, capture_output=True).returncode != 0
    finally:
        stop(node)
