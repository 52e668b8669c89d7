"""Unit tests of the control core's maths: motion, fusion, switches, program, compat.

Pure functions and small classes, driven directly (no simulator), so a failure
points at one module. Hypothesis is used where a rule must hold for all inputs.
"""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invtable.boards.esp32_devkitc import BOARD
from invtable.firmware import compat
from invtable.firmware.fusion import (
    MAX_RATE_MDEG_S,
    SPIKE_MDEG,
    AngleEstimator,
    Mounting,
    iatan2_mdeg,
    parse_axis,
)
from invtable.firmware.motion import Profile, braking_distance_mdeg, isqrt
from invtable.firmware.program import Session
from invtable.firmware.switches import Debounced, GoButton

DT_MS = 1000 // BOARD["control_hz"]


# ===================================================================== motion
def run_profile(profile, target, speed, accel, dt=DT_MS, max_ticks=100000):
    """Advance until the profile is at ``target``; check the limits on every tick.

    Returns the list of (pos_udeg, vel_mdeg_s) after each tick.
    """
    dv = accel * dt // 1000
    trace = []
    start_udeg = profile.pos_udeg
    direction = 1 if target * 1000 >= start_udeg else -1
    for _ in range(max_ticks):
        v0 = profile.vel_mdeg_s
        p0 = profile.pos_udeg
        profile.advance(target, speed, accel, dt)
        v1 = profile.vel_mdeg_s
        p1 = profile.pos_udeg
        assert abs(v1) <= speed, f"speed {v1} > {speed}"
        assert abs(v1 - v0) <= dv, f"accel step {v1 - v0} > {dv}"
        # The position moves by at most what the speed allows this tick (the
        # landing may also snap the last sub-millidegree onto the target).
        assert abs(p1 - p0) <= (abs(v0) + dv) * dt + 1000
        # Overshoot of the reference past the target, in its direction of
        # travel: <= 5 mdeg at control-rate ticks. It comes from braking from
        # a speed that is not a whole number of dv steps, so it scales with
        # dv * dt; on a late tick (the controller integrates up to 100 ms)
        # it may reach dv * dt / 4 (e.g. 11 mdeg at 100 ms, 4.4 deg/s^2).
        bound = 5000 if dt <= 25 else max(5000, dv * dt // 4)
        overshoot = (p1 - target * 1000) * direction
        assert overshoot <= bound, f"overshoot {overshoot} udeg > {bound}"
        trace.append((p1, v1))
        if profile.at(target):
            return trace
    raise AssertionError(f"profile never arrived at {target}")


@pytest.mark.parametrize(
    "start,target,speed,accel",
    [
        (-60000, 60000, 5000, 10000),
        (-60000, 90000, 10000, 10000),
        (60000, -5000, 3000, 10000),
        (0, 1, 5000, 10000),  # one millidegree
        (0, -7, 5000, 10000),
        (0, 250, 10000, 10000),  # too short to reach cruise speed
        (-60000, 30000, 100, 10000),  # slowest allowed speed
        (-60000, 45000, 7777, 3333),  # odd numbers: rounding everywhere
    ],
)
def test_profile_lands_exactly_within_limits(start, target, speed, accel):
    profile = Profile(start)
    trace = run_profile(profile, target, speed, accel)
    assert profile.pos_udeg == target * 1000
    assert profile.pos_mdeg == target
    assert profile.vel_mdeg_s == 0
    # It really cruises when there is room to.
    distance = abs(target - start)
    if distance > 2 * braking_distance_mdeg(speed, accel) + speed:
        assert max(abs(v) for _, v in trace) == speed
    # Once there it stays there.
    profile.advance(target, speed, accel, DT_MS)
    assert profile.at(target)


@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(-90000, 90000),
    target=st.integers(-90000, 90000),
    speed=st.integers(100, 10000),
    accel=st.integers(1000, 20000),
    dt=st.sampled_from([10, 20, 25, 50, 100]),
)
def test_profile_property(start, target, speed, accel, dt):
    profile = Profile(start)
    # Enough ticks for the whole way at the speed limit, twice over (180 deg
    # at 0.1 deg/s in 10 ms ticks is 180000 ticks).
    ticks = 2 * abs(target - start) * 1000 // (speed * dt) + 1000
    run_profile(profile, target, speed, accel, dt=dt, max_ticks=ticks)
    assert profile.pos_udeg == target * 1000 and profile.vel_mdeg_s == 0


