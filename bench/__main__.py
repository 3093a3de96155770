"""``python -m bench`` (``make bench``): every benchmark in turn, each printing its own ratios.

1. ``bench.paths``: the judge: every path a user takes with ``make run``'s
   settings, side by side with the seeds' one-predict-per-request app;
2. ``bench.throughput --e2e``: per-image vs batched model, and end to end vs bare;
3. ``bench.burst --compare-off``: single-image bursts vs one zip, with and
   without cross-request micro-batching;
4. ``bench.scale``: cost growth for 100, 1,000 and 5,000 slices (time, worker
   memory), and 1 vs 2 worker processes.

Arguments after ``--only NAME`` run a single one (e.g. ``python -m bench --only burst``).
"""

import subprocess
import sys

STEPS = {
    "paths": ["bench.paths"],
    "throughput": ["bench.throughput", "--e2e"],
    "burst": ["bench.burst", "--compare-off"],
    "scale": ["bench.scale"],
}


def main() -> int:
    names = list(STEPS)
    if "--only" in sys.argv:
        names = [sys.argv[sys.argv.index("--only") + 1]]
    for name in names:
        print(f"\n=== python -m {' '.join(STEPS[name])}", flush=True)
        code = subprocess.call([sys.executable, "-m", *STEPS[name]])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
