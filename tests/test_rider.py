"""The rider who cannot press STOP (issue 12): check-ins and the dead-man grip.

Unit tests of firmware/rider.py's two protections, then scenario tests on
the simulated table whose rider (hal_sim/rider.py) hears the beeper and
answers check-ins with GO, holds the grip, and after ``faint`` does neither;
and a property over random sessions, faint times and check-in intervals.
"""

import invariants as inv
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invtable.boards.esp32_devkitc import BOARD
from invtable.firmware.rider import (
    CHECK_IN_ANSWER_MS,
    END_GRIP_RELEASED,
    END_NO_RESPONSE,
    GRIP_RELEASE_MS,
    CheckIn,
    Grip,
)
from invtable.hal_sim.rider import SimRider
from invtable.host.boards import board_with_grip

DT = inv.dt_ms_of(BOARD)
T, TRUE, STATE, BEEP, EVENT = inv.T, inv.TRUE, inv.STATE, inv.BEEP, inv.EVENT
GRIP_BOARD = board_with_grip(BOARD)
# GO is debounced (switches.GoButton): a tap counts this long after it starts.
GO_DEBOUNCE_MS = 3 * DT


def session(angle=40, hold=120, speed=5, max_inverted=300, check_in=60, sets=1, rest=0):
    program = dict(angle_mdeg=angle * 1000, hold_ms=hold * 1000, sets=sets, rest_ms=rest * 1000,
                   speed_mdeg_s=speed * 1000, exit_pause_ms=0)
    limits = dict(max_angle_mdeg=angle * 1000, max_inverted_ms=max_inverted * 1000,
                  max_speed_mdeg_s=speed * 1000, check_in_ms=check_in * 1000)
    return program, limits


def first_index(rows, pred, start=0):
    return next((j for j in range(start, len(rows)) if pred(rows[j])), None)


def event_index(rows, action):
    return first_index(rows, lambda r: action in r[EVENT].split("+"))


