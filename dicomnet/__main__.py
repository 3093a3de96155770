"""``python -m dicomnet``: run the DICOM node until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from config import Settings
from dicomnet.service import Node


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # pynetdicom logs every association at INFO and dumps datasets at DEBUG
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    try:
        node = Node(Settings())
    except ValueError as exc:
        logging.getLogger("dicomnet").error("%s", exc)
        return 2
    node.start()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("dicomnet").info("dicomnet: stopping (signal %d)", signum)
        node.stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    node.wait()
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