@pytest.mark.parametrize("speed,accel", [(5000, 10000), (10000, 10000), (3000, 5000)])
def test_profile_reverses_smoothly_when_target_jumps_behind(speed, accel):
    profile = Profile(-60000)
    dv = accel * DT_MS // 1000
    # Cruise towards 60 deg for a while.
    for _ in range(300):
        profile.advance(60000, speed, accel, DT_MS)
    assert profile.vel_mdeg_s == speed
    turn_at = profile.pos_mdeg
    # Now the target is behind: it must brake at the accel limit, never jump.
    prev = profile.vel_mdeg_s
    peak = profile.pos_udeg
    for _ in range(5000):
        profile.advance(-60000, speed, accel, DT_MS)
        v = profile.vel_mdeg_s
        assert abs(v - prev) <= dv
        assert abs(v) <= speed
        prev = v
        peak = max(peak, profile.pos_udeg)
        if profile.at(-60000):
            break
    assert profile.at(-60000)
    # It went on past the turn point by no more than the braking distance.
    assert peak // 1000 - turn_at <= braking_distance_mdeg(speed, accel) + speed * DT_MS // 1000


def test_profile_reset_and_at():
    profile = Profile(1234)
    assert profile.pos_mdeg == 1234 and profile.at(1234)
    profile.advance(2000, 5000, 10000, DT_MS)
    assert not profile.at(1234) and profile.vel_mdeg_s > 0
    profile.reset(-60000)
    assert profile.at(-60000) and profile.vel_mdeg_s == 0


@pytest.mark.parametrize(
    "v,a,expected",
    [(0, 10000, 0), (10000, 10000, 5000), (5000, 10000, 1250), (3000, 7000, 642), (1, 10000, 0)],
)
def test_braking_distance(v, a, expected):
    assert braking_distance_mdeg(v, a) == expected
    assert braking_distance_mdeg(v, a) == v * v // (2 * a)


def test_isqrt_exact():
    edge = [0, 1, 2, 3, 4, 5, 8, 9, 10, 15, 16, 17, 99, 100, 101]
    for k in (2, 3, 1000, 4095, 4096, 16383, 16384, 32767):
        edge += [k * k - 1, k * k, k * k + 1]
    edge += [(1 << 28) - 1, 1 << 28, (1 << 28) + 1, (1 << 30) - 1]
    rnd = random.Random(1)
    edge += [rnd.randrange(1 << 30) for _ in range(5000)]
    edge += list(range(0, 70000))
    for n in edge:
        assert isqrt(n) == math.isqrt(n), n
    assert isqrt(-5) == 0


@given(st.integers(0, (1 << 30) - 1))
def test_isqrt_property(n):
    r = isqrt(n)
    assert r * r <= n < (r + 1) * (r + 1)


# ===================================================================== fusion
def test_iatan2_accuracy_all_quadrants():
    worst = 0.0
    for r in (1, 7, 50, 300, 1000, 2000, 16000, 32767):
        for k in range(0, 3600, 7):
            theta = k / 10.0 * math.pi / 180.0
            y = int(round(r * math.sin(theta)))
            x = int(round(r * math.cos(theta)))
            if x == 0 and y == 0:
                continue
            ref = math.degrees(math.atan2(y, x)) * 1000
            got = iatan2_mdeg(y, x)
            err = abs(got - ref)
            err = min(err, 360000 - err)  # +-180 deg are the same direction
            worst = max(worst, err)
            assert err <= 10, (y, x, got, ref)
            assert -180000 < got <= 180000 or got == -180000 and y == 0
    assert worst <= 10
    assert iatan2_mdeg(0, 0) == 0


@given(st.integers(-32767, 32767), st.integers(-32767, 32767))
def test_iatan2_property(y, x):
    if x == 0 and y == 0:
        return
    err = abs(iatan2_mdeg(y, x) - math.degrees(math.atan2(y, x)) * 1000)
    assert min(err, 360000 - err) <= 10


