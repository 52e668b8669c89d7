"""The MicroPython side of the virtual board (``invtable sim board``).

Runs inside the npm MicroPython (WebAssembly) interpreter, started by
``host/vboard_node.mjs`` before the REPL opens. ``install(config)`` makes that
interpreter look like an ESP32 with a table attached:

- ``sys.modules["machine"]`` is ``hal_sim.machine_sim`` wired to a simulated
  table built as the world says (``config["world"]``: a world file's dict, see
  hal_sim/world.py; None = exactly the board file):
  ``TablePhysics`` + ``SimImu`` behind an ``MPU6050Model`` on I2C bus 0,
  the actuator pins' PWM duty (and enable pin) drive the physics, the home
  switch, GO and STOP pins follow the board file, the current-sense ADC reads
  high when the actuator pushes into an end stop.
  The table is a ``hal_sim.table.SimTable``: its buttons, switches and fault
  switches are the ones ``invtable sim serve`` uses.
- The physics advances with the interpreter's own clock (``time.ticks_ms``),
  lazily: whenever the firmware reads the IMU (first thing in every control
  tick), the physical inputs that arrived on the runner's control channel
  (``invtable sim board``'s stdin: go, go_down, stop, faults, power_loss,
  status) are applied, the table is stepped by the elapsed real time with
  the drive the pins have carried since the previous step, and the
  watchdog is checked. While the REPL idles the runner applies them.
- ``config["files"]`` are written to the flash before the first boot unless
  already there (the calibration commissioning would measure, see
  host/vboard.py).
- ``time.sleep*`` really sleeps (in Node, with no CPU use) instead of
  spinning, and raises KeyboardInterrupt when Ctrl-C arrived on the serial
  line while the interrupt character is enabled (``micropython.kbd_intr``).
- ``os`` functions and ``open`` re-raise OSError with MicroPython's errno
  numbers (ENOENT 2, EEXIST 17, ...) instead of Emscripten's (44, 20, ...),
  which mpremote's file commands rely on.
- The board names its chip as the ESP32 port does: ``sys.implementation._machine``
  and ``os.uname().machine`` end in ``with ESP32`` or ``with ESP32S3`` (the
  board file's ``chip``), where this port says ``JS with Emscripten``.

``vboard_host`` is the JavaScript module the Node runner registers.
The object returned by ``install`` is reachable on the board as
``sys.modules["_vboard"]`` (e.g. ``import _vboard; _vboard.table_angle_mdeg()``).
"""

import builtins
import json
import sys
import time

import micropython
import vboard_host

from . import machine_sim
from .clock import ticks_diff
from .mpu6050_model import MPU6050Model
from .table import SimTable
from .world import World

_TICKS_MAX = (1 << 30) - 1
# The firmware's clock (machine.ticks_ms) starts 10 s before the 2**30 wrap,
# as in the CPython simulator, so every virtual-board run crosses it.
_CLOCK_START_TICKS_MS = (1 << 30) - 10000
# Longest real-time gap integrated in one physics step: the REPL may sit idle
# for hours; nothing drives the table meanwhile (see README).
_MAX_STEP_MS = 2000
_SENSE_OVERLOAD_UV = 3000000
_SENSE_IDLE_UV = 150000
_POWER_OFF_MS = 500  # a power_loss input: dark this long, then a power-on reset

# Emscripten's errno numbers (WASI) -> MicroPython's (as on the ESP32 port).
# 1 and 2 are left alone: MicroPython's own VFS layer raises EPERM (1) and
# ENOENT (2) with the standard numbers, and Emscripten's E2BIG/EACCES do not
# occur on its in-memory filesystem.
_ERRNO_FIX = {
    6: 11,  # EAGAIN
    8: 9,  # EBADF
    10: 16,  # EBUSY
    20: 17,  # EEXIST
    28: 22,  # EINVAL
    29: 5,  # EIO
    31: 21,  # EISDIR
    33: 24,  # EMFILE
    37: 36,  # ENAMETOOLONG
    43: 19,  # ENODEV
    44: 2,  # ENOENT
    48: 12,  # ENOMEM
    51: 28,  # ENOSPC
    54: 20,  # ENOTDIR
    55: 39,  # ENOTEMPTY
    63: 1,  # EPERM
    69: 30,  # EROFS
    75: 18,  # EXDEV
}


def _fixed_oserror(error):
    code = error.errno if hasattr(error, "errno") else error.args[0]
    fixed = _ERRNO_FIX.get(code)
    if fixed is None:
        return error
    return OSError(fixed)


