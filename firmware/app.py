"""The thin runner around the control core: HAL in, controller, HAL out.

``App.tick`` is the whole control loop body. It is called at the board's
control rate by ``run`` on the ESP32 and as fast as the CPU allows by the
simulator. Any exception inside a tick ends in the same safe path: the drive
is switched off, a fresh controller re-acquires the angle and takes the rider
home slowly with the ``crash`` fault latched; if even that keeps failing, a
last-resort routine with no estimator drives slowly to the home switch.
"""

from . import calibration, storage
from .auth import AUTH_FILE, Auth
from .compat import const, release_module, ticks_diff
from .controller import END_COMPLETED, F_CRASH, F_SETUP_LEFT, HOME, Controller, Inputs
from .exposure import EXPOSURE_FILE, DailyExposure, day_number
from .last_resort import LastResort
from .memory_guard import MemoryGuard
from .program import DEFAULT_MAX_DAILY_INVERTED_MS
from .sessionlog import LOG_FILE, SessionLog
from .settings import DEFAULTS_CORRUPT, NEWER_VERSION, SETTINGS_FILE, Settings

# The state status reports while commissioning runs instead of the controller.
SETUP = "SETUP"

# Written when a session starts, removed when its log entry is written: if it
# is found at boot, a reset or power loss interrupted that session.
MARKER_FILE = "session.json"

# Crashes allowed in the recovery controller before the last-resort routine.
_MAX_CRASHES = const(3)
# The uptime's seconds stop here (34 years): the ESP32's largest small int.
_UPTIME_S_MAX = const((1 << 30) - 1)

_fallback_state = [0]
GO_REFUSED_LOW_MEMORY = "go_refused_low_memory"

# This package's name: "firmware" on the board, "invtable.firmware" on a PC.
_PACKAGE = __name__[: __name__.rfind(".")]
# Modules main.py loads only to check the board file (boards/validate.py and
# boards/chips.py, deployed as source beside it): the loop never needs them.
_BOOT_ONLY_MODULES = ("validate", "chips")


def random_bytes(n, ticks_ms=None):
    """n random bytes for PIN salts: ``os.urandom`` (the ESP32's hardware RNG,
    or the OS on a PC) when available; otherwise a fallback that hashes the
    tick counter and a call counter. The fallback is not secret-grade, but a
    salt only needs to differ between boards and PIN changes."""
    try:
        import os

        data = os.urandom(n)
        if len(data) == n:
            return data
    except Exception:  # noqa: BLE001 - no urandom on this port
        pass
    import hashlib

    _fallback_state[0] += 1
    seed = "%d:%d" % (ticks_ms() if ticks_ms is not None else 0, _fallback_state[0])
    out = b""
    while len(out) < n:
        seed = seed + "."
        out += hashlib.sha256(seed.encode()).digest()
    return out[:n]


# Every file the firmware saves with storage.save (write .new, then rename).
_SAVED_FILES = (SETTINGS_FILE, AUTH_FILE, LOG_FILE, MARKER_FILE, EXPOSURE_FILE)


def _interrupted_writes(fs):
    found = []
    for name in _SAVED_FILES:
        try:
            if fs.read_bytes(name + storage.TMP_SUFFIX) is not None:
                found.append(name)
        except OSError:
            pass
    return found


