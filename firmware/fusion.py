"""Angle estimation: accelerometer + gyro fusion in integer units.

A complementary filter with an integral term (a "PI" filter): the gyro gives
the fast, smooth part of the angle, the accelerometer's gravity direction pulls
the estimate back slowly, and the integral term learns the gyro's bias so that
slow gyro drift is rejected. State is kept in micro-degrees; inputs are the
IMU contract's mg and mdeg/s (see hal.py). Nothing here allocates per tick.
"""

import math

from .compat import const

# atan(k / 64) in mdeg for k = 0..64, for a table look-up with linear
# interpolation (error < 0.002 deg), so no floats are used per tick.
_ATAN_MDEG = tuple(int(math.atan(k / 64) * 180000 / math.pi + 0.5) for k in range(65))

# Correction gain 1/64 per tick: at 50 Hz a time constant of ~1.3 s, which
# averages accelerometer noise ~11x while following the table with no lag
# (the gyro carries the motion).
_CORR_SHIFT = const(6)
# Integral gain for the gyro bias: near-critical damping with the gain above.
_BIAS_SHIFT = const(23)
# Start-up: the gain begins at 1/2 and halves every few samples down to
# 1/64, so the first, noisy sample is averaged out within 0.5 s (50 Hz)
# instead of decaying with the slow time constant.
_START_SHIFT = const(1)
_SAMPLES_PER_SHIFT = const(5)
# During start-up, this many samples in a row that all disagree with the
# estimate by more than SPIKE_MDEG mean the seed itself was the outlier (a
# glitch or a knock in the very first read after a boot): start again from
# the latest sample. Without this a bad seed rejects every good sample after
# it and the angle never settles (or worse, is believed).
_START_RESEED_REJECTS = const(3)
# An accelerometer angle this far from the prediction is not gravity: a
# spike, a knock or a bad read. It is ignored for that tick.
SPIKE_MDEG = const(8000)
# A gyro rate this high is beyond any table motion (the hard cap is 10 deg/s).
MAX_RATE_MDEG_S = const(40000)
_REJECTS_MAX = const(1 << 29)


def iatan2_mdeg(y, x):
    """atan2(y, x) in millidegrees, (-180000, 180000], integers only.

    Inputs must satisfy |y|, |x| < 2**15 (mg readings do).
    """
    ay = -y if y < 0 else y
    ax = -x if x < 0 else x
    if ax == 0 and ay == 0:
        return 0
    if ay <= ax:
        z = (ay << 14) // ax  # tan in [0, 1], 14-bit fixed point
        swap = False
    else:
        z = (ax << 14) // ay
        swap = True
    index = z >> 8
    frac = z & 255
    angle = _ATAN_MDEG[index]
    if index < 64:
        angle += ((_ATAN_MDEG[index + 1] - angle) * frac) >> 8
    if swap:
        angle = 90000 - angle
    if x < 0:
        angle = 180000 - angle
    if y < 0:
        angle = -angle
    return angle


def parse_axis(spec):
    """'+x' / '-z' -> (index 0..2, sign +1/-1). Raises ValueError on anything else."""
    if len(spec) != 2 or spec[0] not in "+-" or spec[1] not in "xyz":
        raise ValueError("bad IMU axis: " + repr(spec))
    return "xyz".index(spec[1]), (1 if spec[0] == "+" else -1)


