"""A progress display for long jobs: on a terminal, one bar with the count, rate and ETA
redrawn in place about once a second; otherwise (a log file, a pipe) one such line every
ten seconds. A job makes a :class:`Progress` with its label, unit and total, calls
:meth:`Progress.update` with the count done so far (and any extra counters) as work
completes, and :meth:`Progress.close` at the end for a final line. ``enabled=False`` (the
jobs' ``--noprogress``) or a total of 0 silences it; nothing but the stream is touched.
"""
from __future__ import annotations

import sys
import time
from typing import IO


class Progress:
    """``{label} [#####.....] {done}/{total} {unit}, {rate}/s[, {n} {counter}...], eta {s}s``
    on ``stream`` (default stderr).

    label: the job's name, first on the line (e.g. ``"fundus-convert"``).
    unit: what is counted, plural (e.g. ``"photos"``).
    total: items the job will do (>= 0; 0 shows nothing).
    enabled: False shows nothing.
    interval_tty / interval: seconds between lines on a terminal / elsewhere.

    The clock between lines starts at the first :meth:`update`, not at construction, so a
    slow start (an import, a pool starting) does not print a line of zero progress; the
    rate is measured from construction.
    """

    WIDTH = 30  # bar characters

    def __init__(self, label: str, unit: str, total: int, enabled: bool = True,
                 stream: IO[str] | None = None, interval_tty: float = 1.0,
                 interval: float = 10.0):
        self.label, self.unit = label, unit
        self.total, self.enabled = total, enabled and total > 0
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.interval = interval_tty if self.tty else interval
        self.start = self.last = time.monotonic()
        self.first = True
        self.done = 0
        self.counts: dict[str, int] = {}

    def update(self, done: int, force: bool = False, **counts: int) -> None:
        """Record ``done`` items finished so far (a running total, not an increment) and
        extra running totals shown after the rate as ``, {value} {name}`` (e.g.
        ``skipped=3``); draw a line when the interval has passed or ``force``."""
        self.done = done
        self.counts.update(counts)
        now = time.monotonic()
        if self.first:
            self.first, self.last = False, now
        if not self.enabled or (not force and now - self.last < self.interval):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        filled = int(self.WIDTH * done / self.total)
        extra = "".join(f", {v} {k}" for k, v in self.counts.items())
        line = (f"{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                f"{done}/{self.total} {self.unit}, {rate:.1f}/s{extra}, eta {eta:.0f}s")
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        self.stream.flush()

    def close(self) -> None:
        """Draw the final line (and end it on a terminal)."""
        if self.enabled:
            self.update(self.done, force=True)
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
