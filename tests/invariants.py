"""Safety invariants checked on scenario traces (shared by the test modules).

A *trace* is the list of rows ``hal_sim.scenario.run`` hands to its ``sink``,
one per control tick, with the fields of ``scenario.COLUMNS``. Use
:func:`record` to run a scenario and get ``(summary, rows)``.

Every ``check_*`` function raises ``AssertionError`` with a message naming the
tick (``t_ms``) and the values when an invariant is broken, and returns
something useful (a measured figure) when it holds, so a test can also make
finer assertions. The functions never modify their inputs.

The invariants come from the safety model in DESIGN.md:

==========================  ===================================================
check_states_known          every row's state is a controller state (or OFF)
check_angle_cap             true angle <= min(user max, board cap) + margin
check_inverted_time         true time above 0 deg per session <= user limit
check_ref_speed             reference speed <= min(user speed, board cap)
check_ref_accel             reference acceleration <= board max accel
check_true_speed            true table speed <= board cap x load factor
check_idle_no_drive         drive is 0 in HOME / REST / WARN / BOOT
check_stop_responses        after STOP: bounded rise, then no rise until home
check_ends_safe             the run ends in HOME or FAULT
check_all                   all of the above with their default tolerances
==========================  ===================================================

``board``, ``program`` and ``limits`` are the dicts given to ``scenario.run``
(board values in mdeg, mdeg/s, mdeg/s^2; limits in mdeg, ms, mdeg/s).
"""

from invtable.hal_sim import scenario

COL = {name: i for i, name in enumerate(scenario.COLUMNS)}
T = COL["t_ms"]
TRUE = COL["angle_true_deg"]
EST = COL["angle_est_deg"]
TARGET = COL["target_deg"]
REF_SPEED = COL["ref_speed_deg_s"]
STATE = COL["state"]
DRIVE = COL["drive"]
FAULT_COL = COL["fault"]
INVERTED = COL["inverted_s"]
BEEP = COL["beep"]
HOME_SWITCH = COL["home_switch"]
STOP = COL["stop"]
WARNING = COL["warning"]
EVENT = COL["event"]

STATES = ("BOOT", "HOME", "WARN", "RAMP", "HOLD", "RETURN", "PAUSE", "REST", "FAULT", "OFF")
MOVING_STATES = ("RAMP", "HOLD", "RETURN", "PAUSE")
IDLE_STATES = ("BOOT", "HOME", "REST", "WARN")  # the table must not be driven here
END_STATES = ("HOME", "FAULT")

ANGLE_MARGIN_DEG = 1.0  # DESIGN.md: "by more than a small margin"
# Speed the sim's actuator gains when gravity helps (hal_sim.physics:
# ASSIST_SPEEDUP 5 % for an 80 kg rider), plus 1 % for the finite difference.
TRUE_SPEED_FACTOR = 1.06
# Actuator lag allowance in the STOP rise bound: the actuator follows the drive
# through a first-order lag (tau 0.1 s, board actuator_lag_ms 100) and the
# firmware reacts on the next tick, so the table coasts about v x 0.15 s on
# top of the reference's braking distance; 0.3 deg covers backlash already
# taken up in the head-down direction and the tracking error at the STOP.
STOP_LAG_S = 0.15
STOP_EXTRA_DEG = 0.3
# The true angle is a float from the physics integration: "no rise" means no
# rise beyond float rounding. No backlash tolerance is needed: the sim's
# actuator is self-locking, so once its speed is <= 0 under a drive <= 0 the
# table can only stay or go down.
RISE_EPS_DEG = 1e-9


def record(board, program, limits, events=(), **kwargs):
    """Run ``scenario.run`` and collect its trace: returns ``(summary, rows)``."""
    rows = []
    summary = scenario.run(board, program, limits, events=list(events), sink=rows.append, **kwargs)
    return summary, rows


def dt_ms_of(board):
    """The control period in ms (one trace row per tick)."""
    return 1000 // board["control_hz"]


def angle_cap_deg(board, limits):
    """min(user max angle, board cap) in degrees."""
    return min(limits["max_angle_mdeg"], board["max_angle_mdeg"]) / 1000.0


def speed_cap_deg_s(board, limits):
    """min(user max speed, board cap) in deg/s."""
    return min(limits["max_speed_mdeg_s"], board["max_speed_mdeg_s"]) / 1000.0


