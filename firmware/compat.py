"""The few things MicroPython and CPython spell differently.

Everything else in the firmware is written in the common subset, so this module
is the only place that looks at which interpreter is running.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(value):
        return value


# ticks_ms() wraps at 2**30 on the ESP32 (about 12.4 days). Every time
# difference in the firmware goes through ticks_diff/ticks_add so that the
# wrap is harmless; the simulator starts its clock just before the wrap.
TICKS_PERIOD = const(1 << 30)
_TICKS_MAX = const((1 << 30) - 1)
_TICKS_HALF = const(1 << 29)


def ticks_diff(end, start):
    """Signed ms from start to end on the wrapping tick counter."""
    return ((end - start + _TICKS_HALF) & _TICKS_MAX) - _TICKS_HALF


def ticks_add(ticks, delta_ms):
    return (ticks + delta_ms) & _TICKS_MAX
