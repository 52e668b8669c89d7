"""GO only with room in the heap to run a session to its end.

A session's ticks allocate nothing (tests/test_heap_lock_unix.py), but its
start and end do: the Session object, the exposure reservation and the
session marker written before the table moves, the log entry and its save
once it is back. On an ESP32 without PSRAM the firmware's code and data fill
most of the heap MicroPython gets (docs/performance.md), so a board that has
fragmented or filled its heap could start a session and then fail to record
it, or crash on the way home into the slow blind return. This guard measures
the free heap while the table rests at home (after a collection: what is
really free) and blocks GO below ``MIN_FREE_BYTES`` (the controller's
``go_refused_low_memory``); the next measurement above it lifts the block.

Measured only at home and idle, every ``CHECK_PERIOD_MS``: a collection
takes a few ms on an ESP32, harmless there, never during motion. Under
CPython (the simulator's default interpreter) there is no ``gc.mem_free``
and the guard never blocks.
"""

import gc

from .compat import const, ticks_diff

# The most a session's start or end was measured to allocate in one tick
# (bench/soak.py, "most in one tick") with room to spare for a request
# answered in the same tick.
MIN_FREE_BYTES = const(12288)
CHECK_PERIOD_MS = const(5000)


def _mem_free():
    gc.collect()
    return gc.mem_free()


class MemoryGuard:
    def __init__(self, min_free_bytes=MIN_FREE_BYTES, period_ms=CHECK_PERIOD_MS,
                 mem_free=None):
        if mem_free is None and hasattr(gc, "mem_free"):
            mem_free = _mem_free
        self._mem_free = mem_free
        self._min = min_free_bytes
        self._period_ms = period_ms
        self._last_ms = None
        self.free_bytes = None  # the last measurement (None: never measured)
        self.low = False

    def update(self, now_ms, idle):
        """Measure when ``idle`` (at home, no session) and a period has passed
        since the last measurement (the first idle call measures at once).
        Returns ``low``: True while the last measurement was below the minimum."""
        if self._mem_free is None or not idle:
            return self.low
        if self._last_ms is not None and ticks_diff(now_ms, self._last_ms) < self._period_ms:
            return self.low
        self._last_ms = now_ms
        self.free_bytes = self._mem_free()
        self.low = self.free_bytes < self._min
        return self.low
