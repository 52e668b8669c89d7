"""The HAL on real ESP32 hardware: machine.Pin / PWM / ADC / I2C / WDT.

``build(board)`` turns a board file (see ``boards/``) into a ``hal.Hal``.
Everything the control loop calls per tick (``imu.read``, ``actuator.drive``,
``pressed``/``closed``, ``clock.ticks_ms``, ``wdt.feed``, ``link.read_byte``,
``link.write_buf``) allocates nothing on the heap, a failed I2C transfer
excepted (machine.I2C raises a new OSError).

On a PC the same file runs against ``hal_sim.machine_sim`` installed as
``sys.modules["machine"]``.
"""

import os
import sys
import time

import machine

from .compat import const
from .hal import DRIVE_DEADLINE_MS, Hal
from .mpu6050 import MPU6050

_MICROPYTHON = sys.implementation.name == "micropython"
_DUTY_FULL = const(65535)
DEFAULT_WDT_TIMEOUT_MS = const(1000)
_SENSE_SAMPLES = const(4)
# Hardware timers: 0 keeps the watchdog fed at the REPL (main.py), 1 is the
# drive deadline. The ESP32 and the ESP32-S3 both have four.
MAINTENANCE_TIMER_ID = const(0)
DRIVE_DEADLINE_TIMER_ID = const(1)


