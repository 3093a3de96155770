"""What ``make run`` does before honcho starts the processes of the Procfile.

Creates the ``var/`` folders, applies the database migrations (waiting for
the database), creates the ``local`` owner's API key on the first start (and
prints it, only then), and writes ``var/run.env`` for honcho: the Flower
credentials, generated for this run unless FLOWER_PASSWORD is set. Flower
reads them from FLOWER_BASIC_AUTH, so the password is never on a command line.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RUN_ENV = ROOT / "var" / "run.env"
LOCAL_OWNER = "local"


def main() -> int:
    from config import get_settings
    from storage import open_storage

    settings = get_settings()
    (ROOT / "var").mkdir(exist_ok=True)
    open_storage(settings).prepare()
    subprocess.run([sys.executable, "-m", "db.migrate"], cwd=ROOT, check=True)
    key = _local_key()
    user = os.environ.get("FLOWER_USER", "").strip() or "admin"
    password = os.environ.get("FLOWER_PASSWORD", "").strip() or secrets.token_urlsafe(18)
    RUN_ENV.write_text(f"FLOWER_BASIC_AUTH={user}:{password}\nPYTHONUNBUFFERED=1\n")
    RUN_ENV.chmod(0o600)
    generated = "generated for this run" if "FLOWER_PASSWORD" not in os.environ else "yours"
    print(f"Flower credentials: user {user}, password {password} ({generated})")
    if key:
        more = "more keys: .venv/bin/python -m api.keys create NAME"
        print(f"API key for the owner {LOCAL_OWNER} (shown only now; {more}):\n  {key}")
    return 0


def _local_key() -> str | None:
    """Create the ``local`` owner's key on the first start; None if it has one already."""
    out = subprocess.run(
        [sys.executable, "-m", "api.keys", "ensure", LOCAL_OWNER],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    return last if last.startswith("lct_") else None


if __name__ == "__main__":
    sys.exit(main())
