"""Progress of a long transfer (an upload to Glance or S3, a download from the store) as lines people read:
``uploading 1.2 GiB / 4.0 GiB (30 %), 48.0 MiB/s, 1 min left``."""

from __future__ import annotations

import threading
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


class ProgressReport:
    """Counts bytes into ``meter`` and hands ``report`` its line every ``interval`` seconds, and once more
    when the transfer ends (all ``total`` bytes, or :meth:`finish`).

    A store's progress callback (bytes since the last call): boto3 calls it from each of its transfer
    threads, and on a retried part with a negative count, hence the lock.
    """

    def __init__(self, meter: TransferMeter, report: Callable[[str], None], interval: float = REPORT_SECONDS):
        self.meter = meter
        self.report = report
        self.interval = interval
        self.last_report = time.monotonic()
        self.ended = False
        self._lock = threading.Lock()

    def __call__(self, amount: int) -> None:
        with self._lock:
            self.meter.advance(amount)
            now = time.monotonic()
            if self.meter.total and self.meter.done >= self.meter.total:
                self._end()
            elif amount and now - self.last_report >= self.interval:
                self.last_report = now
                self.report(self.meter.line())

    def finish(self) -> None:
        """The transfer is over, however many bytes it counted: the last line, unless it was said."""
        with self._lock:
            self._end()

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self.report(self.meter.line())


class ReportingReader:
    """A binary file object that reports its progress (:class:`ProgressReport`) while it is read."""

    def __init__(
        self,
        source: BinaryIO,
        meter: TransferMeter,
        report: Callable[[str], None],
        interval: float = REPORT_SECONDS,
    ) -> None:
        self.source = source
        self.meter = meter
        self.progress = ProgressReport(meter, report, interval)

    def __len__(self) -> int:
        # What HTTP clients send as Content-Length.
        return self.meter.total - self.meter.done

    def __bool__(self) -> bool:
        # A file object is true however much of it is left (``if data:`` in HTTP clients).
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        if data:
            self.progress(len(data))
        else:
            self.progress.finish()
        return data
