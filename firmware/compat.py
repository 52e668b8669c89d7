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


def release_module(name):
    """Let go of an imported module (``name`` as in sys.modules), so that its
    code can be collected: on the board the bytecode of a module loaded from
    an .mpy file sits in the heap (about as many bytes as the file) until
    nothing refers to it. A later import loads it again. Only under
    MicroPython: under CPython (tests, the simulator) a second import would
    give other class objects than the ones already imported, and memory does
    not matter. Its qstrs (names) stay interned either way."""
    import sys

    if sys.implementation.name != "micropython":
        return
    if sys.modules.pop(name, None) is None:
        return
    dot = name.rfind(".")
    if dot > 0:
        # The import also made it an attribute of its package.
        package = sys.modules.get(name[:dot])
        if package is not None:
            try:
                delattr(package, name[dot + 1 :])
            except (AttributeError, TypeError):
                pass
