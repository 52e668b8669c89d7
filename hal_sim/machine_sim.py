"""A simulated ``machine`` module, enough to run ``firmware.esp32_hal`` unchanged.

Install it before importing the HAL::

    sys.modules["machine"] = machine_sim

It runs under CPython and MicroPython. The simulated world around the pins is
reached through the ``sim_*`` functions (the real ``machine`` has none of
them): drive an input from outside, read what an output or a PWM channel is
doing, set an ADC voltage, hang devices on an I2C bus, inject bus faults,
and drive the tick source of the watchdog. Paths the firmware calls every
tick (Pin.value, PWM.duty_u16, ADC.read_uv, I2C.readfrom_mem_into, WDT.feed)
allocate nothing, so heap measurements of the firmware stay honest.
"""

import time

from .clock import ticks_diff

try:
    import errno

    _ENODEV = getattr(errno, "ENODEV", 19)
    _ETIMEDOUT = getattr(errno, "ETIMEDOUT", 116)
except ImportError:
    _ENODEV = 19
    _ETIMEDOUT = 116

# machine.reset_cause() values (ESP32 port)
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_INPUT_ONLY = {
    "esp32": (34, 35, 36, 37, 38, 39),
    "esp32s3": (),
}


class SimReset(SystemExit):
    """Raised by ``reset()`` / ``soft_reset()`` / an expired WDT: the chip restarts.

    A SystemExit, so ``except Exception`` in the firmware does not swallow it.
    ``cause`` is the ``reset_cause()`` the next boot will report.
    """

    def __init__(self, cause):
        super().__init__("machine reset (cause %d)" % cause)
        self.cause = cause


class _PinState:
    """Everything the simulator knows about one GPIO."""

    def __init__(self, number):
        self.number = number
        self.mode = -1  # not configured
        self.pull = -1
        self.out = 0  # output latch
        self.ext = None  # level driven from outside (None = nothing connected)
        self.float_level = 0  # what a floating input without pull reads
        self.pwm_freq = 0
        self.pwm_duty_u16 = None  # None = not a PWM output
        self.adc_uv = 0


class _I2CBus:
    """One simulated I2C bus: devices by address, plus fault injection."""

    def __init__(self, bus_id):
        self.bus_id = bus_id
        self.devices = {}
        self.faults = {}  # addr -> errno to raise on every transfer
        self.fault_all = 0  # errno raised for any address (bus stuck / SDA shorted)
        self.transfers = 0

    def attach(self, addr, device):
        """device: read_mem_into(reg, buf) and write_mem(reg, data)."""
        self.devices[addr] = device

    def detach(self, addr):
        self.devices.pop(addr, None)

    def set_fault(self, addr, err):
        """Make transfers to addr raise OSError(err); err 0 clears."""
        if err:
            self.faults[addr] = err
        else:
            self.faults.pop(addr, None)

    def _device(self, addr):
        self.transfers += 1
        if self.fault_all:
            raise OSError(self.fault_all)
        err = self.faults.get(addr, 0)
        if err:
            raise OSError(err)
        device = self.devices.get(addr)
        if device is None:
            raise OSError(_ENODEV)  # no ACK: what the ESP32 port raises
        return device


class _World:
    def __init__(self, chip):
        self.chip = chip
        self.pins = {}
        self.buses = {}
        self.wdt = None
        self.reset_cause = PWRON_RESET
        self.ticks = None
        self.timers = []

    def pin(self, number):
        state = self.pins.get(number)
        if state is None:
            state = _PinState(number)
            self.pins[number] = state
        return state

    def bus(self, bus_id):
        bus = self.buses.get(bus_id)
        if bus is None:
            bus = _I2CBus(bus_id)
            self.buses[bus_id] = bus
        return bus


_world = _World("esp32")


