"""Motion profiles: where the table should be this tick.

A trapezoidal online profile: the reference accelerates towards the target at
most at ``accel``, cruises at most at ``speed`` and brakes so that it stops
exactly on the target. All integer maths so a tick allocates nothing: the
reference position is kept in micro-degrees to avoid rounding drift.
"""


def isqrt(n):
    """Integer square root (floor) for 0 <= n < 2**30, without floats."""
    if n <= 0:
        return 0
    root = 0
    bit = 1 << 28
    while bit > n:
        bit >>= 2
    while bit:
        if n >= root + bit:
            n -= root + bit
            root = (root >> 1) + bit
        else:
            root >>= 1
        bit >>= 2
    return root


def braking_distance_mdeg(speed_mdeg_s, accel_mdeg_s2):
    """Distance needed to stop from ``speed`` at ``accel`` (v^2 / 2a)."""
    return speed_mdeg_s * speed_mdeg_s // (2 * accel_mdeg_s2)


class Profile:
    """The reference trajectory: position and velocity, advanced one tick at a time."""

    def __init__(self, pos_mdeg=0):
        self.pos_udeg = pos_mdeg * 1000
        self.vel_mdeg_s = 0

    @property
    def pos_mdeg(self):
        return self.pos_udeg // 1000

    def reset(self, pos_mdeg):
        self.pos_udeg = pos_mdeg * 1000
        self.vel_mdeg_s = 0

    def at(self, target_mdeg):
        return self.vel_mdeg_s == 0 and self.pos_udeg == target_mdeg * 1000

    def advance(self, target_mdeg, speed_mdeg_s, accel_mdeg_s2, dt_ms):
        """Move the reference one tick towards ``target``; speed and accel are limits (> 0)."""
        target_udeg = target_mdeg * 1000
        dist_udeg = target_udeg - self.pos_udeg
        vel = self.vel_mdeg_s
        dv = accel_mdeg_s2 * dt_ms // 1000  # the most the speed may change in one tick
        # Plan braking with the deceleration the integer steps really achieve.
        accel_mdeg_s2 = dv * 1000 // dt_ms
        if dist_udeg == 0 and vel == 0:
            return
        direction = 1 if dist_udeg > 0 else -1
        remaining_mdeg = dist_udeg * direction // 1000
        # Fastest speed from which the discrete braking (dv per tick) still stops
        # on the target: v = sqrt((a dt / 2)^2 + 2 a d) - a dt / 2.
        # (Far from the target this exceeds the cruise speed; skipping the square
        # root there also keeps 2 a d inside MicroPython's small integers.)
        if remaining_mdeg > braking_distance_mdeg(speed_mdeg_s + dv, accel_mdeg_s2):
            wanted = speed_mdeg_s
        else:
            half_dv = dv // 2
            wanted = isqrt(half_dv * half_dv + 2 * accel_mdeg_s2 * remaining_mdeg) - half_dv
            if wanted > speed_mdeg_s:
                wanted = speed_mdeg_s
        wanted *= direction
        if wanted > vel + dv:
            wanted = vel + dv
        elif wanted < vel - dv:
            wanted = vel - dv
        # Arrive exactly: when this step would reach the target (or less than a
        # millidegree is left) and we are slow enough to stop within the accel
        # limit, land on the target instead of passing it.
        reaches = (dist_udeg - wanted * dt_ms) * direction <= 0 or remaining_mdeg == 0
        if reaches and -dv <= vel <= dv:
            self.pos_udeg = target_udeg
            self.vel_mdeg_s = 0
            return
        self.pos_udeg += wanted * dt_ms
        self.vel_mdeg_s = wanted
