"""A small progress bar on stderr for long work (files, evaluations), silent when not a TTY
unless forced."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int | None, label: str = "", *, enabled: bool | None = None, unit: str = "it"):
        self.total, self.label, self.unit = total, label, unit
        self.n = 0
        self.t0 = self.last = time.monotonic()
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.2:
            self.last = now
            self._draw(now)

    def _draw(self, now: float, end: str = "") -> None:
        rate = self.n / max(now - self.t0, 1e-9)
        if self.total:
            frac = min(1.0, self.n / self.total)
            bar = "#" * int(frac * 30)
            sys.stderr.write(f"\r{self.label} [{bar:<30}] {frac:6.1%} {self.n}/{self.total} {rate:,.0f} {self.unit}/s{end}")
        else:
            sys.stderr.write(f"\r{self.label} {self.n} {rate:,.0f} {self.unit}/s{end}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic(), "\n")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
