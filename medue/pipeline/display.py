"""Progress display of a release for logs: whole lines, not a redrawn bar."""

from __future__ import annotations

import time
from typing import Callable


class LineProgress:
    """Progress as whole lines, one every ``step`` of the items or after ``seconds`` without one (for logs, where a
    redrawn bar becomes thousands of carriage returns); the tqdm methods the release loop calls."""

    def __init__(self, total: int, say: Callable[[str], None], *, seconds: float = 30.0, step: float = 0.1) -> None:
        self.total, self.say, self.seconds = total, say, seconds
        self.every = max(1, int(total * step))
        self.done = 0
        self.counts: dict[str, int] = {}
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.done == self.total or self.done % self.every == 0 or now - self.last >= self.seconds:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)  # > 0: at least one item is done here
            left = (self.total - self.done) / rate
            counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
            self.say(f"protect: {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%), "
                     f"{rate:.1f} volume/s, about {left:.0f} s left [{counts}]")

    def set_postfix_str(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1

    def close(self) -> None:
        pass

