"""Table, actuator and rider mechanics, one degree of freedom.

Units inside the simulator: degrees, seconds, floats. The board file gives
integers in mdeg, mdeg/s; they are converted once here.

Model (why each part is there):
- The actuator is a self-locking linear actuator (lead screw): its speed follows
  the commanded speed through a first-order lag (motor + load inertia) with the
  acceleration also capped. With no drive or no power it decelerates and holds;
  the rider's weight can never back-drive it.
- Its speed depends on the load: the rider's centre of mass is assumed to sit a
  little towards the head end of the pivot, so gravity helps the head go down
  and the actuator must lift the rider to return home (the conservative case:
  the return is the slow direction). See ``load_factor``.
- Play (backlash) in the linkage: the table only follows the actuator once the
  dead band has been taken up, as in a classic play/hysteresis model.
- Mechanical end stops a little beyond the working range. Pushing into one
  stops the motion and the driver sees a high current.

The true numbers (full speed, lag, rider, where home is) come from the world
(hal_sim/world.py), which by default is exactly the board file; only the
high end stop follows the board's max angle.
"""

import math

from .world import World

_DEG_TO_RAD = math.pi / 180.0

ACTUATOR_ACCEL_CAP_DEG_S2 = 60.0  # motor torque limit on speed changes
BRAKE_MIN_DECEL_DEG_S2 = 20.0  # screw friction when undriven
BACKLASH_DEG = 0.3  # total dead band between actuator and table
LOW_STOP_BELOW_HOME_DEG = 1.0  # end stop just past the home switch
HIGH_STOP_ABOVE_MAX_DEG = 5.0  # end stop past the board's max angle
REFERENCE_RIDER_KG = 80.0
LIFT_SLOWDOWN = 0.15  # speed lost lifting an 80 kg rider at the worst angle
ASSIST_SPEEDUP = 0.05  # speed gained when gravity helps, same rider and angle
MAX_LOAD_RATIO = 2.0  # cap for very heavy riders (160 kg: 30 % slower)
MAX_SUBSTEP_MS = 20  # long steps are split so the dynamics stay accurate


def _clamp(value, low, high):
    return low if value < low else high if value > high else value


