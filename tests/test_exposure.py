"""The daily cap on a user's inverted time (issue 12): firmware/exposure.py
on its own, then on the simulated table across sessions, a power loss, a
reboot and a torn write, with and without the board clock."""

import invariants as inv
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invtable.boards.esp32_devkitc import BOARD
from invtable.firmware import storage
from invtable.firmware.exposure import (
    DAY_MS,
    EXPOSURE_FILE,
    MAX_ENTRIES,
    NO_DAY,
    DailyExposure,
    day_number,
)
from invtable.hal_sim import scenario
from invtable.hal_sim.flash import PowerLoss, SimFlash

MIN = 60000


def reboot(fs):
    """What the next boot finds on flash."""
    e = DailyExposure(fs)
    e.load()
    return e


# ------------------------------------------------------------------ units
def test_a_calendar_day_counts_with_the_clock_and_24_h_of_power_without():
    fs = SimFlash()
    e = DailyExposure(fs)
    e.reserve("ann", 5 * MIN, 1000, 20000)
    e.settle("ann", 4 * MIN, 2000, 20000)
    e.save(2000, 20000)
    assert e.used_ms("ann", 3000, 20000) == 4 * MIN
    assert e.used_ms("ann", 3000, 20001) == 0  # the next calendar day
    assert e.used_ms("bob", 3000, 20000) == 0
    # After a reboot without the clock: the rolling window of powered-on time.
    again = reboot(fs)
    assert again.age_base_ms == 2000
    assert again.used_ms("ann", 2000 + DAY_MS - 1, NO_DAY) == 4 * MIN
    assert again.used_ms("ann", 2000 + DAY_MS, NO_DAY) == 0


def test_a_reservation_survives_a_power_cut_and_settles_to_the_true_exposure():
    fs = SimFlash()
    e = DailyExposure(fs)
    e.reserve("ann", 10 * MIN, 500, NO_DAY)
    cut = reboot(fs)  # the power went during the session
    assert cut.used_ms("ann", 600, NO_DAY) == 10 * MIN
    e.settle("ann", 3 * MIN, 700, NO_DAY)
    e.save(700, NO_DAY)
    assert reboot(fs).used_ms("ann", 800, NO_DAY) == 3 * MIN


@pytest.mark.parametrize("at_byte", [None, 0, 10, 10 ** 6])
def test_a_torn_settle_leaves_the_reservation(at_byte):
    fs = SimFlash()
    e = DailyExposure(fs)
    e.reserve("ann", 10 * MIN, 500, NO_DAY)
    e.settle("ann", 2 * MIN, 700, NO_DAY)
    fs.tear_next_write(at_byte)
    with pytest.raises(PowerLoss):
        e.save(700, NO_DAY)
    assert reboot(fs).used_ms("ann", 800, NO_DAY) == 10 * MIN  # never less than used


def test_a_damaged_record_charges_everyone_the_whole_cap_for_a_day():
    fs = SimFlash()
    fs.write_bytes(EXPOSURE_FILE, b"not a checksummed record")
    e = DailyExposure(fs)
    assert e.load() == storage.CORRUPT
    e.charge_all_for_a_day(20 * MIN, 100, NO_DAY)
    assert e.used_ms("anyone", 200, NO_DAY) == 20 * MIN
    assert e.used_ms("anyone", 100 + DAY_MS, NO_DAY) == 0


def test_many_sessions_are_merged_without_losing_time():
    fs = SimFlash()
    e = DailyExposure(fs)
    for k in range(3 * MAX_ENTRIES):
        e.reserve("ann", 1000 + k, 10 * k, NO_DAY)
        e.settle("ann", 500 + k, 10 * k + 5, NO_DAY)
        e.save(10 * k + 5, NO_DAY)
    again = reboot(fs)
    assert len(again.users["ann"]) <= MAX_ENTRIES
    assert again.used_ms("ann", 10000, NO_DAY) == sum(500 + k for k in range(3 * MAX_ENTRIES))


def test_day_numbers_follow_the_local_offset():
    midnight_utc = 1767225600  # 2026-01-01 00:00 UTC
    assert day_number(midnight_utc - 1, 0) + 1 == day_number(midnight_utc, 0)
    assert day_number(midnight_utc - 1, 3600) == day_number(midnight_utc, 0)  # 01:00 local
    assert day_number(None, 0) == NO_DAY


