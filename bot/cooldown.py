"""Per-user cooldown between two questions."""

from __future__ import annotations

import time
from typing import Callable


class Cooldown:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self._clock = clock
        self._last: dict[str, float] = {}  # user id -> when their last question was accepted

    def wait_left(self, user: str) -> float:
        """0 if the user may ask now (and the cooldown starts again), else the seconds left to wait."""
        now = self._clock()
        left = self._last.get(user, -self.seconds) + self.seconds - now
        if left > 0:
            return left
        self._last[user] = now
        if len(self._last) > 10_000:  # forget users whose cooldown is over
            self._last = {u: t for u, t in self._last.items() if now - t < self.seconds}
        return 0.0
