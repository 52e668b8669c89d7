"""Commissioning: measure the table that is really there (``invtable setup``).

Run once on a new, EMPTY table and again after changing hardware. The routine
replaces the control core while it runs (the App steps it instead of the
Controller) and moves the table only while the builder holds GO
(hold-to-run): releasing GO cuts the drive at once, STOP abandons the
routine with the drive off, and each motion step also stops by itself.

Steps (``STEPS``), in order:
  wiring       at rest: STOP reads closed, the home switch is closed, the IMU
               answers with live data, no over-current; the gyro's bias and
               gravity at home are averaged.
  go_press     the builder presses and releases GO (the button works).
  axes         hold GO: the table tilts head-down slowly for about 25 deg.
               Which gyro axis turns (and its sign), which accelerometer axes
               lie along and normal to the bed, that the drive moves the table
               away from home, and where the home switch opens.
  level        the one thing that cannot be measured: the builder gives the
               level reference, either the angle an inclinometer reads at home
               or "level here" after jogging (hold GO) until a spirit level on
               the bed reads level. Gives the IMU's mounting offset.
  travel_out   hold GO: the table tilts to the end of its travel at a fixed
               drive: actuator speed head-down, lag, usable travel.
  travel_home  hold GO: back to the home switch: speed towards home, lag,
               where the switch closes, the rest angle at home.
Then ``result`` holds the calibration (``calibration`` module fields); the
App stores it. Any implausible measurement ends the routine with ``error``
= (code, message saying what to check) and the drive off.

Measurements use averages, not single samples: speed from the mean angle of
two windows of steady motion, lag as the time the table trails a table that
would have started at once (position-based, so play and the motor's torque
limit are included, as the controller feels them).
"""

from . import calibration
from .compat import const
from .fusion import AngleEstimator, Mounting

WIRING = "wiring"
GO_PRESS = "go_press"
AXES = "axes"
LEVEL = "level"
TRAVEL_OUT = "travel_out"
TRAVEL_HOME = "travel_home"
JOG_HOME = "jog_home"  # left away from home: GO held brings the table back
DONE = "done"
STEPS = (WIRING, GO_PRESS, AXES, LEVEL, TRAVEL_OUT, TRAVEL_HOME)

# What the builder must do at each step (the host shows it).
PROMPTS = {
    WIRING: "Checking the wiring with the table at rest at home: do not touch it.",
    GO_PRESS: "Press and release GO on the table.",
    AXES: "Hold GO: the table tilts head-down slowly for about 25 degrees and stops "
    "by itself. Release GO to pause, STOP to abandon.",
    LEVEL: "Give the level reference: type the angle an inclinometer on the bed reads "
    "at home (upright), or hold GO to tilt the bed until a spirit level on it reads "
    "level, release, and confirm 'level here'.",
    TRAVEL_OUT: "Hold GO: the table tilts to the end of its travel at a steady speed and "
    "stops by itself (this measures the actuator). Release GO to pause.",
    TRAVEL_HOME: "Hold GO: the table returns to the home switch and stops by itself.",
    JOG_HOME: "Hold GO to bring the table back home slowly (commissioning stopped with it "
    "away from home); it stops on the home switch. STOP stops it.",
    DONE: "Commissioning finished.",
}
MOTION_STEPS = (AXES, LEVEL, TRAVEL_OUT, TRAVEL_HOME)

