"""The node's process: the listener, the housekeeping loop, one sender per destination.

Housekeeping, every DICOM_POLL_INTERVAL_S: close the groups that went quiet
(dicomnet/groups.py), build the SR of ended jobs (dicomnet/results.py), forget
groups whose job was deleted. A job-ended notice (config/notices.py) wakes it
at once; the poll stays the source of truth (a lost notice costs one interval).
Each destination's sender sends its due outbox entries (dicomnet/outbox.py) in
its own thread, so one slow or unreachable destination never holds up another,
nor the listener.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial

from pynetdicom.transport import ThreadedAssociationServer
from redis import RedisError

from config import Settings, notices
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
        self.wake = threading.Event()  # a job ended: look for SRs to build now
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
        self._loop("dicom-housekeeping", self._housekeeping, self.wake)
        # not joined by stop(): it holds nothing, and each read waits up to a second
        self._start("dicom-notices", self._listen_for_ended_jobs, joined=False)
        for dest in peers.destinations(s).values():
            self._loop(f"dicom-send-{dest.name}", partial(outbox.send_due, s, dest))
        return self

    def _housekeeping(self) -> None:
        groups.close_due(self.settings)
        results.build_due(self.settings)
        groups.forget_deleted(self.settings)

    def _loop(
        self, name: str, step: Callable[[], object], wake: threading.Event | None = None
    ) -> None:
        """Run ``step`` every DICOM_POLL_INTERVAL_S (sooner when ``wake`` is set)."""

        def run() -> None:
            while not self.stopping.is_set():
                try:
                    step()
                except Exception:  # the database away: log, and try again next round
                    log.exception("dicomnet: %s failed; retrying", name)
                (wake or self.stopping).wait(self.settings.dicom_poll_interval_s)
                if wake is not None:
                    wake.clear()

        self._start(name, run)

    def _start(self, name: str, target: Callable[[], None], joined: bool = True) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        if joined:
            self.threads.append(thread)

    def _listen_for_ended_jobs(self) -> None:
        """Set :attr:`wake` on every job-ended notice of our queue (best effort)."""
        pattern = notices.channel(self.settings, "*")
        while not self.stopping.is_set():
            try:
                pubsub = notices.redis_client(self.settings).pubsub()
                pubsub.psubscribe(pattern)
                while not self.stopping.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "pmessage":
                        self.wake.set()
            except RedisError as exc:  # Redis away: the poll still finds every job
                log.debug("dicomnet: no job-ended notices (%s)", type(exc).__name__)
                self.stopping.wait(5.0)

    def wait(self) -> None:
        self.stopping.wait()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
        self.stopping.set()
        self.wake.set()
        for thread in self.threads:
            thread.join(timeout=self.settings.dicom_timeout_s * 2)