class App:
    def __init__(self, hal, board, reset_fault=None):
        self.hal = hal
        self.board = board
        self.inputs = Inputs()
        # This table's calibration (commissioning); without one GO is refused.
        try:
            self.calib, self.calib_status = calibration.load(hal.fs)
        except Exception:  # noqa: BLE001 - the loop must run regardless
            self.calib, self.calib_status = None, calibration.CORRUPT
        self.ctl = Controller(board, self.calib)
        self._grip = getattr(hal, "grip", None)
        self.setup = None  # commission.Commissioning while `invtable setup` runs
        self.setup_last = None  # its final status, for the host once it ended
        if reset_fault is not None:
            self.ctl.latch_at_boot(reset_fault)
        self.crashes = 0
        self.maintenance_unlocked = False  # maintenance.unlock: the REPL until reboot
        self.last_error = None  # text of the last exception caught in the loop
        self.reset_fault = reset_fault
        self._program = None
        self._explicit_program = False  # set_program() was called: settings do not apply
        self._user = "guest"
        self._rescue = LastResort(board, self.ctl.blind_cap_ms)
        self._in_session = False
        self._pending_entry = None  # log entry waiting for the table to be at rest
        self._end_entry = {"user": None, "start_s": None, "uptime_ms": 0, "max_angle_mdeg": 0,
                           "inverted_ms": 0, "end": None, "fault": None, "daily_ms": None}
        # Uptime in whole seconds plus a ms remainder: small ints for 34 years
        # on the ESP32 (uptime_ms outgrows one after 12.4 days: only requests
        # compute it; the lines of the tick path write these two as digits).
        self.uptime_s = 0
        self.uptime_rem_ms = 0
        self._last_ms = hal.clock.ticks_ms()
        self._tick_ms = 1000 // board["control_hz"]
        self.epoch_s_at_set = None  # clock.set: epoch seconds...
        self._uptime_s_at_set = 0  # ...at this uptime
        self.utc_offset_s = 0  # ...and the host's offset from UTC (for "today")
        self._session_start_s = None
        self.ended_entry = None  # the last log entry written, for the session_end event
        # Before anything loads (loading clears them): files whose last save
        # was cut by a power loss. The old copies are intact and used; the
        # lost change is reported in the boot event and in status.
        self.interrupted_writes = _interrupted_writes(hal.fs)
        self.log = SessionLog(hal.fs)
        # Each user's inverted time today (exposure.py), for the daily cap.
        self.exposure = DailyExposure(hal.fs)
        self.memory = MemoryGuard()
        self.daily_cap_ms = board.get("max_daily_inverted_ms", DEFAULT_MAX_DAILY_INVERTED_MS)
        try:
            if self.exposure.load() == storage.CORRUPT:
                self.exposure.charge_all_for_a_day(self.daily_cap_ms, self.board_age_ms(),
                                                   self.day())
        except Exception as error:  # noqa: BLE001 - the loop must run regardless
            self.last_error = "exposure: %s: %s" % (type(error).__name__, error)
        self.ctl.daily_remaining = self.daily_remaining_ms
        self.interrupted = self._record_interrupted_session()
        self.settings = None
        self.settings_status = DEFAULTS_CORRUPT
        self.auth = None
        try:
            self.settings = Settings(hal.fs, board)
            self.settings_status = self.settings.load()
            clock = hal.clock
            self.auth = Auth(hal.fs, clock.ticks_ms, lambda n: random_bytes(n, clock.ticks_ms))
        except Exception as error:  # noqa: BLE001 - the loop must run regardless
            self.last_error = "settings: %s: %s" % (type(error).__name__, error)
        self._apply_settings()
        # Files a newer firmware wrote: kept untouched, and GO refused until
        # that firmware is back or the file is removed (storage.NEWER).
        self.newer_files = self._newer_files()
        self._block_if_newer()
        self.protocol = None
        if hal.link is not None:
            from .protocol import Protocol

            self.protocol = Protocol(self)

    def status(self):
        """What the `status` command reports (a fresh dict: not for the tick path)."""
        ctl = self.ctl
        session = ctl.session
        return {
            "state": self.state_name(),
            "angle_mdeg": ctl.angle_mdeg,
            "target_mdeg": ctl.profile.pos_mdeg,
            "fault": ctl.fault,
            "fault_chain": list(ctl.fault_chain),
            "warning": ctl.warning,
            "user": self._user,
            "session": session is not None,
            "sets_done": ctl.sets_done,
            "inverted_ms": ctl.inverted_ms,
            "inverted_limit_ms": session.max_inverted_ms if session is not None else None,
            "last_end": ctl.end_reason,
            "last_error": self.last_error,
            "uptime_ms": self.uptime_ms,
            "pin_is_default": self.auth.pin_is_default if self.auth is not None else None,
            "settings_status": self.settings_status,
            "log_status": self.log.status,
            "interrupted_writes": self.interrupted_writes,
            "commissioned": ctl.commissioned,
            "calibration_status": self.calib_status,
            "daily_used_ms": self.daily_used_ms(),
            "daily_limit_ms": self.daily_limit_ms(),
            "check_in_waiting": ctl.check_in.waiting,
            # What main.py found at boot and ran on anyway (imu_not_found).
            "boot_errors": [code for code, _ in getattr(self.hal, "boot_errors", ())],
            "newer_files": list(self.newer_files),
            # The free heap measured at home (None: not measured, e.g. CPython).
            "heap_free_bytes": self.memory.free_bytes,
        }

    def state_name(self):
        """The controller's state, or SETUP while commissioning runs instead."""
        return SETUP if self.setup is not None else self.ctl.state

    # -------------------------------------------------------------- settings
    def _apply_settings(self):
        """The active user's (program, limits) for the next GO, unless the
        caller chose a program explicitly with ``set_program``."""
        if self._explicit_program or self.settings is None:
            return
        limits, program = self.settings.active()
        self._user = self.settings.active_name()
        self._program = (program, limits)
        self.ctl.set_program(program, limits)

    def settings_changed(self):
        """Called by the protocol after every successful settings change."""
        self._apply_settings()

    def _progress(self, entry):
        """After a normally completed session: step the user's program up."""
        if self._explicit_program or self.settings is None or entry["end"] != END_COMPLETED:
            return
        try:
            self.settings.apply_progression(entry["user"])
        except Exception as error:  # noqa: BLE001 - (OSError, a deleted user): keep going
            self.last_error = "progression: %s: %s" % (type(error).__name__, error)
        self._apply_settings()

    # ----------------------------------------------------------------- clock
    def set_clock(self, epoch_s, utc_offset_s=0):
        """The host's wall clock (UTC seconds), for the log's start_s, and its
        offset from UTC, for the calendar day of the daily cap."""
        self.epoch_s_at_set = epoch_s
        self._uptime_s_at_set = self.uptime_s
        self.utc_offset_s = utc_offset_s

    def board_age_ms(self):
        """The board's powered-on time over all its boots (exposure.py)."""
        return self.exposure.age_base_ms + self.uptime_ms

    def day(self):
        return day_number(self.epoch_s(), self.utc_offset_s)

    def daily_limit_ms(self, limits=None):
        """The active user's daily allowance: the board's cap, or the user's
        own daily limit if lower."""
        if limits is None:
            limits = self._program[1] if self._program is not None else {}
        own = limits.get("max_daily_inverted_ms")
        cap = self.daily_cap_ms
        return own if own is not None and own < cap else cap

    def daily_used_ms(self, user=None):
        return self.exposure.used_ms(user or self._user, self.board_age_ms(), self.day())

    def daily_remaining_ms(self):
        """What is left of today's allowance for the active user (asked by the
        controller at the GO that opens a session)."""
        left = self.daily_limit_ms() - self.daily_used_ms()
        return left if left > 0 else 0

    def epoch_s(self):
        """Wall-clock seconds now, or None if the host never set the clock."""
        if self.epoch_s_at_set is None:
            return None
        return self.epoch_s_at_set + self.uptime_s - self._uptime_s_at_set

    def console_locked(self):
        """The console lock is in force: the setting is on and the admin PIN is
        not the factory one (which would protect nothing)."""
        settings, auth = self.settings, self.auth
        if settings is None or auth is None:
            return True
        return settings.console_lock and not auth.pin_is_default

    def console_allowed(self):
        """Ctrl-C may reach the REPL: at rest at home, and with the console
        lock in force only after maintenance.unlock (until the next reboot)."""
        return self.at_rest_home() and (self.maintenance_unlocked or not self.console_locked())

    def at_rest_home(self):
        """At home, no session open, drive off: the only time maintenance may interrupt."""
        ctl = self.ctl
        if self.setup is not None:
            return False
        return ctl.state == HOME and ctl.session is None and not ctl.power

    # ---------------------------------------------------------- commissioning
    def start_setup(self):
        """Begin commissioning (``commission``). Returns None, or (code,
        message) when the table is not at rest at home."""
        ctl = self.ctl
        if self.setup is not None:
            return "busy", "commissioning is already running"
        if ctl.session is not None or ctl.power:
            return "busy", "the table is in use: wait until it is at rest at home"
        if not self.hal.home.closed():
            return "not_home", "the home switch is open: bring the table home (upright) first"
        from .commission import Commissioning

        self.setup = Commissioning(self.board)
        self.setup_last = None
        return None

    def _setup_tick(self, dt_ms):
        setup = self.setup
        setup.step(dt_ms, self.inputs)
        if not setup.done:
            return
        away = not self.inputs.home  # the switch as this tick read it
        status = setup.status()
        if setup.result is not None:
            try:
                calibration.save(self.hal.fs, setup.result)
                self.calib = setup.result
                self.calib_status = calibration.OK
                status["saved"] = True
            except (OSError, ValueError) as error:
                status["error"] = {"code": "storage_error",
                                   "message": "the calibration could not be saved: %s" % error}
                status["saved"] = False
            status["calibration"] = setup.result
        self.setup_last = status
        self.setup = None
        release_module(_PACKAGE + ".commission")  # loaded again by the next setup
        # Start again from BOOT on the new calibration (or the old one). Left
        # away from home (the builder cancelled before jogging it back), the
        # empty table stays where it is, drive off, alarm on: a fault, which a
        # reboot clears (the boot then brings it home).
        self._replace_controller()
        if away and setup.result is None:
            self.ctl.latch_now(F_SETUP_LEFT)

    def _record_interrupted_session(self):
        """At boot: a session marker left on flash means a reset cut a session short."""
        marker, status = storage.load(self.hal.fs, MARKER_FILE)
        if status != storage.OK:
            return False
        entry = {
            "user": marker.get("user", "?"),
            "start_s": None,
            "uptime_ms": marker.get("uptime_ms", 0),
            "max_angle_mdeg": 0,  # lost with the RAM
            "inverted_ms": 0,
            "end": "interrupted",
            "fault": self.reset_fault,
        }
        try:
            self.log.append(entry)
            self.hal.fs.remove(MARKER_FILE)
            self.ended_entry = entry
        except (OSError, ValueError) as error:
            self.last_error = "log: %s" % error
        return True

    @property
    def uptime_ms(self):
        """Exact; beyond 2**30 ms (12.4 days) a big int: not for the tick path."""
        return self.uptime_s * 1000 + self.uptime_rem_ms

    def _count_uptime(self, now_ms):
        dt = ticks_diff(now_ms, self._last_ms)
        self._tick_ms = dt if dt > 0 else 1
        self.uptime_rem_ms += dt
        self._last_ms = now_ms
        while self.uptime_rem_ms >= 1000:
            self.uptime_rem_ms -= 1000
            if self.uptime_s < _UPTIME_S_MAX:
                self.uptime_s += 1

    def _entry(self, end, fault, max_angle_mdeg, inverted_ms):
        # One dict, filled again for each session (the log keeps a copy): the
        # tick a session ends in (e.g. a fault in HOLD) allocates nothing for
        # it while the uptime is a small int.
        entry = self._end_entry
        entry["user"] = self._user
        entry["start_s"] = self._session_start_s
        entry["uptime_ms"] = self.uptime_ms
        entry["max_angle_mdeg"] = max_angle_mdeg
        entry["inverted_ms"] = inverted_ms
        entry["end"] = end
        entry["fault"] = fault
        entry["daily_ms"] = None
        return entry

    def _book_keep(self):
        """Session start/end to flash, never while the table is moving.

        Flash writes can take tens of ms on an ESP32; the end-of-session entry
        waits until the drive is off (HOME, REST or a fault at rest).
        """
        ctl = self.ctl
        if ctl.session is not None and not self._in_session:
            self._in_session = True
            self._session_start_s = self.epoch_s()
            # At home and not yet moving (WARN): a safe moment to write. The
            # session's whole budget is charged to today first: a power cut
            # from here on never gives the rider more than the daily cap.
            try:
                self.exposure.reserve(self._user, ctl.session.max_inverted_ms,
                                      self.board_age_ms(), self.day())
            except OSError as error:
                self.last_error = "exposure: %s" % error
                ctl.remote_stop()  # unrecorded, it must not start: back to HOME
            marker = {"user": self._user, "uptime_ms": self.uptime_ms}
            storage.save(self.hal.fs, MARKER_FILE, marker)
        if ctl.session_ended:
            self._in_session = False
            self._pending_entry = self._entry(
                ctl.end_reason, ctl.fault, ctl.max_angle_mdeg, ctl.inverted_ms
            )
        if self._pending_entry is not None and ctl.at_rest():
            entry = self._pending_entry
            self._pending_entry = None
            # The rider's true exposure: counted on until the table was back
            # at or below 0 deg (a fault's return included).
            entry["inverted_ms"] = ctl.inverted_ms
            if ctl.max_angle_mdeg > entry["max_angle_mdeg"]:
                entry["max_angle_mdeg"] = ctl.max_angle_mdeg
            age_ms, day = self.board_age_ms(), self.day()
            self.exposure.settle(entry["user"], ctl.inverted_ms, age_ms, day)
            entry["daily_ms"] = self.daily_used_ms(entry["user"])
            try:
                self.log.append(entry)
            except (OSError, ValueError) as error:
                self.last_error = "log: %s" % error
            # After the log: a power cut between the two leaves the reservation
            # on flash (more than was used, never less).
            try:
                self.exposure.save(age_ms, day)
            except OSError as error:
                self.last_error = "exposure: %s" % error
            self.hal.fs.remove(MARKER_FILE)
            self.ended_entry = entry
            self._progress(entry)

    def set_program(self, program, limits, user="guest"):
        """An explicit program (the scenario runner): stored settings no
        longer choose the program for GO."""
        self._explicit_program = True
        self._program = (program, limits)
        self._user = user
        self.ctl.set_program(program, limits)

    def tick(self):
        """One control period. Never raises."""
        try:
            if self.crashes >= _MAX_CRASHES:
                self._last_resort()
            else:
                self._tick()
        except Exception as error:  # noqa: BLE001 - any failure must end safe
            self._crashed(error)

    def _tick(self):
        hal = self.hal
        inp = self.inputs
        now_ms = hal.clock.ticks_ms()
        self._count_uptime(now_ms)
        try:
            # False: no sample (hal.py), without an exception to allocate.
            inp.imu_ok = hal.imu.read(inp.raw) is not False
        except OSError:
            inp.imu_ok = False
        inp.go = hal.go.pressed()
        inp.stop = hal.stop.pressed()
        inp.home = hal.home.closed()
        inp.overload = hal.actuator.overloaded()
        grip = self._grip
        inp.grip = grip is not None and grip.pressed()
        if self.setup is not None:
            setup = self.setup
            self._setup_tick(self._tick_ms)
            if setup.power:
                hal.actuator.drive(setup.drive)
            else:
                hal.actuator.off()
            hal.indicator.set(setup.power, True)  # beeps while it moves
            if self.protocol is not None:
                self.protocol.poll(now_ms)
            hal.wdt.feed()
            return
        ctl = self.ctl
        self._guard_memory(ctl, now_ms)
        drive = ctl.step(now_ms, inp)
        if ctl.power:
            hal.actuator.drive(drive)
        else:
            hal.actuator.off()
        hal.indicator.set(ctl.beep, ctl.led)
        if ctl.session_ended or self._pending_entry is not None or (
            ctl.session is not None and not self._in_session
        ):
            self._book_keep()
        if self.protocol is not None:
            self.protocol.poll(now_ms)  # bounded work; never raises
        hal.wdt.feed()  # only a loop that got this far is healthy

    def _guard_memory(self, ctl, now_ms):
        """GO is refused while the heap measured at home is too low to run a
        session to its end (firmware/memory_guard.py)."""
        low = self.memory.update(now_ms, ctl.state == HOME and ctl.session is None)
        if low and ctl.start_blocked is None:
            ctl.start_blocked = GO_REFUSED_LOW_MEMORY
        elif not low and ctl.start_blocked == GO_REFUSED_LOW_MEMORY:
            ctl.start_blocked = None

    def _crashed(self, error):
        if self.crashes < _UPTIME_S_MAX:  # (a last resort that keeps failing: 50 a second)
            self.crashes += 1
        if self.setup is not None:
            # Commissioning dies with the exception: drive off (below), and it
            # is reported as failed; the calibration is unchanged.
            self.setup_last = self.setup.status()
            self.setup_last["error"] = {"code": "internal", "message": "%s: %s" % (
                type(error).__name__, error)}
            self.setup = None
            release_module(_PACKAGE + ".commission")
        self.last_error = "%s: %s" % (type(error).__name__, error)
        try:
            self.hal.actuator.off()
        except Exception:  # noqa: BLE001
            pass
        old = self.ctl
        if self._in_session:
            # The session dies with the controller: log it as ended by a fault.
            self._in_session = False
            self._pending_entry = self._entry("fault", F_CRASH, old.max_angle_mdeg, old.inverted_ms)
        if self.crashes >= _MAX_CRASHES:
            # The next ticks run the last-resort routine. A fresh controller,
            # latched and never stepped again, keeps status and traces honest
            # (state FAULT, fault crash, the drive the routine commands).
            try:
                ctl = Controller(self.board, self.calib)
                ctl.inherit(old)
                ctl.latch_now(F_CRASH)
                self.ctl = ctl
            except Exception:  # noqa: BLE001 - the routine runs regardless
                pass
            return
        # A fresh controller: the old one's state may be what broke.
        self._replace_controller(F_CRASH, old)

    def _newer_files(self):
        found = []
        for name, status in (
            (SETTINGS_FILE, self.settings_status),
            (AUTH_FILE, self.auth.load_status if self.auth is not None else None),
            (LOG_FILE, self.log.status),
            (EXPOSURE_FILE, self.exposure.status),
            (calibration.CALIB_FILE, self.calib_status),
        ):
            if status in (storage.NEWER, NEWER_VERSION):
                found.append(name)
        return found

    def _block_if_newer(self):
        if self.newer_files:
            self.ctl.start_blocked = "go_refused_newer_data"

    def _replace_controller(self, boot_fault=None, old=None):
        """A fresh controller on the current calibration, with the program
        (and, after a crash, the rider's exposure so far)."""
        self.ctl = Controller(self.board, self.calib)
        self.ctl.daily_remaining = self.daily_remaining_ms
        self._block_if_newer()
        if old is not None:
            self.ctl.inherit(old)
        if boot_fault is not None:
            self.ctl.latch_at_boot(boot_fault)
        if self._program is not None:
            self.ctl.set_program(self._program[0], self._program[1])

    def _last_resort(self):
        """No estimator, no state machine: slowly to the home switch, then off
        (last_resort.LastResort, also what main.py runs when no App starts)."""
        drive = self._rescue.step(self.hal)
        self.ctl.drive = drive
        self.ctl.power = drive != 0


