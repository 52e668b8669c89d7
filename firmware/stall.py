"""Stall detection: driven, but the table does not move.

One small object fed every tick (the model: Marlin's thermal-runaway check,
one protection with its thresholds as named constants). The motion it
expects is the commanded speed passed through the actuator's measured lag
(commissioning), at the speed this table really has (``tracking.TableSpeed``:
measured in this session, commissioned, and the heaviest rider's load on the
way home), so neither a slow actuator nor the delay of a reversal looks like
a stall. Over each window of ``WINDOW_MS`` in one direction, a table that
moved less than a quarter of what was expected (when at least
``MIN_EXPECTED_MDEG`` was) is stalled.
"""

from .compat import const

WINDOW_MS = const(1000)
MIN_EXPECTED_MDEG = const(1500)  # judge motion only if this much was expected


class StallMonitor:
    def __init__(self, lag_ms):
        self.lag_ms = lag_ms
        self.expected_mdeg_s = 0  # the commanded speed as the actuator has it now
        self._dir = 0
        self._window_ms = 0
        self._expected_udeg = 0
        self._start_mdeg = 0

    def reset(self, angle_mdeg):
        """Not judged this tick (drive off, or driving into the home switch)."""
        self.expected_mdeg_s = 0
        self._restart(0, angle_mdeg)

    def _restart(self, direction, angle_mdeg):
        self._dir = direction
        self._window_ms = 0
        self._expected_udeg = 0
        self._start_mdeg = angle_mdeg

    def update(self, dt_ms, drive, full_speed_mdeg_s, angle_mdeg):
        """One driven tick. Returns True when the window shows a stall."""
        commanded = drive * full_speed_mdeg_s // 1000
        # First-order lag, as the actuator follows the drive.
        self.expected_mdeg_s += (commanded - self.expected_mdeg_s) * dt_ms // (self.lag_ms + dt_ms)
        speed = self.expected_mdeg_s
        direction = 1 if speed > 0 else -1 if speed < 0 else 0
        if direction != self._dir:
            # One window judges one direction: a reversal is a new window.
            self._restart(direction, angle_mdeg)
        self._expected_udeg += speed * dt_ms
        self._window_ms += dt_ms
        if self._window_ms < WINDOW_MS:
            return False
        expected_mdeg = self._expected_udeg // 1000
        moved_mdeg = angle_mdeg - self._start_mdeg
        if expected_mdeg < 0:
            expected_mdeg = -expected_mdeg
            moved_mdeg = -moved_mdeg
        self._restart(direction, angle_mdeg)
        return expected_mdeg >= MIN_EXPECTED_MDEG and moved_mdeg * 4 < expected_mdeg