@st.composite
def histories(draw):
    """Sessions (exposure, a reboot before it?, the clock set?, powered time
    passing), as a board would live them."""
    return draw(st.lists(st.tuples(st.integers(0, 20 * MIN), st.booleans(), st.booleans(),
                                   st.integers(0, 3 * DAY_MS // 2)), min_size=1, max_size=30))


@settings(max_examples=200, deadline=None)
@given(histories())
def test_what_the_board_counts_is_never_less_than_what_was_used_in_the_window(history):
    """Whatever reboots and clock settings happen, the count for the last 24 h
    of powered-on time is never less than the true exposure in it."""
    fs = SimFlash()
    e = DailyExposure(fs)
    e.load()
    uptime = 0
    truth = []  # (board age at the end, ms)
    day0 = 20000
    for used, rebooted, clock, passed in history:
        if rebooted:
            age = e.age_base_ms + uptime
            e.save(age, NO_DAY)
            e = reboot(fs)
            uptime = 0
        uptime += passed
        age = e.age_base_ms + uptime
        day = day0 + age // DAY_MS if clock else NO_DAY
        e.reserve("ann", 20 * MIN, age, day)
        e.settle("ann", used, age, day)
        e.save(age, day)
        truth.append((age, used))
        window = sum(ms for at, ms in truth if age - at < DAY_MS)
        assert reboot(fs).used_ms("ann", age, NO_DAY) >= window
        assert e.used_ms("ann", age, NO_DAY) >= window


# -------------------------------------------------------------- scenarios
CAP_BOARD = dict(BOARD, max_daily_inverted_ms=5 * MIN)
PROGRAM = dict(angle_mdeg=30000, hold_ms=60000, sets=1, rest_ms=0, speed_mdeg_s=5000,
               exit_pause_ms=0)
LIMITS = dict(max_angle_mdeg=30000, max_inverted_ms=2 * MIN, max_speed_mdeg_s=5000,
              check_in_ms=0)


def sessions_until_refused(sim, limit_ms=3600 * 1000):
    """Press GO at home until the board refuses it; the log entries."""
    while sim.now_ms < limit_ms:
        sim.tick()
        ctl = sim.ctl
        if ctl is not None and ctl.state == "HOME" and ctl.session is None and sim.app is not None:
            if "go_refused_daily_limit" in sim.warnings_seen:
                return sim.app.log.entries()
            if not sim.table.go.held:
                sim.inject("go")
    raise AssertionError("GO was never refused")


def test_sessions_stop_being_allowed_when_the_day_is_used_up():
    sim = scenario.Scenario(CAP_BOARD, PROGRAM, LIMITS, seed=1)
    entries = sessions_until_refused(sim)
    assert len(entries) >= 3
    total = sum(e["inverted_ms"] for e in entries)
    assert total <= CAP_BOARD["max_daily_inverted_ms"] + 1000, total
    # Each session's budget was what was left of the day, never more.
    assert entries[-1]["daily_ms"] == sim.app.daily_used_ms()
    assert sim.app.status()["daily_used_ms"] == sim.app.daily_used_ms()
    assert sim.app.daily_remaining_ms() < 10000


def test_a_power_loss_mid_session_keeps_the_whole_budget_charged_after_the_reboot():
    sim = scenario.Scenario(CAP_BOARD, PROGRAM, LIMITS, seed=2)
    while sim.now_ms < 1000:
        sim.tick()
    sim.inject("go")
    while sim.ctl is None or sim.ctl.state != "HOLD":
        sim.tick()
    sim.inject("power_loss")
    while sim.boots < 2 or sim.ctl is None or sim.ctl.state != "HOME":
        sim.tick()
        assert sim.now_ms < 300000, "not home after the reboot"
    # RAM is lost: the reservation written at GO is what the new boot counts.
    assert sim.app.daily_used_ms() >= LIMITS["max_inverted_ms"]
    entries = sessions_until_refused(sim)
    total = sum(e["inverted_ms"] for e in entries) + LIMITS["max_inverted_ms"]
    assert total <= CAP_BOARD["max_daily_inverted_ms"] + 1000


def test_a_board_cap_above_a_users_daily_limit_yields_to_it():
    limits = dict(LIMITS, max_daily_inverted_ms=3 * MIN)
    sim = scenario.Scenario(CAP_BOARD, PROGRAM, limits, seed=3)
    entries = sessions_until_refused(sim)
    assert sum(e["inverted_ms"] for e in entries) <= 3 * MIN + 1000


def test_sim_run_refuses_a_session_limit_above_the_boards_cap():
    from click.testing import CliRunner

    from invtable.host.cli import main

    result = CliRunner().invoke(main, ["sim", "run", "--max-inverted", "3600", "--json"])
    assert result.exit_code == 2
    assert "1..600" in result.output, result.output


def test_the_daily_figures_are_in_status_and_the_log():
    summary, _rows = inv.record(CAP_BOARD, PROGRAM, LIMITS)
    (entry,) = summary["log"]
    assert entry["daily_ms"] == entry["inverted_ms"] > 0