def _wrap_errno(fn):
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OSError as error:
            fixed = _fixed_oserror(error)
            if fixed is error:
                raise
            raise fixed from None

    return wrapped


class _ModuleProxy:
    """Stands in for a module in sys.modules (this port cannot create modules):
    every attribute is the real module's, except the overrides."""

    def __init__(self, real, overrides):
        self._real = real
        for name, value in overrides.items():
            setattr(self, name, value)

    def __getattr__(self, name):
        return getattr(self._real, name)


_OS_WRAPPED = (
    "chdir",
    "getcwd",
    "ilistdir",
    "listdir",
    "mkdir",
    "remove",
    "rename",
    "rmdir",
    "stat",
    "statvfs",
    "unlink",
)


def _machine_name(board):
    """What the ESP32 port's sys.implementation._machine says: BOARD with MCU."""
    return "virtual %s with %s" % (board.get("name", "board"), board.get("chip", "esp32").upper())


class _Implementation:
    """sys.implementation with the board's own _machine (the port's is a
    read-only tuple)."""

    def __init__(self, real, machine):
        self.name = real.name
        self.version = real.version
        self._machine = machine
        self._mpy = getattr(real, "_mpy", 0)
        self._build = getattr(real, "_build", "")

    def __repr__(self):
        return "(name=%r, version=%r, _machine=%r, _mpy=%r)" % (
            self.name, self.version, self._machine, self._mpy)


class _Uname:
    def __init__(self, machine):
        version = sys.implementation.version
        self.sysname = "esp32"
        self.nodename = "esp32"
        self.release = "%d.%d.%d" % (version[0], version[1], version[2])
        self.version = "v" + self.release
        self.machine = machine

    def __getitem__(self, index):
        return (self.sysname, self.nodename, self.release, self.version, self.machine)[index]

    def __repr__(self):
        return "(sysname=%r, nodename=%r, release=%r, version=%r, machine=%r)" % (
            self.sysname, self.nodename, self.release, self.version, self.machine)


def _install_identity(board):
    machine = _machine_name(board)
    uname = _Uname(machine)
    sys.modules["sys"] = _ModuleProxy(sys, {"implementation": _Implementation(
        sys.implementation, machine)})
    return lambda: uname


def _install_errno_fix(uname):
    import os as real_os

    overrides = {"uname": uname}
    for name in _OS_WRAPPED:
        fn = getattr(real_os, name, None)
        if fn is not None:
            overrides[name] = _wrap_errno(fn)
    real_ilistdir = overrides["ilistdir"]
    real_stat = overrides["stat"]

    def ilistdir(path="."):
        # This port reports size 0 for every entry; LittleFS on the board
        # gives the real size (mpremote's `fs ls` shows it).
        base = path.rstrip("/") + "/" if path not in ("", ".") else ""
        for entry in real_ilistdir(path):
            size = 0
            if entry[1] == 0x8000:
                try:
                    size = real_stat(base + entry[0])[6]
                except OSError:
                    pass
            yield (entry[0], entry[1], entry[2], size)

    overrides["ilistdir"] = ilistdir
    sys.modules["os"] = _ModuleProxy(real_os, overrides)
    builtins.open = _wrap_errno(builtins.open)


# --- time and Ctrl-C ------------------------------------------------------------


class _Interrupts:
    kbd_char = 3  # the REPL enables Ctrl-C while it executes code


def _kbd_intr(char):
    _Interrupts.kbd_char = char
    vboard_host.set_kbd_intr(char)
    micropython.kbd_intr(char)


def _check_interrupt():
    if vboard_host.take_interrupt():
        raise KeyboardInterrupt


class _Table:
    current = None  # the VirtualTable, once installed


def _sleep_ms(ms):
    if ms > 0:
        vboard_host.sleep_ms(int(ms))
    _check_interrupt()
    table = _Table.current
    if table is not None:
        # The table also lives while the firmware only sleeps (a board with
        # no IMU on the bus never reads it: the physics must step anyway).
        table.sync()


def _sleep(seconds):
    _sleep_ms(int(seconds * 1000))


