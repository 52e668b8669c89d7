"""Scenario runner: the unmodified firmware on the simulated table.

One call runs a whole session on a virtual clock (no sleeping) and reports
one row per control tick. Events are (t_ms, action) pairs: the physical
inputs and faults of ``SimTable.ACTIONS`` plus the ones that act on the board
itself, handled here:

  power_loss  the board loses power (RAM lost, drive off) and boots again
              ``POWER_OFF_MS`` later; the firmware must recover from flash.
  crash       the next IMU read raises an unexpected exception (a bug inside
              the control loop).
  hang        the control loop stops running (an endless loop); the drive
              keeps its last command until the watchdog resets the board.
  torn_write  the board loses power in the middle of its next flash write
              (the session log or the session marker); it boots again as
              after a power loss.

Portable: runs under CPython and MicroPython (the tests do both).
"""

from ..firmware import calibration as calib_store
from ..firmware.app import App
from ..firmware.controller import F_WATCHDOG, FAULT, HOME, REST
from ..firmware.hal import DRIVE_DEADLINE_MS, Hal
from .flash import PowerLoss, SimFlash
from .table import SimTable

# ``calibration`` argument: commission the simulated table first (on the same
# world, as a builder would after building it), silently; the result is
# cached per board, world and seed, so a test suite pays for it once.
AUTO = "auto"
_commissioned = {}

POWER_OFF_MS = 500  # how long the board stays dark after a power loss
WATCHDOG_MS = 1000  # watchdog timeout when the board file does not set one
BOARD_ACTIONS = ("power_loss", "crash", "hang", "torn_write")
ACTIONS = SimTable.ACTIONS + BOARD_ACTIONS

# Trace columns, in order. Angles and speeds in degrees for people to read.
COLUMNS = (
    "t_ms",
    "angle_true_deg",
    "angle_est_deg",
    "target_deg",
    "ref_speed_deg_s",
    "state",
    "drive",
    "fault",
    "inverted_s",
    "beep",
    "home_switch",
    "stop",
    "warning",
    "event",
)


def build_hal(table, fs, imu=None):
    """The firmware's HAL over a SimTable's devices (``imu`` replaces the table's)."""
    return Hal(
        clock=table.clock,
        imu=imu if imu is not None else table.imu,
        actuator=table.actuator,
        go=table.go,
        stop=table.stop,
        home=table.home,
        indicator=table.indicator,
        fs=fs,
        wdt=table.wdt,
        link=table.link,
        grip=table.grip if table.board.get("grip_pin") is not None else None,
    )


class _CrashingImu:
    """Wraps the IMU so that its next read raises something no HAL should."""

    def __init__(self, imu):
        self.imu = imu
        self.armed = False

    def read(self, out):
        if self.armed:
            self.armed = False
            raise ZeroDivisionError("injected crash in the control loop")
        return self.imu.read(out)


