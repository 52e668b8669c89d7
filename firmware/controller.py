"""The control core: one explicit ``step`` per tick, inputs in, drive out.

States (these exact names appear in traces and status):
  BOOT    settling the angle estimate after power-up; no motion.
  HOME    idle at upright. The only state a session starts from.
  WARN    GO was pressed: the beeper warns before the first motion.
  RAMP    moving towards the session's target angle.
  HOLD    holding the target angle for the set's hold time.
  RETURN  ramped return to home (end of a set, STOP, time limit, or recovery
          after a reset); braking first, never back towards inversion.
  PAUSE   resting near horizontal on the way home (the exit pause).
  REST    at home between sets; the next set needs a new GO press.
  FAULT   a fault is latched: the table goes home if it safely can, then the
          drive is off. Only a reboot clears it.

Safety rules enforced here, whatever the inputs do:
  * motion away from home starts only from HOME (or REST) on a GO press;
  * STOP (level, not edge, so a cut wire counts) always leads home;
  * once a return has begun the drive never increases while positive and
    never becomes positive again, so the table cannot re-invert;
  * the return starts early enough to be back at 0 deg inside the user's
    inverted-time budget;
  * the reference trajectory never exceeds the speed or acceleration limits
    nor the smaller of the user's and the board's maximum angle.

The protections are small objects of their own, each with its thresholds
(imu_health, overload, stall, tracking), and so are the ways home after a
fault (homing: blind, retry: after a stall or over-current); the controller
is the state machine that feeds and calls them. Fault codes are re-exported
here, where the rest of the firmware looks for them.
"""

from . import retry
from .calibration import effective_board
from .compat import const, ticks_diff
from .fusion import AngleEstimator, Mounting
from .home_check import (  # noqa: F401 - thresholds re-exported for the tests
    EDGE_AGREE_MDEG,
    HOME_AGREE_MDEG,
    HOME_SWITCH_FAR_MDEG,
    REST_CHECK_MS,
    HomeSwitchCheck,
)
from .homing import BlindReturn, towards_home, way_home_cap_ms
from .imu_health import F_IMU_IMPLAUSIBLE, F_IMU_LOST, F_IMU_STUCK, ImuHealth  # noqa: F401
from .motion import Profile, braking_distance_mdeg
from .overload import F_OVERLOAD, OverloadMonitor
from .program import Session
from .retry import RETRY_CHECK_MS, RETRY_PAUSE_MS, RetryReturn  # noqa: F401
from .rider import END_GRIP_RELEASED, END_NO_RESPONSE, CheckIn, Grip  # noqa: F401
from .stall import StallMonitor
from .switches import Debounced, GoButton
from .tracking import TableSpeed, followable

BOOT = "BOOT"
HOME = "HOME"
WARN = "WARN"
RAMP = "RAMP"
HOLD = "HOLD"
RETURN = "RETURN"
PAUSE = "PAUSE"
REST = "REST"
FAULT = "FAULT"

# Why a session ended (session log "end" values).
END_COMPLETED = "completed"
END_STOPPED = "stopped"
END_LIMIT = "limit"
END_FAULT = "fault"
END_CALIBRATION = "calibration_changed"  # the home switch was not where commissioning saw it

# Fault codes: stable strings, reported in status, traces and the log.
F_STALL = "stall"  # driven but not moving
F_HOME_STUCK_CLOSED = "home_switch_stuck_closed"  # closed far from home
F_HOME_OPEN = "home_switch_open"  # never closed at home
F_HOME_NOT_REACHED = "home_not_reached"  # blind return timed out
F_CRASH = "crash"  # an exception in the control loop
F_WATCHDOG = "watchdog"  # the loop hung and the watchdog reset the board
F_CANNOT_FOLLOW = "cannot_follow"  # the table moves, but persistently slower than asked
F_SETUP_LEFT = "setup_left_away"  # commissioning was left with the table away from home

WARN_MS = const(2000)  # audible warning between GO and the first motion
# Time counters stop here (6.2 days): every threshold is far below, and a
# counter past 2**30 would no longer be a small int on the ESP32 (a heap
# allocation on every tick of a table idle at home for two weeks).
TIME_COUNT_MAX_MS = const(1 << 29)
_ALARM_PERIOD_MS = const(1000)  # the fault alarm: 500 ms on, 500 ms off
# A session needs at least this much of the user's daily allowance left
# (the shortest per-session limit a user may have).
DAILY_MIN_SESSION_MS = const(10000)
BOOT_SETTLE_MS = const(600)  # covers the estimator's start-up averaging (fusion)
EXIT_PAUSE_ANGLE_MDEG = const(-5000)  # "near horizontal", head slightly up
NEAR_HOME_MDEG = const(4000)  # the estimate agrees with the home switch within this
CREEP_SPEED_MDEG_S = const(1000)  # final approach into the home switch
HOME_SEEK_MS = const(6000)  # how long to creep for the switch before a fault
HOMEWARD_MS = const(200)  # driven towards home this long (2 actuator lags) before "home"
REST_READY_TIMEOUT_MS = const(300000)  # rest over, no GO within 5 min: session ends
# The exit pause starts when the table is within this of the pause angle.
PAUSE_REACHED_MDEG = const(1000)
# How far the angle estimate may read from the truth unnoticed: the
# estimator's own error (0.5 deg) plus an IMU knocked by less than the home
# check can see (home_check.EDGE_AGREE_MDEG). Inverted time is counted from
# this far below 0 deg, and the final return is planned for a table this much
# higher than it reads (with 0.5 deg only, an IMU knocked 0.5 deg since
# commissioning overran a 10 s limit by 40 ms at 1 deg/s; found by hypothesis).
ANGLE_UNSEEN_ERROR_MDEG = 500 + EDGE_AGREE_MDEG
INVERTED_COUNT_MARGIN_MDEG = ANGLE_UNSEEN_ERROR_MDEG
# HOLD starts once the table itself (not only the reference) is this close
# to the target.
TARGET_REACHED_MDEG = const(500)
# The reference waits (slows to WAIT_SPEED) while the table trails it by more
# than FOLLOW_WAIT_MDEG beyond the trail its lag explains (speed x lag),
# until the gap is back under FOLLOW_RESUME_MDEG beyond it; if it has to wait
# FOLLOW_FAULT_MS in one motion the table cannot follow: a fault.
FOLLOW_WAIT_MDEG = const(2000)
FOLLOW_RESUME_MDEG = const(1000)
FOLLOW_FAULT_MS = const(6000)
WAIT_SPEED_MDEG_S = const(100)
# Feedback: permille of drive per mdeg of tracking error (1 deg error ->
# about 2 deg/s of correction on a 12 deg/s actuator).
_KP_NUM = const(1)
_KP_DEN = const(6)