def stop_rise_allowance_deg(board, limits):
    """How far the true angle may still rise after STOP, in degrees.

    Braking distance v^2 / 2a from the speed limit v = min(user, board) and
    the board's acceleration limit a, plus the actuator-lag allowance
    v x STOP_LAG_S + STOP_EXTRA_DEG (see the constants above).
    """
    v = speed_cap_deg_s(board, limits)
    a = board["max_accel_mdeg_s2"] / 1000.0
    return v * v / (2 * a) + v * STOP_LAG_S + STOP_EXTRA_DEG


def _where(row):
    return f"t={row[T]} ms state={row[STATE]} event={row[EVENT]!r}"


def states_seq(rows):
    """The sequence of distinct consecutive states, e.g. ['BOOT', 'HOME', 'WARN', ...]."""
    seq = []
    for row in rows:
        if not seq or seq[-1] != row[STATE]:
            seq.append(row[STATE])
    return seq


def check_states_known(rows):
    for row in rows:
        assert row[STATE] in STATES, "unknown state at " + _where(row)


def check_angle_cap(rows, board, limits, margin_deg=ANGLE_MARGIN_DEG):
    """True angle never above min(user max, board cap) + margin. Returns the max."""
    cap = angle_cap_deg(board, limits) + margin_deg
    peak = max(row[TRUE] for row in rows)
    for row in rows:
        assert row[TRUE] <= cap, f"angle {row[TRUE]:.3f} deg > cap {cap:.3f} deg at {_where(row)}"
    return peak


def check_inverted_time(rows, board, limits, slack_ticks=1):
    """True time above 0 deg in each session <= the user's limit (+ slack ticks).

    A session is counted from the tick it leaves HOME until it is back in HOME
    (REST between sets belongs to the session: the budget is per session, as
    the controller's ``inverted_ms`` is). Returns the longest session's
    inverted time in ms.
    """
    dt = dt_ms_of(board)
    limit = min(max(int(limits["max_inverted_ms"]), 0), 3600000) + slack_ticks * dt
    worst = 0
    acc = 0
    for row in rows:
        if row[STATE] == "HOME":
            acc = 0
        if row[TRUE] > 0:
            acc += dt
            assert acc <= limit, f"inverted {acc} ms > limit {limit} ms at {_where(row)}"
        if acc > worst:
            worst = acc
    return worst


def check_ref_speed(rows, board, limits, rounding=1e-9):
    """|reference speed| <= min(user speed, board cap). Returns the max seen.

    Note for fault traces: on a trusted-angle fault return or a recovery after
    a reset the controller uses the board's ``recovery_speed_mdeg_s``, which is
    below the board cap but not necessarily below a user speed under 2 deg/s.
    """
    cap = speed_cap_deg_s(board, limits) + rounding
    peak = 0.0
    for row in rows:
        v = row[REF_SPEED]
        if v is None:
            continue
        peak = max(peak, abs(v))
        assert abs(v) <= cap, f"ref speed {v:.3f} > {cap:.3f} deg/s at {_where(row)}"
    return peak


def check_ref_accel(rows, board, rounding_deg_s2=0.051):
    """|d(ref speed)/dt| <= board max accel, between consecutive rows of motion.

    Only pairs of rows where the reference is in use on both ticks are
    compared (RAMP, HOLD, RETURN, PAUSE and FAULT); the reference is re-based
    (``Profile.reset``) when the controller enters HOME, REST or WARN, where
    the drive is off. The rounding allowance is one mdeg/s per 20 ms tick.
    Returns the largest acceleration seen in deg/s^2.
    """
    dt_s = dt_ms_of(board) / 1000.0
    cap = board["max_accel_mdeg_s2"] / 1000.0 + rounding_deg_s2
    peak = 0.0
    used = MOVING_STATES + ("FAULT",)
    for prev, row in zip(rows, rows[1:], strict=False):
        if prev[STATE] not in used or row[STATE] not in used:
            continue
        if prev[REF_SPEED] is None or row[REF_SPEED] is None:
            continue
        a = abs(row[REF_SPEED] - prev[REF_SPEED]) / dt_s
        peak = max(peak, a)
        assert a <= cap, f"ref accel {a:.3f} > {cap:.3f} deg/s^2 at {_where(row)}"
    return peak


