"""The ``ready`` line of the Procfile: says where everything is once the service answers.

Waits until ``/readyz`` answers 200 (a worker consumes the queue, its model loaded), prints the
URLs, then waits until honcho stops it (a process of the Procfile that exits
would make honcho stop all the others).
"""

from __future__ import annotations

import os
import signal
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as reply:
            return bool(reply.status == 200)
    except (OSError, ValueError):
        return False


def main() -> int:
    from config import get_settings

    settings = get_settings()
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "", "::") else settings.api_host
    api = f"http://{host}:{settings.api_port}"
    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    while not ready(api):
        if signal.sigtimedwait(stops, 1.0) is not None:
            return 0
    flower = os.environ.get("FLOWER_PORT", "").strip() or "5555"
    print(
        "\nlungct is running\n"
        f"  Web UI and API  {api}/   (API docs {api}/docs, OpenAPI {api}/openapi.json)\n"
        f"  Flower          http://127.0.0.1:{flower}/   (credentials printed above)\n"
        f"  DICOM listener  AE title {settings.dicom_ae_title} at {settings.dicom_host}:"
        f"{settings.dicom_port} (C-ECHO, C-STORE; docs/dicom.md)\n"
        "  API key         printed above on the first start\n"
        "Stop with Ctrl-C.\n",
        flush=True,
    )
    signal.sigwait(stops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
