# start.py: the firmware's start-up, run by the boot loader (/main.py) once
# it has checked this firmware's slot against its manifest (loader.py). It is
# versioned with the firmware: the loader only puts this slot first on
# sys.path, calls main(slot) and runs the Supervisor it returns
# (firmware/supervise.py: the part that stays resident).
#
# Load the board file, build the ESP32 HAL and hand both to the application.
# Every start-up problem prints one JSON line on the serial console:
#   {"event": "boot_error", "code": ..., "message": ...}
#
# - No board file, an invalid one, a HAL or application that cannot be
#   loaded (board_missing, board_invalid, hal_error, app_missing): nothing
#   can be trusted to drive the motor. The drive is switched off (directly
#   on the pins if the HAL could not be built) and main() returns None: the
#   board idles with the REPL available (for mpremote).
# - The IMU missing or failing its WHO_AM_I (imu_not_found): the rest of the
#   HAL is built with an IMU that always fails to read, and the application
#   runs as usual. Its controller latches imu_lost (no trusted angle), sounds
#   the alarm and, if the home switch is open, drives blind to the home
#   switch, with the watchdog running: a brown-out or a loose connector
#   never leaves a rider inverted with the drive simply off.
# - The application raises (app_crashed, in the Supervisor's run()): while it
#   was being built (the App reads the flash at boot) or, against its design,
#   out of its loop. The drive is switched off and firmware.last_resort runs:
#   slowly towards home until the home switch closes or a time cap runs out,
#   alarm on, watchdog fed by that loop only. Ctrl-C reaches the REPL only
#   once it rests at the home switch.
#
# ``slot``: what the loader found ({"slot": "a", "firmware": version,
# "manifest_sha256": ..., and when it fell back, "fallback_from": the slot it
# did not run, "fallback_code": why}); kept on the HAL as ``hal.firmware``
# for the protocol's ``info``; a fallback is listed in ``hal.boot_errors``.
#
# Codes: board_missing, board_invalid, imu_not_found, hal_error, app_missing;
# supervise.py: app_crashed, last_resort_crashed, maintenance_watchdog.

class _StartError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def _load_board():
    try:
        import board as board_module
    except ImportError as e:
        raise _StartError(
            "board_missing", "board.py not found in the firmware slot (%s)" % (e,)
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


def main(slot=None):
    """Build the HAL and load the app; a Supervisor whose run() runs it (None:
    nothing can run, the drive is off and the error reported). This module
    lets go of itself: none of its code stays while the firmware runs."""
    from firmware import compat, supervise

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
        supervise.drive_off(hal, board)
        return None
    except Exception as e:
        supervise.drive_off(hal, board)
        supervise.allow_ctrl_c()
        if isinstance(e, _StartError):
            supervise.report(e.code, e.message)
        else:
            supervise.report("hal_error", "%r" % (e,))
        return None
    hal.firmware = slot
    for code, message in getattr(hal, "boot_errors", ()):
        supervise.report(code, message)  # e.g. imu_not_found: reported, then the app runs
    if slot and slot.get("fallback_code"):
        # The loader reported it (and sounded the alarm): status lists it too.
        hal.boot_errors.append((slot["fallback_code"], "the active firmware was not run"))
    reset_fault = None
    try:
        import machine

        if machine.reset_cause() == machine.WDT_RESET:
            reset_fault = "watchdog"  # the loop hung last time: report it, latch FAULT
    except Exception:
        pass
    compat.release_module("firmware.start")
    return supervise.Supervisor(hal, board, run, reset_fault)
