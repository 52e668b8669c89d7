"""The way home after a stall or an over-current: pause, then a slow retry.

The drive is off for ``RETRY_PAUSE_MS`` (a motor that overheated or jammed
gets a moment), then the controller drives open loop towards home at the
slow speed. The retry goes on while every window shows at least
``RETRY_PROGRESS_MDEG`` of motion towards home, over-current or not:
bringing the rider up matters more than the motor. No progress in a window
means give up (drive off; the actuator's manual release is what is left).
A window is ``RETRY_CHECK_MS``, or longer for a slow retry: long enough for
the retry's speed to cover four times the progress asked for (a quarter of
the motion expected is the least accepted, as stall.py judges), so a slow
user's retry is not given up on a table that moves as slowly as asked.
The angle is the estimator's, still trusted. Nothing allocates per tick.
"""

from .compat import const

RETRY_PAUSE_MS = const(1000)  # drive off before the slow retry
RETRY_CHECK_MS = const(2500)  # each window of the retry must show progress (at least)
RETRY_PROGRESS_MDEG = const(1000)  # towards home, per window
_EXPECTED_PER_PROGRESS = const(4)  # the window covers 4 x the progress at the retry's speed

PAUSE = const(0)  # drive off, waiting
DRIVE = const(1)  # drive towards home
GIVE_UP = const(2)  # no progress: drive off for good


class RetryReturn:
    def __init__(self):
        self.window_ms = RETRY_CHECK_MS
        self._window_ms = 0
        self._start_mdeg = 0

    def start(self, speed_mdeg_s):
        """A new stall or over-current: the pause starts again; the retry
        will drive at ``speed_mdeg_s``."""
        self._window_ms = 0
        window = RETRY_PROGRESS_MDEG * _EXPECTED_PER_PROGRESS * 1000 // speed_mdeg_s
        self.window_ms = window if window > RETRY_CHECK_MS else RETRY_CHECK_MS

    def step(self, since_fault_ms, dt_ms, angle_mdeg):
        """PAUSE, DRIVE or GIVE_UP for this tick, ``since_fault_ms`` after the fault."""
        if since_fault_ms < RETRY_PAUSE_MS:
            self._start_mdeg = angle_mdeg
            return PAUSE
        self._window_ms += dt_ms
        if self._window_ms >= self.window_ms:
            if self._start_mdeg - angle_mdeg < RETRY_PROGRESS_MDEG:
                return GIVE_UP
            self._window_ms = 0
            self._start_mdeg = angle_mdeg
        return DRIVE