class Scenario:
    """A simulated table with its firmware, advanced tick by tick."""

    def __init__(
        self,
        board,
        program,
        limits,
        seed=0,
        rider_mass_kg=80.0,
        start_angle_deg=None,
        world=None,
        calibration=AUTO,
    ):
        """``calibration``: AUTO (commissioned on this world first), None (not
        commissioned: GO is refused), or a calibration dict stored on the
        board's flash before it boots."""
        self.board = board
        self.program = program
        self.limits = limits
        self.dt_ms = 1000 // board["control_hz"]
        self.table = SimTable(board, seed, rider_mass_kg, start_angle_deg, world,
                              drive_deadline_ms=DRIVE_DEADLINE_MS)
        self.table.wdt.timeout_ms = board.get("wdt_timeout_ms", WATCHDOG_MS)
        self.flash = SimFlash()
        if calibration == AUTO:
            calibration = commissioned_calibration(board, seed, world)
        if calibration is not None:
            calib_store.save(self.flash, calibration)
        self.imu = _CrashingImu(self.table.imu)
        self.app = None
        self.boots = 0
        self.faults_seen = []
        self.ends = []  # how each session ended
        self.warnings_seen = []  # notices (refused GO, calibration_changed...)
        self._dark_until_ms = None
        self._hung = False
        self._boot(None)

    # -------------------------------------------------------------- board
    def _boot(self, reset_fault):
        table = self.table
        hal = build_hal(table, self.flash, imu=self.imu)
        self.boots += 1
        try:
            app = App(hal, self.board, reset_fault=reset_fault)
        except PowerLoss:
            # A power cut during boot (the App writes the log while it is
            # built): the board goes dark and boots again later, as after
            # any power loss (a power-on reset: the reset fault is gone).
            self._power_loss()
            return
        app.set_program(self.program, self.limits)
        self.app = app
        table.wdt.reset()

    def _power_loss(self):
        self.app = None
        self.table.power_off()
        self._dark_until_ms = self.table.clock.elapsed_ms + POWER_OFF_MS

    @property
    def now_ms(self):
        return self.table.clock.elapsed_ms

    def inject(self, action):
        if action == "power_loss":
            self._power_loss()
        elif action == "crash":
            self.imu.armed = True
        elif action == "hang":
            self._hung = True
        elif action == "torn_write":
            self.flash.tear_next_write()
        else:
            self.table.inject(action)

    @property
    def ctl(self):
        return self.app.ctl if self.app is not None else None

    def tick(self):
        """Run the firmware for one control period, then the physics."""
        table = self.table
        if self._dark_until_ms is not None:
            if self.now_ms >= self._dark_until_ms:
                self._dark_until_ms = None
                table.power_on()
                self._boot(None)
        elif self._hung and table.wdt.expired():
            # The watchdog resets the board: outputs drop, firmware reboots.
            self._hung = False
            table.actuator.off()
            self._boot(F_WATCHDOG)
        if self.app is not None and not self._hung:
            try:
                self.app.tick()
            except PowerLoss:
                self._power_loss()
                table.step(self.dt_ms)
                return
            ctl = self.app.ctl
            if ctl.fault is not None and ctl.fault not in self.faults_seen:
                self.faults_seen.append(ctl.fault)
            if ctl.session_ended:
                self.ends.append(ctl.end_reason)
            if ctl.warning is not None and ctl.warning not in self.warnings_seen:
                self.warnings_seen.append(ctl.warning)
        table.step(self.dt_ms)

    def row(self, event=""):
        """The trace row for the tick just run (see COLUMNS)."""
        physics = self.table.physics
        ctl = self.ctl
        if ctl is None:
            est = target = speed = None
            state = "OFF"
            fault = warning = ""
            inverted_s = 0.0
        else:
            est = ctl.estimator.angle_mdeg / 1000
            target = ctl.profile.pos_mdeg / 1000
            speed = ctl.profile.vel_mdeg_s / 1000
            state = ctl.state
            fault = ctl.fault or ""
            warning = ctl.warning or ""
            inverted_s = ctl.inverted_ms / 1000
        actuator = self.table.actuator
        return (
            self.now_ms,
            physics.angle_deg,
            est,
            target,
            speed,
            state,
            actuator.output_permille(),
            fault,
            inverted_s,
            1 if self.table.indicator.beep else 0,
            1 if self.table.home.closed() else 0,
            1 if self.table.stop.pressed() else 0,
            warning,
            event,
        )

    def settled(self):
        """True once nothing more will happen without a new input."""
        ctl = self.ctl
        if ctl is None or self._hung:
            return False
        if ctl.state == FAULT:
            return not ctl.power
        return ctl.state == HOME and ctl.session is None


def commission_status(board, seed=0, world=None):
    """Commission a fresh simulated table on ``world``; the routine's final
    status (``measured``, ``calibration``). Raises builder.CommissionFailed."""
    from .builder import commission

    sim = Scenario(board, None, None, seed, world=world, calibration=None)
    return commission(sim)


def commissioned_calibration(board, seed=0, world=None):
    """The calibration commissioning measures on ``world`` (cached)."""
    key = (seed, repr(sorted(board.items())), repr(world))
    calib = _commissioned.get(key)
    if calib is None:
        calib = commission_status(board, seed, world)["calibration"]
        _commissioned[key] = calib
    return calib


def commission_flash(fs, board, seed=0, world=None):
    """Store on ``fs`` the calibration commissioning measures on ``world``
    (a simulated board that starts commissioned). Returns ``fs``."""
    calib_store.save(fs, commissioned_calibration(board, seed, world))
    return fs


def parse_event(text):
    """'12.5:stop' -> (12500, 'stop'). Raises ValueError with a readable message."""
    if ":" not in text:
        raise ValueError("event %r is not T:ACTION (e.g. 30:stop)" % text)
    time_text, action = text.split(":", 1)
    try:
        t_ms = int(float(time_text) * 1000 + 0.5)
    except ValueError:
        message = "event %r: time %r is not a number of seconds" % (text, time_text)
        raise ValueError(message) from None
    if t_ms < 0:
        raise ValueError("event %r: time must be >= 0" % text)
    if action not in ACTIONS:
        valid = ", ".join(ACTIONS)
        raise ValueError("event %r: unknown action %r; valid: %s" % (text, action, valid))
    return t_ms, action


