"""Check a board file before anything trusts it.

``validate_board(board)`` is a pure function: it takes the ``BOARD`` dict (or
the board module) and returns a list of human-readable problems, empty when
the board is fine. It runs on the PC (host tools, tests) and on the board.
"""

try:
    from .chips import CHIPS
except ImportError:  # deployed flat on the board, beside board.py
    from chips import CHIPS

# Hard limits that no board may exceed (source documents: <= 10 deg/s).
MAX_SPEED_LIMIT_MDEG_S = 10000
MAX_ANGLE_LIMIT_MDEG = 90000
CONTROL_HZ_MIN = 20
CONTROL_HZ_MAX = 200

DRIVERS = ("bts7960", "drv8871")
IMU_TYPES = ("mpu6050",)
MPU6050_ADDRS = (0x68, 0x69)
_AXES = "xyz"


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_axis(text):
    """'+x' -> (1, 0); '-z' -> (-1, 2); anything else -> None."""
    if not isinstance(text, str) or len(text) != 2:
        return None
    if text[0] not in "+-" or text[1] not in _AXES:
        return None
    return (1 if text[0] == "+" else -1, _AXES.index(text[1]))


def _cross(a, b):
    """Signed unit-axis cross product a x b (a, b on different axes)."""
    sign = a[0] * b[0]
    if (b[1] - a[1]) % 3 != 1:  # (x,y), (y,z), (z,x) are the positive orders
        sign = -sign
    return (sign, 3 - a[1] - b[1])


def _axis_text(axis):
    return ("+" if axis[0] > 0 else "-") + _AXES[axis[1]]


def _check_int(problems, where, key, low, high, low_open=False):
    """Append a problem unless where[key] is an int within [low, high]."""
    value = where.get(key)
    if not _is_int(value):
        problems.append("%s: missing or not an integer (got %r)" % (key, value))
        return None
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        problems.append("%s = %d is outside %s%d, %d]" % (key, value, bracket, low, high))
    return value


def _check_caps(board, problems):
    _check_int(problems, board, "control_hz", CONTROL_HZ_MIN, CONTROL_HZ_MAX)
    home = board.get("home_angle_mdeg")
    if not _is_int(home) or not -90000 < home < 0:
        problems.append("home_angle_mdeg must be an integer in (-90000, 0), got %r" % (home,))
    _check_int(problems, board, "max_angle_mdeg", 0, MAX_ANGLE_LIMIT_MDEG, low_open=True)
    speed = _check_int(
        problems, board, "max_speed_mdeg_s", 0, MAX_SPEED_LIMIT_MDEG_S, low_open=True
    )
    accel = board.get("max_accel_mdeg_s2")
    if not _is_int(accel) or accel <= 0:
        problems.append("max_accel_mdeg_s2 must be a positive integer, got %r" % (accel,))
    actuator_speed = board.get("actuator_speed_mdeg_s")
    if not _is_int(actuator_speed):
        problems.append("actuator_speed_mdeg_s: missing or not an integer")
    elif _is_int(speed) and actuator_speed < speed:
        problems.append(
            "actuator_speed_mdeg_s = %d is below max_speed_mdeg_s = %d: the actuator "
            "cannot reach the speed cap" % (actuator_speed, speed)
        )
    recovery = board.get("recovery_speed_mdeg_s")
    if recovery is not None and (
        not _is_int(recovery) or recovery <= 0 or (_is_int(speed) and recovery > speed)
    ):
        problems.append(
            "recovery_speed_mdeg_s must be an integer in (0, max_speed_mdeg_s], got %r"
            % (recovery,)
        )
    session_cap = board.get("max_inverted_ms", 600000)
    if not _is_int(session_cap) or not 10000 <= session_cap <= 3600000:
        problems.append("max_inverted_ms must be an integer in [10000, 3600000], got %r"
                        % (session_cap,))
        session_cap = 10000
    daily_cap = board.get("max_daily_inverted_ms", 1200000)
    if not _is_int(daily_cap) or not session_cap <= daily_cap <= 86400000:
        problems.append("max_daily_inverted_ms must be an integer in [max_inverted_ms, "
                        "86400000], got %r" % (daily_cap,))
    wdt = board.get("wdt_timeout_ms")
    if wdt is not None and (not _is_int(wdt) or not 500 <= wdt <= 10000):
        problems.append("wdt_timeout_ms must be an integer in [500, 10000], got %r" % (wdt,))


