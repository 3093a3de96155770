"""The judge: every path a user takes, with ``make run``'s settings, side by side in one run.

Usage: ``python -m bench.paths [--rounds 2] [--n 100] [--study 1000] [--model NAME]
[--set NAME=VALUE ...]``

Starts a throwaway service (SQLite, Redis at REDIS_URL, one worker, gunicorn)
with every setting at its default (``--set`` changes one, and the table says
so), and the seeds' app (bench/seeds_app.py: plain Flask, one
``model.predict`` per upload). Then, for ``--rounds`` rounds, alternating:

1. the seeds' way: ``n`` IQ-OTH/NCCD slices posted one after another;
2. the same slices as one zip (one job), waited for with a long poll;
3. ``lungct submit FOLDER --wait --out results.csv`` on the same slices as
   loose files (a new owner per round, so nothing is replayed);
4. the same slices as ``n`` single images from 4 clients, each uploading its
   share back to back and collecting with the documented long polls;
5. a ``--study``-slice zip, end to end;
6. the bare batched forward pass over the same ``--study`` slices, in this
   process (the worker's model with its OOD outputs and calibration, batches
   of INFERENCE_BATCH_SIZE, as many passes at once as FORWARD_LANES gives the
   worker, tensors already decoded).

It prints images/s (medians) with ratios to the seeds' way and to the zip, the
study against the bare forward pass, and the worker's stage profile of the
zip and the study jobs (from its ``run stages`` log lines). Then the study's
CPU budget on this machine: the CPU a slice of the bare pass and of the least
work any pipeline must add (decoding the JPEG and preprocessing it, one
thread), the worker's and the API's CPU a study slice, and the floor those
give: with every core busy, a study cannot take less than (forward + decode)
CPU / cores, whatever the service does around them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

from bench.burst import burst, pipelined_client, with_cpu
from bench.e2e import Service, api_key, service, spawn, stop, time_one
from bench.throughput import make_zip, pick_slices
from config import Settings, get_settings

CLIENTS = 4


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seeds_way(base: str, files: list[Path]) -> float:
    """Seconds to post every file, one request (one ``model.predict``) after another."""
    with requests.Session() as http:
        start = time.perf_counter()
        for f in files:
            r = http.post(f"{base}/predict", files={"file": (f.name, f.read_bytes())}, timeout=60)
            r.raise_for_status()
        return time.perf_counter() - start


def cli_folder(svc: Service, env: dict[str, str], files: list[Path], round_no: int) -> float:
    """Seconds for ``lungct submit FOLDER --wait --out results.csv`` (a fresh owner)."""
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        folder = Path(tmp) / "slices"
        folder.mkdir()
        for f in files:
            shutil.copy(f, folder / f.name)
        key = api_key(env, owner=f"bench-cli-{round_no}-{os.getpid()}", root=svc.root)
        cli_env = {**os.environ, "LUNGCT_URL": svc.base, "LUNGCT_API_KEY": key}
        argv = [sys.executable, "-m", "client.cli", "submit", str(folder), "--wait"]
        argv += ["--out", str(Path(tmp) / "results.csv"), "-q"]
        start = time.perf_counter()
        run = subprocess.run(argv, cwd=svc.root, env=cli_env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if run.returncode != 0:
            raise RuntimeError(f"lungct failed: {run.stderr[-2000:]}")
        rows = (Path(tmp) / "results.csv").read_text().count("\n") - 1
        if rows != len(files):
            raise RuntimeError(f"lungct wrote {rows} rows for {len(files)} slices")
        return elapsed


def four_clients(svc: Service, files: list[Path]) -> float:
    """Seconds for ``len(files)`` single images from 4 clients (upload, then long polls)."""
    return len(files) / burst(svc, files, CLIENTS, None, pipelined_client)


def bare_forward(files: list[Path], model: str, settings: Settings) -> Callable[[], float]:
    """A timer of the worker's forward passes over ``files``, decoded once beforehand."""
    import numpy as np

    from bench.lanes import bare_seconds
    from models.data import load_gray
    from models.preprocessing import preprocess
    from worker.inference import batch_size, predictor_for

    predictor = predictor_for(model, settings)
    batch = batch_size(predictor, settings.inference_batch_size)
    tensors = np.stack([preprocess(load_gray(f), predictor.card.input) for f in files])
    chunks = [tensors[i : i + batch] for i in range(0, len(tensors), batch)]
    predictor.predict(chunks[0])  # trace once

    return lambda: bare_seconds(predictor, chunks)  # FORWARD_LANES passes at once


