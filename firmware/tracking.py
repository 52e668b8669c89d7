"""Self-measurement in every session: how fast the table really moves this rider.

Commissioning measured the empty table. A rider, an ageing actuator or a stiff
joint make it slower, so ``TableSpeed`` keeps measuring: over each second of
steady motion (the drive well away from zero, in one direction) it compares
how far the table moved with how much drive it got (through the actuator's
lag), and learns the
table's speed at full drive in each direction. The controller uses it to
  * plan the return with the speed the table really achieves lifting this
    rider (the worse of measured and commissioned, and of what the way down
    says about the load),
  * keep the reference within what the table can follow,
  * judge a stall against the speed the table really has.

Load model (documented assumptions, the same ones the simulator's physics
makes): lifting the heaviest rider a table is built for (160 kg) at the worst
angle costs at most 30 % of the empty table's speed (``LIFT_WORST_PERMILLE``),
and gravity helping that rider on the way down adds at most 10 %
(``ASSIST_BEST_PERMILLE``). So before the first lift of a session is measured
the return is planned as if the rider were that heavy, and a slower way down
than commissioning saw (a worn actuator) lowers that plan in proportion.

Integer maths only; nothing here allocates per tick.
"""

from .compat import const

LIFT_WORST_PERMILLE = const(700)
ASSIST_BEST_PERMILLE = const(1100)
# Feed-forward towards home until a lift is measured: a typical (80 kg) rider.
LIFT_TYPICAL_PERMILLE = const(850)
# The reference asks at most this share of what the table can do: the rest is
# room for the feedback to correct errors.
FOLLOW_PERMILLE = const(900)
WINDOW_MS = const(1000)
# A window counts once the drive has kept its direction this long, and at
# least LAG_SETTLE times the actuator's lag (the play is taken up by then).
CRUISE_SETTLE_MS = const(500)
LAG_SETTLE = const(3)
MIN_DRIVE_PERMILLE = const(150)  # below this the actuator's dead band dominates
MIN_WINDOW_MOVE_MDEG = const(500)


class TableSpeed:
    """The table's speed at full drive per direction: commissioned and measured."""

    def __init__(self, speed_down_mdeg_s, speed_up_mdeg_s, lag_ms=0):
        self.commissioned_down = speed_down_mdeg_s
        self.commissioned_up = speed_up_mdeg_s
        self.lag_ms = lag_ms
        settle = LAG_SETTLE * lag_ms
        self.settle_ms = settle if settle > CRUISE_SETTLE_MS else CRUISE_SETTLE_MS
        self.measured_down = 0  # 0: not measured in this session yet
        self.measured_up = 0
        self._lagged = 0  # the drive as the actuator has it now (first-order lag)
        self._dir = 0
        self._steady_ms = 0
        self._window_ms = 0
        self._drive_ms = 0  # sum of |lagged drive| x dt (permille x ms)
        self._start_mdeg = 0

    def reset_session(self):
        """A new session: the rider may be someone else."""
        self.measured_down = 0
        self.measured_up = 0
        self._restart(0, 0)

    def _restart(self, direction, angle_mdeg):
        self._dir = direction
        self._steady_ms = 0
        self._window_ms = 0
        self._drive_ms = 0
        self._start_mdeg = angle_mdeg

    def observe(self, dt_ms, drive, powered, angle_mdeg):
        """One tick of what the controller commanded and where the table is.

        The drive is passed through the actuator's commissioned lag, so the
        table's motion over a window is compared with the drive it really
        had, ramps and corrections included. A window counts once the drive
        has kept its direction for ``settle_ms`` (the play is taken up).
        """
        if not powered:
            drive = 0
        self._lagged += (drive - self._lagged) * dt_ms // (self.lag_ms + dt_ms)
        lagged = self._lagged
        direction = 0
        if powered and lagged >= MIN_DRIVE_PERMILLE:
            direction = 1
        elif powered and lagged <= -MIN_DRIVE_PERMILLE:
            direction = -1
        if direction == 0 or direction != self._dir:
            self._restart(direction, angle_mdeg)
            return
        if self._steady_ms < self.settle_ms:
            self._steady_ms += dt_ms
            self._start_mdeg = angle_mdeg
            return
        self._window_ms += dt_ms
        self._drive_ms += lagged * direction * dt_ms
        if self._window_ms < WINDOW_MS:
            return
        moved = (angle_mdeg - self._start_mdeg) * direction
        drive_s = self._drive_ms // 1000  # permille x s
        if moved >= MIN_WINDOW_MOVE_MDEG and drive_s > 0:
            speed = moved * 1000 // drive_s
            if direction > 0:
                self.measured_down = _blend(self.measured_down, speed)
            else:
                self.measured_up = _blend(self.measured_up, speed)
        self._window_ms = 0
        self._drive_ms = 0
        self._start_mdeg = angle_mdeg

    def down_full(self):
        """Head-down speed at full drive to plan with (never above commissioning)."""
        speed = self.commissioned_down
        if 0 < self.measured_down < speed:
            speed = self.measured_down
        return speed

    def up_full(self):
        """Speed at full drive lifting this rider home, to plan the return with."""
        speed = self.commissioned_up * LIFT_WORST_PERMILLE // 1000
        if self.measured_down > 0:
            from_down = self.measured_down * LIFT_WORST_PERMILLE // ASSIST_BEST_PERMILLE
            if from_down < speed:
                speed = from_down
        if 0 < self.measured_up < speed:
            speed = self.measured_up
        return speed

    def feed_forward(self, direction):
        """Best estimate of the speed at full drive (for the feed-forward)."""
        if direction >= 0:
            return self.measured_down if self.measured_down > 0 else self.commissioned_down
        if self.measured_up > 0:
            return self.measured_up
        return self.commissioned_up * LIFT_TYPICAL_PERMILLE // 1000

    def stall_speed(self, direction):
        """Speed at full drive a moving table has at least (stall judgement)."""
        return self.down_full() if direction > 0 else self.up_full()


def followable(speed_mdeg_s, drive_cap, full_mdeg_s):
    """The largest reference speed <= ``speed`` the table can follow at the drive cap."""
    can = drive_cap * full_mdeg_s // 1000 * FOLLOW_PERMILLE // 1000
    if can < 100:
        can = 100
    return speed_mdeg_s if speed_mdeg_s < can else can


def _blend(old, new):
    if old <= 0:
        return new
    return (old * 3 + new) // 4
