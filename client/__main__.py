"""``python -m client`` is ``lungct``."""

import sys

from client.cli import main

sys.exit(main())