def decode_cpu(files: list[Path], model: str, settings: Settings) -> float:
    """CPU seconds a slice for the least a pipeline does before the model: decode the
    JPEG bytes and preprocess them, in one thread (no zip, viewing copy or storage)."""
    from bench.lanes import model_input
    from models.registry import Registry

    spec = Registry(settings.models_dirs).get(model).input
    blobs = [f.read_bytes() for f in files]
    start = time.process_time()
    for blob in blobs:
        model_input(blob, spec)
    return (time.process_time() - start) / len(blobs)


def _budget(cpu: dict[str, list[float]], decode_s: float, bare_s: float, study_s: float) -> str:
    """The study's CPU budget (``cpu``: ms a slice per round; medians) and the floor it
    sets on this machine."""
    med = {k: statistics.median(v) for k, v in cpu.items()}
    decode, cores = 1000 * decode_s, len(os.sched_getaffinity(0))
    floor = (med["bare"] + decode) / cores
    return (
        f"CPU a study slice, ms: bare forward pass {med['bare']:.2f}, JPEG decode + "
        f"preprocess {decode:.2f} (one thread); the study's worker {med['worker']:.2f}, "
        f"API {med['api']:.2f}\n"
        f"floor on {cores} cores: ({med['bare']:.2f} + {decode:.2f}) / {cores} = "
        f"{floor:.2f} ms a slice, {floor / (1000 * bare_s):.2f}x the bare pass's "
        f"{1000 * bare_s:.2f} ms; the study took {study_s / bare_s:.2f}x"
    )


STAGE_LINE = re.compile(r"run stages: jobs=(\d+) slices=(\d+) wall=([\d.]+) (.*)")


def stage_profiles(log: Path) -> list[tuple[int, float, dict[str, float]]]:
    """(slices, wall, seconds per stage) of every single-job run in the worker log."""
    out = []
    for m in STAGE_LINE.finditer(log.read_text()):
        if m.group(1) == "1":
            stages = dict((k, float(v)) for k, v in (p.split("=") for p in m.group(4).split()))
            out.append((int(m.group(2)), float(m.group(3)), stages))
    return out


def _table(rates: dict[str, list[float]], n: int, study: int, settings: str) -> str:
    med = {k: statistics.median(v) for k, v in rates.items()}
    seeds, zip_rate = med["seeds"], med["zip"]
    names = {
        "seeds": f"the seeds' way, {n} slices one by one",
        "zip": f"one zip of the {n} slices",
        "cli": f"lungct submit FOLDER --wait --out x.csv ({n} loose slices)",
        "burst": f"{n} single images from {CLIENTS} clients (long polls)",
        "study": f"one {study}-slice study, end to end",
        "bare": f"bare batched forward pass, {study} slices",
    }
    lines = [
        f"settings: {settings}",
        f"{'path':<58} {'images/s':>9} {'vs seeds':>9} {'vs zip':>7}",
    ]
    for key, name in names.items():
        lines.append(
            f"{name:<58} {med[key]:>9.1f} {med[key] / seeds:>8.1f}x {med[key] / zip_rate:>6.2f}x"
        )
    ratio = med["bare"] / med["study"]
    lines.append(f"study end to end / bare forward pass: {ratio:.2f}x the time")
    per_round = "; ".join(f"{k} {[round(r, 1) for r in v]}" for k, v in rates.items())
    lines.append(f"rounds (images/s): {per_round}")
    return "\n".join(lines)


