"""Helpers for the fault, reset and recovery tests (tests/test_faults.py).

Everything here reads a scenario trace: the rows ``hal_sim.scenario.run``
hands to its ``sink``, one per 20 ms control tick, with the fields of
``scenario.COLUMNS``. The bounds are derived from the board file and from the
firmware's documented constants, written out here on purpose (not imported)
so that a change of a documented figure in the firmware shows up as a test
failure to be looked at, not as a silently moved goal post.

Definitions used by the tests
-----------------------------
latch tick
    The first row whose ``fault`` column is not empty (after a given index).
    The ``drive`` column of that row is what the bridge got on that tick.
fault epoch
    From the latch tick to the next (re)boot of the board (a row in state OFF
    or a BOOT row after a non-BOOT one) or the end of the trace. Only a
    reboot clears a latched fault.
no drive away from home after a fault, "cut" form
    On every row *after* the latch tick the drive is <= 0. Used when the
    angle cannot be trusted (imu_lost, imu_stuck, imu_implausible) and for
    stall / overload: DESIGN.md "a fault that cannot trust the angle cuts
    drive", "Actuator stall: stop driving". Only the latch tick's own value
    is exempt.
no drive away from home after a fault, "brake" form
    For faults with a trusted angle (home_switch_stuck_closed, crash,
    watchdog) a controlled category-1 stop is allowed: after the latch tick
    the drive is never above the previous row's drive while positive
    (monotone braking), it is <= 0 at the latest ``BRAKE_MS`` after the latch
    tick, and once <= 0 it never becomes positive again.
"""

# Trace column indexes: one definition, in invariants.py.
from invariants import (  # noqa: F401 - re-exported for test_faults
    BEEP,
    COL,
    DRIVE,
    EST,
    EVENT,
    HOME_SWITCH,
    REF_SPEED,
    STATE,
    STOP,
    TRUE,
    WARNING,
    T,
)
from invariants import FAULT_COL as FAULT  # noqa: F401

from invtable.boards.esp32_devkitc import BOARD
from invtable.firmware import controller, stall
from invtable.firmware.hal import DRIVE_DEADLINE_MS
from invtable.hal_sim import scenario

# The documented fault codes (firmware/controller.py F_*): stable strings that
# the host, the session log and these tests rely on.
FAULT_CODES = (
    "imu_lost",
    "imu_stuck",
    "imu_implausible",
    "stall",
    "overload",
    "home_switch_stuck_closed",
    "home_switch_open",
    "home_not_reached",
    "crash",
    "watchdog",
)
UNTRUSTED_ANGLE_CODES = ("imu_lost", "imu_stuck", "imu_implausible")

# Documented firmware / simulator figures (see the module docstring).
BOOT_SETTLE_MS = controller.BOOT_SETTLE_MS  # estimator start-up after a boot
RETRY_PAUSE_MS = controller.RETRY_PAUSE_MS  # drive off before the retry
RETRY_CHECK_MS = controller.RETRY_CHECK_MS  # the retry must show motion
STALL_WINDOW_MS = stall.WINDOW_MS
HOME_SEEK_MS = controller.HOME_SEEK_MS  # creep into the switch
HOME_SWITCH_FAR_DEG = controller.HOME_SWITCH_FAR_MDEG / 1000
WATCHDOG_MS = BOARD["wdt_timeout_ms"]  # 500 ms, the board's hardware watchdog
POWER_OFF_MS = scenario.POWER_OFF_MS  # 500 ms dark after a power loss
HOME_SWITCH_TOLERANCE_DEG = 1.5  # hal_sim SimHomeSwitch: closed within 1.5 deg of home
LOW_STOP_BELOW_HOME_DEG = 1.0  # hal_sim physics: end stop 1 deg past home
ANGLE_MARGIN_DEG = 1.0  # DESIGN.md "a small margin" on the angle cap


def dt_ms(board):
    return 1000 // board["control_hz"]


def home_deg(board):
    return board["home_angle_mdeg"] / 1000.0


