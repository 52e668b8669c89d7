"""A virtual millisecond clock: time only moves when the simulation says so."""

# ESP32 ticks_ms() wraps at 2**30. The clock starts 10 s before the wrap so
# that every simulated run crosses it and proves the firmware's tick maths.
_TICKS_MAX = (1 << 30) - 1
_TICKS_HALF = 1 << 29
DEFAULT_START_TICKS_MS = (1 << 30) - 10000


def ticks_diff(end, start):
    """Signed ms from start to end on the wrapping counter (same formula as
    firmware/compat.py, copied so hal_sim also loads as a top-level package)."""
    return ((end - start + _TICKS_HALF) & _TICKS_MAX) - _TICKS_HALF


class VirtualClock:
    def __init__(self, start_ticks_ms=DEFAULT_START_TICKS_MS):
        self.start_ticks_ms = start_ticks_ms & _TICKS_MAX
        # Unbounded simulated time since creation, for traces and plots.
        self.elapsed_ms = 0
        # The wrapped counter itself, kept up to date by advance(): reading it
        # does no arithmetic, so under a 32-bit MicroPython (small ints end at
        # 2**30) ticks_ms() allocates no big int, as the ESP32's does not.
        self._ticks = self.start_ticks_ms

    def ticks_ms(self):
        return self._ticks

    def advance(self, ms):
        if ms < 0:
            raise ValueError("time cannot go backwards")
        ms = int(ms)
        self.elapsed_ms += ms
        self._ticks = (self._ticks + (ms & _TICKS_MAX)) & _TICKS_MAX