class BootError(Exception):
    """Start-up failed; ``code`` is the stable machine-readable reason."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


# --- clock --------------------------------------------------------------------


def _pick_ticks_ms():
    # machine_sim has ticks_ms (a virtual clock); the real machine module has
    # not, so on the board this is time.ticks_ms.
    fn = getattr(machine, "ticks_ms", None) or getattr(time, "ticks_ms", None)
    if fn is not None:
        return fn

    def cpython_ticks_ms():
        return (time.monotonic_ns() // 1000000) & ((1 << 30) - 1)

    return cpython_ticks_ms


class Clock:
    def __init__(self, ticks_fn=None):
        # An instance attribute holding a plain function: calling it allocates
        # no bound method.
        self.ticks_ms = ticks_fn or _pick_ticks_ms()


# --- actuator -----------------------------------------------------------------


def _clamp_permille(permille):
    if permille > 1000:
        return 1000
    if permille < -1000:
        return -1000
    return permille


class DriveDeadline:
    """The HAL's drive deadline (hal.DRIVE_DEADLINE_MS): a one-shot hardware
    timer that every ``arm()`` (each drive command) pushes back; when it runs
    out it calls ``stop`` (the actuator's ``off``). It needs nothing from the
    control loop, so a loop stuck in an endless loop or a long computation
    still loses the drive after the deadline, not after the watchdog's
    timeout. (MicroPython runs the callback between bytecodes; a hang inside
    one C call is left to the watchdog.)"""

    def __init__(self, stop, period_ms=DRIVE_DEADLINE_MS, timer_id=DRIVE_DEADLINE_TIMER_ID):
        self._timer = machine.Timer(timer_id)
        self._stop = stop
        self._callback = self._expired  # bound once: re-arming allocates nothing
        self.period_ms = period_ms
        self.expired_count = 0

    def arm(self):
        self._timer.init(mode=machine.Timer.ONE_SHOT, period=self.period_ms,
                         callback=self._callback)

    def disarm(self):
        self._timer.deinit()

    def _expired(self, _timer):
        self.expired_count += 1
        self._stop()


def _pwm_low(pin_no, hz):
    """A PWM output that starts low: the pin is driven low before PWM takes it."""
    pin = machine.Pin(pin_no, machine.Pin.OUT, value=0)
    return machine.PWM(pin, freq=hz, duty_u16=0)


class Bts7960Actuator:
    """BTS7960 (IBT-2) dual half-bridge: RPWM/LPWM, R_EN+L_EN tied, R_IS+L_IS sensed.

    EN high with both PWM inputs low turns both low-side switches on: the motor
    terminals are shorted, i.e. brake. EN low puts both half-bridges in
    high impedance: off (coast).
    """

    def __init__(self, pwm_fwd, pwm_rev, enable, sense_adc, pwm_hz=20000, overload_mv=2500):
        # Enable low first, so nothing PWM does while being set up can move the motor.
        self._en = machine.Pin(enable, machine.Pin.OUT, value=0)
        self._fwd = _pwm_low(pwm_fwd, pwm_hz)
        self._rev = _pwm_low(pwm_rev, pwm_hz)
        self._sense = machine.ADC(machine.Pin(sense_adc), atten=machine.ADC.ATTN_11DB)
        self._overload_uv = overload_mv * 1000
        self.command = 0
        self.deadline = DriveDeadline(self.off)

    def drive(self, permille):
        permille = _clamp_permille(permille)
        duty = (permille if permille >= 0 else -permille) * _DUTY_FULL // 1000
        # Zero the side that must be idle before raising the other one.
        if permille > 0:
            self._rev.duty_u16(0)
            self._fwd.duty_u16(duty)
        elif permille < 0:
            self._fwd.duty_u16(0)
            self._rev.duty_u16(duty)
        else:
            self._fwd.duty_u16(0)
            self._rev.duty_u16(0)
        self._en.value(1)
        self.command = permille
        self.deadline.arm()

    def off(self):
        self._en.value(0)
        self._fwd.duty_u16(0)
        self._rev.duty_u16(0)
        self.command = 0
        self.deadline.disarm()

    def sense_uv(self):
        """Highest IS voltage over a few samples (IS only reflects current while
        the PWM is on, so one sample can land in an off phase)."""
        high = 0
        for _ in range(_SENSE_SAMPLES):
            uv = self._sense.read_uv()
            if uv > high:
                high = uv
        return high

    def overloaded(self):
        # Over-current and the chip's own fault state (IS driven to its fault
        # current) both push IS above the threshold.
        return self.sense_uv() >= self._overload_uv


class Drv8871Actuator:
    """DRV8871 H-bridge: IN1 / IN2, no enable pin, no current-sense or fault output.

    Truth table: 0/0 coast (and sleep after ~1 ms), 1/0 forward, 0/1 reverse,
    1/1 brake (both low-side switches on).

    Speed control uses slow decay (drive / brake): the "towards" input stays
    high and the other one carries the inverted PWM, so each off phase brakes
    instead of coasting. drive(0) is then simply both high: brake. We brake
    rather than coast on purpose: the actuator is self-locking, but braking
    stops the motor's own run-on at once and adds resistance if the load ever
    back-drives it. ``off()`` (both low) coasts and lets the chip sleep.
    """

    def __init__(self, pwm_fwd, pwm_rev, pwm_hz=20000):
        self._in1 = _pwm_low(pwm_fwd, pwm_hz)  # IN1: high = towards inversion
        self._in2 = _pwm_low(pwm_rev, pwm_hz)  # IN2: high = towards home
        self.command = 0
        self.deadline = DriveDeadline(self.off)

    def drive(self, permille):
        permille = _clamp_permille(permille)
        on_time = (permille if permille >= 0 else -permille) * _DUTY_FULL // 1000
        # The held-high input first: a transient 1/1 is a brake, never a
        # wrong-way pulse. The other input is low for on_time: drive, else brake.
        if permille > 0:
            self._in1.duty_u16(_DUTY_FULL)
            self._in2.duty_u16(_DUTY_FULL - on_time)
        elif permille < 0:
            self._in2.duty_u16(_DUTY_FULL)
            self._in1.duty_u16(_DUTY_FULL - on_time)
        else:
            self._in1.duty_u16(_DUTY_FULL)
            self._in2.duty_u16(_DUTY_FULL)
        self.command = permille
        self.deadline.arm()

    def off(self):
        self._in1.duty_u16(0)
        self._in2.duty_u16(0)
        self.command = 0
        self.deadline.disarm()

    def overloaded(self):
        # The DRV8871 limits current itself (ILIM resistor) and has no fault
        # pin, so there is nothing to read: stalls are caught by the firmware's
        # "no movement when commanded" check instead.
        return False


def make_actuator(cfg):
    driver = cfg["driver"]
    if driver == "bts7960":
        return Bts7960Actuator(
            cfg["pwm_fwd"],
            cfg["pwm_rev"],
            cfg["enable"],
            cfg["sense_adc"],
            cfg.get("pwm_hz", 20000),
            cfg.get("overload_mv", 2500),
        )
    if driver == "drv8871":
        return Drv8871Actuator(cfg["pwm_fwd"], cfg["pwm_rev"], cfg.get("pwm_hz", 20000))
    raise ValueError("unknown actuator driver %r" % (driver,))


# --- switches, indicator --------------------------------------------------------


class Button:
    """A contact to GND with the internal pull-up; ``pressed_level`` is the raw
    level that means pressed: 0 for a normally-open button (GO), 1 for a
    normally-closed one (STOP: open circuit or a cut wire reads high = pressed)."""

    def __init__(self, pin_no, pressed_level):
        self._pin = machine.Pin(pin_no, machine.Pin.IN, machine.Pin.PULL_UP)
        self._pressed_level = pressed_level

    def pressed(self):
        return self._pin.value() == self._pressed_level


class HomeSwitch:
    """The home limit contact to GND with the pull-up: pin low = contact closed.

    The board wires it so that closed = at home; a cut wire therefore reads
    "not at home", which never lets the firmware believe the rider is upright.
    """

    def __init__(self, pin_no):
        self._pin = machine.Pin(pin_no, machine.Pin.IN, machine.Pin.PULL_UP)

    def closed(self):
        return self._pin.value() == 0


class Indicator:
    """Active buzzer (via a transistor) and LED, both active-high."""

    def __init__(self, beeper_pin, led_pin):
        self._beep = machine.Pin(beeper_pin, machine.Pin.OUT, value=0)
        self._led = machine.Pin(led_pin, machine.Pin.OUT, value=0)

    def set(self, beep, led):
        self._beep.value(1 if beep else 0)
        self._led.value(1 if led else 0)


# --- IMU ------------------------------------------------------------------------


class MissingImu:
    """Stands in for an IMU that was not found at boot: every ``read``
    returns False (no sample), so the control loop sees a lost angle
    (``imu_lost``) and takes the blind way home, exactly as when the sensor
    is lost mid-session. No exception: a raise allocates (a new OSError, or a
    traceback entry on a kept one) on every tick; a return value does not.
    """

    def __init__(self, message):
        self.message = message

    def read(self, out):
        return False


def make_imu(cfg, sleep_ms=None):
    i2c = machine.I2C(
        cfg.get("i2c_id", 0),
        scl=machine.Pin(cfg["scl"]),
        sda=machine.Pin(cfg["sda"]),
        freq=cfg.get("freq_hz", 400000),
    )
    return MPU6050(
        i2c,
        cfg.get("addr", 0x68),
        cfg.get("accel_fs_g", 2),
        cfg.get("gyro_fs_dps", 500),
        sleep_ms,
    )


# --- storage --------------------------------------------------------------------


class Fs:
    """The flash filesystem (LittleFS on the ESP32 port), flat namespace."""

    def __init__(self, root=""):
        self._root = root + "/" if root and not root.endswith("/") else root

    def _path(self, name):
        return self._root + name

    def _exists(self, path):
        try:
            os.stat(path)
            return True
        except OSError:
            return False

    def read_bytes(self, name):
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            # Only "missing" is None; any other failure is reported. (Checked
            # with stat, not errno numbers: those differ between ports.)
            if not self._exists(path):
                return None
            raise

    def write_bytes(self, name, data):
        with open(self._path(name), "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                for chunk in data:  # a large file, one chunk at a time
                    f.write(chunk)

    def patch_bytes(self, name, offset, data):
        with open(self._path(name), "r+b") as f:
            f.seek(offset)
            f.write(data)

    def rename(self, old, new):
        old_path = self._path(old)
        new_path = self._path(new)
        try:
            os.rename(old_path, new_path)  # LittleFS: atomically replaces new
        except OSError:
            # FAT refuses to rename onto an existing file: not atomic, but the
            # settings code keeps the new copy under `old` until this succeeds.
            if not self._exists(new_path) or not self._exists(old_path):
                raise
            os.remove(new_path)
            os.rename(old_path, new_path)

    def remove(self, name):
        path = self._path(name)
        try:
            os.remove(path)
        except OSError:
            if self._exists(path):
                raise


# --- watchdog -------------------------------------------------------------------


class Watchdog:
    """machine.WDT, created only by ``start_watchdog()``: once started it can
    never be stopped (not even at the REPL), so it must not start before the
    control loop runs. ``feed()`` before that is a no-op."""

    def __init__(self, timeout_ms=DEFAULT_WDT_TIMEOUT_MS):
        self.timeout_ms = timeout_ms
        self._wdt = None

    @property
    def started(self):
        return self._wdt is not None

    def start_watchdog(self, timeout_ms=None):
        if self._wdt is None:
            if timeout_ms is not None:
                self.timeout_ms = timeout_ms
            self._wdt = machine.WDT(timeout=self.timeout_ms)
        return self._wdt

    def feed(self):
        wdt = self._wdt
        if wdt is not None:
            wdt.feed()


# --- serial link and console -----------------------------------------------------


class UsbSerialLink:
    """The REPL's serial port (USB-UART bridge on the ESP32, native USB CDC on
    the S3), read one byte at a time without blocking."""

    def __init__(self, stdin=None, stdout=None):
        self._stdin = stdin
        self._stdout = stdout
        self._poll = None
        self._has_ipoll = False
        self._has_readinto = False
        self._reader = None
        self._broken = False
        self._byte = bytearray(1)
        self._raw = None  # the binary stdout write_buf writes to, once found
        self._raw_flush = False

    def _setup(self):
        import select

        src = self._stdin if self._stdin is not None else sys.stdin
        self._reader = getattr(src, "buffer", src)
        poll = select.poll()
        poll.register(src, select.POLLIN)
        # MicroPython's ipoll() iterates without allocating a result list.
        self._has_ipoll = hasattr(poll, "ipoll")
        self._has_readinto = hasattr(self._reader, "readinto")
        self._poll = poll

    def _ready(self):
        if self._has_ipoll:
            for _ in self._poll.ipoll(0):
                return True
            return False
        return bool(self._poll.poll(0))

    def read_byte(self):
        if self._poll is None:
            if self._broken:
                return -1
            try:
                self._setup()
            except Exception:  # no pollable stdin (e.g. a captured one on a PC)
                self._broken = True
                return -1
        if not self._ready():
            return -1
        if self._has_readinto:
            n = self._reader.readinto(self._byte)
            return self._byte[0] if n else -1
        data = self._reader.read(1)
        if not data:
            return -1
        return ord(data) if isinstance(data, str) else data[0]

    def write_buf(self, buf, n):
        """buf[0:n] without allocating: MicroPython's streams take a length
        (``write(buf, n)``); CPython's do not (a copy there)."""
        raw = self._raw
        if raw is None:  # the first call finds the stream (allocates once)
            out = self._stdout if self._stdout is not None else sys.stdout
            raw = getattr(out, "buffer", None)
            if raw is None or not _MICROPYTHON:
                self.write(bytes(buf[:n]))
                return
            self._raw = raw
            self._raw_flush = hasattr(raw, "flush")
        raw.write(buf, n)
        if self._raw_flush:
            raw.flush()  # called, not looked up: no bound method to allocate

    def write(self, data):
        if isinstance(data, str):
            data = data.encode()
        out = self._stdout if self._stdout is not None else sys.stdout
        raw = getattr(out, "buffer", None)
        if raw is not None:
            raw.write(data)
            flush = getattr(raw, "flush", None)
        else:
            out.write(data.decode())
            flush = getattr(out, "flush", None)
        if flush is not None:
            flush()