def _receives(svc: Service, small: str, big: str) -> str:
    """The API's receive (upload start to 202) of the zip and the study, medians."""
    ms = {k: 1000 * statistics.median(v) for k, v in svc.receives.items()}
    return f"receive (POST until 202), median ms: zip {ms[small]:.0f}, study {ms[big]:.0f}"


def _profile(log: Path, n: int, study: int) -> str:
    legend = "decode on DECODE_THREADS threads, store_* on the writer thread"
    lines = [f"worker stage profile (seconds; {legend}):"]
    for slices, wall, stages in stage_profiles(log):
        if slices in (n, study):
            parts = " ".join(f"{k} {v:.2f}" for k, v in stages.items())
            lines.append(f"  {slices:>5} slices, wall {wall:.2f}: {parts}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--study", type=int, default=1000)
    parser.add_argument("--model", default="lungct-cnn6")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    changed = dict(s.split("=", 1) for s in args.set)
    settings = "make run's defaults" + (f", except {changed}" if changed else "")
    files = pick_slices(args.n)
    every = pick_slices(10_000)  # the data set holds fewer: the study repeats some slices
    study_files = [every[i % len(every)] for i in range(args.study)]
    with tempfile.TemporaryDirectory(prefix="bench-paths-") as tmp:
        small = make_zip(files, Path(tmp) / "slices.zip")
        big = numbered_zip(study_files, Path(tmp) / "study.zip")
        port = _port()
        seeds = spawn(
            [sys.executable, "-m", "bench.seeds_app", str(port), args.model],
            {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            Path(tmp) / "seeds.log",
        )
        try:
            with service(args.model, extra_env=changed, limits=False) as svc:
                _wait_seeds(f"http://127.0.0.1:{port}")
                env = {**os.environ, "DATABASE_URL": f"sqlite:///{svc.folder / 'bench.db'}"}
                bare = bare_forward(study_files, args.model, get_settings())
                rates: dict[str, list[float]] = {k: [] for k in ("seeds", "zip", "cli", "burst")}
                rates |= {"study": [], "bare": []}
                cpu: dict[str, list[float]] = {"bare": [], "worker": [], "api": []}
                for r in range(args.rounds):
                    rates["seeds"].append(args.n / seeds_way(f"http://127.0.0.1:{port}", files))
                    rates["zip"].append(args.n / time_one(svc, small))
                    rates["cli"].append(args.n / cli_folder(svc, env, files, r))
                    rates["burst"].append(args.n / four_clients(svc, files))
                    rate, used = with_cpu(svc, args.study, lambda: args.study / time_one(svc, big))
                    rates["study"].append(rate)
                    rate, mine = with_cpu(svc, args.study, lambda: args.study / bare())
                    rates["bare"].append(rate)
                    cpu["worker"].append(used["worker"])  # ms a slice
                    cpu["api"].append(used["api"])
                    cpu["bare"].append(mine["client"])  # "client": this process, the bare pass
                    print(f"round {r + 1} done", file=sys.stderr, flush=True)
                decode_s = decode_cpu(study_files, args.model, get_settings())
                print(_table(rates, args.n, args.study, settings))
                print(_receives(svc, small.name, big.name))
                print(_profile(svc.folder / "worker0.log", args.n, args.study))
                bare_s, study_s = (1 / statistics.median(rates[k]) for k in ("bare", "study"))
                print(_budget(cpu, decode_s, bare_s, study_s))
        finally:
            stop(seeds)
    return 0


def numbered_zip(files: list[Path], out: Path) -> Path:
    """A zip of ``files`` as ``study/<n>_<name>``: a slice may appear more than once."""
    import zipfile

    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for i, f in enumerate(files):
            zf.write(f, f"study/{i:05d}_{f.name}")
    return out


def _wait_seeds(base: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            requests.get(base, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.3)
    raise RuntimeError("the seeds' app did not start")


if __name__ == "__main__":
    sys.exit(main())