# Modes of the FAULT state's way home.
_GO_HOME_TRUSTED = const(0)  # closed loop on a trusted angle
_GO_HOME_BLIND = const(1)  # no angle: slow open-loop drive until the home switch
_GO_HOME_RETRY = const(2)  # stall/overload: pause, then one slow open-loop retry
_GO_HOME_NONE = const(3)  # nothing more to try: drive off


class Inputs:
    """One tick's inputs, filled in place by the runner (no allocation)."""

    def __init__(self):
        self.raw = [0, 0, 0, 0, 0, 0]  # IMU sample per hal.imu.read
        self.imu_ok = False
        self.go = False  # raw levels, undebounced
        self.stop = True  # fail-safe until the first real read
        self.home = False
        self.overload = False
        self.grip = False  # the dead-man grip held (read only with a grip_pin)


class Controller:
    def __init__(self, board, calib=None):
        # The board file with this table's measured values in place of the
        # nominal ones (calibration.effective_board). Without a calibration the
        # table is not commissioned: the board file's numbers are used to get
        # home, and GO is refused.
        self.commissioned = calib is not None
        if calib is not None:
            board = effective_board(board, calib)
        self.board = board
        self.dt_nominal_ms = 1000 // board["control_hz"]
        self.home_angle_mdeg = board["home_angle_mdeg"]
        self.home_check = HomeSwitchCheck(
            self.home_angle_mdeg, board.get("home_open_mdeg"), board.get("home_close_mdeg")
        )
        self.max_accel_mdeg_s2 = board["max_accel_mdeg_s2"]
        self.actuator_speed_mdeg_s = board["actuator_speed_mdeg_s"]
        self.recovery_speed_mdeg_s = board["recovery_speed_mdeg_s"]
        self.actuator_lag_ms = board.get("actuator_lag_ms", 0)
        self.speed = TableSpeed(
            board.get("actuator_speed_down_mdeg_s", self.actuator_speed_mdeg_s),
            board.get("actuator_speed_up_mdeg_s", self.actuator_speed_mdeg_s),
            self.actuator_lag_ms,
        )
        self.stall = StallMonitor(self.actuator_lag_ms)
        self._prev_ref_vel = 0
        # The drive may never command more than the board's hard speed cap
        # (at the faster direction's measured speed).
        drive_cap = board["max_speed_mdeg_s"] * 1000 // self.actuator_speed_mdeg_s
        self.drive_cap = drive_cap if drive_cap < 1000 else 1000
        self.blind = BlindReturn(
            self.home_angle_mdeg, board["max_angle_mdeg"], self.actuator_speed_mdeg_s,
            self.max_accel_mdeg_s2,
        )
        # The rider's exposure goes on after a fault ends the session, until
        # the table is back at or below 0 deg (inverted_ms keeps counting).
        self._exposed = False
        self.fault_chain = []  # further faults while one is latched (.fault keeps the first)
        self._fault_done = False  # the fault's way home is over: drive off for good
        self._fault_speed_mdeg_s = self.recovery_speed_mdeg_s
        self._speed_hint_mdeg_s = 0  # the speed of a session a crash interrupted
        self._switch_doubted = False  # the home switch closed far from home
        self._blind_paused = False  # an over-current pause of the blind return was taken
        self._blind_pause_until_ms = 0
        self._home_target_mdeg = self.home_angle_mdeg  # where this return ends
        self.calibration_changed = False  # the home check failed: GO refused
        self._prev_home_raw = False
        self._waiting = False  # the reference waits for the table
        self._wait_ms = 0
        # The last resort's time cap: the whole travel at recovery speed, plus
        # half again (each fault return has its own cap, at its own speed).
        self.blind_cap_ms = way_home_cap_ms(
            board["max_angle_mdeg"] - self.home_angle_mdeg, self.recovery_speed_mdeg_s
        )
        self._fault_cap_ms = self.blind_cap_ms  # this fault return's time cap

        self.estimator = AngleEstimator(Mounting(board["imu"]))
        self.profile = Profile(self.home_angle_mdeg)
        debounce_ticks = max(2, 60 // self.dt_nominal_ms)
        self.go = GoButton(debounce_ticks)
        # STOP: pressed on the first sample; "released" only after 200 ms stable.
        self.stop = Debounced(1, max(2, 200 // self.dt_nominal_ms), initial=True)
        self.home = Debounced(debounce_ticks, debounce_ticks, initial=False)
        # The rider who cannot press STOP (rider.py): check-ins always, the
        # dead-man grip when the board has one.
        self.check_in = CheckIn()
        self.grip_fitted = board.get("grip_pin") is not None
        self.grip_in = Debounced(debounce_ticks, debounce_ticks, initial=False)
        self.grip = Grip()
        # The App's daily allowance: a function -> ms left today for the
        # active user, asked at each GO that opens a session (None: no limit).
        self.daily_remaining = None
        # A refusal the App sets while GO must not start anything (a file on
        # flash from a newer firmware that this one cannot use).
        self.start_blocked = None

        self.session = None  # program.Session while a session is open
        self._pending = None  # (program, limits) for the next GO
        self.state = BOOT
        self.fault = None  # latched fault code
        self.warning = None  # last refusal or notice, for status and the beeper
        self.end_reason = None  # how the last session ended
        self.session_ended = False  # True for the tick a session ends (for the log)
        self.warnings = 0  # count of _warn calls, so a repeated warning is seen as new
        self._remote_stop = False  # STOP requested over the serial line (see remote_stop)
        self._boot_fault = None

        self.drive = 0
        self.power = False  # False: the runner switches the bridge off
        self.beep = False
        self.led = False

        self._last_ms = None
        self._state_ms = 0  # time in the current state
        self._dt_ms = self.dt_nominal_ms
        self._ceiling = 1000  # drive ceiling while returning (see _limit_return_drive)
        self.target_mdeg = self.home_angle_mdeg
        self.sets_done = 0
        self.inverted_ms = 0
        self.max_angle_mdeg = self.home_angle_mdeg
        self._hold_end_reason = None
        self._pause_done = False
        self._seek_ms = 0
        self._warning_ms = 0
        self._alarm_ms = 0  # phase of the fault alarm's beeps
        self.imu_health = ImuHealth()
        self.overload = OverloadMonitor()
        self.retry_return = RetryReturn()
        self._homeward_ms = 0
        # fault return
        self._go_home_mode = _GO_HOME_NONE
        self._fault_ms = 0

    # ----------------------------------------------------------------- setup
    def set_program(self, program, limits):
        """The active user's program and limits, used by the next GO press.

        ``None`` for either means "no program": GO is then refused with
        ``go_refused_no_program`` (it used to build a Session from None, which
        raised inside the tick and latched a crash fault).
        """
        if program is None or limits is None:
            self._pending = None
            return
        self._pending = (program, limits)

    def remote_stop(self):
        """STOP from the serial line: the next ``step`` sees it as a STOP press
        (one sample of the STOP level), so it takes the same debounced,
        ramped way home as the button."""
        self._remote_stop = True

    @property
    def angle_mdeg(self):
        return self.estimator.angle_mdeg

    # ------------------------------------------------------------------ step
    def step(self, now_ms, inp):
        """Advance one tick. Returns the drive command (permille, + = head down)."""
        if self._last_ms is None:
            dt = self.dt_nominal_ms
        else:
            dt = ticks_diff(now_ms, self._last_ms)
            # A late tick is integrated as at most 5 ticks: the estimator and
            # profile stay bounded even if the loop stalled.
            if dt < 1:
                dt = 1
            elif dt > 5 * self.dt_nominal_ms:
                dt = 5 * self.dt_nominal_ms
        self._last_ms = now_ms
        self._dt_ms = dt
        if self._state_ms < TIME_COUNT_MAX_MS:
            self._state_ms += dt
        self.session_ended = False

        self.go.update(inp.go)
        self.stop.update(inp.stop or self._remote_stop)
        self._remote_stop = False
        self.home.update(inp.home)
        if self.grip_fitted:
            self.grip_in.update(inp.grip)
        self.overload.update(inp.overload, self.power)
        self.imu_health.sense(inp.imu_ok, inp.raw, self.estimator, dt)
        self._check_faults(inp, dt)  # in FAULT too: a further fault changes the way home
        self._account(dt)
        if self.estimator.ready:
            self.speed.observe(dt, self.drive, self.power, self.estimator.angle_mdeg)
        edge = inp.home != self._prev_home_raw
        self._prev_home_raw = inp.home
        if edge and self.commissioned and self.fault is None:
            self._check_home_edge(inp.home)

        state = self.state
        if state == FAULT:
            self._run_fault(dt)
        elif state == BOOT:
            self._run_boot()
        elif state == HOME:
            self._run_home()
        elif state == WARN:
            self._run_warn()
        elif state == RAMP or state == HOLD:
            self._run_session_motion(dt)
        elif state == RETURN or state == PAUSE:
            self._run_return(dt)
        elif state == REST:
            self._run_rest()
        self._indicate(dt)
        return self.drive

    # --------------------------------------------------------------- sensing
    def _check_faults(self, inp, dt):
        est = self.estimator
        blind = self.fault is not None and self._go_home_mode == _GO_HOME_BLIND
        if blind:
            return  # no angle to judge anything with; the blind return bounds itself
        imu_fault = self.imu_health.fault(est)
        if imu_fault is not None:
            self._latch(imu_fault, _GO_HOME_BLIND)
        if not est.settled:
            return  # judge the rest on a settled angle only (a boot's first 0.6 s)
        if self.fault is not None:
            self._check_fault_return()
            return
        if self.overload.tripped:
            if self.state == RETURN and self._seek_ms > 0 and not self.home.level:
                # Creeping into the home switch we hit the end stop below it:
                # the table is home, the switch never closed.
                self._latch(F_HOME_OPEN, _GO_HOME_NONE)
            else:
                self._latch(F_OVERLOAD, _GO_HOME_RETRY)
            return
        # (Not commissioned: the angle may be read on the wrong axes, so it
        # cannot accuse the switch; GO is refused anyway.)
        if self.commissioned and self.home_check.closed_far(self.home.level, est.angle_mdeg):
            self._latch(F_HOME_STUCK_CLOSED, _GO_HOME_TRUSTED)
            return
        self._check_stall(dt)

    def _check_fault_return(self):
        """Faults that arrive during a fault's trusted or retry return."""
        if self._go_home_mode != _GO_HOME_TRUSTED:
            return
        far = self.home_check.closed_far(self.home.level, self.estimator.angle_mdeg)
        if far and not self._switch_doubted:
            self._switch_doubted = True  # the switch lies: home by the angle
            self.fault_chain.append(F_HOME_STUCK_CLOSED)
        if self.overload.tripped:
            self._latch(F_OVERLOAD, _GO_HOME_RETRY)
            return
        self._check_stall(self._dt_ms, -1)  # on the way home

    def _check_stall(self, dt, direction=0):
        """Driven, but the table does not move (stall.StallMonitor), judged at
        the speed of ``direction`` (0: the drive's own direction)."""
        # At the home switch only the drive into it is exempt (the end stop
        # stops it); a drive away from home that does not move is a stall.
        angle = self.estimator.angle_mdeg
        if not self.power or (self.home.level and self.drive <= 0):
            self.stall.reset(angle)
            return
        if direction == 0:
            direction = 1 if self.drive >= 0 else -1
        if self.stall.update(dt, self.drive, self.speed.stall_speed(direction), angle):
            self._latch(F_STALL, _GO_HOME_RETRY)

    def _account(self, dt):
        if self.session is None and not self._exposed:
            return
        if self.fault is not None and self._go_home_mode == _GO_HOME_BLIND:
            # No trusted angle: count while the table may still be inverted.
            if self.blind.highest_mdeg() > -INVERTED_COUNT_MARGIN_MDEG and not self._fault_done:
                self.inverted_ms += dt
            else:
                self._exposed = False
            return
        if not self.estimator.ready:
            return
        angle = self.estimator.angle_mdeg
        if self.session is None and angle <= -INVERTED_COUNT_MARGIN_MDEG:
            self._exposed = False  # back at or below 0 deg after a fault
        # Count from just below 0 deg: the estimate may read a few tenths low,
        # and at slow speeds every crossing of 0 deg then under-counted the
        # true inverted time by hundreds of ms (over several sets this
        # overran the budget, which the final-return margin does not cover).
        if angle > -INVERTED_COUNT_MARGIN_MDEG:
            self.inverted_ms += dt
        if angle > self.max_angle_mdeg:
            self.max_angle_mdeg = angle

    # ------------------------------------------------------------ transitions
    def _enter(self, state):
        self.state = state
        self._state_ms = 0
        self._waiting = False
        self._wait_ms = 0

    def _warn(self, code):
        self.warning = code
        self.warnings = (self.warnings + 1) & 0xFFFFFF  # compared for change only: wraps small
        self._warning_ms = 0

    def _latch(self, code, go_home_mode):
        """Latch a fault: end any session, head home by the safest means left.

        A further fault while one is latched keeps the first code (.fault)
        and is added to .fault_chain; it changes the way home only to a
        safer one: trusted -> retry (stall, overload) -> blind (no angle).
        """
        if self.fault is not None:
            self.fault_chain.append(code)
            mode = self._go_home_mode
            if mode == _GO_HOME_NONE or mode == _GO_HOME_BLIND:
                return
            if go_home_mode == _GO_HOME_RETRY and mode == _GO_HOME_RETRY:
                return
            if go_home_mode == _GO_HOME_TRUSTED:
                return
        else:
            self.fault = code
            self._fault_speed_mdeg_s = self._unattended_speed()
        self._go_home_mode = go_home_mode
        self._fault_ms = 0
        self._fault_done = False
        if self.state == BOOT or self.state == HOME or self.state == WARN or self.state == REST:
            # The reference was not in use: start it where the table is.
            self.profile.reset(self.estimator.angle_mdeg)
        if go_home_mode == _GO_HOME_BLIND:
            last = self.estimator.angle_mdeg if self.estimator.settled else None
            self.blind.start(last, self._slow_speed())
        else:
            # The time cap of this way home, at the speed it really uses.
            speed = self._slow_speed()
            if go_home_mode == _GO_HOME_TRUSTED:
                speed = self._return_speed(self._fault_speed_mdeg_s)
            est = self.estimator
            from_mdeg = est.angle_mdeg if est.settled else self.board["max_angle_mdeg"]
            self._fault_cap_ms = way_home_cap_ms(from_mdeg - self.home_angle_mdeg, speed)
        if self.session is not None:
            self._exposed = True
            self._end_session(END_FAULT)
        if go_home_mode == _GO_HOME_TRUSTED:
            # The angle is still trusted: a controlled (braked) stop, then home.
            self._ceiling = self.drive if self.drive > 0 else 0
        else:
            # Angle unknown, stall or overload: cut the drive now (a fault that
            # cannot trust the angle must not keep driving head-down).
            self._ceiling = 0
            self.drive = 0
            if go_home_mode != _GO_HOME_BLIND:
                self.power = False
        self.retry_return.start(self._slow_speed())
        self._enter(FAULT)

    def _end_session(self, reason):
        self.end_reason = reason
        self.session_ended = True
        self.session = None
        self.check_in.stop()

    def _begin_return(self, reason):
        """Leave RAMP/HOLD for home; ``reason`` is how the session will end."""
        self._hold_end_reason = reason
        self.check_in.stop()
        self._ceiling = self.drive if self.drive > 0 else 0
        self._pause_done = self.session is None or self.session.exit_pause_ms == 0
        self._seek_ms = 0
        self._homeward_ms = 0
        # Home is the commissioned rest angle, or where the reference already
        # is if that is lower: a table resting low on its switch (the rest
        # position varies over the switch's travel) must not be driven
        # head-down "to home" after a STOP at the very start of a ramp.
        home = self.home_angle_mdeg
        if self.profile.pos_mdeg < home:
            home = self.profile.pos_mdeg
        self._home_target_mdeg = home
        self._enter(RETURN)

    def _arrive_home(self):
        self._drive_off()
        self.profile.reset(self.home_angle_mdeg)
        if self.session is None:
            self._enter(HOME)
            return
        self.sets_done += 1
        reason = self._hold_end_reason
        if reason == END_COMPLETED and self.sets_done < self.session.sets:
            self._enter(REST)
            return
        self._end_session(reason)
        self._enter(HOME)

    # ----------------------------------------------------------------- states
    def _unattended_speed(self):
        """The speed of a return no one asked for (a fault, a reset): the
        session's, or the active user's (program and limit), never above the
        board's cap; the board's recovery speed when no user is known."""
        session = self.session
        if session is not None:
            return session.speed_mdeg_s
        if self._speed_hint_mdeg_s:
            return self._speed_hint_mdeg_s  # the session a crash interrupted
        if self._pending is None:
            return self.recovery_speed_mdeg_s
        program, limits = self._pending
        speed = program["speed_mdeg_s"]
        if limits["max_speed_mdeg_s"] < speed:
            speed = limits["max_speed_mdeg_s"]
        if self.board["max_speed_mdeg_s"] < speed:
            speed = self.board["max_speed_mdeg_s"]
        return speed if speed >= 100 else 100

    def inherit(self, old):
        """Carry the rider's exposure over from a controller that crashed."""
        self.inverted_ms = old.inverted_ms
        self.max_angle_mdeg = old.max_angle_mdeg
        self._exposed = old.session is not None or old._exposed
        if old.session is not None:
            self._speed_hint_mdeg_s = old.session.speed_mdeg_s
        else:
            self._speed_hint_mdeg_s = old._speed_hint_mdeg_s

    def latch_now(self, code):
        """Latch ``code`` at once with nothing left to try: drive off. Used when
        the caller itself takes over the way home (the App's last resort)."""
        self._latch(code, _GO_HOME_NONE)
        self._drive_off()

    def latch_at_boot(self, code):
        """A fault found before this controller existed (crash, watchdog reset)."""
        self._boot_fault = code

    def _run_boot(self):
        self._drive_off()
        if self._state_ms < BOOT_SETTLE_MS or not self.estimator.settled:
            return
        angle = self.estimator.angle_mdeg
        self.profile.reset(angle)
        if self._boot_fault is not None:
            # Go home on the trusted angle, slowly, then stay latched.
            self._latch(self._boot_fault, _GO_HOME_TRUSTED)
            return
        if self.home.level and (
            angle < self.home_angle_mdeg + NEAR_HOME_MDEG or not self.commissioned
        ):
            # (Not commissioned: the angle may be read on the wrong axes; the
            # switch says home, and no session can start anyway.)
            self._enter(HOME)
            return
        # Not at home after a reset or power loss: never resume, go home slowly.
        self._warn("recovering_after_reset")
        self._begin_return(None)

    def _run_home(self):
        self._drive_off()
        if self._home_switch_opened():
            return
        self._check_home_rest()
        if self.go.pressed:
            self._try_start()

    def _check_home_rest(self, now=False):
        """At rest at home the angle must agree with the commissioned home angle
        (checked once at rest for REST_CHECK_MS, and ``now`` on a GO press)."""
        if not self.commissioned or not self.home.level:
            return
        if not now and self._state_ms < REST_CHECK_MS:
            return
        if self.home_check.rest_disagrees(self.estimator.angle_mdeg):
            self.calibration_changed = True

    def _check_home_edge(self, closed):
        """The raw home switch changed: is the table where commissioning saw it do so?"""
        if closed:
            moving = self.drive < 0 and self.state == RETURN
        else:
            moving = self.drive > 0 and self.state == RAMP
        if moving and self.home_check.edge_disagrees(closed, self.estimator.angle_mdeg):
            self.calibration_changed = True
            self._warn("calibration_changed")
            if self.state == RAMP:
                self._begin_return(END_CALIBRATION)

    def _home_switch_opened(self):
        """At rest at home the switch must stay closed: opening for 300 ms while
        the angle still says home is a switch (or wiring) fault."""
        near_home = self.estimator.angle_mdeg <= self.home_angle_mdeg + NEAR_HOME_MDEG
        if self.home_check.opened_at_rest(self.home.level, near_home, self._dt_ms):
            self._latch(F_HOME_OPEN, _GO_HOME_NONE)
            return True
        return False

    def _try_start(self):
        refusal = self._start_refusal()
        if refusal is not None:
            self._warn(refusal)
            return
        program, limits = self._pending
        if self.state == HOME:
            remaining = None if self.daily_remaining is None else self.daily_remaining()
            if remaining is not None and remaining < DAILY_MIN_SESSION_MS:
                self._warn("go_refused_daily_limit")
                return
            self.session = Session(program, limits, self.board)
            if remaining is not None and remaining < self.session.max_inverted_ms:
                # The session's budget is what is left of today's allowance.
                self.session.max_inverted_ms = remaining
            self.speed.reset_session()
            self.sets_done = 0
            self.inverted_ms = 0
            self.max_angle_mdeg = self.estimator.angle_mdeg
            self.end_reason = None
        self.warning = None
        self.profile.reset(self.estimator.angle_mdeg)
        self.grip.reset()
        self._enter(WARN)

    def _start_refusal(self):
        if self.stop.level:
            return "go_refused_stop_pressed"
        if self.fault is not None:
            return "go_refused_fault"
        if self.start_blocked is not None:
            return self.start_blocked
        if not self.commissioned:
            return "go_refused_not_commissioned"
        self._check_home_rest(True)
        if self.calibration_changed:
            return "go_refused_calibration_changed"
        if self._pending is None:
            return "go_refused_no_program"
        near_home = self.estimator.angle_mdeg <= self.home_angle_mdeg + NEAR_HOME_MDEG
        if not self.home.level or not near_home:
            return "go_refused_not_home"
        if self.state == REST and self._state_ms < self.session.rest_ms:
            return "go_refused_resting"
        if self.grip_fitted and not self.grip_in.level:
            return "go_refused_grip_released"
        return None

    def _run_warn(self):
        self._drive_off()
        if self.stop.level:
            self._cancel_at_home()
            return
        if self.grip_fitted and self.grip.update(self._dt_ms, self.grip_in.level):
            self._cancel_at_home(END_GRIP_RELEASED)
            return
        if self._state_ms >= WARN_MS:
            self.target_mdeg = self.session.angle_mdeg
            self.check_in.start(self.session.check_in_ms)
            self._enter(RAMP)

    def _cancel_at_home(self, reason=END_STOPPED):
        if self.session is not None:
            self._end_session(reason)
        self._enter(HOME)

    def _run_rest(self):
        self._drive_off()
        if self._home_switch_opened():
            return
        self._check_home_rest()
        if self.stop.level:
            self._cancel_at_home()
        elif self.go.pressed:
            self._try_start()
        elif self._state_ms >= self.session.rest_ms + REST_READY_TIMEOUT_MS:
            self._cancel_at_home()

    def _run_session_motion(self, dt):
        session = self.session
        if self.stop.level:
            self._begin_return(END_STOPPED)
            self._run_return(dt)
            return
        if self._return_due():
            self._begin_return(END_LIMIT)
            self._run_return(dt)
            return
        # The rider who cannot press STOP: let go of the grip, or no answer
        # to a check-in. A GO tap here only ever answers a check-in.
        rider_gone = None
        if self.grip_fitted and self.grip.update(dt, self.grip_in.level):
            rider_gone = END_GRIP_RELEASED
        elif self.check_in.update(dt, self.go.pressed):
            rider_gone = END_NO_RESPONSE
        if rider_gone is not None:
            self._begin_return(rider_gone)
            self._run_return(dt)
            return
        profile = self.profile
        speed = followable(session.speed_mdeg_s, self.drive_cap, self.speed.down_full())
        speed = self._wait_for_table(speed, dt)
        if self.fault is not None:
            self._run_fault(dt)
            return
        profile.advance(self.target_mdeg, speed, session.accel_mdeg_s2, dt)
        if self.state == RAMP and profile.at(self.target_mdeg) and self._at_target():
            # HOLD starts when the table, not only the reference, is there.
            self._enter(HOLD)
        elif self.state == HOLD and self._state_ms >= session.hold_ms:
            self._begin_return(END_COMPLETED)
        self._track(self.drive_cap)

    def _at_target(self):
        error = self.estimator.angle_mdeg - self.target_mdeg
        return -TARGET_REACHED_MDEG <= error <= TARGET_REACHED_MDEG

    def _wait_for_table(self, speed, dt):
        """The reference speed limit for this tick: ``speed``, or a crawl while
        the table trails the reference by more than FOLLOW_WAIT_MDEG. Waiting
        too long in one motion latches F_CANNOT_FOLLOW."""
        vel = self.profile.vel_mdeg_s
        trail = self.profile.pos_mdeg - self.estimator.angle_mdeg
        if vel < 0:
            trail = -trail
            vel = -vel
        trail -= vel * self.actuator_lag_ms // 1000  # what the lag explains
        if self._waiting:
            if trail < FOLLOW_RESUME_MDEG or vel == 0:
                self._waiting = False
        elif vel != 0 and trail > FOLLOW_WAIT_MDEG:
            self._waiting = True
        if not self._waiting:
            return speed
        self._wait_ms += dt
        if self._wait_ms > FOLLOW_FAULT_MS:
            self._latch(F_CANNOT_FOLLOW, _GO_HOME_TRUSTED)
        return WAIT_SPEED_MDEG_S

    def _return_due(self):
        """True when the inverted-time budget only just covers the way back to 0 deg."""
        session = self.session
        return self.inverted_ms + self.time_to_level_ms() >= session.max_inverted_ms

    def time_to_level_ms(self):
        """Time the return would take from here to 0 deg, with a safety margin."""
        session = self.session
        pos = self.profile.pos_mdeg
        vel = self.profile.vel_mdeg_s
        accel = session.accel_mdeg_s2
        speed = session.speed_mdeg_s
        total_ms = 0
        if vel > 0:  # first brake to a standstill
            total_ms += vel * 1000 // accel
            pos += braking_distance_mdeg(vel, accel)
        if pos <= 0:
            return total_ms
        # then accelerate and cruise down to 0 deg, at the speed the table
        # can follow lifting this rider (a plan at a speed the table cannot
        # deliver overran the inverted-time budget).
        speed = self._return_speed(speed)
        total_ms += pos * 1000 // speed + speed * 1000 // (2 * accel)
        # margin: actuator lag (twice: the start and the end of the way
        # down), the angle's unseen error, a late tick
        margin_ms = 2 * self.actuator_lag_ms + 100 + ANGLE_UNSEEN_ERROR_MDEG * 1000 // speed
        return total_ms + margin_ms + 2 * self.dt_nominal_ms

    def _return_speed(self, speed):
        """The return's reference speed: ``speed`` or, if lower, what the table
        can follow lifting this rider (tracking.TableSpeed.up_full)."""
        return followable(speed, self.drive_cap, self.speed.up_full())

    def _run_return(self, dt):
        if self.go.pressed:
            self._warn("go_refused_returning")
        if self.state == PAUSE:
            self.drive = 0
            self.power = True  # holding position, bridge enabled
            if self.stop.rose or self._state_ms >= self._pause_ms():
                # A STOP press during the pause means "all the way up, now".
                self._pause_done = True
                if self.stop.rose and self.session is not None:
                    # ...and it ends the session: without this a STOP in the
                    # pause after a completed set led to REST, where a GO
                    # would start the next set after the rider pressed STOP.
                    self._hold_end_reason = END_STOPPED
                self._enter(RETURN)
            return
        # A return without a session (after a reset) goes at the user's speed.
        speed = self._unattended_speed()
        speed = self._wait_for_table(self._return_speed(speed), dt)
        if self.fault is not None:
            self._run_fault(dt)
            return
        if self.stop.rose and self._hold_end_reason != END_STOPPED:
            # STOP on the way home: the session ends here, no pause, no more sets.
            self._pause_done = True
            if self.session is not None:
                self._hold_end_reason = END_STOPPED
        home = self._home_target_mdeg
        target = home
        if not self._pause_done:
            target = EXIT_PAUSE_ANGLE_MDEG
            if self.profile.pos_mdeg <= target and self.profile.vel_mdeg_s >= 0:
                self._pause_done = True  # already at or below the pause angle
                target = home
        profile = self.profile
        if target == home and profile.at(target):
            if self.estimator.angle_mdeg > target + NEAR_HOME_MDEG:
                # The reference is home but the table trails it (the actuator
                # is slower lifting the rider; at a low speed cap the gap grows
                # to degrees): close the gap in closed loop first. The switch
                # seek used to start here, creep at 1 deg/s and latch
                # home_switch_open after 6 s with the table still degrees away.
                # A table that does not move here is caught by the stall check.
                self._track(self.drive_cap)
            else:
                # The table is home but the switch is not closed: creep on
                # into the switch for a bounded time.
                self._seek_ms += dt
                if self._seek_ms > HOME_SEEK_MS:
                    self._latch(F_HOME_OPEN, _GO_HOME_NONE)
                    self._run_fault(dt)
                    return
                self.drive = -(CREEP_SPEED_MDEG_S * 1000 // self.actuator_speed_mdeg_s)
                self.power = True
            self._limit_return_drive()
        else:
            profile.advance(target, speed, self.max_accel_mdeg_s2, dt)
            # Pause only once the table itself is near the pause angle: when it
            # trails the reference (slow lifting under load) the pause used to
            # start with the reference at -5 deg and the rider still inverted.
            near = self.estimator.angle_mdeg <= target + PAUSE_REACHED_MDEG
            if target != home and profile.at(target) and near:
                self._enter(PAUSE)
            self._track(self.drive_cap)
            self._limit_return_drive()
        # Home once the switch is closed with the table heading home: a STOP
        # just after leaving home still has the table coasting up past the
        # switch edge, where switching off would leave it at rest on the edge.
        if self.drive < 0:
            self._homeward_ms += dt
        else:
            self._homeward_ms = 0
        heading_home = self._homeward_ms >= HOMEWARD_MS or profile.at(home)
        near_home = self.estimator.angle_mdeg < self.home_angle_mdeg + NEAR_HOME_MDEG
        if self.home.level and near_home and heading_home:
            self._arrive_home()

    def _pause_ms(self):
        return self.session.exit_pause_ms if self.session is not None else 0

    def _track(self, cap):
        """Closed loop: feed-forward of the reference speed plus proportional correction."""
        # Feed-forward with a lead of the actuator's lag: command now the speed
        # the reference will have one lag later, so the table does not trail
        # the ramp and overshoot the target by speed x lag.
        vel = self.profile.vel_mdeg_s
        lead = (vel - self._prev_ref_vel) * self.actuator_lag_ms // self._dt_ms
        self._prev_ref_vel = vel
        wanted = vel + lead
        drive = wanted * 1000 // self.speed.feed_forward(wanted)
        drive += (self.profile.pos_mdeg - self.estimator.angle_mdeg) * _KP_NUM // _KP_DEN
        if drive > cap:
            drive = cap
        elif drive < -cap:
            drive = -cap
        self.drive = drive
        self.power = True

    def _limit_return_drive(self):
        """On the way home the drive only ever decreases while positive, then stays <= 0."""
        if self.drive > self._ceiling:
            self.drive = self._ceiling
        self._ceiling = self.drive if self.drive > 0 else 0

    # ------------------------------------------------------------------ fault
    def _run_fault(self, dt):
        if self._fault_ms < TIME_COUNT_MAX_MS:
            self._fault_ms += dt
        self._alarm_ms = (self._alarm_ms + dt) % _ALARM_PERIOD_MS
        if self.go.pressed:
            self._warn("go_refused_fault")
        mode = self._go_home_mode
        over = self.power and self.overload.tripped
        if over and mode == _GO_HOME_BLIND and not self._blind_paused:
            # Over-current on a blind way home: pause once, as a retry does,
            # then go on over-current or not (bringing the rider up matters
            # more than the motor; dead reckoning and the time cap end it).
            self._blind_paused = True
            self._blind_pause_until_ms = self._fault_ms + RETRY_PAUSE_MS
        doubted = self.fault == F_HOME_STUCK_CLOSED or self._switch_doubted
        near_home = self.estimator.angle_mdeg <= self.home_angle_mdeg + NEAR_HOME_MDEG
        # The home switch alone never ends a return the angle says is far from home.
        at_home = self.home.level and not doubted and (near_home or mode == _GO_HOME_BLIND)
        if self._fault_done:
            self._drive_off()
        elif mode == _GO_HOME_TRUSTED:
            if doubted:
                # The switch lies: trust the angle, stop just above home.
                done = self.estimator.angle_mdeg <= self.home_angle_mdeg + 1000
                target = self.home_angle_mdeg + 500
            else:
                done = at_home
                target = self.home_angle_mdeg - 3000  # into the switch
            if done or self._fault_ms > self._fault_cap_ms:
                self._end_fault_return()
                return
            # Planned like a normal return: at the session's (or the user's)
            # speed, within what the table can follow lifting this rider.
            speed = self._return_speed(self._fault_speed_mdeg_s)
            self.profile.advance(target, speed, self.max_accel_mdeg_s2, dt)
            self._track(self.drive_cap)
            self._limit_return_drive()
        elif mode == _GO_HOME_BLIND:
            if self._fault_ms < self._blind_pause_until_ms:
                self._drive_off()
                return
            drive = self.drive if self.power else 0
            blind = self.blind
            wanted = blind.step(dt, drive, self.home.level, self.speed.commissioned_up,
                                self.speed.up_full())
            if blind.done or self._fault_ms > blind.cap_ms:
                if not blind.reached:
                    self.warning = F_HOME_NOT_REACHED
                self._end_fault_return()
                return
            self.drive = wanted
            self.power = True
            self._limit_return_drive()
        elif mode == _GO_HOME_RETRY:
            self._run_retry(dt, at_home)
        else:
            self._end_fault_return()

    def _end_fault_return(self):
        self._fault_done = True
        self._drive_off()

    def at_rest(self):
        """Drive off for good: at HOME / REST, or a fault's way home is over
        (the moment to write to flash and to log a session's true exposure)."""
        if self.power or self.state == BOOT:
            return False  # (after a crash, BOOT comes before the way home)
        return self.fault is None or self._fault_done

    def _slow_speed(self):
        """Blind and retry returns: the recovery speed, never above the user's."""
        speed = self.recovery_speed_mdeg_s
        return speed if speed < self._fault_speed_mdeg_s else self._fault_speed_mdeg_s

    def _retry_drive(self, dt):
        """Open loop towards home at the slow speed, slewed at the accel limit."""
        drive = self.drive if self.power else 0
        self.drive = towards_home(
            drive, self._slow_speed(), self.actuator_speed_mdeg_s, self.max_accel_mdeg_s2, dt
        )
        self.power = True
        self._limit_return_drive()

    def _run_retry(self, dt, at_home):
        """Stall or overload: drive off, then one slow retry towards home."""
        if at_home:
            self._end_fault_return()
            return
        step = self.retry_return.step(self._fault_ms, dt, self.estimator.angle_mdeg)
        if step == retry.PAUSE:
            self._drive_off()
            return
        if step == retry.GIVE_UP or self._fault_ms > self._fault_cap_ms:
            self._go_home_mode = _GO_HOME_NONE  # no progress: give up, drive off
            self._end_fault_return()
            return
        self._retry_drive(dt)

    def _drive_off(self):
        self.drive = 0
        self.power = False

    # ------------------------------------------------------------- indicator
    def _indicate(self, dt):
        t = self._state_ms
        if self._warning_ms < TIME_COUNT_MAX_MS:
            self._warning_ms += dt
        state = self.state
        if state == FAULT:
            self.beep = self._alarm_ms < _ALARM_PERIOD_MS // 2  # alarm: 1 Hz, never silent
            self.led = self.beep
        elif state == WARN:
            self.beep = (t // 250) % 2 == 0
            self.led = True
        elif self.check_in.waiting and (state == RAMP or state == HOLD):
            self.beep = self.check_in.chirp()  # tap GO to answer
            self.led = True
        else:
            self.beep = self.warning is not None and self._warning_ms < 150
            self.led = state != HOME