# Waiting for the builder
GO_PRESS_TIMEOUT_MS = const(120000)
LEVEL_TIMEOUT_MS = const(900000)
# Wiring check
WIRING_MS = const(3000)
GRAVITY_MIN_MG = const(800)  # |g| outside this: not an accelerometer at rest
GRAVITY_MAX_MG = const(1200)
# Jogs (nominal table speeds, converted to drive with the board file's speed)
AXES_JOG_MDEG_S = const(3000)
LEVEL_JOG_MDEG_S = const(1500)
MEASURE_MDEG_S = const(5000)
AXES_ROTATION_MDEG = const(25000)  # how far the axes step tilts
HOME_OPEN_BY_MDEG = const(10000)  # the switch must have opened by then
NOT_MOVING_MS = const(5000)  # driven this long with under 2 deg of motion
NOT_MOVING_MDEG = const(2000)
ACROSS_MAX_MG = const(250)  # gravity on the across-bed axis: IMU tilted > ~14 deg
OFF_AXIS_PERMILLE = const(200)  # other gyro axes turn < 20 % of the tilt axis
ROTATION_AGREE_PERMILLE = const(250)  # gyro and accelerometer agree within 25 %
LEVEL_JOG_MAX_MDEG = const(20000)  # the level jog stops here (with the rough mounting)
# Speed measurement: window A from 1.5 s to 2.5 s after the drive starts
# (the lag has died out: 4 x the 400 ms of a slow actuator), window B from
# 2.5 s to the end of the segment; a segment needs 4 s to count.
WINDOW_A_START_MS = const(1500)
WINDOW_A_END_MS = const(2500)
SEGMENT_MIN_MS = const(4000)
TRAVEL_STOP_BEFORE_MDEG = const(2000)  # drive off this far before the board's max
END_STOP_MOVED_MDEG = const(300)  # less than this in END_STOP_MS while driven: end stop
END_STOP_MS = const(1000)
SETTLE_MS = const(3500)  # at rest after each motion before averaging
REST_AVERAGE_MS = const(3000)
MID_REST_MARGIN_MDEG = const(10000)
# The accelerometer's zero error is fitted only when the rests span this much
# of the circle: over a short arc (a table that only travels to 20 deg) the
# fit's error exceeded the error it removes.
FIT_MIN_SPAN_MDEG = const(120000)  # no mid-travel rest if the travel starts this near it
HOME_CREEP_MS = const(300)  # after the switch closes, keep going this long
HOME_MISSED_MDEG = const(4000)  # this far below the level-derived home: switch never closed
MIN_TRAVEL_MDEG = const(20000)
MIN_SPEED_MDEG_S = const(1000)  # at full drive; slower cannot return a rider in time
MAX_SPEED_MDEG_S = const(50000)


# What commissioning measures, and how well (the tests hold it to these over
# random simulated worlds; bench/results.json has the worst errors seen):
#   actuator speed each way   within SPEED_TOLERANCE_PERMILLE of the truth;
#   lag                       the table's effective delay behind the drive,
#                             head-down: the actuator's time constant plus
#                             one control tick and the motor's torque limit,
#                             so from LAG_UNDER_MS below to LAG_OVER_MS above;
#   angles near home          home rest angle, where the switch opens and
#                             closes: within ANGLE_TOLERANCE_MDEG;
#   the angle estimate        anywhere in the travel afterwards: within
#                             ESTIMATE_TOLERANCE_MDEG. The level reference is
#                             one point; elsewhere the accelerometer's zero
#                             error (a few mg left after the MPU-6050's own
#                             offset calibration) tilts the angle. The rests
#                             on the way give that error as the centre of the
#                             circle gravity draws (fitted below), which cut
#                             the worst estimate error over 30 random worlds
#                             from 0.88 to 0.67 deg;
#   IMU axes and signs        exactly.
SPEED_TOLERANCE_PERMILLE = const(30)
LAG_UNDER_MS = const(30)
LAG_OVER_MS = const(100)
ANGLE_TOLERANCE_MDEG = const(700)
ESTIMATE_TOLERANCE_MDEG = const(900)


def _drive_for(speed_mdeg_s, board):
    drive = speed_mdeg_s * 1000 // board["actuator_speed_mdeg_s"]
    if drive < 100:
        return 100
    if drive > 800:
        return 800
    return drive


class _Segment:
    """One uninterrupted drive at a fixed command, from rest: its speed and lag.

    Speed: from the mean angle of window A and window B. Lag: from the gyro,
    as the area between the steady rate and the rate while it builds up
    (for a first-order lag that area is speed x lag); the gyro's rate does not
    carry the accelerometer's angle-dependent bias, which made a lag from
    angles alone err by tens of ms.
    """

    def __init__(self):
        self.ms = 0
        self.rate_udeg_a = 0  # integral of the rate over [0, WINDOW_A_END_MS)
        self.rate_b_sum = 0
        self.rate_b_n = 0
        self.a_sum = 0
        self.a_t_sum = 0
        self.a_n = 0
        self.b_sum = 0
        self.b_t_sum = 0
        self.b_n = 0

    def add(self, dt_ms, angle_mdeg, rate_mdeg_s):
        if self.ms < WINDOW_A_END_MS:
            self.rate_udeg_a += rate_mdeg_s * dt_ms
        else:
            self.rate_b_sum += rate_mdeg_s
            self.rate_b_n += 1
        self.ms += dt_ms
        t = self.ms
        if WINDOW_A_START_MS <= t < WINDOW_A_END_MS:
            self.a_sum += angle_mdeg
            self.a_t_sum += t
            self.a_n += 1
        elif t >= WINDOW_A_END_MS:
            self.b_sum += angle_mdeg
            self.b_t_sum += t
            self.b_n += 1

    def result(self):
        """(speed mdeg/s, lag ms) signed by direction, or None if too short."""
        if self.ms < SEGMENT_MIN_MS or self.a_n == 0 or self.b_n == 0:
            return None
        a = self.a_sum // self.a_n
        b = self.b_sum // self.b_n
        ta = self.a_t_sum // self.a_n
        tb = self.b_t_sum // self.b_n
        if tb <= ta or a == b:
            return None
        speed = (b - a) * 1000 // (tb - ta)
        rate = self.rate_b_sum // self.rate_b_n
        if rate == 0:
            return None
        lag = WINDOW_A_END_MS - self.rate_udeg_a // rate
        return speed, lag