def test_iatan2_axes_exact():
    assert iatan2_mdeg(0, 1000) == 0
    assert iatan2_mdeg(1000, 0) == 90000
    assert iatan2_mdeg(-1000, 0) == -90000
    assert iatan2_mdeg(0, -1000) == 180000
    assert iatan2_mdeg(1000, 1000) == 45000


AXES = "xyz"


def raw_for(angle_deg, rate_mdeg_s, imu, g_mg=1000):
    """An ideal IMU sample for the table at ``angle_deg``, per the board's imu dict."""
    theta = math.radians(angle_deg + imu.get("offset_mdeg", 0) / 1000)
    raw = [0, 0, 0, 0, 0, 0]
    along = -g_mg * math.sin(theta)
    normal = g_mg * math.cos(theta)
    for spec, value, base in (
        (imu["along"], along, 0),
        (imu["normal"], normal, 0),
        (imu["gyro"], rate_mdeg_s, 3),
    ):
        i, sign = parse_axis(spec)
        raw[base + i] = int(round(value * sign))
    return raw


MOUNTINGS = [
    {"along": "+x", "normal": "+z", "gyro": "+y"},
    {"along": "-x", "normal": "+z", "gyro": "-y"},
    {"along": "+y", "normal": "-z", "gyro": "+x"},
    {"along": "-z", "normal": "+x", "gyro": "-y"},
    {"along": "+x", "normal": "+z", "gyro": "+y", "offset_mdeg": 2500},
    {"along": "+y", "normal": "+x", "gyro": "-z", "offset_mdeg": -4000},
]


@pytest.mark.parametrize("imu", MOUNTINGS)
def test_mounting_maps_axes_signs_and_offset(imu):
    mounting = Mounting(imu)
    for angle in (-60, -30, -5, 0, 5, 30, 60, 90):
        raw = raw_for(angle, 1234, imu)
        assert abs(mounting.accel_angle_mdeg(raw) - angle * 1000) <= 80, (angle, imu)
        assert mounting.rate_mdeg_s(raw) == 1234
        raw = raw_for(angle, -777, imu)
        assert mounting.rate_mdeg_s(raw) == -777


@pytest.mark.parametrize("bad", ["x", "+w", "*x", "++", "+xy", ""])
def test_parse_axis_rejects_garbage(bad):
    with pytest.raises(ValueError):
        parse_axis(bad)


def make_estimator(imu=None):
    return AngleEstimator(Mounting(imu or BOARD["imu"]))


def feed(est, angle_deg, rate_mdeg_s, n, noise=None, bias=0, imu=None):
    imu = imu or BOARD["imu"]
    for _ in range(n):
        raw = raw_for(angle_deg, rate_mdeg_s + bias, imu)
        if noise is not None:
            for i in range(3):
                raw[i] += int(noise.gauss(0, 15))
            for i in range(3, 6):
                raw[i] += int(noise.gauss(0, 60))
        est.update(raw, DT_MS)


def test_estimator_first_sample_sets_angle():
    est = make_estimator()
    assert not est.ready
    est.update(raw_for(-60, 0, BOARD["imu"]), DT_MS)
    assert est.ready
    assert abs(est.angle_mdeg - -60000) <= 80


def test_estimator_start_up_averages_out_a_bad_first_sample():
    # The first sample is 3 deg off (one noisy reading). The start-up gain
    # schedule (1/2 halving to 1/64) must pull the estimate in within the
    # controller's BOOT time, and only then report itself settled.
    from invtable.firmware.controller import BOOT_SETTLE_MS

    est = make_estimator()
    feed(est, 3, 0, 1)
    ticks = BOOT_SETTLE_MS // DT_MS
    for i in range(ticks - 1):
        assert not est.settled or i >= 20, "settled before the start-up schedule ran"
        feed(est, 0, 0, 1)
    assert est.settled
    assert abs(est.angle_mdeg) < 100
    assert est.bias_mdeg_s == 0  # the start-up transient is not learnt as gyro bias


