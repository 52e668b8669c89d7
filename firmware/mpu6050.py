"""MPU-6050 accelerometer + gyro driver, allocation-free reads.

``read(out)`` fills ``out[0:6]`` with ax, ay, az (mg) and gx, gy, gz (mdeg/s)
using integer math only: one preallocated 14-byte buffer, one
``readfrom_mem_into`` burst, the counts decoded by hand (``struct.unpack_from``
would allocate a tuple). Every product stays below 2**30, so MicroPython keeps
it a small int and the heap is not touched.
"""

import time

from .compat import const

# Register map (MPU-6000/6050 register map, rev 4.2).
_SMPLRT_DIV = const(0x19)
_CONFIG = const(0x1A)
_GYRO_CONFIG = const(0x1B)
_ACCEL_CONFIG = const(0x1C)
_ACCEL_XOUT_H = const(0x3B)  # 14-byte burst: accel x,y,z, temp, gyro x,y,z
_PWR_MGMT_1 = const(0x6B)
_WHO_AM_I = const(0x75)

WHO_AM_I_VALUE = const(0x68)  # the same at 0x68 and 0x69 (AD0 is not reflected)
_RESET = const(0x80)
_CLOCK_PLL_XGYRO = const(0x01)  # sleep bit clear, gyro X PLL: more stable than 8 MHz RC
_DLPF_44HZ = const(3)  # accel 44 Hz / gyro 42 Hz: plenty for a 50 Hz loop, less noise

# Full scale -> (register bits, numerator, denominator): value = raw * num // den.
#   accel: 16384 LSB/g at +-2 g  -> mg = raw * 1000 / 16384
#   gyro:  131 LSB/(deg/s) at +-250 -> mdeg/s = raw * 1000 / 131;
#          65.5 at +-500 -> raw * 2000 / 131; 32.8 -> raw * 1250 / 41; 16.4 -> raw * 2500 / 41
ACCEL_SCALES = {
    2: (0x00, 1000, 16384),
    4: (0x08, 1000, 8192),
    8: (0x10, 1000, 4096),
    16: (0x18, 1000, 2048),
}
GYRO_SCALES = {
    250: (0x00, 1000, 131),
    500: (0x08, 2000, 131),
    1000: (0x10, 1250, 41),
    2000: (0x18, 2500, 41),
}


class MPU6050Error(OSError):
    """The sensor did not identify itself as an MPU-6050."""


def _default_sleep_ms(ms):
    sleep_ms = getattr(time, "sleep_ms", None)
    if sleep_ms is not None:
        sleep_ms(ms)
    else:  # CPython
        time.sleep(ms / 1000)


def _scaled(raw, num, den):
    """raw * num / den rounded to nearest, integers only (floor division rounds down)."""
    if raw >= 0:
        return (raw * num + den // 2) // den
    return -((-raw * num + den // 2) // den)


class MPU6050:
    def __init__(self, i2c, addr=0x68, accel_fs_g=2, gyro_fs_dps=500, sleep_ms=None):
        if accel_fs_g not in ACCEL_SCALES:
            raise ValueError("accel_fs_g must be 2, 4, 8 or 16")
        if gyro_fs_dps not in GYRO_SCALES:
            raise ValueError("gyro_fs_dps must be 250, 500, 1000 or 2000")
        self.i2c = i2c
        self.addr = addr
        self._buf = bytearray(14)
        self._one = bytearray(1)
        self._sleep_ms = sleep_ms or _default_sleep_ms
        accel_bits, self._a_num, self._a_den = ACCEL_SCALES[accel_fs_g]
        gyro_bits, self._g_num, self._g_den = GYRO_SCALES[gyro_fs_dps]
        self.temp_raw = 0
        self._init(accel_bits, gyro_bits)

    def _write(self, reg, value):
        self._one[0] = value
        self.i2c.writeto_mem(self.addr, reg, self._one)

    def _read(self, reg):
        self.i2c.readfrom_mem_into(self.addr, reg, self._one)
        return self._one[0]

    def _init(self, accel_bits, gyro_bits):
        try:
            who = self._read(_WHO_AM_I)
        except OSError as e:
            raise MPU6050Error(
                "MPU-6050 not found at I2C address 0x%02x (bus error %s)" % (self.addr, e)
            ) from None
        if who != WHO_AM_I_VALUE:
            raise MPU6050Error(
                "MPU-6050 at I2C address 0x%02x: WHO_AM_I reads 0x%02x, expected 0x%02x"
                % (self.addr, who, WHO_AM_I_VALUE)
            )
        # Full reset: after a soft reboot the chip may be in any state.
        self._write(_PWR_MGMT_1, _RESET)
        self._sleep_ms(100)  # datasheet: wait 100 ms after a device reset
        self._write(_PWR_MGMT_1, _CLOCK_PLL_XGYRO)
        self._write(_CONFIG, _DLPF_44HZ)
        self._write(_SMPLRT_DIV, 0)  # 1 kHz with the DLPF on
        self._write(_GYRO_CONFIG, gyro_bits)
        self._write(_ACCEL_CONFIG, accel_bits)
        # Read back: a clone or a half-working bus shows up here, not mid-session.
        if (
            self._read(_PWR_MGMT_1) != _CLOCK_PLL_XGYRO
            or self._read(_GYRO_CONFIG) & 0x18 != gyro_bits
            or self._read(_ACCEL_CONFIG) & 0x18 != accel_bits
        ):
            raise MPU6050Error(
                "MPU-6050 at I2C address 0x%02x: configuration did not stick" % self.addr
            )

    def read(self, out):
        """Fill out[0:6] = ax, ay, az (mg), gx, gy, gz (mdeg/s) and return True;
        False if the sensor gave no data (out unchanged), OSError on bus errors
        (raised by machine.I2C: a new exception object each time)."""
        buf = self._buf
        self.i2c.readfrom_mem_into(self.addr, _ACCEL_XOUT_H, buf)
        # A sensor that lost power comes back asleep with every register 0:
        # all-zero data (including temperature) is not a measurement.
        any_bits = 0
        for i in range(14):
            any_bits |= buf[i]
        if not any_bits:
            return False  # not an exception: a raise allocates on every tick
        a_num = self._a_num
        a_den = self._a_den
        g_num = self._g_num
        g_den = self._g_den
        for i in range(3):
            raw = (buf[2 * i] << 8) | buf[2 * i + 1]
            if raw & 0x8000:
                raw -= 0x10000
            out[i] = _scaled(raw, a_num, a_den)
            raw = (buf[8 + 2 * i] << 8) | buf[9 + 2 * i]
            if raw & 0x8000:
                raw -= 0x10000
            out[3 + i] = _scaled(raw, g_num, g_den)
        raw = (buf[6] << 8) | buf[7]
        if raw & 0x8000:
            raw -= 0x10000
        self.temp_raw = raw
        return True

    def temp_cdeg(self):
        """Die temperature of the last read in centi-degrees C (raw / 340 + 36.53)."""
        return _scaled(self.temp_raw, 10, 34) + 3653

    def sleep(self):
        """Put the sensor to sleep (low power); a new MPU6050() wakes it."""
        self._write(_PWR_MGMT_1, 0x40)
