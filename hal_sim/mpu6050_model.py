"""An MPU-6050 register model for the simulated I2C bus (``machine_sim``).

Attach it with ``machine_sim.sim_i2c_bus(0).attach(0x68, MPU6050Model(source))``.
``source.read(out)`` fills ``out[0:6]`` with ax, ay, az (mg) and gx, gy, gz
(mdeg/s), ints, in the sensor frame; the model turns them into counts at the
configured full scale, exactly as the chip would present them: big-endian
two's complement, saturated at the 16-bit range, latched once per burst read.
Nothing is allocated per read, so it can sit under heap measurements.

Modelled: WHO_AM_I (0x75) = 0x68, PWR_MGMT_1 (0x6B) device reset (0x80,
self-clearing) and sleep bit (0x40, set at power-up; while asleep the data
registers hold their last values), ACCEL_CONFIG / GYRO_CONFIG full-scale bits,
the 14-byte ACCEL_XOUT_H.. burst including TEMP_OUT, register auto-increment.
"""

SMPLRT_DIV = 0x19
CONFIG = 0x1A
GYRO_CONFIG = 0x1B
ACCEL_CONFIG = 0x1C
ACCEL_XOUT_H = 0x3B
TEMP_OUT_H = 0x41
GYRO_XOUT_H = 0x43
DATA_END = 0x49  # one past GYRO_ZOUT_L
PWR_MGMT_1 = 0x6B
WHO_AM_I = 0x75

PWR_MGMT_1_RESET = 0x80
PWR_MGMT_1_SLEEP = 0x40

# LSB per g at AFS_SEL 0..3; LSB per (deg/s) * 10 at FS_SEL 0..3 (131, 65.5, 32.8, 16.4).
ACCEL_LSB_PER_G = (16384, 8192, 4096, 2048)
GYRO_LSB_PER_DPS_X10 = (1310, 655, 328, 164)

_READ_ONLY = (WHO_AM_I,)


def _round_div(num, den):
    if num >= 0:
        return (num + den // 2) // den
    return -((-num + den // 2) // den)


def _clamp16(value):
    if value > 32767:
        return 32767
    if value < -32768:
        return -32768
    return value


class MPU6050Model:
    def __init__(self, source, temp_cdeg=2500):
        self.source = source
        self.temp_cdeg = temp_cdeg  # die temperature, centi-degrees C
        self.regs = bytearray(128)
        self._sample = [0, 0, 0, 0, 0, 0]
        self.samples = 0  # how many bursts sampled the source
        self.power_on()

    def power_on(self):
        """Power-on / device reset: registers to defaults, asleep, data zero."""
        regs = self.regs
        for i in range(len(regs)):
            regs[i] = 0
        regs[WHO_AM_I] = 0x68
        regs[PWR_MGMT_1] = PWR_MGMT_1_SLEEP

    @property
    def asleep(self):
        return bool(self.regs[PWR_MGMT_1] & PWR_MGMT_1_SLEEP)

    def accel_fs_g(self):
        return 2 << ((self.regs[ACCEL_CONFIG] >> 3) & 3)

    def gyro_fs_dps(self):
        return 250 << ((self.regs[GYRO_CONFIG] >> 3) & 3)

    def _put16(self, reg, value):
        value = _clamp16(value) & 0xFFFF
        self.regs[reg] = value >> 8
        self.regs[reg + 1] = value & 0xFF

    def _latch(self):
        """Sample the source into the data registers (what the chip does per sample)."""
        out = self._sample
        self.source.read(out)
        self.samples += 1
        a_lsb = ACCEL_LSB_PER_G[(self.regs[ACCEL_CONFIG] >> 3) & 3]
        g_lsb = GYRO_LSB_PER_DPS_X10[(self.regs[GYRO_CONFIG] >> 3) & 3]
        # Past full scale the counts saturate; clamping the input just beyond it
        # keeps every product below 2**30 (a small int under MicroPython).
        a_max = 33000 * 1000 // a_lsb
        g_max = 33000 * 10000 // g_lsb
        for i in range(3):
            a = out[i]
            a = a_max if a > a_max else (-a_max if a < -a_max else a)
            self._put16(ACCEL_XOUT_H + 2 * i, _round_div(a * a_lsb, 1000))  # mg -> counts
            g = out[3 + i]
            g = g_max if g > g_max else (-g_max if g < -g_max else g)
            self._put16(GYRO_XOUT_H + 2 * i, _round_div(g * g_lsb, 10000))  # mdeg/s -> counts
        # TEMP_OUT = (T - 36.53 C) * 340
        self._put16(TEMP_OUT_H, _round_div((self.temp_cdeg - 3653) * 34, 10))

    # --- the bus side (called by machine_sim.I2C) ---------------------------------

    def read_mem_into(self, reg, buf):
        n = len(buf)
        awake = not self.regs[PWR_MGMT_1] & PWR_MGMT_1_SLEEP
        if awake and reg < DATA_END and reg + n > ACCEL_XOUT_H:
            self._latch()
        regs = self.regs
        for i in range(n):
            buf[i] = regs[(reg + i) & 0x7F]

    def write_mem(self, reg, data):
        for i in range(len(data)):
            self._write_reg((reg + i) & 0x7F, data[i])

    def _write_reg(self, reg, value):
        if reg in _READ_ONLY or ACCEL_XOUT_H <= reg < DATA_END:
            return
        if reg == PWR_MGMT_1 and value & PWR_MGMT_1_RESET:
            self.power_on()  # the reset bit clears itself
            return
        self.regs[reg] = value
