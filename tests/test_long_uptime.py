"""Counters on a board that runs for weeks (issue 14): the controller's time
counters stop at TIME_COUNT_MAX_MS (a small int on the ESP32, where 2**30
would allocate on every tick), and everything timed by them still works
there: GO after weeks idle at home, the fault alarm after weeks latched."""

from invtable.boards.esp32_devkitc import BOARD
from invtable.firmware.controller import TIME_COUNT_MAX_MS
from invtable.hal_sim import scenario

PROGRAM = dict(angle_mdeg=20000, hold_ms=10000, sets=1, rest_ms=0, speed_mdeg_s=4000,
               exit_pause_ms=0)
LIMITS = dict(max_angle_mdeg=20000, max_inverted_ms=60000, max_speed_mdeg_s=4000,
              check_in_ms=0)
SMALL_INT_MAX = (1 << 30) - 1  # the ESP32's (32-bit) MicroPython small ints


def run_until(sim, cond, limit_ms):
    rows = []
    while not cond():
        sim.tick()
        rows.append(sim.row())
        assert sim.now_ms < limit_ms, f"not reached by {limit_ms} ms"
    return rows


def weeks_later(ctl):
    """As if the controller had sat in its state for weeks: its counters at the
    top (what TIME_COUNT_MAX_MS ms of ticks would have left)."""
    ctl._state_ms = TIME_COUNT_MAX_MS
    ctl._warning_ms = TIME_COUNT_MAX_MS
    ctl._fault_ms = TIME_COUNT_MAX_MS


def test_idle_at_home_for_weeks_the_counters_stay_small_and_go_still_works():
    sim = scenario.Scenario(BOARD, PROGRAM, LIMITS, seed=1)
    run_until(sim, lambda: sim.ctl.state == "HOME", 5000)
    ctl = sim.ctl
    weeks_later(ctl)
    for _ in range(500):
        sim.tick()
        assert ctl._state_ms <= TIME_COUNT_MAX_MS <= SMALL_INT_MAX
        assert ctl._warning_ms <= TIME_COUNT_MAX_MS
    sim.inject("go")
    rows = run_until(sim, lambda: sim.ctl.state == "RAMP", 20000)
    warn = [r for r in rows if r[5] == "WARN"]
    assert 1900 <= len(warn) * 20 <= 2100  # the 2 s warning, timed from 0 again
    run_until(sim, lambda: sim.ctl.state == "HOME", 120000)
    assert sim.ends == ["completed"]


def test_a_fault_latched_for_weeks_still_sounds_the_alarm_at_1_hz():
    sim = scenario.Scenario(BOARD, PROGRAM, LIMITS, seed=2)
    run_until(sim, lambda: sim.ctl.state == "HOME", 5000)
    sim.inject("imu_disconnect")
    run_until(sim, lambda: sim.ctl.state == "FAULT" and not sim.ctl.power, 120000)
    ctl = sim.ctl
    weeks_later(ctl)
    beeps = []
    for _ in range(250):  # 5 s
        sim.tick()
        beeps.append(sim.table.indicator.beep)
        assert ctl._fault_ms <= TIME_COUNT_MAX_MS
    rises = sum(1 for a, b in zip(beeps, beeps[1:], strict=False) if b and not a)
    assert 4 <= rises <= 6, beeps
    assert 0.4 <= sum(beeps) / len(beeps) <= 0.6
