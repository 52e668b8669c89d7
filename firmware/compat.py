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
_TICKS_MAX = const((1 << 30) - 1)
_TICKS_HALF = const(1 << 29)


def ticks_diff(end, start):
    """Signed ms from start to end on the wrapping tick counter.

    Written so every intermediate stays a small int: 2**30 itself would be a
    heap-allocated big int in MicroPython, so the period is added as two halves.
    """
    diff = end - start
    if diff >= _TICKS_HALF:
        diff = diff - _TICKS_HALF - _TICKS_HALF
    elif diff < -_TICKS_HALF:
        diff = diff + _TICKS_HALF + _TICKS_HALF
    return diff


def ticks_add(ticks, delta_ms):
    """ticks + delta_ms on the wrapping counter, |delta_ms| < 2**29."""
    if delta_ms >= 0 and ticks > _TICKS_MAX - delta_ms:
        return ticks - _TICKS_HALF - _TICKS_HALF + delta_ms
    result = ticks + delta_ms
    if result < 0:
        result = result + _TICKS_HALF + _TICKS_HALF
    return result
