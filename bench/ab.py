"""Two versions of the service side by side: the zip, the CLI and the burst, alternating.

Usage: ``python -m bench.ab OLD_TREE NEW_TREE [--rounds 5] [--n 100] [--study 1000]
[--model NAME]``

Each tree is a checkout of this repository (``git worktree add ../old <commit>``;
link this one's ``.venv`` into it). Both services run at once with every setting at
its default (bench/paths.py's rules), each from its own tree, and the paths of
bench/paths.py (and a ``--study``-slice zip; 0 leaves it out) go to one and then the
other, the order flipped every round, so
a machine whose speed drifts (a shared VM) drifts for both. Prints images/s per
round, the medians and new/old for each path. No model or data differences: the
same slices, the same model name, the same Redis.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.e2e import Service, api_key, service, time_one
from bench.paths import cli_folder, four_clients, numbered_zip
from bench.throughput import make_zip, pick_slices

PATHS = ("zip", "cli", "burst")
_CLI_RUNS = itertools.count()
"""Numbers the CLI runs: each gets an owner of its own (nothing is replayed)."""


def _database_env(svc: Service) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": f"sqlite:///{svc.folder / 'bench.db'}"}


def _new_owner(svc: Service, tag: str) -> Service:
    """A fresh API key for a burst: the default submit limit is per key and per minute."""
    key = api_key(_database_env(svc), owner=f"ab-{tag}-{os.getpid()}", root=svc.root)
    svc.http.headers["Authorization"] = f"Bearer {key}"
    return svc


def _one(
    path: str, svc: Service, zipped: dict[str, tuple[Path, int]], files: list[Path], tag: str
) -> float:
    """Images/s of one path on one service (``zipped``: the zip and the study, by path,
    each with its number of slices)."""
    if path in zipped:
        archive, slices = zipped[path]
        return slices / time_one(svc, archive)
    if path == "cli":
        return len(files) / cli_folder(svc, _database_env(svc), files, next(_CLI_RUNS))
    return len(files) / four_clients(_new_owner(svc, tag), files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--study", type=int, default=1000, help="slices of the study (0: none)")
    parser.add_argument("--model", default="lungct-cnn6")
    args = parser.parse_args(argv)
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    files = pick_slices(args.n)
    paths = PATHS + (("study",) if args.study else ())
    rates: dict[tuple[str, str], list[float]] = {(t, p): [] for t in trees for p in paths}
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp, ExitStack() as stack:
        every = pick_slices(10_000)  # as bench.paths: the study repeats some slices
        zipped = {"zip": (make_zip(files, Path(tmp) / "slices.zip"), len(files))}
        if args.study:
            study = [every[i % len(every)] for i in range(args.study)]
            zipped["study"] = (numbered_zip(study, Path(tmp) / "study.zip"), len(study))
        svcs = {
            t: stack.enter_context(service(args.model, limits=False, root=root))
            for t, root in trees.items()
        }
        for t, svc in svcs.items():  # first uses trace the model's batch shapes
            for path in paths:
                _one(path, svc, zipped, files, f"warm-{t}")
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(trees)[::-1]
            for path in paths:
                for t in order:
                    rates[(t, path)].append(_one(path, svcs[t], zipped, files, f"{t}-{r}"))
            done = {f"{t} {p}": round(v[-1], 1) for (t, p), v in rates.items()}
            print(f"round {r + 1}: {done}", file=sys.stderr, flush=True)
    print(f"images/s, medians of {args.rounds} rounds (old: {trees['old']}, new: {trees['new']})")
    for path in paths:
        old, new = (statistics.median(rates[(t, path)]) for t in trees)
        print(f"  {path:<6} old {old:7.1f}  new {new:7.1f}  new/old {new / old:.3f}")
    for t in trees:
        zip_rate = statistics.median(rates[(t, "zip")])
        ratios = ", ".join(
            f"{p}/zip {statistics.median(rates[(t, p)]) / zip_rate:.2f}" for p in PATHS[1:]
        )
        print(f"  {t}: {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
