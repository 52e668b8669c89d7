"""A 6-axis IMU (MPU-6050 like) bolted to the table bed.

Table frame: ``along`` points along the bed towards the head end, ``normal``
out of the bed surface (up when flat). At rest the accelerometer reads the
specific force f = g * up_world, so at angle theta (+ = head down):
    f_along = -g * sin(theta),   f_normal = +g * cos(theta)
and the tilt gyro reads d(theta)/dt. The board's imu dict says which signed
sensor axis carries each ("along": "+x", "normal": "+z", "gyro": "-y").
The sensor is mounted rotated by ``offset_mdeg`` relative to the bed, so it
sees theta + offset; the firmware subtracts the offset to recover theta.
Linear accelerations of the sensor are neglected (it sits near the pivot and
the table moves at a few deg/s).
"""

import math

_DEG_TO_RAD = math.pi / 180.0
_AXES = "xyz"
_ENODEV = 19  # what an absent I2C device raises on the ESP32

ACCEL_FULL_SCALE_MG = 2000  # MPU-6050 default range, +-2 g
GYRO_FULL_SCALE_MDEG_S = 250000  # MPU-6050 default range, +-250 deg/s
# Accelerometer bias left after the install-time offset calibration the
# README asks for (a raw MPU-6050 is within +-50 mg; calibrated, a few mg).
# 1 mg of bias is up to ~0.06 deg of angle error.
DEFAULT_ACCEL_BIAS_SPAN_MG = 6.0
DEFAULT_GYRO_BIAS_SPAN_MDEG_S = 400.0
SPIKE_MIN_DEG = 40.0
SPIKE_MAX_DEG = 70.0
SPIKE_RATE_MDEG_S = 80000
DRIFT_MDEG_S_PER_MIN = 300.0  # 0.3 deg/s more gyro bias every minute

FAULTS = ("disconnect", "stuck", "spike", "drift")


def parse_axis(spec):
    """'+x' -> (0, 1), '-z' -> (2, -1)."""
    if not isinstance(spec, str) or len(spec) != 2 or spec[0] not in "+-" or spec[1] not in _AXES:
        raise ValueError("axis must be like '+x' or '-z', not " + repr(spec))
    return _AXES.index(spec[1]), (1 if spec[0] == "+" else -1)


def right_handed_gyro(along, normal):
    """The gyro spec a right-handed sensor (MPU-6050) really gives for this
    mounting: head-down rotation is a positive turn about normal x along."""
    ia, sa = parse_axis(along)
    i_n, sn = parse_axis(normal)
    if ia == i_n:
        raise ValueError("along and normal must be different axes")
    ig = 3 - ia - i_n
    # e_n x e_a = +e_g when (n, a, g) is a cyclic order of (x, y, z).
    cyclic = (i_n + 1) % 3 == ia
    sign = sn * sa * (1 if cyclic else -1)
    return ("+" if sign > 0 else "-") + _AXES[ig]


def _bias3(value, rng, span):
    if value is None:  # seeded, as a real part's factory offset
        return [rng.uniform(-span, span) for _ in range(3)]
    if isinstance(value, (int, float)):
        return [float(value)] * 3
    if len(value) != 3:
        raise ValueError("bias needs 3 values")
    return [float(v) for v in value]


