"""``python -m bench``: the throughput benchmark with the end-to-end timing."""

import sys

from bench.throughput import main

if __name__ == "__main__":
    sys.argv += [] if "--e2e" in sys.argv else ["--e2e"]
    main()