class Mounting:
    """Which IMU axes measure the table's tilt, from the board file's imu dict."""

    def __init__(self, imu):
        self.along_index, self.along_sign = parse_axis(imu["along"])
        self.normal_index, self.normal_sign = parse_axis(imu["normal"])
        gyro_index, self.gyro_sign = parse_axis(imu["gyro"])
        self.gyro_index = 3 + gyro_index
        self.offset_mdeg = imu.get("offset_mdeg", 0)
        # The accelerometer's zero error on each sensor axis (commissioning
        # measures it in the tilt plane), subtracted before the angle.
        bias = imu.get("accel_bias_mg", (0, 0, 0))
        self.along_bias_mg = bias[self.along_index]
        self.normal_bias_mg = bias[self.normal_index]
        # The gyro's zero rate on the tilt axis (as a tilt rate), measured at
        # rest by commissioning: the estimator starts from it and keeps
        # learning (temperature moves it).
        self.gyro_bias_mdeg_s = imu.get("gyro_bias_mdeg_s", 0)

    def accel_angle_mdeg(self, raw):
        """Tilt from gravity alone: theta = atan2(-f_along, f_normal) - mounting offset."""
        along = (raw[self.along_index] - self.along_bias_mg) * self.along_sign
        normal = (raw[self.normal_index] - self.normal_bias_mg) * self.normal_sign
        return iatan2_mdeg(-along, normal) - self.offset_mdeg

    def rate_mdeg_s(self, raw):
        """Tilt rate, positive when the head goes down."""
        return raw[self.gyro_index] * self.gyro_sign


class AngleEstimator:
    """Complementary PI filter. ``update`` once per tick with a fresh sample."""

    def __init__(self, mounting):
        self.mounting = mounting
        self.angle_udeg = 0
        self.bias_mdeg_s = mounting.gyro_bias_mdeg_s
        self._bias_acc = 0
        self.ready = False
        self.rejected_in_row = 0  # consecutive samples rejected as implausible
        self.last_rate_mdeg_s = 0
        self._shift = _START_SHIFT
        self._samples_at_shift = 0

    @property
    def settled(self):
        """The start-up averaging is over: the estimate has its full accuracy."""
        return self.ready and self._shift == _CORR_SHIFT

    @property
    def angle_mdeg(self):
        return self.angle_udeg // 1000

    def reset(self, raw):
        """Start from the accelerometer's angle; the first sample after a boot."""
        self.angle_udeg = self.mounting.accel_angle_mdeg(raw) * 1000
        self.ready = True
        self.rejected_in_row = 0
        self._shift = _START_SHIFT
        self._samples_at_shift = 0

    def predict(self, dt_ms):
        """Advance without a sample (a missed read): coast on the last good rate."""
        self.angle_udeg += self.last_rate_mdeg_s * dt_ms

    def update(self, raw, dt_ms):
        """Fuse one sample taken ``dt_ms`` after the previous one."""
        if not self.ready:
            self.reset(raw)
            return
        rate = self.mounting.rate_mdeg_s(raw) - self.bias_mdeg_s
        rejected = False
        if -MAX_RATE_MDEG_S < rate < MAX_RATE_MDEG_S:
            self.last_rate_mdeg_s = rate
        else:
            rejected = True  # a gyro spike: coast on the last good rate
        self.angle_udeg += self.last_rate_mdeg_s * dt_ms
        innovation_udeg = self.mounting.accel_angle_mdeg(raw) * 1000 - self.angle_udeg
        if -SPIKE_MDEG * 1000 < innovation_udeg < SPIKE_MDEG * 1000:
            shift = self._shift
            self.angle_udeg += innovation_udeg >> shift
            if shift < _CORR_SHIFT:
                self._samples_at_shift += 1
                if self._samples_at_shift >= _SAMPLES_PER_SHIFT:
                    self._shift = shift + 1
                    self._samples_at_shift = 0
            else:
                # Integral term (only once settled, so the start-up transient
                # is not learnt as bias): a persistent innovation means the
                # gyro reads high (or low) by a bias; learn it, with a
                # remainder so small errors still count.
                self._bias_acc -= innovation_udeg * dt_ms
                step = self._bias_acc >> _BIAS_SHIFT
                self._bias_acc -= step << _BIAS_SHIFT
                self.bias_mdeg_s += step
        else:
            rejected = True
        if rejected:
            if self.rejected_in_row < _REJECTS_MAX:  # a small int on the ESP32 for ever
                self.rejected_in_row += 1
            if self._shift < _CORR_SHIFT and self.rejected_in_row >= _START_RESEED_REJECTS:
                self.reset(raw)
        else:
            self.rejected_in_row = 0
