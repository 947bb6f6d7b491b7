"""Peak resident memory of a block of code, from the kernel's own high-water mark (Linux)."""

from __future__ import annotations

import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """``with PeakMemory() as p: ...`` then ``p.mb`` is how far resident memory rose above where it started.

    Resets the high-water mark first (``/proc/self/clear_refs``), so imports that peaked earlier do not hide
    the block's own peak; without that file it falls back to ``ru_maxrss`` (a lower bound then).
    """

    def __enter__(self) -> PeakMemory:
        try:
            _CLEAR_REFS.write_text("5")
            self._exact = True
        except OSError:
            self._exact = False
        self._start = _status_mb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.mb = 0.0
        return self

    def __exit__(self, *exc) -> None:
        high = _status_mb("VmHWM") if self._exact else None
        high = high if high is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.mb = max(0.0, high - self._start)
