"""The blind way home: no trusted angle, so drive towards home open loop and
dead-reckon where the table can be.

Used by the FAULT state when the IMU is lost, stuck or implausible. From the
last trusted angle (or, without one, anywhere in the travel) and the drive it
commands, it keeps two bounds on where the table is: the lowest it can be
(moving at the empty table's full speed) and the highest (moving at the
speed lifting the heaviest rider, ``tracking.TableSpeed.up_full``). So it
knows roughly when home must come:
  * it drives at the blind speed while even the lowest bound is well above
    home, and creeps (CREEP_SPEED_MDEG_S) only for the last CREEP_ZONE_MDEG;
  * a home switch that closes while even the lowest bound is more than
    BELIEVE_SWITCH_MDEG above home is not believed (a switch stuck closed);
  * it gives up (drive off, ``reached`` False) once even the highest bound is
    GIVE_UP_PAST_MDEG below home: any table that moves would be home by then.
Integer maths; nothing allocates per tick.
"""

from .compat import const

CREEP_SPEED_MDEG_S = const(1000)
CREEP_ZONE_MDEG = const(5000)
BELIEVE_SWITCH_MDEG = const(15000)
GIVE_UP_PAST_MDEG = const(3000)


def way_home_cap_ms(distance_mdeg, speed_mdeg_s):
    """The time cap of a way home: ``distance_mdeg`` to go at ``speed_mdeg_s``
    (the speed this return really uses: the user's may be far below the
    board's), half as long again, plus 5 s. A cap from another speed would
    cut a slow return short with the rider still inverted."""
    if distance_mdeg < 0:
        distance_mdeg = 0
    return distance_mdeg * 3 // 2 * 1000 // speed_mdeg_s + 5000


def towards_home(drive, speed_mdeg_s, drive_speed_mdeg_s, accel_mdeg_s2, dt_ms):
    """The open-loop drive towards home at ``speed``, from ``drive`` (permille),
    slewed at the acceleration limit: no jolt when it starts or slows."""
    wanted = -(speed_mdeg_s * 1000 // drive_speed_mdeg_s)
    slew = accel_mdeg_s2 * dt_ms // drive_speed_mdeg_s  # permille per tick
    if slew < 1:
        slew = 1
    if drive > wanted + slew:
        return drive - slew
    if drive < wanted - slew:
        return drive + slew
    return wanted


class BlindReturn:
    def __init__(self, home_mdeg, max_mdeg, drive_speed_mdeg_s, accel_mdeg_s2):
        self.home_mdeg = home_mdeg
        self.max_mdeg = max_mdeg
        self.drive_speed_mdeg_s = drive_speed_mdeg_s  # full-drive speed used to scale drive
        self.accel_mdeg_s2 = accel_mdeg_s2
        self.start(None, 1000)  # (every return calls start with its own values)

    def start(self, from_mdeg, speed_mdeg_s):
        """``from_mdeg``: the last trusted angle, or None (anywhere in the travel)."""
        # Without a last trusted angle the table may be anywhere: any closing
        # of the switch is believed, and there is no "last part" to creep.
        self.known = from_mdeg is not None
        self.low_mdeg = self.home_mdeg if from_mdeg is None else from_mdeg
        self.high_mdeg = self.max_mdeg if from_mdeg is None else from_mdeg
        # A backstop in time: the way from the highest it can be.
        self.cap_ms = way_home_cap_ms(self.high_mdeg - self.home_mdeg, speed_mdeg_s)
        self._low_udeg = 0
        self._high_udeg = 0
        self.speed_mdeg_s = speed_mdeg_s
        self.done = False
        self.reached = False
        self.switch_doubted = False

    def step(self, dt_ms, drive_now, switch_closed, fast_full_mdeg_s, slow_full_mdeg_s):
        """One tick. ``drive_now``: the drive the table got since the last tick
        (permille). Returns the drive to command (<= 0); sets ``done``."""
        if self.done:
            return 0
        if drive_now < 0:
            d = -drive_now
            self._low_udeg += d * fast_full_mdeg_s // 1000 * dt_ms
            self._high_udeg += d * slow_full_mdeg_s // 1000 * dt_ms
        low = self.low_mdeg - self._low_udeg // 1000
        high = self.high_mdeg - self._high_udeg // 1000
        if switch_closed and not self.switch_doubted:
            if not self.known or low <= self.home_mdeg + BELIEVE_SWITCH_MDEG:
                self.done = True
                self.reached = True
                return 0
            # Closed far too early: not home yet, and never believed again on
            # this way home (a switch stuck closed); dead reckoning ends it.
            self.switch_doubted = True
        if high <= self.home_mdeg - GIVE_UP_PAST_MDEG:
            self.done = True
            return 0
        speed = self.speed_mdeg_s
        creep = self.known and low <= self.home_mdeg + CREEP_ZONE_MDEG
        if creep and speed > CREEP_SPEED_MDEG_S:
            speed = CREEP_SPEED_MDEG_S
        drive = drive_now if drive_now <= 0 else 0
        return towards_home(drive, speed, self.drive_speed_mdeg_s, self.accel_mdeg_s2, dt_ms)

    def highest_mdeg(self):
        """The highest the table can be now (for counting the rider's exposure)."""
        return self.high_mdeg - self._high_udeg // 1000
