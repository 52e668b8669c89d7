"""Unit tests of the small protections and the retry way home, each driven
directly (firmware/imu_health.py, overload.py, home_check.py, retry.py):
their thresholds are named constants and a failure points at one of them."""

import pytest

from invtable.boards.esp32_devkitc import BOARD
from invtable.firmware import retry
from invtable.firmware.fusion import AngleEstimator, Mounting
from invtable.firmware.home_check import (
    EDGE_AGREE_MDEG,
    HOME_AGREE_MDEG,
    HOME_OPEN_FAULT_MS,
    HOME_SWITCH_FAR_MDEG,
    HomeSwitchCheck,
)
from invtable.firmware.imu_health import (
    F_IMU_IMPLAUSIBLE,
    F_IMU_LOST,
    F_IMU_STUCK,
    IMU_ERROR_TICKS,
    IMU_REJECT_TICKS,
    IMU_STUCK_TICKS,
    ImuHealth,
)
from invtable.firmware.overload import OVERLOAD_TICKS, OverloadMonitor
from invtable.firmware.retry import RETRY_CHECK_MS, RETRY_PAUSE_MS, RetryReturn

DT = 20


def sample(k):
    """A plausible sample at rest that differs from the last (real noise)."""
    raw = [0, 0, 1000, 0, 0, 0]
    raw[0] = k % 3  # a milli-g of noise
    return raw


@pytest.fixture
def est():
    return AngleEstimator(Mounting(BOARD["imu"]))


def settle(health, est, ticks=100):
    for k in range(ticks):
        health.sense(True, sample(k), est, DT)
    assert est.settled and health.fault(est) is None


def test_failed_reads_in_a_row_lose_the_angle_and_one_good_read_forgives(est):
    health = ImuHealth()
    settle(health, est)
    for _ in range(IMU_ERROR_TICKS - 1):
        health.sense(False, None, est, DT)
    assert health.fault(est) is None
    health.sense(True, sample(1), est, DT)  # a good read in between
    for _ in range(IMU_ERROR_TICKS - 1):
        health.sense(False, None, est, DT)
    assert health.fault(est) is None
    health.sense(False, None, est, DT)
    assert health.fault(est) == F_IMU_LOST


def test_identical_samples_in_a_row_are_a_stuck_sensor(est):
    health = ImuHealth()
    settle(health, est)
    frozen = sample(7)
    health.sense(True, list(frozen), est, DT)  # the last sample that was new
    for _ in range(IMU_STUCK_TICKS):
        assert health.fault(est) is None
        health.sense(True, list(frozen), est, DT)
    assert health.fault(est) == F_IMU_STUCK
    health.sense(True, sample(8), est, DT)
    assert health.fault(est) is None


def test_samples_the_estimator_rejects_in_a_row_are_implausible(est):
    health = ImuHealth()
    settle(health, est)
    for k in range(IMU_REJECT_TICKS):
        assert health.fault(est) is None
        raw = sample(k)
        raw[0], raw[2] = 1000, k % 2  # gravity along the table: 90 deg away
        health.sense(True, raw, est, DT)
    assert health.fault(est) == F_IMU_IMPLAUSIBLE


def test_a_failed_read_lets_the_estimate_coast_on_the_last_rate(est):
    health = ImuHealth()
    settle(health, est)
    before = est.angle_mdeg
    health.sense(False, None, est, DT)
    assert abs(est.angle_mdeg - before) <= 5


def test_overload_needs_the_flag_in_a_row_and_only_while_driving():
    mon = OverloadMonitor()
    for _ in range(OVERLOAD_TICKS * 3):
        mon.update(True, False)  # bridge off: the current sense means nothing
    assert not mon.tripped
    for _ in range(OVERLOAD_TICKS - 1):
        mon.update(True, True)
    assert not mon.tripped
    mon.update(False, True)  # one clean sample starts the count again
    for _ in range(OVERLOAD_TICKS - 1):
        mon.update(True, True)
    assert not mon.tripped
    mon.update(True, True)
    assert mon.tripped


def run_retry(angle_of_t, until_ms, speed_mdeg_s=2000):
    """Step a RetryReturn; returns the list of (t_ms, verdict)."""
    r = RetryReturn()
    r.start(speed_mdeg_s)
    out = []
    for t in range(0, until_ms, DT):
        out.append((t, r.step(t, DT, angle_of_t(t))))
        if out[-1][1] == retry.GIVE_UP:
            break
    return out