class Commissioning:
    """The routine as a state machine, stepped once per control tick."""

    def __init__(self, board):
        self.board = board
        self.step_name = WIRING
        self.error = None  # (code, message) when the routine failed or was left
        self.result = None  # the calibration dict when it succeeded
        self.measured = {}  # what has been measured so far (for the host)
        self.drive = 0
        self.power = False
        self.progress = 0  # permille of the current step
        self._step_ms = 0
        self._axes_drive = _drive_for(AXES_JOG_MDEG_S, board)
        self._level_drive = _drive_for(LEVEL_JOG_MDEG_S, board)
        self._measure_drive = _drive_for(MEASURE_MDEG_S, board)
        # wiring / rest averages
        self._acc_sum = [0, 0, 0]
        self._gyro_sum = [0, 0, 0]
        self._n = 0
        self._first_raw = None
        self._raw_varies = False
        self.gyro_bias = [0, 0, 0]
        self.g_home = None
        self._go_seen = False
        # axes
        self._rot_udeg = [0, 0, 0]
        self._rot_at_open = None
        self._driven_ms = 0
        self._rest_ms = 0
        self._rest_sum = [0, 0, 0]
        self._rest_n = 0
        self._candidates = None  # right-handed (along, normal) mountings
        self._gyro_spec = None
        self._rough = None  # a Mounting with no offset, for the level jog
        # travel
        self.estimator = None
        self._segment = None
        self._best = None
        self._stall_ms = 0
        self._stall_from = 0
        self._phase = 0  # travel steps: 0 moving, 1 creeping home, 2 settling
        self._phase_ms = 0
        self._pending_level = None
        self.failed_step = None  # the step an error ended
        self._go_armed = False  # GO seen released since this step began (hold-to-run)
        self._at_home = True  # the home switch, as last read
        self._open_after_mdeg = 0
        self._close_mdeg = None
        self.imu = None  # the measured mounting, once the level is known
        # Gravity at each rest (home, after the axes jog, mid-travel, end of
        # travel, home again): the centre of the circle they lie on is the
        # accelerometer's zero error in the tilt plane.
        self._points = []
        self._level = None  # (gravity, angle, where) of the level reference
        self._prelim_bias = [0, 0, 0]
        self._mid_done = False

    # ------------------------------------------------------------- outside
    @property
    def done(self):
        return self.step_name == DONE

    def cancel(self):
        """The host leaves: the routine ends here, drive off (also in JOG_HOME)."""
        if self.step_name == JOG_HOME:
            self.step_name = DONE
            self._off()
        elif not self.done:
            self._fail("cancelled", "commissioning cancelled: the drive is off")
            if self.step_name == JOG_HOME:
                self.step_name = DONE

    def stop(self):
        """STOP (the button or the serial line): the drive off at once."""
        if self.step_name == JOG_HOME:
            self._off()
        elif not self.done:
            self._fail("stopped", "STOP pressed: commissioning abandoned, the drive is off")

    def give_level(self, angle_mdeg, where):
        """The builder's level reference (``where`` is "home" or "here").
        Returns None if taken, or (code, message) if refused."""
        if self.step_name != LEVEL:
            return "wrong_step", "the level reference is asked for in the level step"
        if where == "home":
            if not -89000 <= angle_mdeg <= -10000:
                return "out_of_range", "the angle at home must be -89..-10 degrees"
        elif where == "here":
            if not -30000 <= angle_mdeg <= 30000:
                return "out_of_range", "the angle here must be -30..30 degrees"
            if self.power or self._rest_ms < REST_AVERAGE_MS:
                return "moving", "release GO and let the table rest first"
        else:
            return "bad_value", "where must be home or here"
        self._pending_level = (angle_mdeg, where)
        return None

    def status(self):
        """What the host shows (a fresh dict)."""
        error = None
        if self.error is not None:
            error = {"code": self.error[0], "message": self.error[1]}
        index = len(STEPS)
        if self.step_name in STEPS:
            index = STEPS.index(self.step_name)
        elif self.failed_step in STEPS:
            index = STEPS.index(self.failed_step)  # jog_home: where it stopped
        return {
            "step": self.step_name,
            "index": index,
            "steps": len(STEPS),
            "prompt": PROMPTS[self.step_name],
            "progress": self.progress,
            "driving": self.power and self.drive != 0,
            "measured": dict(self.measured),
            "error": error,
            "failed_step": self.failed_step,
            "done": self.done,
        }

    # ---------------------------------------------------------------- step
    def step(self, dt_ms, inp):
        """One tick: inputs in, sets ``drive`` / ``power``."""
        if self.done:
            self._off()
            return
        self._step_ms += dt_ms
        self._at_home = inp.home
        if not inp.go:
            self._go_armed = True
        if self.step_name == JOG_HOME:
            self._run_jog_home(inp)
            return
        if not inp.imu_ok:
            self._fail("imu_lost", "the IMU stopped answering: check its cable and connector")
            return
        if inp.stop and self.step_name != WIRING:
            self.stop()
            return
        name = self.step_name
        if name == WIRING:
            self._run_wiring(dt_ms, inp)
        elif name == GO_PRESS:
            self._run_go_press(inp)
        elif name == AXES:
            self._run_axes(dt_ms, inp)
        elif name == LEVEL:
            self._run_level(dt_ms, inp)
        elif name == TRAVEL_OUT or name == TRAVEL_HOME:
            self._run_travel(dt_ms, inp)

    def _next(self, name):
        self.step_name = name
        self._step_ms = 0
        self.progress = 0
        self._go_armed = False  # a GO still held from the last step does not count
        self._off()

    def _held(self, inp):
        """GO held, and released at least once since this step began."""
        return inp.go and self._go_armed

    def _run_jog_home(self, inp):
        if inp.home:
            self.step_name = DONE  # home: the routine is over (its error stays)
            self._off()
        elif self._held(inp) and not inp.stop:
            self.drive = -self._level_drive
            self.power = True
        else:
            self._off()

    def _off(self):
        self.drive = 0
        self.power = False

    def _fail(self, code, message):
        self.error = (code, message)
        self.failed_step = self.step_name
        # Left away from home (an empty table): the builder brings it back
        # with GO held; the controller does not drive it by itself.
        moving = self.step_name in MOTION_STEPS
        self.step_name = JOG_HOME if moving and not self._at_home else DONE
        self._go_armed = False
        self._off()

    # ------------------------------------------------------------ averaging
    def _add_rest(self, raw):
        for i in range(3):
            self._rest_sum[i] += raw[i]
        self._rest_n += 1

    def _rest_mean(self):
        n = self._rest_n if self._rest_n else 1
        return [self._rest_sum[0] // n, self._rest_sum[1] // n, self._rest_sum[2] // n]

    def _reset_rest(self):
        self._rest_ms = 0
        self._rest_sum = [0, 0, 0]
        self._rest_n = 0

    def _track_rest(self, dt_ms, raw):
        """Count time at rest; average the accelerometer over the last part."""
        self._rest_ms += dt_ms
        if self._rest_ms > SETTLE_MS - REST_AVERAGE_MS:
            self._add_rest(raw)

    # --------------------------------------------------------------- wiring
    def _run_wiring(self, dt_ms, inp):
        self._off()
        if inp.stop:
            self._fail(
                "stop_pressed",
                "STOP reads pressed (or its wire is open): release it; it must be wired "
                "normally closed to the board's stop pin",
            )
            return
        if not inp.home:
            self._fail(
                "home_switch_open",
                "the home switch reads open: bring the table home (upright) and check the "
                "switch is wired normally closed to the board's home pin",
            )
            return
        if inp.overload:
            self._fail(
                "current_at_rest",
                "the driver reports over-current with the drive off: check the driver's "
                "current-sense wiring",
            )
            return
        raw = inp.raw
        if self._first_raw is None:
            self._first_raw = list(raw)
        elif not self._raw_varies:
            for i in range(6):
                if raw[i] != self._first_raw[i]:
                    self._raw_varies = True
        for i in range(3):
            self._acc_sum[i] += raw[i]
            self._gyro_sum[i] += raw[3 + i]
        self._n += 1
        self.progress = self._step_ms * 1000 // WIRING_MS
        if self._step_ms < WIRING_MS:
            return
        if not self._raw_varies:
            self._fail("imu_stuck", "the IMU repeats the same sample: re-seat or replace it")
            return
        n = self._n
        g = [self._acc_sum[0] // n, self._acc_sum[1] // n, self._acc_sum[2] // n]
        magnitude = _norm(g)
        if magnitude < GRAVITY_MIN_MG or magnitude > GRAVITY_MAX_MG:
            self._fail(
                "imu_implausible",
                "the accelerometer reads %d mg at rest (gravity is 1000): check the IMU type "
                "and its wiring" % magnitude,
            )
            return
        self.g_home = g
        self._points.append(g)
        self.gyro_bias = [self._gyro_sum[0] // n, self._gyro_sum[1] // n, self._gyro_sum[2] // n]
        self._next(GO_PRESS)

    def _run_go_press(self, inp):
        self._off()
        if inp.go:
            self._go_seen = True
        elif self._go_seen:
            self._next(AXES)
            return
        if self._step_ms > GO_PRESS_TIMEOUT_MS:
            self._fail(
                "go_not_seen",
                "no GO press seen in 2 minutes: check the GO button's wiring to the go pin",
            )

    # ----------------------------------------------------------------- axes
    def _run_axes(self, dt_ms, inp):
        raw = inp.raw
        for i in range(3):
            self._rot_udeg[i] += (raw[3 + i] - self.gyro_bias[i]) * dt_ms
        rotation = _largest_abs(self._rot_udeg) // 1000
        if self._rot_at_open is None and not inp.home:
            self._rot_at_open = list(self._rot_udeg)
        if rotation >= AXES_ROTATION_MDEG:
            self._off()
            self._track_rest(dt_ms, raw)
            self.progress = 900 + 100 * self._rest_ms // SETTLE_MS
            if self._rest_ms >= SETTLE_MS:
                self._finish_axes(self._rest_mean())
            return
        self.progress = rotation * 900 // AXES_ROTATION_MDEG
        if not self._held(inp):
            self._off()
            return
        if inp.overload:
            self._fail(
                "overload",
                "over-current when driving away from home: the drive may be reversed (the "
                "table pushed into its end stop): swap the actuator's motor leads",
            )
            return
        self.drive = self._axes_drive
        self.power = True
        self._driven_ms += dt_ms
        if self._driven_ms >= NOT_MOVING_MS and rotation < NOT_MOVING_MDEG:
            self._fail(
                "not_moving",
                "the table did not move when driven: check the actuator wiring and its power "
                "supply",
            )
        elif rotation >= HOME_OPEN_BY_MDEG and inp.home:
            self._fail(
                "home_switch_stuck",
                "the home switch stayed closed although the table tilted %d degrees: check "
                "the switch and its wiring" % (rotation // 1000),
            )

    def _finish_axes(self, g2):
        g1 = self.g_home
        rot = self._rot_udeg
        gi = 0
        for i in range(3):
            if abs(rot[i]) > abs(rot[gi]):
                gi = i
        total = abs(rot[gi])
        for i in range(3):
            if i != gi and abs(rot[i]) * 1000 > total * OFF_AXIS_PERMILLE:
                self._fail(
                    "imu_not_square",
                    "the table turned about more than one IMU axis: mount the IMU square to "
                    "the bed (one axis across it)",
                )
                return
        if abs(g1[gi]) > ACROSS_MAX_MG or abs(g2[gi]) > ACROSS_MAX_MG:
            self._fail(
                "imu_not_square",
                "gravity reads %d mg on the IMU axis across the bed: mount it square to the "
                "bed (tilted sideways by more than about 14 degrees)" % abs(g1[gi]),
            )
            return
        gyro = calibration.axis_spec(gi, 1 if rot[gi] > 0 else -1)
        candidates = []
        for ia in range(3):
            if ia == gi:
                continue
            i_n = 3 - ia - gi
            for sa in (1, -1):
                for sn in (1, -1):
                    along = calibration.axis_spec(ia, sa)
                    normal = calibration.axis_spec(i_n, sn)
                    if calibration.right_handed_gyro(along, normal) == gyro:
                        candidates.append((along, normal))
        along, normal = candidates[0]
        turned = _accel_angle(g2, along, normal, gyro) - _accel_angle(g1, along, normal, gyro)
        turned = _wrap(turned)
        gyro_turned = total // 1000
        if turned * 1000 < gyro_turned * (1000 - ROTATION_AGREE_PERMILLE) or (
            turned * 1000 > gyro_turned * (1000 + ROTATION_AGREE_PERMILLE)
        ):
            self._fail(
                "gyro_accel_disagree",
                "the gyro says the table turned %d degrees, the accelerometer %d: the IMU must "
                "be one rigid 6-axis part, firmly fixed to the bed"
                % (gyro_turned // 1000, turned // 1000),
            )
            return
        if self._rot_at_open is None:
            self._fail("home_switch_stuck", "the home switch never opened: check it")
            return
        self._points.append(g2)
        self._gyro_index = gi
        self._open_after_mdeg = self._rot_at_open[gi] * (1 if rot[gi] > 0 else -1) // 1000
        # A rough mounting for the level jog: the candidate nearest the board's home angle.
        self._candidates = candidates
        self._gyro_spec = gyro
        best = self._choose(g1, self.board["home_angle_mdeg"])
        self._rough = Mounting({"along": best[0], "normal": best[1], "gyro": gyro})
        self.measured["imu_gyro"] = gyro
        self._reset_rest()
        self._next(LEVEL)

    def _choose(self, g, angle_mdeg, bias=(0, 0, 0)):
        """The mounting (and offset) that makes gravity ``g`` read ``angle_mdeg``."""
        best = None
        for along, normal in self._candidates:
            offset = _wrap(_accel_angle(g, along, normal, self._gyro_spec, bias) - angle_mdeg)
            if best is None or abs(offset) < abs(best[2]):
                best = (along, normal, offset)
        return best

    # ---------------------------------------------------------------- level
    def _run_level(self, dt_ms, inp):
        raw = inp.raw
        if self._pending_level is not None:
            angle, where = self._pending_level
            self._pending_level = None
            g = self.g_home if where == "home" else self._rest_mean()
            if where == "here":
                self._points.append(g)
            self._level = (g, angle, where)
            self._finish_level(g, angle, where)
            return
        rough = self._rough.accel_angle_mdeg(raw)
        if self._held(inp) and rough < LEVEL_JOG_MAX_MDEG:
            self.drive = self._level_drive
            self.power = True
            self._reset_rest()
        else:
            self._off()
            self._track_rest(dt_ms, raw)
        if self._step_ms > LEVEL_TIMEOUT_MS:
            self._fail("level_timeout", "no level reference given in 15 minutes")

    def _finish_level(self, g, angle, where):
        along, normal, offset = self._choose(g, angle)
        home = _accel_angle(self.g_home, along, normal, self._gyro_spec) - offset
        if not -89000 <= home <= -10000:
            self._fail(
                "home_angle_implausible",
                "with that reference the table rests at %d degrees at home, outside -89..-10: "
                "check the reference you gave" % (home // 1000),
            )
            return
        self.imu = {"along": along, "normal": normal, "gyro": self._gyro_spec,
                    "offset_mdeg": offset, "accel_bias_mg": self._prelim_bias}
        self.measured["imu_along"] = along
        self.measured["imu_normal"] = normal
        self.measured["imu_offset_mdeg"] = offset
        self.measured["home_angle_mdeg"] = home
        self.measured["home_open_mdeg"] = home + self._open_after_mdeg
        self.measured["level_reference"] = where
        # The gyro's bias was measured at rest: the estimator starts with it,
        # so its error does not build up while the speed is being measured.
        index, sign = calibration.axis_index_sign(self._gyro_spec)
        self.gyro_rate_bias = self.gyro_bias[index] * sign
        self.imu["gyro_bias_mdeg_s"] = self.gyro_rate_bias
        self.estimator = AngleEstimator(Mounting(self.imu))
        self._begin_travel(TRAVEL_OUT)

    # --------------------------------------------------------------- travel
    def _begin_travel(self, name):
        self._next(name)
        self._segment = None
        self._best = None
        self._phase = 0
        self._phase_ms = 0
        self._stall_ms = 0
        self._reset_rest()
        self._close_mdeg = None

    def _run_travel(self, dt_ms, inp):
        est = self.estimator
        est.update(inp.raw, dt_ms)
        angle = est.angle_mdeg
        out = self.step_name == TRAVEL_OUT
        home = self.measured["home_angle_mdeg"]
        span = self.board["max_angle_mdeg"] - home
        done_mdeg = (angle - home) if out else (self.board["max_angle_mdeg"] - angle)
        self.progress = _bounded(done_mdeg * 1000 // span, 0, 999)
        if self._phase == 2 or self._phase == 3:  # at rest: the end, or mid-travel
            self._off()
            self._track_rest(dt_ms, inp.raw)
            if self._rest_ms >= SETTLE_MS:
                self._points.append(self._rest_mean())
                self._reset_rest()
                if self._phase == 3:
                    self._phase = 0
                else:
                    self._finish_travel()
            return
        if self._phase == 1:  # creeping on into the home switch
            self.drive = -self._level_drive
            self.power = True
            self._phase_ms += dt_ms
            if self._phase_ms >= HOME_CREEP_MS:
                self._phase = 2
                self._reset_rest()
            return
        if not est.settled:
            self._off()
            return
        if not self._held(inp):
            self._off()
            self._end_segment()
            return
        if self._segment is None:
            if out and not self._mid_done:
                # One rest on the way for the accelerometer's zero error,
                # unless the travel already starts near the middle.
                self._mid_mdeg = (home + self.board["max_angle_mdeg"]) // 2
                self._mid_done = angle > self._mid_mdeg - MID_REST_MARGIN_MDEG
            self._segment = _Segment()
            self._stall_ms = 0
            self._stall_from = angle
        drive = self._measure_drive if out else -self._measure_drive
        self.drive = drive
        self.power = True
        self._segment.add(dt_ms, angle, est.last_rate_mdeg_s)
        # The end of travel: the board's max, or an end stop (no motion, over-current).
        self._stall_ms += dt_ms
        if abs(angle - self._stall_from) >= END_STOP_MOVED_MDEG:
            self._stall_ms = 0
            self._stall_from = angle
        blocked = inp.overload or self._stall_ms >= END_STOP_MS
        if out and not self._mid_done and angle >= self._mid_mdeg:
            self._mid_done = True
            self._end_segment()
            self._phase = 3
            self._reset_rest()
            return
        if out:
            if angle >= self.board["max_angle_mdeg"] - TRAVEL_STOP_BEFORE_MDEG or blocked:
                self._end_segment()
                self.measured["travel_max_mdeg"] = self._travel_reached(angle, blocked)
                self._phase = 2
                self._reset_rest()
            return
        if inp.home and self._close_mdeg is None:
            self._close_mdeg = angle
            self._end_segment()
            self._phase = 1
            self._phase_ms = 0
        elif blocked or angle < home - HOME_MISSED_MDEG:
            self._fail(
                "home_switch_not_closing",
                "the table came back to %d degrees and the home switch did not close: check "
                "the switch, its position and its wiring" % (angle // 1000),
            )

    def _travel_reached(self, angle, blocked):
        board_max = self.board["max_angle_mdeg"]
        if not blocked:
            return board_max
        return angle if angle < board_max else board_max

    def _end_segment(self):
        if self._segment is None:
            return
        found = self._segment.result()
        if found is not None and (self._best is None or self._segment.ms > self._best[2]):
            self._best = (found[0], found[1], self._segment.ms)
        self._segment = None

    def _finish_travel(self):
        out = self.step_name == TRAVEL_OUT
        if self._best is None:
            self._fail(
                "measure_too_short",
                "the table never moved for 4 s in one go: hold GO until the step ends",
            )
            return
        speed, lag = self._best[0], self._best[1]
        speed_full = abs(speed) * 1000 // self._measure_drive
        if speed_full < MIN_SPEED_MDEG_S or speed_full > MAX_SPEED_MDEG_S:
            self._fail(
                "speed_implausible",
                "the actuator moves the table at %d.%d deg/s at full drive; it must be 1..50 "
                "deg/s: check the actuator and its supply" % (speed_full // 1000,
                                                             speed_full % 1000 // 100),
            )
            return
        if (speed > 0) != out:
            self._fail("drive_reversed", "the table moved the wrong way: swap the motor leads")
            return
        if lag < 0:
            lag = 0
        if out:
            self.measured["speed_down_mdeg_s"] = speed_full
            self.measured["lag_down_ms"] = lag
            travel = self.measured["travel_max_mdeg"]
            if travel - self.measured["home_angle_mdeg"] < MIN_TRAVEL_MDEG:
                self._fail("travel_short", "the table moves only %d degrees from home: check "
                           "for an obstruction" % ((travel - self.measured["home_angle_mdeg"])
                                                   // 1000))
                return
            self._begin_travel(TRAVEL_HOME)
            return
        self.measured["speed_up_mdeg_s"] = speed_full
        self.measured["lag_up_ms"] = lag
        self.measured["home_close_mdeg"] = self._close_mdeg
        self._finish()

    def _rest_span_mdeg(self):
        """How much of the circle the rests cover (a short arc fits badly)."""
        rough = Mounting(self.imu)
        low = high = rough.accel_angle_mdeg(self._points[0])
        for g in self._points:
            angle = rough.accel_angle_mdeg(g)
            low = angle if angle < low else low
            high = angle if angle > high else high
        return high - low

    def _finish(self):
        """The accelerometer's zero error from the rests, then the mounting
        offset and the angles again with it removed."""
        m = self.measured
        centre = _circle_centre(self._points, 3 - self._gyro_index - _axis(m["imu_along"]),
                                _axis(m["imu_along"]))
        if centre is None:
            self._fail("imu_implausible", "the accelerometer's readings at rest do not lie on "
                       "a circle: check that the IMU is fixed rigidly to the bed")
            return
        bias = [0, 0, 0]
        normal_i = 3 - self._gyro_index - _axis(m["imu_along"])
        if self._rest_span_mdeg() >= FIT_MIN_SPAN_MDEG:
            bias[normal_i] = centre[0]
            bias[_axis(m["imu_along"])] = centre[1]
        if abs(bias[0]) > calibration.BIAS_MAX_MG or abs(bias[1]) > calibration.BIAS_MAX_MG or (
            abs(bias[2]) > calibration.BIAS_MAX_MG
        ):
            self._fail("imu_implausible", "the accelerometer reads %d mg off zero: calibrate or "
                       "replace the IMU" % _largest_abs(bias))
            return
        g_level, angle, where = self._level
        prelim = Mounting(self.imu)
        along, normal, offset = self._choose(g_level, angle, bias)
        final = Mounting({"along": along, "normal": normal, "gyro": m["imu_gyro"],
                          "offset_mdeg": offset, "accel_bias_mg": bias,
                          "gyro_bias_mdeg_s": self.gyro_rate_bias})
        g_end = self._points[-1]
        rest_angle = final.accel_angle_mdeg(g_end)
        shift = rest_angle - prelim.accel_angle_mdeg(g_end)
        home_start = final.accel_angle_mdeg(self.g_home)
        m["imu_along"] = along
        m["imu_normal"] = normal
        m["imu_offset_mdeg"] = offset
        m["imu_accel_bias_mg"] = bias
        m["home_angle_mdeg"] = home_start
        m["home_open_mdeg"] = home_start + self._open_after_mdeg
        m["home_close_mdeg"] = m["home_close_mdeg"] + shift
        m["home_rest_mdeg"] = rest_angle
        # The actuator's own lag: head-down, where no reversal's play adds to
        # it (the feed-forward leads by it; a larger value over-drives the
        # start of every ramp). Towards home the play adds about play/speed.
        lag = m["lag_down_ms"]
        calib = {
            "imu_along": m["imu_along"],
            "imu_normal": m["imu_normal"],
            "imu_gyro": m["imu_gyro"],
            "imu_offset_mdeg": m["imu_offset_mdeg"],
            calibration.BIAS_FIELD: m["imu_accel_bias_mg"],
            "imu_gyro_bias_mdeg_s": self.gyro_rate_bias,
            "home_angle_mdeg": rest_angle,
            "home_open_mdeg": m["home_open_mdeg"],
            "home_close_mdeg": m["home_close_mdeg"],
            "speed_down_mdeg_s": m["speed_down_mdeg_s"],
            "speed_up_mdeg_s": m["speed_up_mdeg_s"],
            "lag_ms": lag if lag < 2000 else 2000,
            "travel_max_mdeg": m["travel_max_mdeg"],
        }
        found = calibration.problems(calib)
        if found:
            self._fail("implausible", "implausible result: " + "; ".join(found))
            return
        self.result = calib
        self.step_name = DONE
        self.progress = 1000
        self._off()


def _accel_angle(g, along, normal, gyro, bias=(0, 0, 0)):
    """The angle gravity ``g`` gives on a candidate mounting (fusion.Mounting's)."""
    mounting = Mounting({"along": along, "normal": normal, "gyro": gyro, "accel_bias_mg": bias})
    return mounting.accel_angle_mdeg(g)


def _axis(spec):
    return calibration.axis_index_sign(spec)[0]


def _circle_centre(points, ix, iy):
    """Centre (x, y) in mg of the circle through the points' (ix, iy)
    components: a least-squares (Kasa) fit, exact integer arithmetic.
    None if the points are degenerate (all on one line)."""
    n = len(points)
    sx = sy = sxx = syy = sxy = sxz = syz = sz = 0
    for p in points:
        x = p[ix]
        y = p[iy]
        z = x * x + y * y
        sx += x
        sy += y
        sxx += x * x
        syy += y * y
        sxy += x * y
        sxz += x * z
        syz += y * z
        sz += z
    # [sxx sxy sx; sxy syy sy; sx sy n] (D, E, F) = -(sxz, syz, sz), centre = -(D, E) / 2
    a = ((sxx, sxy, sx), (sxy, syy, sy), (sx, sy, n))
    b = (-sxz, -syz, -sz)
    det = _det3(a)
    if det == 0:
        return None
    det_d = _det3(((b[0], sxy, sx), (b[1], syy, sy), (b[2], sy, n)))
    det_e = _det3(((sxx, b[0], sx), (sxy, b[1], sy), (sx, b[2], n)))
    return _div_round(-det_d, 2 * det), _div_round(-det_e, 2 * det)


def _det3(m):
    return (
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    )


def _div_round(num, den):
    if den < 0:
        num = -num
        den = -den
    return (2 * num + den) // (2 * den)


def _wrap(angle_mdeg):
    while angle_mdeg > 180000:
        angle_mdeg -= 360000
    while angle_mdeg <= -180000:
        angle_mdeg += 360000
    return angle_mdeg


def _largest_abs(values):
    best = 0
    for v in values:
        if abs(v) > best:
            best = abs(v)
    return best


def _norm(v):
    from .motion import isqrt

    return isqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])


def _bounded(value, low, high):
    return low if value < low else high if value > high else value
