"""The hardware abstraction layer contract.

The controller reaches hardware only through a ``Hal``. Two implementations
exist: ``esp32_hal`` (machine.I2C / PWM / Pin / WDT on the board) and
``hal_sim`` (a simulated table on a PC). Both honour the contract below, which
the tests exercise through the simulator.

Units: angles in millidegrees (mdeg), angular rates in mdeg/s, accelerations
in milli-g (mg), times in milliseconds. Only small integers cross the contract
so that a control tick allocates nothing on the heap.

clock
    ``ticks_ms()`` -> int in [0, 2**30): a wrapping millisecond counter. Compare
    ticks only through ``compat.ticks_diff``.

imu
    ``read(out)`` fills the preallocated list ``out[0:6]`` with
    ``ax, ay, az`` (mg, specific force in the sensor frame) and
    ``gx, gy, gz`` (mdeg/s, right-handed rotation about each sensor axis).
    Returns False when there is no sample (the sensor gave no data, or is
    missing: nothing written, and nothing allocated, unlike a raise), else
    True or None. Raises ``OSError`` when the bus fails. The board file says
    which axes measure the table's tilt (``fusion.Mounting``).

actuator
    ``drive(permille)``: signed command in [-1000, 1000]. Positive tilts the
    head down (towards inversion), negative towards home. 0 brakes.
    A command holds for at most ``DRIVE_DEADLINE_MS``: the actuator switches
    itself off unless ``drive`` is called again by then, with no help from the
    control loop (on the board a one-shot hardware timer), so a loop that
    hangs moves the table for that long, not for the watchdog's timeout.
    The loop calls ``drive`` on every tick it wants the motor powered.
    ``off()``: removes power from the bridge (drive disabled until the next
    ``drive``). ``overloaded()`` -> bool: the driver reports over-current.

go, stop
    ``pressed()`` -> bool, the raw, undebounced level. The STOP contact is
    normally closed: an open circuit, a cut wire or an unplugged button reads
    as pressed. Debouncing is the firmware's job (``switches``).

home
    ``closed()`` -> bool: the home (upright) limit switch, raw level.

indicator
    ``set(beep, led)``: the beeper and the status LED, each on or off.

fs
    Flash storage, one flat namespace of small files.
    ``read_bytes(name)`` -> bytes, or None if the file does not exist;
    ``write_bytes(name, data)`` (may be torn by a power cut): ``data`` is
    bytes, or any other iterable of bytes chunks written one after the other
    (a large file never built whole in RAM); ``patch_bytes(name, offset,
    data)`` overwrites bytes of an existing file in place (may be torn too);
    ``rename(old, new)`` (atomic, replaces ``new``); ``remove(name)``
    (no error if missing).

wdt
    ``feed()``: the hardware watchdog; fed only by a healthy loop.

grip (optional, None without a ``grip_pin``)
    ``pressed()`` -> bool: the rider's dead-man grip is held (a normally-open
    contact: an open wire reads as released).

link (optional)
    The serial line: ``read_byte()`` -> int 0..255, or -1 when nothing is
    waiting (never blocks); ``write(data)`` queues bytes for the host.
    Optional ``write_buf(buf, n)``: queues ``buf[0:n]`` without allocating
    (the protocol's preallocated lines; without it they go through
    ``write(buf[:n])``, a copy).
"""

# Five control periods at 50 Hz: a tick that runs late (a flash write) pauses
# the motor for a moment at worst, while a hung loop moves the table at most
# speed x (this + the actuator's lag) before the drive is cut; the watchdog
# (500 ms) then resets the board.
DRIVE_DEADLINE_MS = 100


class Hal:
    """The bundle of hardware objects handed to the controller."""

    def __init__(self, clock, imu, actuator, go, stop, home, indicator, fs, wdt, link=None,
                 grip=None):
        self.grip = grip
        self.clock = clock
        self.imu = imu
        self.actuator = actuator
        self.go = go
        self.stop = stop
        self.home = home
        self.indicator = indicator
        self.fs = fs
        self.wdt = wdt
        self.link = link
