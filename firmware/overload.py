"""Over-current: the driver's flag, believed only while it drives and only
when it persists for ``OVERLOAD_TICKS`` (one noisy current-sense sample is
not an overload). Nothing allocates per tick."""

from .compat import const

F_OVERLOAD = "overload"  # the driver reports over-current

OVERLOAD_TICKS = const(2)


class OverloadMonitor:
    def __init__(self):
        self.ticks_in_row = 0

    def update(self, flag, powered):
        # The flag only means something while the bridge is powered.
        self.ticks_in_row = self.ticks_in_row + 1 if flag and powered else 0

    @property
    def tripped(self):
        return self.ticks_in_row >= OVERLOAD_TICKS