# ------------------------------------------------------------------ units
def test_a_check_in_is_asked_after_its_interval_and_a_tap_answers_it():
    c = CheckIn()
    c.start(30000)
    for _ in range(30000 // DT - 1):
        assert c.update(DT, False) is False
    assert not c.waiting
    c.update(DT, False)
    assert c.waiting and c.asked == 1
    for _ in range(10):
        assert c.update(DT, False) is False
    assert c.update(DT, True) is False  # the tap answers
    assert not c.waiting and c.answered == 1
    for _ in range(30000 // DT - 1):  # and the interval starts again
        c.update(DT, False)
    assert not c.waiting


def test_an_unanswered_check_in_says_so_after_the_answer_time_and_not_before():
    c = CheckIn()
    c.start(10000)
    ticks = 0
    while not c.update(DT, False):
        ticks += 1
        assert ticks * DT <= 10000 + CHECK_IN_ANSWER_MS
    assert ticks * DT >= 10000 + CHECK_IN_ANSWER_MS - 2 * DT


def test_check_ins_off_ask_nothing_and_taps_do_nothing():
    c = CheckIn()
    c.start(0)
    for _ in range(100000 // DT):
        assert c.update(DT, True) is False
    assert not c.waiting and c.asked == 0


def test_the_chirp_is_short_beeps_the_simulated_rider_hears_and_warn_beeps_are_not():
    c = CheckIn()
    c.start(10000)
    rider = SimRider()
    t = 0
    while not c.waiting:
        c.update(DT, False)
        t += DT
    for _ in range(1000 // DT):
        rider.hear(t, c.chirp())
        c.update(DT, False)
        t += DT
    assert rider.heard == 1
    # The WARN pattern (250 ms on/off) and the fault alarm (500 ms) are not a check-in.
    for period_ms in (250, 500):
        other = SimRider()
        for k in range(200):
            other.hear(k * DT, (k * DT // period_ms) % 2 == 0)
        assert other.heard == 0


def test_the_grip_counts_only_a_continuous_release():
    g = Grip()
    for _ in range(3):
        for _ in range(GRIP_RELEASE_MS // DT):
            assert g.update(DT, False) is False
        assert g.update(DT, True) is False  # held again in time
    for _ in range(GRIP_RELEASE_MS // DT):
        assert g.update(DT, False) is False
    assert g.update(DT, False) is True


# -------------------------------------------------------------- scenarios
def test_the_default_rider_completes_a_session_with_check_ins_on():
    program, limits = session(hold=200)
    summary, rows = inv.record(BOARD, program, limits)
    assert summary["session_ends"] == ["completed"], summary
    assert summary["check_ins"]["heard"] >= 3
    assert summary["check_ins"]["answered"] == summary["check_ins"]["heard"]
    inv.check_all(summary, rows, BOARD, limits)


@pytest.mark.parametrize("faint_s", [4, 9, 20, 45, 70, 100])
def test_a_rider_who_faints_is_brought_home_within_the_bound(faint_s):
    """Faint in RAMP or HOLD: the return starts within interval + 10 s + a
    tick of the faint and ends at HOME inside the budget."""
    program, limits = session(angle=60, hold=150, speed=2, check_in=30)
    summary, rows = inv.record(BOARD, program, limits, events=[(1000, "go"),
                                                              (faint_s * 1000, "faint")])
    i = event_index(rows, "faint")
    assert rows[i][STATE] in ("RAMP", "HOLD"), inv._where(rows[i])
    j = first_index(rows, lambda r: r[STATE] == "RETURN", i)
    bound_ms = limits["check_in_ms"] + CHECK_IN_ANSWER_MS + DT
    assert rows[j][T] - rows[i][T] <= bound_ms, (rows[j][T] - rows[i][T], bound_ms)
    assert summary["session_ends"] == [END_NO_RESPONSE]
    assert summary["final_state"] == "HOME"
    inv.check_all(summary, rows, BOARD, limits)


def test_an_answer_after_11_s_is_too_late():
    program, limits = session(check_in=20)
    summary, rows = inv.record(BOARD, program, limits, rider_answer_ms=(11000, 11000))
    assert summary["session_ends"] == [END_NO_RESPONSE]
    i = first_index(rows, lambda r: r[STATE] == "RETURN")
    # Asked 20 s after the motion began, no answer within 10 s.
    ramp = first_index(rows, lambda r: r[STATE] == "RAMP")
    assert 30000 - DT <= rows[i][T] - rows[ramp][T] <= 30000 + 2 * DT
    inv.check_all(summary, rows, BOARD, limits)


def test_an_answer_after_9_s_is_in_time():
    program, limits = session(hold=60, check_in=20)
    summary, _rows = inv.record(BOARD, program, limits,
                                rider_answer_ms=(9000 - GO_DEBOUNCE_MS, 9000 - GO_DEBOUNCE_MS))
    assert summary["session_ends"] == ["completed"], summary


def test_the_tap_that_answers_a_check_in_never_starts_the_next_set():
    """The rider answers the last check-in by holding GO down through the end
    of the hold, the way home and the rest: the next set waits for a new press."""
    program, limits = session(angle=20, hold=35, check_in=30, sets=2, rest=10)
    events = [(1000, "go")]
    probe, rows = inv.record(BOARD, program, limits, events=events, duration_s=200,
                             rider_answer_ms=(10 ** 9, 10 ** 9))  # never answers: find the ask
    ask = first_index(rows, lambda r: r[STATE] == "HOLD" and r[BEEP])
    t_ask = rows[ask][T]
    events = [(1000, "go"), (t_ask + 500, "go_down")]
    summary, rows = inv.record(BOARD, program, limits, events=events, duration_s=200,
                               rider_answer_ms=(10 ** 9, 10 ** 9))
    assert summary["session_ends"] == [], summary  # still open: resting, waiting for GO
    rest = [r for r in rows if r[STATE] == "REST"]
    assert rest and rows[-1][STATE] == "REST", inv.states_seq(rows)
    assert summary["sets_done"] == 1


def test_letting_go_of_the_grip_returns_within_a_second_plus_braking():
    program, limits = session(angle=60, hold=60, speed=8, check_in=0)
    summary, rows = inv.record(GRIP_BOARD, program, limits,
                               events=[(1000, "go"), (9000, "grip_release")])
    i = event_index(rows, "grip_release")
    assert rows[i][STATE] == "RAMP"
    j = first_index(rows, lambda r: r[STATE] == "RETURN", i)
    assert rows[j][T] - rows[i][T] <= GRIP_RELEASE_MS + 4 * DT  # + the debounce
    rise = max(r[TRUE] for r in rows[j:]) - rows[j][TRUE]
    assert rise <= inv.stop_rise_allowance_deg(BOARD, limits)
    assert summary["session_ends"] == [END_GRIP_RELEASED]
    inv.check_all(summary, rows, GRIP_BOARD, limits)


def test_a_grip_let_go_for_less_than_a_second_does_not_end_the_session():
    program, limits = session(angle=30, hold=30, check_in=0)
    summary, _rows = inv.record(GRIP_BOARD, program, limits,
                                events=[(1000, "go"), (15000, "grip_release"),
                                        (15600, "grip_hold")])
    assert summary["session_ends"] == ["completed"]


def test_go_without_the_grip_held_is_refused():
    program, limits = session(check_in=0)
    summary, rows = inv.record(GRIP_BOARD, program, limits,
                               events=[(500, "grip_release"), (1000, "go"), (3000, "go")],
                               duration_s=10)
    assert "go_refused_grip_released" in summary["warnings_seen"]
    assert all(r[STATE] in ("BOOT", "HOME") for r in rows)


def test_a_rider_who_faints_lets_go_of_the_grip():
    program, limits = session(angle=45, hold=120, check_in=60)
    summary, rows = inv.record(GRIP_BOARD, program, limits,
                               events=[(1000, "go"), (30000, "faint")])
    i = event_index(rows, "faint")
    j = first_index(rows, lambda r: r[STATE] == "RETURN", i)
    assert rows[j][T] - rows[i][T] <= GRIP_RELEASE_MS + 4 * DT
    assert summary["session_ends"] == [END_GRIP_RELEASED]


# --------------------------------------------------------------- property
@st.composite
def faint_cases(draw):
    angle = draw(st.integers(10, 90))
    speed = draw(st.integers(1, 10))
    program, limits = session(angle=angle, hold=draw(st.integers(10, 300)), speed=speed,
                              max_inverted=draw(st.integers(60, 600)),
                              check_in=draw(st.integers(10, 120)))
    faint_ms = draw(st.integers(3500, 200000))
    return program, limits, faint_ms, draw(st.integers(0, 1000))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faint_cases())
def test_from_a_faint_to_the_return_never_exceeds_the_bound(case):
    program, limits, faint_ms, seed = case
    summary, rows = inv.record(BOARD, program, limits, seed=seed,
                               events=[(1000, "go"), (faint_ms, "faint")])
    inv.check_all(summary, rows, BOARD, limits)
    i = event_index(rows, "faint")
    if i is None or rows[i][STATE] not in ("RAMP", "HOLD"):
        return  # the session was over (or had not started): nothing to bring home
    j = first_index(rows, lambda r: r[STATE] != rows[i][STATE] and r[STATE] != "HOLD", i)
    bound_ms = limits["check_in_ms"] + CHECK_IN_ANSWER_MS + DT
    assert j is not None and rows[j][T] - rows[i][T] <= bound_ms, inv._where(rows[j])
    assert summary["final_state"] == "HOME"