def angle_cap_deg(board, limits):
    return min(limits["max_angle_mdeg"], board["max_angle_mdeg"]) / 1000.0


def session_speed_deg_s(board, program, limits):
    """The speed a session really runs at (program.Session clamps it)."""
    cap = max(100, min(limits["max_speed_mdeg_s"], board["max_speed_mdeg_s"]))
    return max(100, min(program["speed_mdeg_s"], cap)) / 1000.0


def commissioned(board, seed=0):
    """The board as the firmware runs it: the board file with what
    commissioning measured on the simulated table (scenario.AUTO)."""
    from invtable.firmware.calibration import effective_board

    return effective_board(board, scenario.commissioned_calibration(board, seed))


def recovery_permille(board, seed=0):
    """Drive of the slow blind / retry return, in permille (about 166 on the
    DevKitC): from the actuator speed commissioning measured."""
    board = commissioned(board, seed)
    return board["recovery_speed_mdeg_s"] * 1000 // board["actuator_speed_mdeg_s"]


def blind_cap_ms(board, seed=0, program=None, limits=None):
    """Time cap of a way home: the whole travel at the slowest speed it may
    use plus half again, plus 5 s (about 117.5 s on the DevKitC at its
    recovery speed), from the home angle commissioning measured. With a
    session, a slower user's speed is that slowest speed (no way home is
    faster than the user's)."""
    board = commissioned(board, seed)
    travel_mdeg = board["max_angle_mdeg"] - board["home_angle_mdeg"]
    speed = board["recovery_speed_mdeg_s"]
    if program is not None:
        speed = min(speed, int(session_speed_deg_s(board, program, limits) * 1000))
    return travel_mdeg * 3 // 2 * 1000 // speed + 5000


def brake_ms(board):
    """Longest controlled stop: board speed cap / board accel, plus the actuator lag."""
    return board["max_speed_mdeg_s"] * 1000 // board["max_accel_mdeg_s2"] + board.get(
        "actuator_lag_ms", 0
    )


def drive_off_bound_ms(board, program=None, limits=None):
    """After a latch, the drive is off for good within this (every way home
    is capped, at the speed it uses)."""
    return blind_cap_ms(board, program=program, limits=limits) + 2 * dt_ms(board)


def hang_overshoot_deg(board, program, limits, lag_ms=None):
    """How far past the angle cap a hung loop may carry the table: the drive
    keeps its last command until the HAL's drive deadline (0.1 s, not the
    watchdog's 0.5 s) cuts it, so the session speed x that deadline, plus
    one actuator lag of coasting (``lag_ms``: the real table's; default the
    board file's)."""
    v = session_speed_deg_s(board, program, limits)
    if lag_ms is None:
        lag_ms = board.get("actuator_lag_ms", 0)
    return v * (DRIVE_DEADLINE_MS + lag_ms) / 1000.0


def record(board, program, limits, events=(), **kwargs):
    rows = []
    summary = scenario.run(board, program, limits, events=list(events), sink=rows.append, **kwargs)
    return summary, rows


def where(row):
    return (
        f"t={row[T]} ms state={row[STATE]} fault={row[FAULT]!r} drive={row[DRIVE]} "
        f"angle={row[TRUE]:.2f} est={row[EST]} event={row[EVENT]!r}"
    )


def index_at(rows, t_ms):
    """Index of the first row at or after ``t_ms``."""
    for i, row in enumerate(rows):
        if row[T] >= t_ms:
            return i
    raise AssertionError(f"trace ends at {rows[-1][T]} ms, before {t_ms} ms")


def latch_index(rows, start=0):
    """Index of the latch tick: first row at/after ``start`` with a fault, or None."""
    for i in range(start, len(rows)):
        if rows[i][FAULT]:
            return i
    return None


def epoch_end(rows, start):
    """First index after ``start`` where the board is off or booting again."""
    for j in range(start + 1, len(rows)):
        state = rows[j][STATE]
        if state == "OFF" or (state == "BOOT" and rows[j - 1][STATE] != "BOOT"):
            return j
    return len(rows)