class SimImu:
    def __init__(
        self,
        physics,
        imu_board,
        rng,
        accel_noise_mg=15,
        gyro_noise_mdeg_s=60,
        accel_bias_mg=None,
        gyro_bias_mdeg_s=None,
    ):
        self.physics = physics
        self.rng = rng
        self.along_axis, self.along_sign = parse_axis(imu_board["along"])
        self.normal_axis, self.normal_sign = parse_axis(imu_board["normal"])
        self.gyro_axis, self.gyro_sign = parse_axis(imu_board["gyro"])
        if self.along_axis == self.normal_axis:
            raise ValueError("imu along and normal must be different axes")
        if self.gyro_axis in (self.along_axis, self.normal_axis):
            raise ValueError("imu gyro axis must be the one across the bed")
        self.offset_deg = imu_board.get("offset_mdeg", 0) / 1000.0
        self.accel_noise_mg = accel_noise_mg
        self.gyro_noise_mdeg_s = gyro_noise_mdeg_s
        self.accel_bias_mg = _bias3(accel_bias_mg, rng, DEFAULT_ACCEL_BIAS_SPAN_MG)
        self.gyro_bias_mdeg_s = _bias3(gyro_bias_mdeg_s, rng, DEFAULT_GYRO_BIAS_SPAN_MDEG_S)
        # Faults
        self.disconnected = False
        self.stuck = False
        self.spike_pending = False
        self.drift_start_ms = None  # physics time when the drift began
        self.read_count = 0
        self._last_good = [0] * 6
        self._have_last_good = False
        self._accel = [0.0, 0.0, 0.0]  # scratch, reused by every read
        self._gyro = [0.0, 0.0, 0.0]

    def set_fault(self, name):
        if name == "disconnect":
            self.disconnected = True
        elif name == "stuck":
            if not self._have_last_good:  # freeze what it would read now
                self._measure(self._last_good, 0.0, 0.0)
                self._have_last_good = True
            self.stuck = True
        elif name == "spike":
            self.spike_pending = True
        elif name == "drift":
            if self.drift_start_ms is None:
                self.drift_start_ms = self.physics.elapsed_ms
        else:
            raise ValueError(
                "unknown imu fault {}; valid: {}".format(repr(name), ", ".join(FAULTS))
            )

    def clear_fault(self, name=None):
        """Clear one fault, or all of them when name is None."""
        if name is not None and name not in FAULTS:
            raise ValueError(
                "unknown imu fault {}; valid: {}".format(repr(name), ", ".join(FAULTS))
            )
        if name in (None, "disconnect"):
            self.disconnected = False
        if name in (None, "stuck"):
            self.stuck = False
        if name in (None, "spike"):
            self.spike_pending = False
        if name in (None, "drift"):
            self.drift_start_ms = None

    def drift_mdeg_s(self):
        if self.drift_start_ms is None:
            return 0.0
        return (self.physics.elapsed_ms - self.drift_start_ms) * DRIFT_MDEG_S_PER_MIN / 60000.0

    def read(self, out):
        """Fill out[0:6] with ax, ay, az (mg) and gx, gy, gz (mdeg/s), ints."""
        self.read_count += 1
        if self.disconnected:
            # errno in args[0] (board) and in .errno (CPython) alike
            raise OSError(_ENODEV, "ENODEV")
        if self.stuck:
            for i in range(6):
                out[i] = self._last_good[i]
            return
        if self.spike_pending:
            # One implausible sample (e.g. an I2C glitch or a knock), then normal.
            self.spike_pending = False
            sign = 1 if self.rng.random() < 0.5 else -1
            spike_deg = sign * self.rng.uniform(SPIKE_MIN_DEG, SPIKE_MAX_DEG)
            self._measure(out, spike_deg, sign * SPIKE_RATE_MDEG_S)
            return
        self._measure(out, 0.0, 0.0)
        for i in range(6):
            self._last_good[i] = out[i]
        self._have_last_good = True

    def _measure(self, out, extra_tilt_deg, extra_rate_mdeg_s):
        # Runs every simulated tick, so it is written for speed: the noise
        # comes from a table of normal deviates indexed by the RNG's xorshift
        # steps, done inline (a method call per sample doubled the cost).
        phys = self.physics
        tilt_rad = (phys.angle_deg + self.offset_deg + extra_tilt_deg) * _DEG_TO_RAD
        rate = phys.velocity_deg_s * 1000.0 + extra_rate_mdeg_s
        if self.drift_start_ms is not None:
            rate += self.drift_mdeg_s()
        accel = self._accel
        gyro = self._gyro
        accel[0] = accel[1] = accel[2] = 0.0
        gyro[0] = gyro[1] = gyro[2] = 0.0
        accel[self.along_axis] = self.along_sign * -1000.0 * math.sin(tilt_rad)
        accel[self.normal_axis] = self.normal_sign * 1000.0 * math.cos(tilt_rad)
        gyro[self.gyro_axis] = self.gyro_sign * rate
        accel_bias = self.accel_bias_mg
        gyro_bias = self.gyro_bias_mdeg_s
        accel_noise = self.accel_noise_mg
        gyro_noise = self.gyro_noise_mdeg_s
        rng = self.rng
        table = rng.normal_table()
        x = rng.state
        for i in range(3):
            x ^= (x << 13) & 0xFFFFFFFF
            x ^= x >> 17
            x ^= (x << 5) & 0xFFFFFFFF
            a = accel[i] + accel_bias[i] + accel_noise * table[x & 1023]
            g = gyro[i] + gyro_bias[i] + gyro_noise * table[(x >> 10) & 1023]
            # Round to the nearest count and saturate at full scale, as the
            # sensor's ADC does (inline: this is the simulator's hot loop).
            a = int(a + 0.5) if a >= 0 else -int(0.5 - a)
            g = int(g + 0.5) if g >= 0 else -int(0.5 - g)
            if a > ACCEL_FULL_SCALE_MG:
                a = ACCEL_FULL_SCALE_MG
            elif a < -ACCEL_FULL_SCALE_MG:
                a = -ACCEL_FULL_SCALE_MG
            if g > GYRO_FULL_SCALE_MDEG_S:
                g = GYRO_FULL_SCALE_MDEG_S
            elif g < -GYRO_FULL_SCALE_MDEG_S:
                g = -GYRO_FULL_SCALE_MDEG_S
            out[i] = a
            out[3 + i] = g
        rng.state = x


class SampledImu:
    """For heap measurements: the simulated IMU read outside the measured
    tick (``take()``: its float maths is the simulator's, not the
    firmware's); ``read(out)`` copies that sample, or returns False when the
    read failed, as the MPU-6050 driver does for a sensor without data and
    MissingImu for one not found at boot (the HAL contract, firmware/hal.py)."""

    def __init__(self, imu):
        self.imu = imu
        self.sample = [0] * 6
        self.ok = True

    def take(self):
        try:
            self.imu.read(self.sample)
            self.ok = True
        except OSError:
            self.ok = False

    def read(self, out):
        if not self.ok:
            return False
        sample = self.sample
        for i in range(6):
            out[i] = sample[i]
        return True