@pytest.mark.parametrize("spike_deg", [-67, -9, 9, 45])
def test_estimator_start_up_recovers_from_a_spike_as_its_first_sample(spike_deg):
    # The first read after a boot is a glitch far off the true angle (found
    # with a spike pending across a watchdog reset: every good sample after it
    # was rejected as a spike, and the angle never settled). The estimator
    # must start again from the good samples and settle on the true angle.
    est = make_estimator()
    feed(est, 34 + spike_deg, 0, 1)
    feed(est, 34, 0, 3 * 50)
    assert est.settled
    assert abs(est.angle_mdeg - 34000) < 100
    assert est.rejected_in_row == 0


def test_estimator_once_settled_never_reseeds_on_a_burst_of_spikes():
    # After start-up a burst of implausible samples is rejected (the controller
    # counts them and faults); it must never be taken as the new angle.
    est = make_estimator()
    feed(est, 30, 0, 200)
    feed(est, 80, 0, 20)
    assert est.rejected_in_row == 20
    assert abs(est.angle_mdeg - 30000) <= 50


@pytest.mark.parametrize("imu", MOUNTINGS[:3])
def test_estimator_converges_to_static_angle(imu):
    # Start 3 deg off (a bad first sample), then clean samples: the PI filter
    # pulls the estimate in (its integral term overshoots a little, < 0.5 deg).
    est = make_estimator(imu)
    feed(est, 3, 0, 1, imu=imu)
    errors = []
    for _ in range(20 * 50):
        feed(est, 0, 0, 1, imu=imu)
        errors.append(est.angle_mdeg)
    assert max(abs(e) for e in errors[5 * 50 :]) < 500
    assert max(abs(e) for e in errors[-5 * 50 :]) < 50
    assert est.rejected_in_row == 0


def test_estimator_noisy_static_angle_stays_close():
    # The simulator's IMU noise (15 mg, 60 mdeg/s): the filter averages it down
    # from ~0.9 deg per sample to a few tenths, with no mean error.
    est = make_estimator()
    noise = random.Random(3)
    feed(est, 6, 0, 1, noise=noise)
    errors = []
    for _ in range(30 * 50):
        feed(est, 6, 0, 1, noise=noise)
        errors.append(est.angle_mdeg - 6000)
    settled = errors[5 * 50 :]
    assert max(abs(e) for e in settled) < 500
    assert abs(sum(settled) / len(settled)) < 100


def test_estimator_rejects_single_spikes():
    imu = BOARD["imu"]
    est = make_estimator()
    feed(est, 30, 0, 200)
    before = est.angle_mdeg
    # One accelerometer spike far from the prediction: ignored.
    est.update(raw_for(30 + SPIKE_MDEG / 1000 * 3, 0, imu), DT_MS)
    assert est.rejected_in_row == 1
    assert abs(est.angle_mdeg - before) <= 20
    feed(est, 30, 0, 1)
    assert est.rejected_in_row == 0
    # One gyro spike beyond any table motion: ignored, coasts on the last rate.
    raw = raw_for(30, 0, imu)
    raw[3 + parse_axis(imu["gyro"])[0]] = MAX_RATE_MDEG_S * 2
    est.update(raw, DT_MS)
    assert est.rejected_in_row == 1
    assert abs(est.angle_mdeg - before) <= 20
    feed(est, 30, 0, 50)
    assert abs(est.angle_mdeg - 30000) <= 80


def test_estimator_learns_constant_gyro_bias():
    est = make_estimator()
    feed(est, 30, 0, 1)
    noise = random.Random(5)
    feed(est, 30, 0, 60 * 50, noise=noise, bias=2000)  # 60 s with a 2 deg/s bias
    assert abs(est.angle_mdeg - 30000) < 150
    assert abs(est.bias_mdeg_s - 2000) < 200
    # With the bias learnt, a ramp is tracked without a bias-sized lag.
    angle = 30.0
    worst = 0
    for _ in range(10 * 50):
        angle += 5.0 * DT_MS / 1000
        feed(est, angle, 5000, 1, noise=noise, bias=2000)
        worst = max(worst, abs(est.angle_mdeg - angle * 1000))
    assert worst < 300