class Console:
    """Ctrl-C policy: the REPL may only be interrupted into while at HOME.

    ``allow_interrupt(False)`` makes 0x03 an ordinary byte on the link, so a
    stray Ctrl-C (or mpremote connecting) cannot break a person's return.
    """

    def __init__(self):
        try:
            import micropython

            self._kbd_intr = getattr(micropython, "kbd_intr", None)
        except ImportError:  # CPython
            self._kbd_intr = None
        self.interrupt_allowed = True

    def allow_interrupt(self, flag):
        self.interrupt_allowed = bool(flag)
        if self._kbd_intr is not None:
            self._kbd_intr(3 if flag else -1)


# --- assembly -------------------------------------------------------------------


def _error_text(e):
    if isinstance(e, KeyError):
        return "board file: missing key %s" % (e,)
    return "%s: %s" % (type(e).__name__, e)


def build(board, fs_root="", imu_sleep_ms=None, link=None, allow_missing_imu=False):
    """Build the Hal for a board (the BOARD dict or the board module).

    The actuator is set up first and left off; if anything later fails the
    drive is switched off again and a BootError with a stable code is raised:
    ``board_invalid`` (missing key, bad pin) or ``imu_not_found``.

    ``allow_missing_imu``: an IMU that cannot be set up (not on the bus, a
    failed WHO_AM_I, a bus error) is no BootError; ``hal.imu`` is then a
    ``MissingImu`` and ``hal.boot_errors`` lists ``("imu_not_found",
    message)``, so main.py can report it and still run the control loop,
    which then takes the blind way home. ``hal.boot_errors`` is always set
    (empty when everything was found).
    """
    board = getattr(board, "BOARD", board)
    actuator = None
    stage = "board_invalid"
    boot_errors = []
    try:
        actuator = make_actuator(board["actuator"])
        actuator.off()
        go = Button(board["go_pin"], 0)  # NO contact: closed = low = pressed
        stop = Button(board["stop_pin"], 1)  # NC contact: open = high = pressed
        grip = None
        if board.get("grip_pin") is not None:
            grip = Button(board["grip_pin"], 0)  # NO: held = low; an open wire = released
        home = HomeSwitch(board["home_pin"])
        indicator = Indicator(board["beeper_pin"], board["led_pin"])
        imu_cfg = board["imu"]
        stage = "imu_not_found"
        try:
            imu = make_imu(imu_cfg, imu_sleep_ms)
        except Exception as e:
            if not allow_missing_imu:
                raise
            message = _error_text(e)
            imu = MissingImu(message)
            boot_errors.append(("imu_not_found", message))
        stage = "board_invalid"
        wdt = Watchdog(board.get("wdt_timeout_ms", DEFAULT_WDT_TIMEOUT_MS))
    except Exception as e:
        if actuator is not None:
            actuator.off()
        raise BootError(stage, _error_text(e)) from None
    hal = Hal(
        clock=Clock(),
        imu=imu,
        actuator=actuator,
        go=go,
        stop=stop,
        home=home,
        indicator=indicator,
        fs=Fs(fs_root),
        wdt=wdt,
        link=link if link is not None else UsbSerialLink(),
        grip=grip,
    )
    hal.console = Console()
    hal.board = board
    hal.boot_errors = boot_errors
    return hal
