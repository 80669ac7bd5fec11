"""The progress display of long jobs, and the clock of a whole run.

:class:`Progress`: on a terminal, one bar with the count, rate and ETA redrawn in place
about once a second; otherwise (a log file, a pipe) one such line every ten seconds. A job
makes a :class:`Progress` with its label, unit and total, calls :meth:`Progress.update`
with the count done so far (and any extra counters) as work completes, and
:meth:`Progress.close` at the end for a final line. ``enabled=False`` (the jobs'
``--noprogress``) or a total of 0 silences it; nothing but the stream is touched.

:class:`RunClock`: the elapsed time of a run of equal units (the epochs of a training run,
of every fold of a CV) and the estimate of the time left, measured on the units done
since the clock's first estimate (a resumed run's finished epochs took no time here);
:func:`format_hms` writes seconds as ``h:mm:ss``. ``fundus-train`` prints
:meth:`RunClock.status` at each fold and stage start.
"""
from __future__ import annotations

import sys
import time
from typing import IO, Callable


def format_hms(seconds: float | None) -> str:
    """``seconds`` (>= 0; negative counts as 0) as ``h:mm:ss`` (``"1:02:05"``; hours
    unbounded); ``"?"`` for None or a non-finite value."""
    if seconds is None or seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    s = int(round(max(0.0, float(seconds))))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """``{label} [#####.....] {done}/{total} {unit}, {rate}/s[, {n} {counter}...], eta {s}s``
    on ``stream`` (default stderr); ``, {note}`` ends the line when :meth:`update` gives one.

    label: the job's name, first on the line (e.g. ``"fundus-convert"``).
    unit: what is counted, plural (e.g. ``"photos"``).
    total: items the job will do (>= 0; 0 shows nothing).
    enabled: False shows nothing.
    interval_tty / interval: seconds between lines on a terminal / elsewhere.
    now: the clock, seconds (tests pass a fake one).

    The clock between lines starts at the first :meth:`update`, not at construction, so a
    slow start (an import, a pool starting) does not print a line of zero progress; the
    rate is measured from construction.
    """

    WIDTH = 30  # bar characters

    def __init__(self, label: str, unit: str, total: int, enabled: bool = True,
                 stream: IO[str] | None = None, interval_tty: float = 1.0,
                 interval: float = 10.0, now: Callable[[], float] = time.monotonic):
        self.label, self.unit = label, unit
        self.total, self.enabled = total, enabled and total > 0
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.interval = interval_tty if self.tty else interval
        self.now = now
        self.start = self.last = now()
        self.first = True
        self.done = 0
        self.note = ""
        self.width = 0          # length of the line last drawn on a terminal
        self.counts: dict[str, int] = {}

    def update(self, done: int, force: bool = False, *, note: str | None = None,
               **counts: int) -> None:
        """Record ``done`` items finished so far (a running total, not an increment) and
        extra running totals shown after the rate as ``, {value} {name}`` (e.g.
        ``skipped=3``); ``note``: what runs now, shown last (kept until replaced); draw a
        line when the interval has passed or ``force``."""
        self.done = done
        self.counts.update(counts)
        if note is not None:
            self.note = note
        now = self.now()
        if self.first:
            self.first, self.last = False, now
        if not self.enabled or (not force and now - self.last < self.interval):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = f"{(self.total - done) / rate:.0f}s" if rate > 0 else "?"
        filled = int(self.WIDTH * min(done, self.total) / self.total)
        extra = "".join(f", {v} {k}" for k, v in self.counts.items())
        tail = f", {self.note}" if self.note else ""
        line = (f"{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                f"{done}/{self.total} {self.unit}, {rate:.1f}/s{extra}, eta {eta}{tail}")
        if self.tty:
            pad = " " * max(0, self.width - len(line))   # blank a longer previous line
            self.width = len(line)
            self.stream.write("\r" + line + pad)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final line (and end it on a terminal)."""
        if self.enabled:
            self.update(self.done, force=True)
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()


class RunClock:
    """Elapsed time of a run of ``total`` equal units and the time its rest should take.

    total: units of the whole run (> 0), e.g. epochs, or folds x epochs of a CV.
    now: the clock, seconds (tests pass a fake one).

    Elapsed time counts from construction. The estimate's baseline is the first call of
    :meth:`remaining` (or :meth:`status`): units done before it (the finished epochs of a
    resumed run, the finished folds of a CV) took no time in this process and do not
    enter the rate; until a unit has been done since, there is no estimate.
    """

    def __init__(self, total: float, now: Callable[[], float] = time.monotonic):
        self.total = float(total)
        self.now = now
        self.start = now()
        self.base: tuple[float, float] | None = None      # (time, units done) of the baseline

    def elapsed(self) -> float:
        """Seconds since the clock started (>= 0)."""
        return max(0.0, self.now() - self.start)

    def remaining(self, done: float) -> float | None:
        """Seconds left when ``done`` units of ``total`` are finished: the seconds per unit
        since the baseline times the units left (0 once ``done >= total``); None
        ("estimating") until some unit has been done after the baseline."""
        t = self.now()
        if self.base is None:
            self.base = (t, float(done))
        if done >= self.total:
            return 0.0
        t0, d0 = self.base
        if done <= d0:
            return None
        return (t - t0) / (done - d0) * (self.total - done)

    def status(self, done: float) -> str:
        """``"elapsed 0:12:05, remaining ~1:03:40"``, or ``"elapsed 0:00:02, remaining
        estimating"`` before there is a measurement."""
        left = self.remaining(done)
        rest = "estimating" if left is None else f"~{format_hms(left)}"
        return f"elapsed {format_hms(self.elapsed())}, remaining {rest}"