def check_true_speed(rows, board, factor=TRUE_SPEED_FACTOR):
    """True table speed (finite difference per tick) <= board cap x factor."""
    dt_s = dt_ms_of(board) / 1000.0
    cap = board["max_speed_mdeg_s"] / 1000.0 * factor
    peak = 0.0
    for prev, row in zip(rows, rows[1:], strict=False):
        v = abs(row[TRUE] - prev[TRUE]) / dt_s
        peak = max(peak, v)
        assert v <= cap, f"true speed {v:.3f} > {cap:.3f} deg/s at {_where(row)}"
    return peak


def check_idle_no_drive(rows, states=IDLE_STATES):
    """The drive is 0 on every tick spent in ``states`` (HOME, REST, WARN, BOOT)."""
    for row in rows:
        if row[STATE] in states:
            assert row[DRIVE] == 0, f"drive {row[DRIVE]} in {row[STATE]} at {_where(row)}"


def stop_presses(rows):
    """Indices of the rows where the STOP input goes from released to pressed."""
    out = []
    prev = 0
    for i, row in enumerate(rows):
        if row[STOP] and not prev:
            out.append(i)
        prev = row[STOP]
    return out


def check_stop_response(rows, index, board, limits):
    """One STOP press at ``rows[index]``: the rise is bounded, then no rise.

    From the tick before the press until the controller is next in HOME or
    FAULT (or the trace ends), the true angle rises at most
    ``stop_rise_allowance_deg`` above where it was at the press (0 if the
    table was not in a moving state then), and once it has started to fall
    it never rises again. Also no set starts again (no RAMP) in that window.
    Returns ``(rise_deg, end_index)``; ``end_index`` is the first HOME/FAULT
    row after the press (``len(rows)`` if none).
    """
    start = max(index - 1, 0)
    was = rows[start][STATE]
    allowance = stop_rise_allowance_deg(board, limits) if was in MOVING_STATES else 0.0
    a0 = rows[start][TRUE]
    end = len(rows)
    peak = a0
    falling = False
    prev = a0
    for j in range(index, len(rows)):
        row = rows[j]
        if row[STATE] in END_STATES:
            end = j
            break
        assert row[STATE] != "RAMP" or was == "WARN" and j == index, (
            f"a set restarted after STOP at {_where(row)}"
        )
        a = row[TRUE]
        if a > peak:
            peak = a
        assert peak - a0 <= allowance + RISE_EPS_DEG, (
            f"after STOP (pressed at {_where(rows[index])}) the angle rose "
            f"{peak - a0:.3f} deg > {allowance:.3f} deg at {_where(row)}"
        )
        if a < prev - RISE_EPS_DEG:
            falling = True
        elif falling:
            assert a <= prev + RISE_EPS_DEG, (
                f"after STOP (pressed at {_where(rows[index])}) the angle rose again "
                f"{prev:.6f} -> {a:.6f} at {_where(row)}"
            )
        prev = a
    return peak - a0, end


def check_stop_responses(rows, board, limits):
    """:func:`check_stop_response` for every STOP press in the trace; returns the max rise."""
    worst = 0.0
    for index in stop_presses(rows):
        rise, _ = check_stop_response(rows, index, board, limits)
        worst = max(worst, rise)
    return worst


def check_ends_safe(summary, rows=None):
    """The run ends in HOME or FAULT (and, if a trace is given, its last row agrees)."""
    assert summary["final_state"] in END_STATES, "run ended in " + repr(summary["final_state"])
    if rows:
        assert rows[-1][STATE] in END_STATES, "trace ended in " + rows[-1][STATE]
        if rows[-1][STATE] == "HOME":
            assert rows[-1][DRIVE] == 0


def check_all(summary, rows, board, limits):
    """Every invariant above with default tolerances. Returns a dict of measured peaks."""
    check_states_known(rows)
    out = {
        "max_angle_deg": check_angle_cap(rows, board, limits),
        "inverted_ms": check_inverted_time(rows, board, limits),
        "ref_speed_deg_s": check_ref_speed(rows, board, limits),
        "ref_accel_deg_s2": check_ref_accel(rows, board),
        "true_speed_deg_s": check_true_speed(rows, board),
        "stop_rise_deg": check_stop_responses(rows, board, limits),
    }
    check_idle_no_drive(rows)
    check_ends_safe(summary, rows)
    return out