def _check_imu(imu, chip, problems):
    """IMU settings; returns its (role, pin) list."""
    if not isinstance(imu, dict):
        problems.append("imu: missing or not a dict")
        return []
    if imu.get("type") not in IMU_TYPES:
        problems.append("imu.type %r is not one of %s" % (imu.get("type"), ", ".join(IMU_TYPES)))
    if imu.get("i2c_id") not in chip["i2c_ids"]:
        problems.append("imu.i2c_id %r is not a hardware I2C bus" % (imu.get("i2c_id"),))
    if imu.get("addr", 0x68) not in MPU6050_ADDRS:
        problems.append("imu.addr %r: an MPU-6050 answers at 0x68 or 0x69" % (imu.get("addr"),))
    freq = imu.get("freq_hz", 400000)
    if not _is_int(freq) or not 10000 <= freq <= 400000:
        problems.append("imu.freq_hz must be an integer in [10000, 400000], got %r" % (freq,))
    if imu.get("accel_fs_g", 2) not in (2, 4, 8, 16):
        problems.append("imu.accel_fs_g must be 2, 4, 8 or 16")
    if imu.get("gyro_fs_dps", 500) not in (250, 500, 1000, 2000):
        problems.append("imu.gyro_fs_dps must be 250, 500, 1000 or 2000")
    offset = imu.get("offset_mdeg", 0)
    if not _is_int(offset) or not -45000 <= offset <= 45000:
        problems.append("imu.offset_mdeg must be an integer in [-45000, 45000]")
    along = _parse_axis(imu.get("along"))
    normal = _parse_axis(imu.get("normal"))
    gyro = _parse_axis(imu.get("gyro"))
    for key, axis in (("along", along), ("normal", normal), ("gyro", gyro)):
        if axis is None:
            problems.append(
                "imu.%s %r is not a signed axis like '+x' or '-z'" % (key, imu.get(key))
            )
    if along is not None and normal is not None and gyro is not None:
        if len({along[1], normal[1], gyro[1]}) != 3:
            problems.append("imu axes along/normal/gyro must be three different axes")
        else:
            # Head going down turns the along axis towards -normal: a rotation
            # about normal x along (right-handed gyro, as the MPU-6050's).
            expected = _cross(normal, along)
            if expected != gyro:
                problems.append(
                    "imu.gyro is %r but a right-handed sensor with along=%r and normal=%r "
                    "measures head-down rotation about %r (normal x along)"
                    % (imu.get("gyro"), imu.get("along"), imu.get("normal"), _axis_text(expected))
                )
    return [("imu.sda", imu.get("sda"), "io"), ("imu.scl", imu.get("scl"), "io")]


def _check_actuator(act, problems):
    """Actuator settings; returns its (role, pin, kind) list."""
    if not isinstance(act, dict):
        problems.append("actuator: missing or not a dict")
        return []
    driver = act.get("driver")
    if driver not in DRIVERS:
        problems.append("actuator.driver %r is not one of %s" % (driver, ", ".join(DRIVERS)))
        return []
    pins = [
        ("actuator.pwm_fwd", act.get("pwm_fwd"), "motor"),
        ("actuator.pwm_rev", act.get("pwm_rev"), "motor"),
    ]
    # BTS7960 switches at most 25 kHz; DRV8871 up to 200 kHz (we allow 100 kHz).
    max_hz = 25000 if driver == "bts7960" else 100000
    hz = act.get("pwm_hz")
    if not _is_int(hz) or not 1000 <= hz <= max_hz:
        problems.append("actuator.pwm_hz must be an integer in [1000, %d], got %r" % (max_hz, hz))
    if driver == "bts7960":
        pins.append(("actuator.enable", act.get("enable"), "motor"))
        pins.append(("actuator.sense_adc", act.get("sense_adc"), "adc"))
        mv = act.get("overload_mv")
        if not _is_int(mv) or not 100 <= mv <= 3100:
            problems.append(
                "actuator.overload_mv must be an integer in [100, 3100], got %r" % (mv,)
            )
    return pins


