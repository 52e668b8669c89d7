# supervise.py: what stays resident while the firmware runs: the app's loop
# with its safe endings, and the plain-GPIO drive-off. firmware.start (boot
# only: let go of once the board is built) makes a Supervisor; the boot
# loader (main.py) calls its run().
#
# - The app's run() returns, or Ctrl-C reaches it (only at rest at HOME, the
#   app's console policy): the drive is switched off; at the REPL the started
#   watchdog is kept fed from a timer (maintenance).
# - It raises (app_crashed): drive off, then firmware.last_resort: slowly
#   towards home until the home switch closes or a time cap runs out, alarm
#   on, watchdog fed by that loop only (last_resort_crashed if even that
#   cannot run).

import json

# GPIOs never to touch, even while switching the motor pins off with a board
# file that failed validation: flash/PSRAM (touching them hangs the chip),
# USB and UART0 (the console that reports the error).
_NEVER_TOUCH = {
    "esp32": (1, 3, 6, 7, 8, 9, 10, 11),
    "esp32s3": (19, 20, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 43, 44),
}


def report(code, message):
    print(json.dumps({"event": "boot_error", "code": code, "message": message}))


def allow_ctrl_c():
    try:
        import micropython

        micropython.kbd_intr(3)
    except Exception:
        pass


def motor_pins_low(board):
    """Drive the motor driver's pins low with plain GPIO: bridge disabled."""
    if not isinstance(board, dict):
        return  # no board file: the pins stay floating inputs as after reset
    never = _NEVER_TOUCH.get(board.get("chip"))
    actuator = board.get("actuator")
    if never is None or not isinstance(actuator, dict):
        return
    try:
        import machine
    except ImportError:
        return
    for key in ("enable", "pwm_fwd", "pwm_rev"):  # enable first
        pin = actuator.get(key)
        if isinstance(pin, int) and pin not in never:
            try:
                machine.Pin(pin, machine.Pin.OUT, value=0)
            except Exception:
                pass


def drive_off(hal, board):
    if hal is not None:
        try:
            hal.actuator.off()
        except Exception:
            pass
    motor_pins_low(board)


_maintenance_timer = []  # keeps the feeding timer referenced (not collected)


def maintenance_watchdog(hal):
    """At the REPL after Ctrl-C (only possible at HOME, drive off), keep the
    started watchdog fed from a hardware timer: machine.WDT cannot be stopped,
    and without this the board would reset under mpremote a moment after the
    interrupt. Nothing drives the motor now, which is what the watchdog
    guards; a reset (e.g. the end of a deploy) restarts the firmware and the
    watchdog with it."""
    wdt = getattr(hal, "wdt", None)
    if wdt is None or not getattr(wdt, "started", False):
        return
    try:
        import machine

        from firmware.esp32_hal import MAINTENANCE_TIMER_ID

        timer = machine.Timer(MAINTENANCE_TIMER_ID)
        period_ms = max(50, wdt.timeout_ms // 4)
        timer.init(mode=machine.Timer.PERIODIC, period=period_ms, callback=lambda t: wdt.feed())
        _maintenance_timer.append(timer)
    except Exception as e:
        report("maintenance_watchdog", "cannot keep the watchdog fed at the REPL: %r" % (e,))


class Supervisor:
    """The app's run() with its safe endings; what firmware.start built."""

    def __init__(self, hal, board, run, reset_fault):
        self.hal = hal
        self.board = board
        self._run = run
        self.reset_fault = reset_fault

    def run(self):
        hal, board = self.hal, self.board
        try:
            self._run(hal, board, reset_fault=self.reset_fault)
        except KeyboardInterrupt:
            # Ctrl-C is only enabled at HOME (the app's console policy): REPL time.
            drive_off(hal, board)
            maintenance_watchdog(hal)
        except Exception as e:
            # The App could not be built, or its own safe path did not hold.
            drive_off(hal, board)
            report("app_crashed", "%r" % (e,))
            _last_resort(hal, board)
        else:
            drive_off(hal, board)


def _last_resort(hal, board):
    """Slowly to the home switch with no estimator (firmware.last_resort),
    forever; Ctrl-C (allowed there only at the home switch) ends it."""
    try:
        from firmware import last_resort

        last_resort.run(hal, board)
    except KeyboardInterrupt:
        drive_off(hal, board)
        maintenance_watchdog(hal)
    except Exception as e:
        # Not even that runs: drive off. A started watchdog resets the board
        # shortly and the next start tries again.
        drive_off(hal, board)
        allow_ctrl_c()
        report("last_resort_crashed", "%r" % (e,))
    else:
        drive_off(hal, board)
