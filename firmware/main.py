# main.py: the board's entry point (copied to the board's root beside board.py
# and the firmware/ package).
#
# Load the board file, build the ESP32 HAL and hand both to the application.
# Every start-up problem prints one JSON line on the serial console:
#   {"event": "boot_error", "code": ..., "message": ...}
#
# - No board file, an invalid one, a HAL or application that cannot be
#   loaded (board_missing, board_invalid, hal_error, app_missing): nothing
#   can be trusted to drive the motor. The drive is switched off (directly
#   on the pins if the HAL could not be built) and main.py returns: the
#   board idles with the REPL available (for mpremote).
# - The IMU missing or failing its WHO_AM_I (imu_not_found): the rest of the
#   HAL is built with an IMU that always fails to read, and the application
#   runs as usual. Its controller latches imu_lost (no trusted angle), sounds
#   the alarm and, if the home switch is open, drives blind to the home
#   switch, with the watchdog running: a brown-out or a loose connector
#   never leaves a rider inverted with the drive simply off.
# - The application raises (app_crashed): while it was being built (the App
#   reads the flash at boot) or, against its design, out of its loop. The
#   drive is switched off and firmware.last_resort runs: slowly towards home
#   until the home switch closes or a time cap runs out, alarm on, watchdog
#   fed by that loop only. Ctrl-C reaches the REPL only once it rests at
#   the home switch.
#
# Codes: board_missing, board_invalid, imu_not_found, hal_error, app_missing,
# app_crashed, last_resort_crashed.

import json

# GPIOs never to touch, even while switching the motor pins off with a board
# file that failed validation: flash/PSRAM (touching them hangs the chip),
# USB and UART0 (the console that reports the error).
_NEVER_TOUCH = {
    "esp32": (1, 3, 6, 7, 8, 9, 10, 11),
    "esp32s3": (19, 20, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 43, 44),
}


class _StartError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def _report(code, message):
    print(json.dumps({"event": "boot_error", "code": code, "message": message}))


def _allow_ctrl_c():
    try:
        import micropython

        micropython.kbd_intr(3)
    except Exception:
        pass


def _motor_pins_low(board):
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


def _drive_off(hal, board):
    if hal is not None:
        try:
            hal.actuator.off()
        except Exception:
            pass
    _motor_pins_low(board)


def _load_board():
    try:
        import board as board_module
    except ImportError as e:
        raise _StartError(
            "board_missing", "board.py not found beside main.py (%s)" % (e,)
        ) from None
    except Exception as e:
        raise _StartError("board_invalid", "board.py failed to load: %r" % (e,)) from None
    board = getattr(board_module, "BOARD", None)
    if not isinstance(board, dict):
        raise _StartError("board_invalid", "board.py defines no BOARD dict")
    return board


def _validate(board):
    # The validator is optional on the board (boards/ package or flat files).
    try:
        from boards.validate import validate_board
    except ImportError:
        try:
            from validate import validate_board
        except ImportError:
            return
    problems = validate_board(board)
    if problems:
        raise _StartError("board_invalid", "; ".join(problems))


_maintenance_timer = []  # keeps the feeding timer referenced (not collected)


def _maintenance_watchdog(hal):
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
        _report("maintenance_watchdog", "cannot keep the watchdog fed at the REPL: %r" % (e,))


def main():
    board = None
    hal = None
    try:
        board = _load_board()
        _validate(board)
        try:
            from firmware import esp32_hal
        except Exception as e:
            raise _StartError("hal_error", "firmware.esp32_hal failed to load: %r" % (e,)) from None
        try:
            hal = esp32_hal.build(board, allow_missing_imu=True)
        except esp32_hal.BootError as e:
            raise _StartError(e.code, e.message) from None
        try:
            from firmware.app import run
        except Exception as e:
            raise _StartError("app_missing", "firmware.app failed to load: %r" % (e,)) from None
    except KeyboardInterrupt:  # Ctrl-C during start-up: to the REPL, drive off
        _drive_off(hal, board)
        return
    except Exception as e:
        _drive_off(hal, board)
        _allow_ctrl_c()
        if isinstance(e, _StartError):
            _report(e.code, e.message)
        else:
            _report("hal_error", "%r" % (e,))
        return
    for code, message in getattr(hal, "boot_errors", ()):
        _report(code, message)  # e.g. imu_not_found: reported, then the app runs
    reset_fault = None
    try:
        import machine

        if machine.reset_cause() == machine.WDT_RESET:
            reset_fault = "watchdog"  # the loop hung last time: report it, latch FAULT
    except Exception:
        pass
    try:
        run(hal, board, reset_fault=reset_fault)
    except KeyboardInterrupt:
        # Ctrl-C is only enabled at HOME (the app's console policy): REPL time.
        _drive_off(hal, board)
        _maintenance_watchdog(hal)
    except Exception as e:
        # The App could not be built, or its own safe path did not hold.
        _drive_off(hal, board)
        _report("app_crashed", "%r" % (e,))
        _last_resort(hal, board)
    else:
        _drive_off(hal, board)


def _last_resort(hal, board):
    """Slowly to the home switch with no estimator (firmware.last_resort),
    forever; Ctrl-C (allowed there only at the home switch) ends it."""
    try:
        from firmware import last_resort

        last_resort.run(hal, board)
    except KeyboardInterrupt:
        _drive_off(hal, board)
        _maintenance_watchdog(hal)
    except Exception as e:
        # Not even that runs: drive off. A started watchdog resets the board
        # shortly and the next start tries again.
        _drive_off(hal, board)
        _allow_ctrl_c()
        _report("last_resort_crashed", "%r" % (e,))
    else:
        _drive_off(hal, board)


main()