def _check_pins(pins, board, chip, problems):
    unusable = set(chip["reserved"])
    if board.get("octal_psram", True):
        unusable.update(chip["octal_psram"])
    seen = {}
    for role, pin, kind in pins:
        if not _is_int(pin):
            problems.append("%s: missing or not a GPIO number (got %r)" % (role, pin))
            continue
        if pin in seen:
            problems.append("GPIO%d is used twice: %s and %s" % (pin, seen[pin], role))
            continue
        seen[pin] = role
        if pin not in chip["gpio"]:
            problems.append("%s: GPIO%d does not exist on %s" % (role, pin, board["chip"]))
            continue
        if pin in unusable:
            problems.append(
                "%s: GPIO%d is wired to flash/PSRAM/USB on %s" % (role, pin, board["chip"])
            )
            continue
        if pin in chip["uart0"]:
            problems.append("%s: GPIO%d is a UART0 pin (REPL and boot log)" % (role, pin))
            continue
        input_only = pin in chip["input_only"]
        if kind == "motor":
            if pin in chip["strapping"]:
                problems.append(
                    "%s: GPIO%d is a strapping pin; it glitches at boot and must never "
                    "drive the motor" % (role, pin)
                )
            if input_only:
                problems.append("%s: GPIO%d is input-only and cannot drive the motor" % (role, pin))
        elif kind in ("io", "out") and input_only:
            problems.append("%s: GPIO%d is input-only and cannot drive an output" % (role, pin))
        elif kind in ("pullup", "pullup_closed") and input_only:
            problems.append(
                "%s: GPIO%d is input-only and has no internal pull-up; the input would float"
                % (role, pin)
            )
        elif kind == "adc" and pin not in chip["adc1"]:
            problems.append("%s: GPIO%d is not an ADC1 pin" % (role, pin))
        if kind == "pullup_closed" and pin in chip["strapping"]:
            problems.append(
                "%s: GPIO%d is a strapping pin; a contact that is closed at power-up holds it "
                "low and can change the boot mode" % (role, pin)
            )


def validate_board(board):
    """Return the list of problems with a board (dict or module); [] = valid."""
    board = getattr(board, "BOARD", board)
    if not isinstance(board, dict):
        return ["board: BOARD is not a dict"]
    problems = []
    if not isinstance(board.get("name"), str):
        problems.append("name: missing or not a string")
    chip = CHIPS.get(board.get("chip"))
    if chip is None:
        problems.append(
            "chip %r is unknown (known: %s)" % (board.get("chip"), ", ".join(sorted(CHIPS)))
        )
        return problems
    _check_caps(board, problems)
    pins = _check_imu(board.get("imu"), chip, problems)
    pins += _check_actuator(board.get("actuator"), problems)
    pins += [
        ("go_pin", board.get("go_pin"), "pullup"),
        # NC STOP contact is closed at power-up; so is HOME with the table upright.
        ("stop_pin", board.get("stop_pin"), "pullup_closed"),
        ("home_pin", board.get("home_pin"), "pullup_closed"),
        ("beeper_pin", board.get("beeper_pin"), "out"),
        ("led_pin", board.get("led_pin"), "out"),
    ]
    if board.get("grip_pin") is not None:  # optional dead-man grip, NO contact to GND
        pins.append(("grip_pin", board.get("grip_pin"), "pullup"))
    _check_pins(pins, board, chip, problems)
    return problems