class TablePhysics:
    def __init__(self, board, rider_mass_kg=80.0, start_angle_deg=None, world=None):
        """``world``: the true table (hal_sim.world.World); None = exactly the
        board file with this rider. A given world brings its own rider."""
        if world is None:
            world = World.from_board(board, rider_mass_kg)
        self.world = world
        self.home_deg = world.home_angle_mdeg / 1000.0  # where the table really rests
        self.max_deg = board["max_angle_mdeg"] / 1000.0
        self.full_speed_deg_s = world.actuator_speed_mdeg_s / 1000.0
        self.lag_s = world.actuator_lag_ms / 1000.0  # first-order lag of speed behind drive
        self.low_stop_deg = self.home_deg - LOW_STOP_BELOW_HOME_DEG
        self.high_stop_deg = self.max_deg + HIGH_STOP_ABOVE_MAX_DEG
        # Read every step: commissioning may empty the table and refill it.
        self.rider_mass_kg = float(world.rider_kg)
        if start_angle_deg is None:
            start_angle_deg = self.home_deg
        start = _clamp(float(start_angle_deg), self.low_stop_deg, self.high_stop_deg)
        self.angle_deg = start  # true table angle, + = head down
        self.velocity_deg_s = 0.0  # true table angular velocity
        self.actuator_deg = start  # actuator position, in table degrees
        self.actuator_velocity_deg_s = 0.0
        self.current_high = False  # driving into an end stop
        self.elapsed_ms = 0  # simulated time seen by this model
        # Fault switches, set by tests and the scenario runner.
        self.stalled = False  # actuator frozen; the driver sees no over-current
        self.overload = False  # driver flags over-current; motor still moves
        self.powered = True  # False: drive ignored, the actuator holds
        self._lag_dt_s = None  # first-order lag gain, cached per step length
        self._lag_gain = 0.0

    def gravity_load(self):
        """Signed rider load: + when gravity pulls the head end down.
        1.0 = an 80 kg rider with the table horizontal (the worst angle)."""
        return self.rider_mass_kg / REFERENCE_RIDER_KG * math.cos(self.angle_deg * _DEG_TO_RAD)

    def load_factor(self, direction):
        """Speed multiplier for motion in ``direction`` (+1 head down, -1 home).

        a = gravity_load() * direction, clamped to [-2, 2]
        a > 0 (gravity helps):  1 + 0.05 * a
        a < 0 (lifting):        1 + 0.15 * a
        So an 80 kg rider at 0 deg: 0.85 going home, 1.05 going down; at
        -60 deg (cos = 0.5): 0.925 and 1.025; at 90 deg: 1.0 both ways.
        """
        a = _clamp(self.gravity_load() * direction, -MAX_LOAD_RATIO, MAX_LOAD_RATIO)
        if a > 0:
            return 1.0 + ASSIST_SPEEDUP * a
        return 1.0 + LIFT_SLOWDOWN * a

    def step(self, dt_ms, drive_permille):
        """Advance by dt_ms with a signed drive in permille (+ = head down)."""
        drive = _clamp(drive_permille, -1000, 1000)
        if not self.powered:
            drive = 0
        while dt_ms > 0:
            h_ms = dt_ms if dt_ms < MAX_SUBSTEP_MS else MAX_SUBSTEP_MS
            self._substep(h_ms, drive)
            dt_ms -= h_ms

    def _substep(self, h_ms, drive):
        dt_s = h_ms / 1000.0
        if self.stalled:
            self.actuator_velocity_deg_s = 0.0
        else:
            self._move_actuator(dt_s, drive)

        # Play: the table moves only when the actuator pushes on either side.
        half_play = BACKLASH_DEG / 2.0
        old_deg = self.angle_deg
        angle = old_deg
        gap = self.actuator_deg - angle
        if gap > half_play:
            angle = self.actuator_deg - half_play
        elif gap < -half_play:
            angle = self.actuator_deg + half_play

        # End stops hold the table, and so the actuator pushing it.
        at_stop = 0
        if angle >= self.high_stop_deg:
            angle = self.high_stop_deg
            at_stop = 1
            if self.actuator_deg > angle + half_play:
                self.actuator_deg = angle + half_play
            if self.actuator_velocity_deg_s > 0:
                self.actuator_velocity_deg_s = 0.0
        elif angle <= self.low_stop_deg:
            angle = self.low_stop_deg
            at_stop = -1
            if self.actuator_deg < angle - half_play:
                self.actuator_deg = angle - half_play
            if self.actuator_velocity_deg_s < 0:
                self.actuator_velocity_deg_s = 0.0

        self.angle_deg = angle
        self.velocity_deg_s = (angle - old_deg) / dt_s
        # A stalled motor here stands for a broken coupling: no extra current.
        self.current_high = at_stop * drive > 0 and not self.stalled
        self.elapsed_ms += h_ms

    def _move_actuator(self, dt_s, drive):
        target = 0.0
        if drive:
            direction = 1 if drive > 0 else -1
            target = drive / 1000.0 * self.full_speed_deg_s * self.load_factor(direction)
        v_old = self.actuator_velocity_deg_s
        # Exact first-order response over dt (stable for any step length),
        # then the torque limit on the change.
        if dt_s != self._lag_dt_s:  # the step is almost always the same: cache it
            self._lag_dt_s = dt_s
            lag_s = self.lag_s
            self._lag_gain = 1.0 - math.exp(-dt_s / lag_s) if lag_s > 0.0 else 1.0
        dv = (target - v_old) * self._lag_gain
        if target == 0.0:
            # Self-locking screw: friction brakes it to a real stop in finite
            # time (no exponential creep), and nothing drives it afterwards.
            brake = BRAKE_MIN_DECEL_DEG_S2 * dt_s
            if v_old > 0.0 and dv > -brake:
                dv = -min(v_old, brake)
            elif v_old < 0.0 and dv < brake:
                dv = min(-v_old, brake)
        cap = ACTUATOR_ACCEL_CAP_DEG_S2 * dt_s
        v_new = v_old + _clamp(dv, -cap, cap)
        self.actuator_deg += (v_old + v_new) * 0.5 * dt_s
        self.actuator_velocity_deg_s = v_new
