"""Real DICOM peers for the node's tests (pynetdicom): a sender and a storescp destination."""

from __future__ import annotations

import io
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from bench.e2e import spawn, stop
from dicomnet.send import VERIFICATION as Verification


@dataclass
class Destination:
    """A storescp on a loopback port: every object it receives, as Part 10 bytes."""

    ae_title: str
    port: int
    received: list[bytes] = field(default_factory=list)

    def datasets(self) -> list[Dataset]:
        return [dcmread(io.BytesIO(b)) for b in list(self.received)]

    def of_study(self, study_uid: str) -> list[bytes]:
        """What arrived for one study (a restarted node also sends results it owed)."""
        return [
            b for b, ds in zip(list(self.received), self.datasets(), strict=True)
            if ds.StudyInstanceUID == study_uid
        ]  # fmt: skip


@contextmanager
def destination(ae_title: str, port: int) -> Iterator[Destination]:
    """A storage SCP that accepts everything and keeps what it got."""
    dest = Destination(ae_title, port)

    def on_store(event: evt.Event) -> int:
        dest.received.append(event.encoded_dataset(include_meta=True))
        return 0x0000

    ae = AE(ae_title=ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        yield dest
    finally:
        server.shutdown()  # type: ignore[union-attr]


PEER_TIMEOUT_S = 30
"""The test peers' DIMSE/ACSE/network timeouts: they check answers, not how fast they come,
on a 2-core machine that the whole suite in parallel (and mypy) keeps busy."""


def associate(
    port: int,
    calling: str = "STORESCU",
    called: str = "LUNGCT",
    contexts: Sequence[str] = (),
    nodelay: bool = False,
) -> Any:
    """An association (or the refused attempt) with the node on ``port``.

    ``nodelay`` switches Nagle's algorithm off on the sender's socket: with it on
    (pynetdicom's and dcmtk's default) every C-STORE waits for the receiver's
    delayed ACK (about 40 ms on Linux), which caps any receiver at ~20/s.
    """
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = PEER_TIMEOUT_S
    for uid in {*contexts, Verification}:
        ae.add_requested_context(uid)
    handlers: list[Any] | None = [(evt.EVT_CONN_OPEN, _no_delay)] if nodelay else None
    return ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=handlers)


def _no_delay(event: evt.Event) -> None:
    wrapped = event.assoc.dul.socket
    if wrapped is not None and wrapped.socket is not None:
        wrapped.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def send(
    port: int, datasets: Sequence[Dataset], calling: str = "STORESCU", nodelay: bool = False
) -> list[int]:
    """C-STORE ``datasets`` over one association; the statuses the node answered."""
    contexts = sorted({str(d.SOPClassUID) for d in datasets})
    assoc = associate(port, calling, contexts=contexts, nodelay=nodelay)
    assert assoc.is_established, "the node refused the association"
    try:
        return [_stored(assoc, d, n) for n, d in enumerate(datasets)]
    finally:
        assoc.release()


def _stored(assoc: Any, ds: Dataset, n: int) -> int:
    """The node's status for one C-STORE; a clear failure when no answer came."""
    start = time.monotonic()
    status = assoc.send_c_store(ds)
    if "Status" not in status:
        waited = time.monotonic() - start
        raise AssertionError(f"no answer to C-STORE #{n} after {waited:.1f}s (see the node's log)")
    return int(status.Status)


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.1) -> Any:
    """``check()``'s first truthy answer; fails the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = check()
        if answer:
            return answer
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_node(env: dict[str, str], log: Path) -> Any:
    """``python -m dicomnet`` as a subprocess; returns once it listens."""
    proc = spawn([sys.executable, "-m", "dicomnet"], {**os.environ, **env}, log)
    port = int(env["DICOM_PORT"])
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 30, "the node to listen")
    except AssertionError:
        stop(proc)
        raise
    if proc.poll() is not None:
        raise RuntimeError(f"dicomnet exited:\n{log.read_text()[-3000:]}")
    return proc
