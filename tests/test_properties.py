"""Property tests: random programs, limits, board caps, seeds and button timings.

Every generated run goes through ``hal_sim.scenario.run`` and every safety
invariant of ``tests/invariants.py`` is checked on its whole trace:
angle cap, inverted-time budget, reference speed and acceleration, true
speed, bounded rise after STOP then no rise until home, no drive while idle,
and the run ends in HOME or FAULT.
"""

import invariants as inv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invtable.boards.esp32_devkitc import BOARD

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def boards(draw):
    """The devkit board with random (sane) hard caps."""
    return dict(
        BOARD,
        max_angle_mdeg=draw(st.integers(20000, 90000)),
        max_speed_mdeg_s=draw(st.integers(2000, 10000)),
        max_accel_mdeg_s2=draw(st.integers(5000, 20000)),
    )


@st.composite
def programs(draw):
    return dict(
        angle_mdeg=draw(st.integers(5000, 95000)),
        hold_ms=draw(st.integers(5000, 30000)),
        sets=draw(st.integers(1, 2)),
        rest_ms=draw(st.integers(0, 5000)),
        speed_mdeg_s=draw(st.integers(2000, 12000)),
        exit_pause_ms=draw(st.sampled_from([0, 2000, 5000])),
    )


@st.composite
def user_limits(draw):
    return dict(
        max_angle_mdeg=draw(st.integers(10000, 95000)),
        max_inverted_ms=draw(st.integers(5000, 120000)),
        max_speed_mdeg_s=draw(st.integers(2000, 12000)),
    )


def button_events(max_t_ms):
    """A few random GO / STOP taps and held STOPs (the auto-rider presses GO
    at 1 s and when each rest is over, see ``scenario.run(auto_go=True)``)."""
    action = st.sampled_from(["go", "stop", "stop", "stop_down", "stop_up"])
    extra = st.lists(st.tuples(st.integers(1500, max_t_ms), action), max_size=4)
    return extra.map(sorted)


def _run_and_check(board, program, limits, events, seed):
    if any(a == "stop_down" for _, a in events) and not any(a == "stop_up" for _, a in events):
        events = events + [(max(t for t, _ in events) + 1000, "stop_up")]
    summary, rows = inv.record(board, program, limits, events=events, seed=seed, auto_go=True)
    out = inv.check_all(summary, rows, board, limits)
    assert summary["faults_seen"] == [], summary["faults_seen"]
    return summary, rows, out


@SETTINGS
@given(
    board=boards(),
    program=programs(),
    limits=user_limits(),
    seed=st.integers(0, 2**16),
)
def test_uninterrupted_sessions_keep_every_invariant(board, program, limits, seed):
    summary, rows, _ = _run_and_check(board, program, limits, [], seed)
    assert summary["final_state"] == "HOME"
    assert len(summary["session_ends"]) == 1
    assert summary["session_ends"][0] in ("completed", "limit")


@SETTINGS
@given(
    board=boards(),
    program=programs(),
    limits=user_limits(),
    seed=st.integers(0, 2**16),
    events=button_events(90000),
)
def test_random_go_and_stop_keep_every_invariant(board, program, limits, seed, events):
    summary, rows, _ = _run_and_check(board, program, limits, events, seed)
    assert summary["final_state"] in inv.END_STATES
    # A STOP while a set was running ends that session as "stopped".
    for index in inv.stop_presses(rows):
        if rows[index - 1][inv.STATE] in inv.MOVING_STATES:
            assert "stopped" in summary["session_ends"]


@SETTINGS
@given(
    board=boards(),
    seed=st.integers(0, 2**16),
    speed=st.integers(2000, 12000),
    stop_after_ms=st.integers(0, 20000),
)
def test_stop_during_the_ramp_is_bounded(board, seed, speed, stop_after_ms):
    """STOP at any moment of a long ramp: bounded rise, then straight home."""
    program = dict(
        angle_mdeg=90000, hold_ms=10000, sets=1, rest_ms=0, speed_mdeg_s=speed, exit_pause_ms=0
    )
    limits = dict(max_angle_mdeg=90000, max_inverted_ms=600000, max_speed_mdeg_s=speed)
    t_stop = 3060 + stop_after_ms  # WARN ends ~3.06 s after the auto GO at 1 s
    events = [(t_stop, "stop")]
    summary, rows, out = _run_and_check(board, program, limits, events, seed)
    assert summary["session_ends"] == ["stopped"]
    assert out["stop_rise_deg"] <= inv.stop_rise_allowance_deg(board, limits)


@SETTINGS
@given(
    board=boards(),
    seed=st.integers(0, 2**16),
    budget_ms=st.integers(3000, 60000),
    speed=st.integers(2000, 12000),
)
def test_inverted_budget_always_holds(board, seed, budget_ms, speed):
    program = dict(
        angle_mdeg=90000, hold_ms=30000, sets=2, rest_ms=2000, speed_mdeg_s=speed,
        exit_pause_ms=2000,
    )  # fmt: skip
    limits = dict(max_angle_mdeg=90000, max_inverted_ms=budget_ms, max_speed_mdeg_s=12000)
    summary, rows, out = _run_and_check(board, program, limits, [], seed)
    assert out["inverted_ms"] <= budget_ms + inv.dt_ms_of(board)