def boot_indices(rows):
    """Indices of the first row of every boot (the first row of the trace included)."""
    out = [0]
    for j in range(1, len(rows)):
        if rows[j][STATE] == "BOOT" and rows[j - 1][STATE] != "BOOT":
            out.append(j)
    return out


def check_fault_column(rows):
    """Every fault seen is a documented code; while one is latched the state
    reads FAULT and the code does not change until the board reboots."""
    latched = ""
    for j, row in enumerate(rows):
        code = row[FAULT]
        if j and (row[STATE] == "OFF" or (row[STATE] == "BOOT" and rows[j - 1][STATE] != "BOOT")):
            latched = ""
        if row[STATE] == "OFF":
            continue
        if code:
            assert isinstance(code, str) and code in FAULT_CODES, "unknown fault code at " + where(
                row
            )
            assert row[STATE] == "FAULT", "fault latched but state is not FAULT at " + where(row)
            assert not latched or code == latched, (
                f"fault code changed {latched!r} -> {code!r} at {where(row)}"
            )
            latched = code
        else:
            assert not latched, (
                f"latched fault {latched!r} cleared without a reboot at {where(row)}"
            )
            assert row[STATE] != "FAULT", "state FAULT with no fault code at " + where(row)


def check_cut(rows, i):
    """The "cut" form (module docstring): drive <= 0 on every row after the latch tick."""
    for row in rows[i + 1 :]:
        assert row[DRIVE] <= 0, (
            f"drive away from home after the fault latched at {where(rows[i])}: {where(row)}"
        )


def check_brake(rows, i, board):
    """The "brake" form (module docstring): monotone braking, then never positive."""
    limit_t = rows[i][T] + brake_ms(board)
    prev = rows[i][DRIVE]
    reached = prev <= 0
    for row in rows[i + 1 :]:
        d = row[DRIVE]
        if d > 0:
            assert not reached, (
                f"drive positive again after the fault latched at {where(rows[i])}: {where(row)}"
            )
            assert d <= prev, (
                f"drive rose while braking after the fault at {where(rows[i])}: {where(row)}"
            )
            took = row[T] - rows[i][T]
            assert row[T] <= limit_t, (
                f"still braking {took} ms after the fault at {where(rows[i])}: {where(row)}"
            )
        else:
            reached = True
        prev = d


def drive_off_index(rows, i, end=None):
    """First index >= i from which the drive stays 0 until ``end``; None if it
    is not 0 on the last row before ``end``."""
    end = len(rows) if end is None else end
    k = end
    while k > i and rows[k - 1][DRIVE] == 0:
        k -= 1
    return None if k == end else k


def check_alarm(rows, start, end):
    """The alarm beeps in every 1 s window of FAULT rows in [start, end)."""
    window = []
    for row in rows[start:end]:
        if row[STATE] != "FAULT":
            window = []
            continue
        window.append(row[BEEP])
        if len(window) >= 50:
            assert any(window[-50:]), "alarm silent for 1 s in FAULT at " + where(row)
    assert any(row[BEEP] for row in rows[start:end]), "no alarm beep after the fault"


def inverted_ms(rows, start=0, end=None):
    """True time above 0 deg in rows[start:end], in ms."""
    end = len(rows) if end is None else end
    if end <= start:
        return 0
    dt = rows[1][T] - rows[0][T] if len(rows) > 1 else 20
    return sum(dt for row in rows[start:end] if row[TRUE] > 0)


def level_time_bound_ms(angle_deg, speed_deg_s):
    """Time to bring the table from ``angle_deg`` down to 0 deg at ``speed_deg_s``
    against an 80 kg rider (the sim's actuator is up to 15 % slower lifting),
    plus 3 s for detection, braking and acceleration."""
    if angle_deg <= 0:
        return 3000
    return int(angle_deg / (speed_deg_s * 0.85) * 1000) + 3000