@pytest.mark.parametrize("noisy", [False, True])
@pytest.mark.parametrize("speed_deg_s", [-10.0, -3.0, 2.0, 5.0, 10.0])
def test_estimator_tracks_a_ramp(speed_deg_s, noisy):
    est = make_estimator()
    noise = random.Random(7) if noisy else None
    angle = -60.0 if speed_deg_s > 0 else 89.0
    feed(est, angle, 0, 100, noise=noise)
    errors = []
    for _ in range(int(140 / abs(speed_deg_s) * 50)):
        angle += speed_deg_s * DT_MS / 1000
        if angle > 90 or angle < -60:
            break
        feed(est, angle, int(speed_deg_s * 1000), 1, noise=noise)
        errors.append(est.angle_mdeg - angle * 1000)
    # Clean samples: no lag worth the name. Noisy: within the noise, no bias.
    assert max(abs(e) for e in errors) < (500 if noisy else 80)
    assert abs(sum(errors) / len(errors)) < (100 if noisy else 40)
    assert est.rejected_in_row == 0


def test_estimator_predict_coasts_on_last_rate():
    est = make_estimator()
    feed(est, 10, 0, 100)
    feed(est, 10.1, 5000, 1)
    before = est.angle_udeg
    est.predict(DT_MS)
    assert est.angle_udeg - before == est.last_rate_mdeg_s * DT_MS


# =================================================================== switches
def test_debounced_press_and_release():
    sw = Debounced(3, 2, initial=False)
    assert [sw.update(v) for v in (True, True)] == [False, False]
    assert sw.update(True) is True and sw.rose
    assert sw.update(True) is True and not sw.rose  # rose lasts one tick
    assert sw.update(False) is True
    assert sw.update(False) is False and not sw.rose


def test_debounced_bounce_restarts_the_count():
    sw = Debounced(3, 3, initial=False)
    for v in (True, True, False, True, True, False, True, True):
        sw.update(v)
        assert sw.level is False  # never 3 equal samples in a row
    assert sw.update(True) is True and sw.rose


def test_go_must_be_released_before_a_press_counts():
    go = GoButton(3)
    # Held at boot: no press, however long.
    for _ in range(100):
        assert not go.update(True)
    assert go.held
    # Released (debounced), then pressed: exactly one press.
    for _ in range(3):
        go.update(False)
    assert not go.held
    presses = [go.update(True) for _ in range(10)]
    assert presses.count(True) == 1 and presses.index(True) == 2
    # A bounce shorter than the debounce is not a press.
    go2 = GoButton(3)
    for _ in range(5):
        go2.update(False)
    assert not any(go2.update(v) for v in (True, True, False, True, False, False))


