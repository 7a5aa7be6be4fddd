"""Progress of a long transfer (an upload to Glance, a download from the store) as lines people read:
``uploading 1.2 GiB / 4.0 GiB (30 %), 48.0 MiB/s, 1 min left``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import BinaryIO

from gentoo_farm.units import human_size

# How often a transfer says how far it is, at most.
REPORT_SECONDS = 10.0


def _time_left(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s left"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min left"
    return f"{seconds / 3600:.1f} h left"


class TransferMeter:
    """Counts the bytes of one transfer of ``total`` bytes and says how far it is."""

    def __init__(self, verb: str, total: int, done: int = 0) -> None:
        self.verb = verb
        self.total = total
        self.done = done
        self.started = time.monotonic()
        self.start_bytes = done

    def advance(self, amount: int) -> None:
        self.done += amount

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (self.done - self.start_bytes) / elapsed
        text = f"{self.verb} {human_size(self.done)} / {human_size(self.total)}"
        if self.total:
            text += f" ({self.done * 100 // self.total} %)"
        text += f", {human_size(int(rate))}/s"
        if rate > 0 and self.done < self.total:
            text += f", {_time_left((self.total - self.done) / rate)}"
        return text


class ReportingReader:
    """A binary file object that hands ``report`` a :class:`TransferMeter` line every ``interval``
    seconds while it is read, and once more at its end."""

    def __init__(
        self,
        source: BinaryIO,
        meter: TransferMeter,
        report: Callable[[str], None],
        interval: float = REPORT_SECONDS,
    ) -> None:
        self.source = source
        self.meter = meter
        self.report = report
        self.interval = interval
        self.last_report = time.monotonic()
        self.ended = False

    def __len__(self) -> int:
        # What HTTP clients send as Content-Length.
        return self.meter.total - self.meter.done

    def __bool__(self) -> bool:
        # A file object is true however much of it is left (``if data:`` in HTTP clients).
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.meter.advance(len(data))
        now = time.monotonic()
        if data and now - self.last_report >= self.interval:
            self.last_report = now
            self.report(self.meter.line())
        elif not data and not self.ended:
            self.ended = True
            self.report(self.meter.line())
        return data
