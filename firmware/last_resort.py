"""The last way home: no estimator, no state machine, nothing that can fail.

Used when the normal control path cannot run: the App's control loop keeps
crashing (``App._last_resort``), or the App could not even be built
(``main.py``). It drives slowly towards home, open loop at the board's
recovery speed, until the home switch closes or a time cap runs out, with
the alarm on; then the drive is off and the alarm stays on. Only this
routine feeds the watchdog while it runs.

The time cap is the whole travel at the recovery speed, plus half again,
plus 5 s (the controller's blind-return cap, ``Controller.blind_cap_ms``).
"""

from .compat import ticks_diff
from .homing import way_home_cap_ms


def blind_cap_ms(board):
    """The blind-return time cap for a board: the travel from home to the
    board's maximum angle at its recovery speed, 1.5 times, plus 5 s."""
    travel_mdeg = board["max_angle_mdeg"] - board["home_angle_mdeg"]
    return way_home_cap_ms(travel_mdeg, board["recovery_speed_mdeg_s"])


def homeward_drive(board):
    """The drive (permille, negative = towards home) that moves the table at
    the board's recovery speed."""
    return -(board["recovery_speed_mdeg_s"] * 1000 // board["actuator_speed_mdeg_s"])


class LastResort:
    """One ``step(hal)`` per control period: towards home until the home
    switch closes or ``cap_ms`` (from the first step) has passed, then off.
    Allocates nothing per step."""

    def __init__(self, board, cap_ms=None):
        self.drive_permille = homeward_drive(board)
        self.cap_ms = blind_cap_ms(board) if cap_ms is None else cap_ms
        self._start_ms = None
        self.timed_out = False

    def step(self, hal):
        """Command the actuator for this period; returns the drive commanded
        (0 once the drive is off)."""
        now_ms = hal.clock.ticks_ms()
        if self._start_ms is None:
            self._start_ms = now_ms
        if not self.timed_out and ticks_diff(now_ms, self._start_ms) > self.cap_ms:
            self.timed_out = True  # stays off: a return that failed is not retried
        if self.timed_out or hal.home.closed():
            hal.actuator.off()
            drive = 0
        else:
            drive = self.drive_permille
            hal.actuator.drive(drive)
        hal.indicator.set(True, True)  # alarm: nothing normal is running
        hal.wdt.feed()
        return drive


def run(hal, board, time_module=None, ticks=None):
    """The last-resort loop on the board: ``LastResort.step`` once per
    control period, forever (``ticks``: a count, for tests).

    It starts the watchdog after the first step if nothing did before (a hung
    routine then resets the board, and the next boot tries again). Ctrl-C on
    the serial line is enabled only while the home switch is closed and the
    drive is off, as in the App; a KeyboardInterrupt propagates to the
    caller, which must switch the drive off. Returns the LastResort.
    """
    if time_module is None:
        import time as time_module
    period_ms = 1000 // board["control_hz"]
    routine = LastResort(board)
    console = getattr(hal, "console", None)
    if console is not None:
        console.allow_interrupt(False)
    interrupt_allowed = False
    watchdog_started = False
    while ticks is None or ticks > 0:
        if ticks is not None:
            ticks -= 1
        drive = routine.step(hal)
        if not watchdog_started:
            start = getattr(hal.wdt, "start_watchdog", None)
            if start is not None:
                start()
            watchdog_started = True
        allowed = drive == 0 and hal.home.closed()
        if console is not None and allowed != interrupt_allowed:
            console.allow_interrupt(allowed)
            interrupt_allowed = allowed
        time_module.sleep_ms(period_ms)
    return routine
