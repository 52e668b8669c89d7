"""The thin runner around the control core: HAL in, controller, HAL out.

``App.tick`` is the whole control loop body. It is called at the board's
control rate by ``run`` on the ESP32 and as fast as the CPU allows by the
simulator. Any exception inside a tick ends in the same safe path: the drive
is switched off, a fresh controller re-acquires the angle and takes the rider
home slowly with the ``crash`` fault latched; if even that keeps failing, a
last-resort routine with no estimator drives slowly to the home switch.
"""

from .compat import const, ticks_diff
from .controller import F_CRASH, Controller, Inputs

# Crashes allowed in the recovery controller before the last-resort routine.
_MAX_CRASHES = const(3)


class App:
    def __init__(self, hal, board, reset_fault=None):
        self.hal = hal
        self.board = board
        self.inputs = Inputs()
        self.ctl = Controller(board)
        if reset_fault is not None:
            self.ctl.latch_at_boot(reset_fault)
        self.crashes = 0
        self.last_error = None  # text of the last exception caught in the loop
        self._program = None
        self._last_resort_start = None
        self._last_resort_ms = self.ctl.blind_cap_ms

    def set_program(self, program, limits):
        self._program = (program, limits)
        self.ctl.set_program(program, limits)

    def tick(self):
        """One control period. Never raises."""
        try:
            if self.crashes >= _MAX_CRASHES:
                self._last_resort()
            else:
                self._tick()
        except Exception as error:  # noqa: BLE001 - any failure must end safe
            self._crashed(error)

    def _tick(self):
        hal = self.hal
        inp = self.inputs
        now_ms = hal.clock.ticks_ms()
        try:
            hal.imu.read(inp.raw)
            inp.imu_ok = True
        except OSError:
            inp.imu_ok = False
        inp.go = hal.go.pressed()
        inp.stop = hal.stop.pressed()
        inp.home = hal.home.closed()
        inp.overload = hal.actuator.overloaded()
        ctl = self.ctl
        drive = ctl.step(now_ms, inp)
        if ctl.power:
            hal.actuator.drive(drive)
        else:
            hal.actuator.off()
        hal.indicator.set(ctl.beep, ctl.led)
        hal.wdt.feed()  # only a loop that got this far is healthy

    def _crashed(self, error):
        self.crashes += 1
        self.last_error = "%s: %s" % (type(error).__name__, error)
        try:
            self.hal.actuator.off()
        except Exception:  # noqa: BLE001
            pass
        if self.crashes >= _MAX_CRASHES:
            return  # the next ticks run the last-resort routine
        # A fresh controller: the old one's state may be what broke.
        self.ctl = Controller(self.board)
        self.ctl.latch_at_boot(F_CRASH)
        if self._program is not None:
            self.ctl.set_program(self._program[0], self._program[1])

    def _last_resort(self):
        """No estimator, no state machine: slowly to the home switch, then off."""
        hal = self.hal
        now_ms = hal.clock.ticks_ms()
        if self._last_resort_start is None:
            self._last_resort_start = now_ms
        timed_out = ticks_diff(now_ms, self._last_resort_start) > self._last_resort_ms
        if hal.home.closed() or timed_out:
            hal.actuator.off()
        else:
            board = self.board
            hal.actuator.drive(
                -(board["recovery_speed_mdeg_s"] * 1000 // board["actuator_speed_mdeg_s"])
            )
        hal.indicator.set(True, True)
        hal.wdt.feed()


def run(hal, board, app=None):
    """The board's main loop: one tick per control period, forever."""
    import time

    period_ms = 1000 // board["control_hz"]
    if app is None:
        app = App(hal, board)
    next_ms = time.ticks_ms()
    while True:
        app.tick()
        next_ms = time.ticks_add(next_ms, period_ms)
        wait_ms = time.ticks_diff(next_ms, time.ticks_ms())
        if wait_ms > 0:
            time.sleep_ms(wait_ms)
        else:
            next_ms = time.ticks_ms()  # late: do not try to catch up in a burst
