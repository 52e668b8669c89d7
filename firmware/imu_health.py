"""IMU health: can the angle still be trusted?

One small object fed every tick with the read's outcome (the model: Klipper's
verify_heater, one protection with its thresholds as named constants). Three
ways a sensor stops telling the truth, each with its own fault code:
  * lost: ``IMU_ERROR_TICKS`` failed reads in a row (a cut wire, a sensor
    that reset itself, a bus that hangs);
  * stuck: ``IMU_STUCK_TICKS`` identical six-axis samples in a row (a frozen
    sensor or driver; real noise never repeats the same sample);
  * implausible: ``IMU_REJECT_TICKS`` samples in a row that the estimator
    rejected as impossible for the table (fusion.SPIKE_MDEG, MAX_RATE_MDEG_S).
Any of them leaves no trusted angle: the way home is the blind one.
Nothing allocates per tick.
"""

from .compat import const

F_IMU_LOST = "imu_lost"  # the IMU cannot be read
F_IMU_STUCK = "imu_stuck"  # the IMU repeats the exact same sample
F_IMU_IMPLAUSIBLE = "imu_implausible"  # readings disagree with physics

IMU_ERROR_TICKS = const(3)  # consecutive failed reads = angle lost
IMU_STUCK_TICKS = const(10)  # identical samples in a row = stuck
IMU_REJECT_TICKS = const(10)  # implausible samples in a row = angle untrusted
_COUNT_MAX = const(1 << 29)


class ImuHealth:
    def __init__(self):
        self.errors_in_row = 0
        self.same_in_row = 0
        self._prev = [0, 0, 0, 0, 0, 0]

    def sense(self, ok, raw, estimator, dt_ms):
        """One tick: ``ok`` the read succeeded and ``raw`` holds its sample.
        Feeds the estimator (or lets it coast on a failed read)."""
        if ok:
            self.errors_in_row = 0
            prev = self._prev
            same = True
            for i in range(6):
                if raw[i] != prev[i]:
                    same = False
                prev[i] = raw[i]
            # Both counts stop at _COUNT_MAX: a small int on the ESP32 however
            # long the sensor stays frozen or gone (2**30 ticks is 248 days).
            if not same:
                self.same_in_row = 0
            elif self.same_in_row < _COUNT_MAX:
                self.same_in_row += 1
            estimator.update(raw, dt_ms)
        else:
            if self.errors_in_row < _COUNT_MAX:
                self.errors_in_row += 1
            if estimator.ready:
                estimator.predict(dt_ms)

    def fault(self, estimator):
        """The fault code if the angle can no longer be trusted, else None."""
        if self.errors_in_row >= IMU_ERROR_TICKS:
            return F_IMU_LOST
        if self.same_in_row >= IMU_STUCK_TICKS:
            return F_IMU_STUCK
        if estimator.rejected_in_row >= IMU_REJECT_TICKS:
            return F_IMU_IMPLAUSIBLE
        return None
