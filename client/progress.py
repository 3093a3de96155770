"""Progress over uploads (bytes) and slices (done/total): rich on a terminal, else text lines.

``rich`` is optional: without it, or when stderr is not a terminal (a log file,
CI), a plain line such as ``uploads 12.0/40.0 MB (1/3 inputs) | slices 40/120``
is printed at most every few seconds and once at the end.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import IO, Any

MB = 1024 * 1024


class Progress:
    """Two counters shown as bars; every method is safe to call from any thread."""

    def __init__(self, *, enabled: bool = True, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._lock = threading.Lock()
        self.sent = self.bytes_total = 0
        self.inputs_done = self.inputs_total = 0
        self.slices_done = self.slices_total = 0
        self._rich: Any = None
        self._tasks: dict[str, Any] = {}
        self._last_line = ""
        self._last_print = 0.0
        self.interval_s = 5.0
        self._held = threading.local()

    def __enter__(self) -> Progress:
        if self.enabled and _isatty(self.stream):
            try:
                self._start_rich()
            except ImportError:
                self._rich = None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._rich is not None:
            self._rich.stop()
        elif self.enabled and exc_type is None:
            self._print(force=True)

    def _start_rich(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        console = Console(file=self.stream)
        self._rich = RichProgress(
            TextColumn("{task.description:<8}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._tasks["uploads"] = self._rich.add_task("uploads", total=None, detail="")
        self._tasks["slices"] = self._rich.add_task("slices", total=None, detail="")
        self._rich.start()

    # -- counters --------------------------------------------------------------

    def add_inputs(self, count: int, size: int) -> None:
        with self._lock:
            self.inputs_total += count
            self.bytes_total += size
        self._refresh()

    def resize(self, delta: int) -> None:
        """An upload turned out ``delta`` bytes larger than estimated (a zipped folder)."""
        with self._lock:
            self.bytes_total += delta
        self._refresh()

    def sent_bytes(self, n: int) -> None:
        with self._lock:
            self.sent += n
        self._refresh()

    def input_done(self, unsent: int = 0) -> None:
        """One input uploaded (or skipped: ``unsent`` bytes count as done)."""
        with self._lock:
            self.inputs_done += 1
            self.sent += unsent
        self._refresh()

    def slices(self, done: int, total: int) -> None:
        with self._lock:
            self.slices_done, self.slices_total = done, total
        self._refresh()

    def log(self, message: str) -> None:
        """A line above the bars (or just a line); kept back inside :meth:`held`."""
        held: list[str] | None = getattr(self._held, "lines", None)
        if held is not None:
            held.append(message)
            return
        if self._rich is not None:
            self._rich.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=self.stream, flush=True)

    @contextmanager
    def held(self) -> Iterator[list[str]]:
        """This thread's lines inside the block are printed when it ends (after whatever
        the block's caller must do first: cli.py saves the resume file); the block
        gets the list of lines held, and may drop them."""
        held: list[str] | None = getattr(self._held, "lines", None)
        if held is not None:
            yield held
            return
        lines: list[str] = []
        self._held.lines = lines
        try:
            yield lines
        finally:
            self._held.lines = None
            for line in lines:
                self.log(line)

    # -- drawing ---------------------------------------------------------------

    def line(self) -> str:
        with self._lock:
            up = (
                f"uploads {self.sent / MB:.1f}/{self.bytes_total / MB:.1f} MB "
                f"({self.inputs_done}/{self.inputs_total} inputs)"
            )
            return f"{up} | slices {self.slices_done}/{self.slices_total}"

    def _refresh(self) -> None:
        if not self.enabled:
            return
        if self._rich is None:
            self._print()
            return
        with self._lock:
            up = (self.sent, self.bytes_total, self.inputs_done, self.inputs_total)
            sl = (self.slices_done, self.slices_total)
        self._rich.update(
            self._tasks["uploads"],
            completed=min(up[0], up[1]),
            total=up[1] or None,
            detail=f"{up[0] / MB:.1f}/{up[1] / MB:.1f} MB, {up[2]}/{up[3]} inputs",
        )
        self._rich.update(
            self._tasks["slices"], completed=sl[0], total=sl[1] or None, detail=f"{sl[0]}/{sl[1]}"
        )

    def _print(self, force: bool = False) -> None:
        now = time.monotonic()
        text = self.line()
        with self._lock:
            if not force and (text == self._last_line or now - self._last_print < self.interval_s):
                return
            self._last_line, self._last_print = text, now
        print(text, file=self.stream, flush=True)


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
