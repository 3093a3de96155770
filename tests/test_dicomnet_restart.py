"""The DICOM node killed mid-study and restarted: the study still becomes one job.

A module of its own: while it runs, no other node may share the stack's database
(tests/test_dicomnet.py keeps one node per module, whose 1.5 s study timeout
would close the half-received study before this node's restart).
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Stack, authed, new_key
from tests.dicom_peers import send
from tests.test_dicomnet import OWNER, ended_job, job_of, running_node, study


def test_listener_killed_mid_study_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    """Killed and restarted within the study timeout: one job with every instance."""
    datasets = study(n_axial=6)[:6]
    study_uid = datasets[0].StudyInstanceUID
    with running_node(stack, tmp_path, DICOM_STUDY_TIMEOUT_S="10") as node:
        assert send(node.port, datasets[:3]) == [0] * 3
        node.proc.kill()  # SIGKILL: no goodbye
        node.proc.wait()
        node.restart("node-restarted")
        assert send(node.port, datasets[3:]) == [0] * 3
        _check_one_job(stack, study_uid)


def _check_one_job(stack: Stack, study_uid: str) -> None:
    client = authed(stack.app(), new_key(stack.env["DATABASE_URL"], OWNER))
    job = ended_job(stack, client, study_uid)
    assert job["status"] == "succeeded", job
    assert job["progress"]["total"] == 6  # one job, every instance
    assert job_of(stack, study_uid, version=2) is None