def run(
    board,
    program,
    limits,
    events=(),
    duration_s=None,
    seed=0,
    sink=None,
    auto_go=None,
    settle_s=2,
    rider_mass_kg=80.0,
    start_angle_deg=None,
    world=None,
    calibration=AUTO,
    commission=False,
    commission_world=None,
    rider_answer_ms=None,
):
    """Run a scenario; ``sink(row)`` gets every trace row. Returns a summary dict.

    The simulated rider (hal_sim/rider.py) answers each check-in the beeper
    asks with a GO tap after a random 1-5 s, or ``rider_answer_ms`` (lo, hi),
    until a ``faint`` event.

    ``auto_go``: a simulated rider presses GO at 1 s and again whenever a
    rest between sets is over. Defaults to on when ``events`` has no "go".
    Without ``duration_s`` the run ends ``settle_s`` after the table has
    settled at HOME (session over) or in FAULT with the drive off, or after
    an hour of simulated time at most.
    """
    events = sorted(events)
    if auto_go is None:
        auto_go = True
        for _, action in events:
            if action == "go" or action == "go_down":
                auto_go = False
    if auto_go:
        events = sorted(list(events) + [(1000, "go")])
    commissioning = None
    if commission:
        # Commission first (on commission_world: hardware changed since), then
        # run the session on the board that now holds that calibration.
        on = commission_world if commission_world is not None else world
        commissioning = commission_status(board, seed, on)
        calibration = commissioning["calibration"]
    sim = Scenario(
        board, program, limits, seed, rider_mass_kg, start_angle_deg, world, calibration
    )
    if rider_answer_ms is not None:
        sim.table.rider.answer_ms = rider_answer_ms
    limit_ms = int(duration_s * 1000) if duration_s is not None else 3600 * 1000
    settle_ms = int(settle_s * 1000)
    next_event = 0
    settled_since = None
    max_true = sim.table.physics.angle_deg
    inverted_true_ms = 0
    rest_go_pressed = False
    while sim.now_ms < limit_ms:
        fired = ""
        while next_event < len(events) and events[next_event][0] <= sim.now_ms:
            action = events[next_event][1]
            sim.inject(action)
            fired = action if not fired else fired + "+" + action
            next_event += 1
        ctl = sim.ctl
        if auto_go and ctl is not None and ctl.state == REST:
            if ctl._state_ms >= ctl.session.rest_ms and not rest_go_pressed:
                sim.inject("go")
                fired = fired + "+go" if fired else "go"
                rest_go_pressed = True
        elif ctl is not None:
            rest_go_pressed = False
        sim.tick()
        angle = sim.table.physics.angle_deg
        if angle > max_true:
            max_true = angle
        if angle > 0:
            inverted_true_ms += sim.dt_ms
        if sink is not None:
            sink(sim.row(fired))
        if duration_s is None and next_event >= len(events):
            if sim.settled():
                if settled_since is None:
                    settled_since = sim.now_ms
                elif sim.now_ms - settled_since >= settle_ms:
                    break
            else:
                settled_since = None
    ctl = sim.ctl
    summary = {
        "duration_s": sim.now_ms / 1000,
        "max_angle_deg": max_true,
        "inverted_s": inverted_true_ms / 1000,
        "final_state": ctl.state if ctl is not None else "OFF",
        "faults_seen": sim.faults_seen,
        "fault": ctl.fault if ctl is not None else None,
        "session_ends": sim.ends,
        "sets_done": ctl.sets_done if ctl is not None else 0,
        "boots": sim.boots,
        "final_angle_deg": sim.table.physics.angle_deg,
        "drive_off": not (ctl is not None and ctl.power),
        "log": sim.app.log.entries() if sim.app is not None else [],
        "last_error": sim.app.last_error if sim.app is not None else None,
        "warnings_seen": sim.warnings_seen,
        "check_ins": {"heard": sim.table.rider.heard, "answered": sim.table.rider.answered},
    }
    if commissioning is not None:
        summary["commissioning"] = {
            "measured": commissioning["measured"],
            "calibration": commissioning["calibration"],
        }
    return summary