def run(hal, board, app=None, reset_fault=None, time_module=None, ticks=None):
    """The board's main loop: one tick per control period, forever.

    The watchdog starts after the first healthy tick (it cannot be stopped
    once started). Ctrl-C on the serial line is honoured only at HOME with no
    session open, so maintenance access (mpremote) can never interrupt a
    rider's return. ``time_module`` and ``ticks`` (a tick count; None =
    forever, without a counter that could outgrow a small int) let the tests
    run this very loop on a simulated clock.
    """
    if time_module is None:
        import time as time_module
    time = time_module
    # Boot is over: what only boot needed need not stay in the heap.
    for name in _BOOT_ONLY_MODULES:
        release_module(name)
    period_ms = 1000 // board["control_hz"]
    if app is None:
        app = App(hal, board, reset_fault=reset_fault)
    console = getattr(hal, "console", None)
    interrupt_allowed = None
    watchdog_started = False
    next_ms = time.ticks_ms()
    while ticks is None or ticks > 0:
        if ticks is not None:
            ticks -= 1
        app.tick()
        if not watchdog_started and hasattr(hal.wdt, "start_watchdog"):
            hal.wdt.start_watchdog()
            watchdog_started = True
        allowed = app.console_allowed()
        if console is not None and allowed != interrupt_allowed:
            console.allow_interrupt(allowed)
            interrupt_allowed = allowed
        next_ms = time.ticks_add(next_ms, period_ms)
        wait_ms = time.ticks_diff(next_ms, time.ticks_ms())
        if wait_ms > 0:
            time.sleep_ms(wait_ms)
        else:
            next_ms = time.ticks_ms()  # late: do not try to catch up in a burst
    return app
