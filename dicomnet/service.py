"""The node's process: the listener, the housekeeping loop, one sender per destination.

Housekeeping, every DICOM_POLL_INTERVAL_S: close the groups that went quiet
(dicomnet/groups.py), build the SR of ended jobs (dicomnet/results.py), forget
groups whose job was deleted. Each destination's sender sends its due outbox
entries (dicomnet/outbox.py) in its own thread, so one slow or unreachable
destination never holds up another, nor the listener.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial

from pynetdicom.transport import ThreadedAssociationServer

from config import Settings
from dicomnet import groups, listener, outbox, peers, results

log = logging.getLogger(__name__)


class Node:
    """A running node; :meth:`stop` ends it (the listener first, then the loops)."""

    def __init__(self, settings: Settings) -> None:
        peers.check(settings)
        try:
            groups.model_card(settings)
        except KeyError as exc:
            raise ValueError(f"DICOM_MODEL/DEFAULT_MODEL: no such model installed ({exc})") from exc
        self.settings = settings
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.server: ThreadedAssociationServer | None = None

    def start(self) -> Node:
        s = self.settings
        outbox.recover(s)
        self.server = listener.start(s)
        log.info(
            "dicomnet: AE title %s listening on %s:%d (study timeout %gs, destinations: %s)",
            s.dicom_ae_title,
            s.dicom_host,
            s.dicom_port,
            s.dicom_study_timeout_s,
            ", ".join(peers.destinations(s)) or "none",
        )
        self._loop("dicom-housekeeping", self._housekeeping)
        for dest in peers.destinations(s).values():
            self._loop(f"dicom-send-{dest.name}", partial(outbox.send_due, s, dest))
        return self

    def _housekeeping(self) -> None:
        groups.close_due(self.settings)
        results.build_due(self.settings)
        groups.forget_deleted(self.settings)

    def _loop(self, name: str, step: Callable[[], object]) -> None:
        def run() -> None:
            while not self.stopping.is_set():
                try:
                    step()
                except Exception:  # the database away: log, and try again next round
                    log.exception("dicomnet: %s failed; retrying", name)
                self.stopping.wait(self.settings.dicom_poll_interval_s)

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def wait(self) -> None:
        self.stopping.wait()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=self.settings.dicom_timeout_s * 2)