def test_retry_pauses_then_drives_while_the_table_makes_progress():
    def moving(t):  # 1 deg/s towards home once driven
        return 30000 - max(0, t - RETRY_PAUSE_MS)

    steps = run_retry(moving, 20000)
    assert all(v == retry.PAUSE for t, v in steps if t < RETRY_PAUSE_MS)
    assert all(v == retry.DRIVE for t, v in steps if t >= RETRY_PAUSE_MS)
    assert steps[-1][1] == retry.DRIVE


def test_retry_gives_up_after_a_window_without_progress():
    def stuck(t):
        return 30000 - min(500, max(0, t - RETRY_PAUSE_MS))  # 0.5 deg, then nothing

    steps = run_retry(stuck, 20000)
    t_end, verdict = steps[-1]
    assert verdict == retry.GIVE_UP
    assert RETRY_PAUSE_MS + RETRY_CHECK_MS - DT <= t_end <= RETRY_PAUSE_MS + RETRY_CHECK_MS + DT


def test_retry_gives_up_in_the_window_progress_stops():
    def stops_later(t):  # moves for 6 s, then stalls again
        return 30000 - min(6000, max(0, t - RETRY_PAUSE_MS))

    steps = run_retry(stops_later, 30000)
    t_end, verdict = steps[-1]
    assert verdict == retry.GIVE_UP
    assert t_end <= RETRY_PAUSE_MS + 6000 + 2 * RETRY_CHECK_MS + DT


@pytest.mark.parametrize("speed_mdeg_s", [100, 300, 500, 1000])
def test_a_slow_retry_is_judged_over_a_window_its_speed_can_show_progress_in(speed_mdeg_s):
    """A slow user's retry (never faster than the user) on a table that lifts
    the heaviest rider at 70 % of the asked speed: never given up on, while a
    frozen table still is, after one longer window."""
    lift = speed_mdeg_s * 7 // 10

    def slow(t):
        return 60000 - max(0, t - RETRY_PAUSE_MS) * lift // 1000

    steps = run_retry(slow, 120000, speed_mdeg_s)
    assert steps[-1][1] == retry.DRIVE
    frozen = run_retry(lambda t: 60000, 200000, speed_mdeg_s)
    window = max(RETRY_CHECK_MS, 4 * 1000 * 1000 // speed_mdeg_s)
    assert frozen[-1][1] == retry.GIVE_UP
    assert frozen[-1][0] <= RETRY_PAUSE_MS + window + DT


# ------------------------------------------------------------- home switch
HOME = -60000


def test_a_switch_closed_far_above_home_is_caught_and_near_home_is_not():
    check = HomeSwitchCheck(HOME)
    assert not check.closed_far(True, HOME + HOME_SWITCH_FAR_MDEG)
    assert check.closed_far(True, HOME + HOME_SWITCH_FAR_MDEG + 1)
    assert not check.closed_far(False, 30000)  # open far from home is normal


def test_a_switch_open_at_rest_at_home_faults_only_after_its_time():
    check = HomeSwitchCheck(HOME)
    for _ in range(HOME_OPEN_FAULT_MS // DT - 1):
        assert not check.opened_at_rest(False, True, DT)
    assert not check.opened_at_rest(True, True, DT)  # closed again: the count restarts
    for _ in range(HOME_OPEN_FAULT_MS // DT - 1):
        assert not check.opened_at_rest(False, True, DT)
    assert not check.opened_at_rest(False, False, DT)  # not at home: not this fault
    for _ in range(HOME_OPEN_FAULT_MS // DT - 1):
        assert not check.opened_at_rest(False, True, DT)
    assert check.opened_at_rest(False, True, DT)


def test_rest_and_edges_must_agree_with_commissioning():
    check = HomeSwitchCheck(HOME, open_edge_mdeg=HOME + 1200, close_edge_mdeg=HOME + 900)
    assert not check.rest_disagrees(HOME + HOME_AGREE_MDEG)
    assert check.rest_disagrees(HOME - HOME_AGREE_MDEG - 1)
    assert not check.edge_disagrees(False, HOME + 1200 + EDGE_AGREE_MDEG)
    assert check.edge_disagrees(False, HOME + 1200 + EDGE_AGREE_MDEG + 1)
    assert not check.edge_disagrees(True, HOME + 900 - EDGE_AGREE_MDEG)
    assert check.edge_disagrees(True, HOME + 900 - EDGE_AGREE_MDEG - 1)
    # Edges commissioning did not measure accuse nothing.
    assert not HomeSwitchCheck(HOME).edge_disagrees(True, HOME + 20000)