def test_stop_acts_on_first_sample_and_releases_only_when_stable():
    # As the controller builds it: on after 1 sample, off after 200 ms stable.
    off_ticks = max(2, 200 // DT_MS)
    stop = Debounced(1, off_ticks, initial=True)
    assert stop.level  # fail-safe: pressed until proven otherwise
    for _ in range(off_ticks - 1):
        assert stop.update(False)
    assert stop.update(False) is False
    # One noisy sample reads as pressed at once.
    assert stop.update(True) is True and stop.rose
    # A chattering release does not count as released.
    for v in [False] * (off_ticks - 1) + [True] + [False] * (off_ticks - 1):
        assert stop.update(v) is True
    assert stop.update(False) is False


# ==================================================================== program
PROGRAM = dict(
    angle_mdeg=60000, hold_ms=60000, sets=2, rest_ms=20000, speed_mdeg_s=5000, exit_pause_ms=5000
)
LIMITS = dict(max_angle_mdeg=60000, max_inverted_ms=300000, max_speed_mdeg_s=5000)


def test_session_takes_program_within_limits():
    s = Session(PROGRAM, LIMITS, BOARD)
    assert (s.angle_mdeg, s.speed_mdeg_s, s.hold_ms, s.sets) == (60000, 5000, 60000, 2)
    assert (s.rest_ms, s.exit_pause_ms, s.max_inverted_ms) == (20000, 5000, 300000)
    assert s.accel_mdeg_s2 == BOARD["max_accel_mdeg_s2"]


def test_session_clamps_to_user_limits_and_board_caps():
    program = dict(PROGRAM, angle_mdeg=95000, speed_mdeg_s=20000, sets=99, hold_ms=-5)
    s = Session(program, dict(LIMITS, max_angle_mdeg=30000, max_speed_mdeg_s=3000), BOARD)
    assert s.angle_mdeg == 30000 and s.speed_mdeg_s == 3000
    assert s.sets == 20 and s.hold_ms == 0
    s = Session(program, dict(LIMITS, max_angle_mdeg=200000, max_speed_mdeg_s=99000), BOARD)
    assert s.angle_mdeg == BOARD["max_angle_mdeg"]
    assert s.speed_mdeg_s == BOARD["max_speed_mdeg_s"]
    no_pause = dict(PROGRAM)
    del no_pause["exit_pause_ms"]
    assert Session(no_pause, LIMITS, BOARD).exit_pause_ms == 0


@settings(max_examples=200, deadline=None)
@given(
    angle=st.integers(-200000, 400000),
    speed=st.integers(-50000, 100000),
    user_angle=st.integers(-100000, 400000),
    user_speed=st.integers(-50000, 100000),
    user_inv=st.integers(-10, 10**8),
    board_angle=st.integers(10000, 90000),
    board_speed=st.integers(1000, 10000),
    hold=st.integers(-(10**7), 10**8),
    sets=st.integers(-5, 100),
)
def test_session_never_exceeds_min_of_user_and_board(
    angle, speed, user_angle, user_speed, user_inv, board_angle, board_speed, hold, sets
):
    board = dict(BOARD, max_angle_mdeg=board_angle, max_speed_mdeg_s=board_speed)
    program = dict(PROGRAM, angle_mdeg=angle, speed_mdeg_s=speed, hold_ms=hold, sets=sets)
    limits = dict(max_angle_mdeg=user_angle, max_speed_mdeg_s=user_speed, max_inverted_ms=user_inv)
    s = Session(program, limits, board)
    assert 0 <= s.angle_mdeg <= min(max(user_angle, 0), board_angle)
    assert s.max_angle_mdeg <= board_angle and s.angle_mdeg <= s.max_angle_mdeg
    assert 0 < s.speed_mdeg_s <= board_speed
    assert s.speed_mdeg_s <= max(user_speed, 100)  # 0.1 deg/s floor: a program must move
    assert 0 <= s.max_inverted_ms <= max(user_inv, 0)
    assert 1 <= s.sets <= 20 and 0 <= s.hold_ms <= 3600000
    for value in (s.angle_mdeg, s.speed_mdeg_s, s.max_inverted_ms, s.hold_ms, s.sets):
        assert isinstance(value, int)


# ===================================================================== compat
WRAP = 1 << 30


@pytest.mark.parametrize(
    "start", [0, 1, WRAP - 10000, WRAP - 1, WRAP - 20, (1 << 29) - 1, 1 << 29, 12345]
)
@pytest.mark.parametrize("delta", [0, 1, 20, 10000, 19, -1, -20, -10000, (1 << 29) - 1])
def test_ticks_add_and_diff_across_the_wrap(start, delta):
    later = compat.ticks_add(start, delta)
    assert 0 <= later < WRAP
    assert later == (start + delta) % WRAP
    assert compat.ticks_diff(later, start) == delta
    assert compat.ticks_diff(start, later) == -delta


@given(st.integers(0, WRAP - 1), st.integers(-(1 << 29) + 1, (1 << 29) - 1))
def test_ticks_property(start, delta):
    later = compat.ticks_add(start, delta)
    assert later == (start + delta) % WRAP
    assert compat.ticks_diff(later, start) == delta


def test_ticks_diff_sign_convention():
    assert compat.ticks_diff(5, WRAP - 5) == 10  # 10 ms after, across the wrap
    assert compat.ticks_diff(WRAP - 5, 5) == -10
    assert compat.ticks_diff(100, 40) == 60
