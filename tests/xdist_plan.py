"""How ``make test`` deals the suite out to pytest-xdist workers: whole modules, slowest first.

``--dist loadfile`` (this scheduler, see ``pytest_xdist_make_scheduler`` in
tests/conftest.py) sends each test module to one worker as a whole:

- module fixtures (Flower, a served app, the fault scenarios' pool, a Chromium
  page) are set up once, as in a serial run, not once per worker;
- tests/test_faults.py (one pool of scenarios for the module) and
  tests/test_pacs.py (Orthanc's fixed ports) must stay on one worker. Their
  ``xdist_group`` marks would say so under ``--dist loadgroup``, but loadgroup
  does not group under pytest 9.2 (pytest-xdist issue 1386: it renames node
  IDs, which pytest 9.2 no longer reads); whole modules hold either way.

A module is one unit of work, so the order matters: a long module dealt out
last would run alone at the end. :data:`SLOWEST_FIRST` lists the modules that
take longest (``--durations``, summed per module), longest first; the others
follow in xdist's order (most tests first).
"""

from __future__ import annotations

from xdist.scheduler import LoadFileScheduling
from xdist.workermanage import WorkerController

# Seconds per module (setup + call + teardown), three workers on the 2-core VM, 2026-12.
SLOWEST_FIRST = (
    "tests/test_faults.py",  # ~90: waiting for its scenarios, FAULTS_PARALLEL at a time
    "tests/test_dicomnet.py",  # ~45
    "tests/test_models_cv.py",  # ~20 of CPU, more when it shares the cores
    "tests/test_browser.py",  # ~35
    "tests/test_pacs.py",  # ~35
    "tests/test_s3_pipeline.py",  # ~30
    "tests/test_dicomnet_restart.py",  # ~30: a 10 s study timeout per backend
    "tests/test_dicomnet_api.py",  # ~25
    "tests/test_microbatch.py",  # ~25
    "tests/test_privacy_battery.py",  # ~25
    "tests/test_realdata.py",  # ~20
    "tests/test_cli.py",  # ~15
    "tests/test_ingest_realdata.py",  # ~14
    "tests/test_models_import.py",  # ~12
)


def rank(module: str) -> int:
    """Position of ``module`` in :data:`SLOWEST_FIRST`; any other module comes after them."""
    return SLOWEST_FIRST.index(module) if module in SLOWEST_FIRST else len(SLOWEST_FIRST)


class SlowestModuleFirst(LoadFileScheduling):
    """``--dist loadfile`` that always deals out the slowest module still waiting."""

    def _assign_work_unit(self, node: WorkerController) -> None:
        # sorted() is stable: modules of equal rank keep xdist's order
        first = sorted(self.workqueue, key=rank)[0]
        self.workqueue.move_to_end(first, last=False)
        super()._assign_work_unit(node)