def _sleep_us(us):
    _sleep_ms(us // 1000)


def _install_time_and_micropython():
    real_time = time
    sys.modules["time"] = _ModuleProxy(
        real_time, {"sleep": _sleep, "sleep_ms": _sleep_ms, "sleep_us": _sleep_us}
    )
    sys.modules["micropython"] = _ModuleProxy(micropython, {"kbd_intr": _kbd_intr})


# --- the simulated table --------------------------------------------------------


class _ImuSource:
    """The MPU-6050 model's source: steps the table to now, then reads SimImu."""

    def __init__(self, world):
        self.world = world

    def read(self, out):
        self.world.sync()
        self.world.imu.read(out)


class VirtualTable:
    """A ``SimTable`` (physics, IMU, buttons, switches, fault switches) behind
    the simulated ``machine`` pins, on the interpreter's real-time clock."""

    def __init__(self, board, seed=0, start_angle_deg=None, rider_mass_kg=80.0, world=None,
                 imu_present=True):
        """``world``: the table that is really there (hal_sim.world.World), with
        its own rider; None = exactly the board file with ``rider_mass_kg``.
        ``imu_present`` False: no MPU-6050 answers on the I2C bus (a loose
        connector, a brown-out), from power-on."""
        self.imu_present = imu_present
        self.sim = SimTable(
            board, seed, rider_mass_kg, start_angle_deg=start_angle_deg, world=world
        )
        self.board = board
        self.world = self.sim.world
        self.physics = self.sim.physics
        self.imu = self.sim.imu
        self.mpu = MPU6050Model(_ImuSource(self))
        self._last_ms = time.ticks_ms()
        self._clock_offset = _CLOCK_START_TICKS_MS - self._last_ms
        self.syncs = 0
        self.wire()

    # The machine side (again after every reset: sim_clear forgets all pins).
    def wire(self, reset_cause=machine_sim.PWRON_RESET):
        machine_sim.sim_clear(self.board.get("chip", "esp32"), reset_cause)
        imu_cfg = self.board["imu"]
        bus = machine_sim.sim_i2c_bus(imu_cfg.get("i2c_id", 0))
        if self.imu_present:
            bus.attach(imu_cfg.get("addr", 0x68), self.mpu)
        machine_sim.sim_set_ticks(self.ticks_ms)
        self.sim.power_on()  # after a power_loss input
        self._last_ms = time.ticks_ms()
        self._update_pins()

    def ticks_ms(self):
        """machine.ticks_ms() on the virtual board: the HAL clock and the
        watchdog's. (It does not step the physics: the watchdog check inside
        sync() reads it.)"""
        return (time.ticks_ms() + self._clock_offset) & _TICKS_MAX

    def drive_permille(self):
        """What the bridge outputs now, from the pins (+ = towards inversion)."""
        act = self.board["actuator"]
        fwd = machine_sim.sim_pwm_duty_u16(act["pwm_fwd"]) or 0
        rev = machine_sim.sim_pwm_duty_u16(act["pwm_rev"]) or 0
        enable = act.get("enable")
        if enable is not None and not machine_sim.sim_level(enable):
            return 0  # BTS7960 with EN low: both half-bridges off
        # BTS7960: duty on RPWM or LPWM. DRV8871 slow decay: one input held
        # high, the other low for the on-time; both high or both low = no drive.
        return (fwd - rev) * 1000 // 65535

    def sync(self):
        """Apply the inputs that arrived, then step the table to the
        interpreter's now with the current drive."""
        _Inputs.poll(self, in_code=True)
        now = time.ticks_ms()
        dt = ticks_diff(now, self._last_ms)
        if dt > 0:
            self._last_ms = now
            if dt > _MAX_STEP_MS:
                dt = _MAX_STEP_MS
            machine_sim.sim_run_due_timers()  # the drive deadline, as on the chip
            self.sim.actuator.drive(self.drive_permille())
            # The rider hears the beeper pin (check-ins: hal_sim/rider.py).
            self.sim.indicator.beep = bool(machine_sim.sim_level(self.board["beeper_pin"]))
            self.sim.step(dt)  # also lets go of tapped buttons
            self.syncs += 1
            self._update_pins()
        _check_interrupt()
        if machine_sim.sim_wdt() is not None:
            try:
                machine_sim.sim_check_wdt()
            except machine_sim.SimReset as reset:
                _Resets.pending = reset.cause
                vboard_host.request_reset(reset.cause)
                raise

    def _update_pins(self):
        board = self.board
        sim = self.sim
        phys = self.physics
        # Contacts to GND with pull-ups: closed = driven low, open = not driven.
        machine_sim.sim_set_input(board["home_pin"], 0 if sim.home.closed() else None)
        machine_sim.sim_set_input(board["go_pin"], 0 if sim.go.pressed() else None)
        if board.get("grip_pin") is not None:  # NO grip to GND: released = not driven
            machine_sim.sim_set_input(board["grip_pin"], 0 if sim.grip.pressed() else None)
        # STOP is normally closed: pressed (or its wire cut) opens the contact.
        machine_sim.sim_set_input(board["stop_pin"], None if sim.stop.pressed() else 0)
        sense = self.board["actuator"].get("sense_adc")
        if sense is not None:
            over = phys.current_high or phys.overload
            machine_sim.sim_set_adc_uv(sense, _SENSE_OVERLOAD_UV if over else _SENSE_IDLE_UV)

    def press(self, button, pressed=True):
        """button: 'go' or 'stop'; held until pressed=False."""
        if button not in ("go", "stop"):
            raise ValueError("button must be 'go' or 'stop'")
        self.sim.inject(button + ("_down" if pressed else "_up"))
        self._update_pins()

    def inject(self, action):
        """A physical input (SimTable.ACTIONS: buttons, hardware faults)."""
        self.sim.inject(action)  # ValueError for an unknown one
        self._update_pins()

    def describe(self):
        """One line: what the table and its inputs are doing now."""
        sim = self.sim
        phys = self.physics
        imu = self.imu
        faults = [
            name
            for name, on in (
                ("imu_disconnect", imu.disconnected),
                ("imu_stuck", imu.stuck),
                ("imu_drift", imu.drift_start_ms is not None),
                ("stall", phys.stalled),
                ("overload", phys.overload),
                ("stop_wire_cut", sim.stop.wire_cut),
                ("home_switch_fail", sim.home.stuck_open),
                ("home_switch_stuck_closed", sim.home.stuck_closed),
            )
            if on
        ]
        if not self.imu_present:
            faults.append("no_imu")
        beeper = machine_sim.sim_level(self.board["beeper_pin"])
        return ("table %.1f deg, drive %d permille, GO %s, STOP %s, home switch %s, beeper %s, "
                "faults: %s") % (
            phys.angle_deg,
            self.drive_permille(),
            "held" if sim.go.pressed() else "released",
            "held" if sim.stop.held else "released",
            "closed" if sim.home.closed() else "open",
            "on" if beeper else "off",
            ", ".join(faults) or "none",
        )

    def table_angle_mdeg(self):
        self.sync()
        return int(self.physics.angle_deg * 1000)

    def state(self):
        """JSON text of what survives a reset (the table does not move)."""
        p = self.physics
        return json.dumps(
            {
                "angle_deg": p.angle_deg,
                "actuator_deg": p.actuator_deg,
            }
        )

    def restore(self, text):
        data = json.loads(text)
        p = self.physics
        p.angle_deg = data["angle_deg"]
        p.actuator_deg = data["actuator_deg"]
        p.velocity_deg_s = 0.0
        p.actuator_velocity_deg_s = 0.0


# --- physical inputs (the stdin of `invtable sim board`) ---------------------------


class _Inputs:
    """Lines from the Node runner's control channel, applied to the table.

    Drained at every sync() (the firmware reads the IMU first thing in each
    control tick, and sleeps after it), and by the Node side while the REPL
    idles."""

    @staticmethod
    def poll(table, in_code):
        """Apply the waiting inputs. ``in_code``: called from running Python
        code, which a power_loss then ends by raising SimReset; otherwise the
        Node side sees the requested reset and boots the board itself."""
        text = vboard_host.take_inputs()
        if not text:
            return
        for line in text.split("\n"):
            action = line.strip()
            if action:
                _Inputs.apply(table, action, in_code)

    @staticmethod
    def apply(table, action, in_code):
        if action == "status":
            vboard_host.note("status: " + table.describe())
            return
        if action == "power_loss":
            vboard_host.note("input: power_loss (the board restarts)")
            table.sim.power_off()  # the bridge loses power; the actuator holds
            vboard_host.sleep_ms(_POWER_OFF_MS)
            _Resets.pending = machine_sim.PWRON_RESET
            vboard_host.request_reset(machine_sim.PWRON_RESET)
            if in_code:
                raise machine_sim.SimReset(machine_sim.PWRON_RESET)
            return
        try:
            table.inject(action)
        except ValueError:
            vboard_host.note("unknown input %r" % action)
            return
        vboard_host.note("input: " + action)


# --- resets -----------------------------------------------------------------------


class _Resets:
    pending = 0  # reset cause of a machine.reset() / watchdog not yet handled


def _patch_machine_resets():
    hard = machine_sim.reset
    soft = machine_sim.soft_reset

    # This port's REPL swallows SystemExit (SimReset is one), so the Node side
    # is told directly and resets the board once the running code has ended.
    def reset():
        _Resets.pending = machine_sim.HARD_RESET
        vboard_host.request_reset(machine_sim.HARD_RESET)
        hard()

    def soft_reset():
        _Resets.pending = machine_sim.SOFT_RESET
        vboard_host.request_reset(machine_sim.SOFT_RESET)
        soft()

    machine_sim.reset = reset
    machine_sim.soft_reset = soft_reset


class _Board:
    """Everything install() set up, plus the soft-reset emulation."""

    def __init__(self, table):
        self.table = table
        self.keep_modules = None
        self.keep_main = None
        self.keep_path = None
        self.boots = 0

    def snapshot(self, main_globals):
        """Remember the interpreter as it is now: what a reset returns to.
        main_globals: the REPL's globals (``globals()`` at the REPL)."""
        _Main.globals = main_globals
        self.keep_modules = set(sys.modules)
        self.keep_main = set(main_globals)
        self.keep_path = list(sys.path)  # the loader puts the firmware slot first

    def take_reset_cause(self):
        cause = _Resets.pending
        _Resets.pending = 0
        return cause

    def reset(self, cause):
        """Forget everything loaded since snapshot(), as a reboot would."""
        _Resets.pending = 0
        for name in list(sys.modules):
            if name not in self.keep_modules:
                del sys.modules[name]
        main = _main_globals()
        for name in list(main):
            if name not in self.keep_main:
                del main[name]
        sys.path[:] = self.keep_path
        _Interrupts.kbd_char = 3
        vboard_host.set_kbd_intr(3)
        self.table.wire(cause)

    def boot(self, run_main):
        """Run /boot.py and, in the friendly REPL, /main.py, as the port does.

        Returns the reset cause if a script reset the board (machine.reset,
        watchdog, a power_loss input), else 0, and tells the Node side the
        same (``runPython`` hands it no return value).
        """
        self.boots += 1
        cause = 0
        for name in ("boot.py", "main.py") if run_main else ("boot.py",):
            cause = _run_file(name)
            if cause:
                break
        _Resets.pending = 0
        vboard_host.request_reset(cause)
        return cause


class _Main:
    globals = None  # the REPL's globals dict, set by snapshot()


def _main_globals():
    return _Main.globals


def _run_file(name):
    try:
        with open(name) as f:
            source = f.read()
    except OSError:
        return 0  # no such script: nothing to run
    vboard_host.set_kbd_intr(3)
    try:
        exec(compile(source, name, "exec"), _main_globals())
    except machine_sim.SimReset as reset:
        return reset.cause
    except SystemExit:
        return machine_sim.SOFT_RESET
    except BaseException as error:  # noqa: BLE001 - printed like the port does
        sys.print_exception(error)
    return 0


def _write_missing_files(files):
    """Put files on the board's flash before it first boots; a file already
    there is kept (it is the board's own, e.g. a calibration it measured)."""
    import os

    for name, text in files.items():
        try:
            os.stat(name)
            continue
        except OSError:
            pass
        with open(name, "wb") as f:
            f.write(text.encode())


def install(config_json):
    """Set the interpreter up as the virtual board. config: JSON text with
    board (the BOARD dict), seed, start_angle_deg (None = the world's home),
    world (a world file's dict, checked again here; None = the board file),
    imu (False: no MPU-6050 on the bus) and files ({name: text} for the
    flash, written unless already there)."""
    config = json.loads(config_json)
    board_dict = config["board"]
    _install_errno_fix(_install_identity(board_dict))
    _install_time_and_micropython()
    world = config.get("world")
    if world is not None:
        world = World.from_dict(world, board_dict)
    table = VirtualTable(
        board_dict, config.get("seed", 0), config.get("start_angle_deg"), world=world,
        imu_present=config.get("imu", True),
    )
    _Table.current = table
    _write_missing_files(config.get("files") or {})
    _patch_machine_resets()
    sys.modules["machine"] = machine_sim
    board = _Board(table)
    sys.modules["_vboard"] = _VboardApi(board)
    return board


class _VboardApi:
    """``import _vboard`` on the virtual board: the simulator's controls."""

    def __init__(self, board):
        self.board = board
        self.table = board.table

    def table_angle_mdeg(self):
        return self.table.table_angle_mdeg()

    def press(self, button, pressed=True):
        self.table.press(button, pressed)

    def inject(self, action):
        """A physical input or hardware fault by name (SimTable.ACTIONS)."""
        self.table.inject(action)

    def describe(self):
        return self.table.describe()

    def poll_inputs(self):
        """Apply the control channel's waiting inputs (the Node side calls
        this while the REPL idles; a power_loss then requests the reset)."""
        _Inputs.poll(self.table, in_code=False)

    def drive_permille(self):
        return self.table.drive_permille()

    def mpu_registers(self):
        return bytes(self.table.mpu.regs)

    def world(self):
        """The world this table was built from, in the world-file form."""
        return self.table.world.to_dict()