def _default_ticks_ms():
    ticks = getattr(time, "ticks_ms", None)
    if ticks is not None:
        return ticks()
    return (time.monotonic_ns() // 1000000) & ((1 << 30) - 1)


# --- the simulator's side -------------------------------------------------------


def sim_clear(chip="esp32", reset_cause=PWRON_RESET):
    """Forget all simulated hardware state (a fresh board). chip: 'esp32' | 'esp32s3'."""
    global _world
    _world = _World(chip)
    _world.reset_cause = reset_cause


def sim_pin(number):
    """The _PinState of a GPIO (mode, pull, out, ext, pwm_duty_u16, ...)."""
    return _world.pin(number)


def sim_set_input(number, level):
    """Drive a pin from outside: 0 / 1, or None when nothing drives it (open contact)."""
    _world.pin(number).ext = level


def sim_level(number):
    """The level on the wire: outside drive, else output latch, else pull, else float."""
    return _read_level(_world.pin(number))


def sim_pwm_duty_u16(number):
    """Duty of a PWM pin (0..65535), or None if the pin is not a PWM output."""
    return _world.pin(number).pwm_duty_u16


def sim_set_adc_uv(number, microvolts):
    _world.pin(number).adc_uv = microvolts


def sim_i2c_bus(bus_id):
    """The simulated bus with that id: attach(addr, device), set_fault(addr, errno)."""
    return _world.bus(bus_id)


def sim_set_ticks(ticks_fn):
    """Use ticks_fn() -> ms as the watchdog's clock (a virtual clock); None = real time."""
    _world.ticks = ticks_fn


def sim_wdt():
    """The WDT instance the firmware created, or None."""
    return _world.wdt


def sim_check_wdt():
    """Raise SimReset(WDT_RESET) if the watchdog was started and not fed in time."""
    wdt = _world.wdt
    if wdt is not None and wdt.expired():
        _world.reset_cause = WDT_RESET
        raise SimReset(WDT_RESET)


def sim_timers():
    """Every machine.Timer the firmware created (a list, in creation order)."""
    return list(_world.timers)


def sim_fire_timers():
    """Run each armed timer's callback once, as its period elapsing would."""
    for timer in _world.timers:
        if timer.callback is not None:
            timer.callback(timer)


def sim_run_due_timers():
    """Run the callbacks whose period has passed on the simulated clock, as the
    chip's hardware timers would: a one-shot timer fires once and is spent, a
    periodic one starts its next period. Call it at least once per period.
    Returns how many callbacks ran."""
    fired = 0
    now = ticks_ms()
    for timer in _world.timers:
        callback = timer.callback
        if callback is None or timer.period <= 0 or ticks_diff(now, timer.armed_ms) < timer.period:
            continue
        timer.armed_ms = now
        if timer.mode == Timer.ONE_SHOT:
            timer.callback = None
        callback(timer)
        fired += 1
    return fired


def ticks_ms():
    """The simulator's clock (not in the real ``machine``; the HAL prefers it if present)."""
    fn = _world.ticks
    return fn() if fn is not None else _default_ticks_ms()


def _read_level(state):
    if state.ext is not None:
        return 1 if state.ext else 0
    if state.pwm_duty_u16 is not None:
        return 1 if state.pwm_duty_u16 >= 32768 else 0
    # (== rather than `in (Pin.OUT, ...)`: that tuple would be built on the heap.)
    if state.mode == Pin.OPEN_DRAIN:
        if state.out:
            return 1 if state.pull == Pin.PULL_UP else state.float_level
        return 0
    if state.mode == Pin.OUT:
        return state.out
    if state.pull == Pin.PULL_UP:
        return 1
    if state.pull == Pin.PULL_DOWN:
        return 0
    return state.float_level


def _pin_number(pin):
    if isinstance(pin, Pin):
        return pin.id
    if isinstance(pin, int):
        return pin
    raise TypeError("pin must be a Pin or an int")


# --- the machine API ------------------------------------------------------------


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_DOWN = 1
    PULL_UP = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        if not isinstance(id, int) or not 0 <= id <= 48:
            raise ValueError("invalid pin")
        self.id = id
        self._state = _world.pin(id)
        self.init(mode, pull, value)

    def init(self, mode=-1, pull=-1, value=None):
        state = self._state
        input_only = self.id in _INPUT_ONLY.get(_world.chip, ())
        if mode != -1:
            if input_only and mode in (Pin.OUT, Pin.OPEN_DRAIN):
                raise ValueError("pin can only be input")
            state.mode = mode
            state.pwm_duty_u16 = None  # re-initialising a pin detaches PWM
        if pull != -1:
            # ESP32 GPIO34..39 have no pull resistors: the request is silently lost.
            state.pull = -1 if input_only else pull
        if value is not None:
            state.out = 1 if value else 0

    def value(self, x=None):
        if x is None:
            return _read_level(self._state)
        self._state.out = 1 if x else 0
        return None

    def __call__(self, x=None):
        return self.value(x)

    def on(self):
        self._state.out = 1

    def off(self):
        self._state.out = 0

    def irq(self, handler=None, trigger=3):
        return None

    def __repr__(self):
        return "Pin(%d)" % self.id


class PWM:
    def __init__(self, dest, freq=None, duty_u16=None, duty=None, **_ignored):
        number = _pin_number(dest)
        if number in _INPUT_ONLY.get(_world.chip, ()):
            raise ValueError("pin can only be input")
        self._state = _world.pin(number)
        self._state.mode = Pin.OUT
        if self._state.pwm_duty_u16 is None:
            self._state.pwm_duty_u16 = 32768  # the port's default when no duty is given
        self._state.pwm_freq = freq or self._state.pwm_freq or 5000
        if duty is not None:
            self.duty(duty)
        if duty_u16 is not None:
            self.duty_u16(duty_u16)

    def init(self, freq=None, duty_u16=None, duty=None):
        if freq is not None:
            self.freq(freq)
        if duty_u16 is not None:
            self.duty_u16(duty_u16)
        if duty is not None:
            self.duty(duty)

    def freq(self, value=None):
        if value is None:
            return self._state.pwm_freq
        if not 1 <= value <= 40000000:
            raise ValueError("frequency out of range")
        self._state.pwm_freq = value
        return None

    def duty_u16(self, value=None):
        if value is None:
            return self._state.pwm_duty_u16 or 0
        if not 0 <= value <= 65535:
            raise ValueError("duty_u16 must be 0..65535")
        self._state.pwm_duty_u16 = value
        return None

    def duty(self, value=None):  # 10-bit duty, the ESP32 port's legacy API
        if value is None:
            return ((self._state.pwm_duty_u16 or 0) * 1023 + 32767) // 65535
        self.duty_u16(min(65535, max(0, value) * 65535 // 1023))
        return None

    def deinit(self):
        # The LEDC channel stops at its idle level: low.
        self._state.pwm_duty_u16 = None
        self._state.out = 0


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_12BIT = 3
    _FULL_SCALE_UV = (950000, 1250000, 1750000, 3100000)

    def __init__(self, pin, atten=3):
        self._state = _world.pin(_pin_number(pin))
        self._atten = atten

    def atten(self, value):
        self._atten = value

    def width(self, value):
        return None

    def read_uv(self):
        uv = self._state.adc_uv
        full = self._FULL_SCALE_UV[self._atten]
        if uv < 0:
            return 0
        return uv if uv < full else full

    def read_u16(self):
        # in mV first so the product stays a small int under MicroPython
        return self.read_uv() // 1000 * 65535 // (self._FULL_SCALE_UV[self._atten] // 1000)

    def read(self):
        return self.read_u16() >> 4


class I2C:
    def __init__(self, id=0, *, scl=None, sda=None, freq=400000, timeout=50000):
        if id not in (0, 1):
            raise ValueError("I2C(%r) doesn't exist" % (id,))
        self.id = id
        self.scl = None if scl is None else _pin_number(scl)
        self.sda = None if sda is None else _pin_number(sda)
        self.freq = freq
        self._bus = _world.bus(id)

    def scan(self):
        found = []
        for addr in range(0x08, 0x78):
            try:
                self._bus._device(addr)
                found.append(addr)
            except OSError:
                pass
        return found

    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
        self._bus._device(addr).read_mem_into(memaddr, buf)

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        buf = bytearray(nbytes)
        self._bus._device(addr).read_mem_into(memaddr, buf)
        return bytes(buf)

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        self._bus._device(addr).write_mem(memaddr, buf)


SoftI2C = I2C


class WDT:
    """Cannot be stopped or deleted, as on the chip; ``sim_check_wdt`` fires it."""

    def __init__(self, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("WDT timeout too short")
        self.timeout = timeout
        self.feeds = 0
        self._last = ticks_ms()
        _world.wdt = self

    def feed(self):
        self.feeds += 1
        self._last = ticks_ms()

    def expired(self):
        return ticks_diff(ticks_ms(), self._last) > self.timeout


class Timer:
    """machine.Timer; callbacks run only when the simulator fires them."""

    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id=-1):
        self.id = id
        self.mode = None
        self.period = None
        self.callback = None
        self.armed_ms = 0
        _world.timers.append(self)

    def init(self, mode=PERIODIC, period=-1, callback=None, freq=None):
        if freq is not None:
            period = 1000 // freq
        self.mode = mode
        self.period = period
        self.callback = callback
        self.armed_ms = ticks_ms()

    def deinit(self):
        self.callback = None


def reset():
    _world.reset_cause = HARD_RESET
    raise SimReset(HARD_RESET)


def soft_reset():
    _world.reset_cause = SOFT_RESET
    raise SimReset(SOFT_RESET)


def reset_cause():
    return _world.reset_cause


def unique_id():
    return b"\x24\x0a\xc4\x00\x51\x7e"


def freq(hz=None):
    return 240000000 if hz is None else None


def idle():
    return None


def disable_irq():
    return 0


def enable_irq(state=0):
    return None
