"""The whole simulated table: clock, physics, IMU and devices, wired together,
built as the world says (hal_sim/world.py; by default exactly the board file).

The firmware is not built here: the caller makes ``firmware.hal.Hal`` from
these attributes (plus a flash filesystem from hal_sim.flash).
"""

from .clock import VirtualClock
from .devices import (
    SimActuator,
    SimButton,
    SimHomeSwitch,
    SimIndicator,
    SimLink,
    SimStopButton,
    SimWdt,
)
from .imu import SimImu
from .physics import TablePhysics
from .rider import SimRider
from .rng import Rng
from .world import World

BUTTON_TAP_MS = 200  # "go" / "stop" taps are released after this much sim time


class SimTable:
    ACTIONS = (
        "imu_disconnect",
        "imu_stuck",
        "imu_spike",
        "imu_drift",
        "stall",
        "overload",
        "stop_wire_cut",
        "stop_wire_repair",
        "home_switch_fail",
        "home_switch_stuck_closed",
        "go",
        "go_down",
        "go_up",
        "stop",
        "stop_down",
        "stop_up",
        "faint",
        "grip_release",
        "grip_hold",
    )

    def __init__(self, board, seed=0, rider_mass_kg=80.0, start_angle_deg=None, world=None,
                 drive_deadline_ms=None):
        """``world``: the table that is really there (hal_sim.world.World), with
        its own rider; None = exactly the board file with ``rider_mass_kg``.
        ``start_angle_deg`` None = the world's home. ``drive_deadline_ms``:
        the simulated HAL's drive deadline (firmware.hal.DRIVE_DEADLINE_MS);
        None when the board's own HAL drives machine_sim pins (its timer
        does it)."""
        if world is None:
            world = World.from_board(board, rider_mass_kg)
        self.board = board
        self.world = world
        self.seed = seed
        self.clock = VirtualClock()
        self.rng = Rng(seed)
        self.physics = TablePhysics(board, start_angle_deg=start_angle_deg, world=world)
        self.imu = SimImu(self.physics, world.imu_mounting(), self.rng)
        self.actuator = SimActuator(self.physics, self.clock, drive_deadline_ms)
        self.go = SimButton()
        # The rider (hal_sim/rider.py): hears the beeper, answers check-ins
        # with GO, holds the dead-man grip (read only if the board has one).
        self.rider = SimRider(seed)
        self.grip = SimButton()
        self.grip.held = True
        self.stop = SimStopButton()
        self.home = SimHomeSwitch(self.physics, world.home_angle_mdeg)
        self.indicator = SimIndicator()
        self.wdt = SimWdt(self.clock)
        self.link = SimLink()
        # Sim time (clock.elapsed_ms) at which a tapped button is let go.
        self._go_release_ms = None
        self._stop_release_ms = None

    def step(self, dt_ms):
        """Advance sim time by dt_ms with the drive the bridge outputs now."""
        # The drive at the start of the step holds for all of it (the drive
        # deadline is judged at that instant).
        drive = self.actuator.output_permille()
        self.clock.advance(dt_ms)
        self.physics.step(dt_ms, drive)
        now_ms = self.clock.elapsed_ms
        if self._go_release_ms is not None and now_ms >= self._go_release_ms:
            self.go.release()
            self._go_release_ms = None
        if self._stop_release_ms is not None and now_ms >= self._stop_release_ms:
            self.stop.release()
            self._stop_release_ms = None
        rider = self.rider
        rider.hear(now_ms, self.indicator.beep)
        if rider.taps_go(now_ms):
            self.inject("go")
        self.grip.held = rider.grip_held

    def inject(self, action):
        if action not in self.ACTIONS:
            raise ValueError(
                "unknown action {}; valid: {}".format(repr(action), ", ".join(self.ACTIONS))
            )
        now_ms = self.clock.elapsed_ms
        if action.startswith("imu_"):
            self.imu.set_fault(action[4:])
        elif action == "stall":
            self.physics.stalled = True
        elif action == "overload":
            self.physics.overload = True
        elif action == "stop_wire_cut":
            self.stop.cut_wire()
        elif action == "stop_wire_repair":
            self.stop.repair_wire()
        elif action == "home_switch_fail":
            self.home.stuck_open = True
        elif action == "home_switch_stuck_closed":
            self.home.stuck_closed = True
        elif action == "go":
            self.go.press()
            self._go_release_ms = now_ms + BUTTON_TAP_MS
        elif action == "go_down":
            self.go.press()
            self._go_release_ms = None  # held until go_up
        elif action == "go_up":
            self.go.release()
            self._go_release_ms = None
        elif action == "stop":
            self.stop.press()
            self._stop_release_ms = now_ms + BUTTON_TAP_MS
        elif action == "stop_down":
            self.stop.press()
            self._stop_release_ms = None
        elif action == "stop_up":
            self.stop.release()
            self._stop_release_ms = None
        elif action == "faint":
            self.rider.faint()
        elif action == "grip_release":
            self.rider.grip_held = False
        elif action == "grip_hold":
            self.rider.grip_held = True

    def clear_faults(self):
        """Undo every injected hardware fault (not button states)."""
        self.imu.clear_fault()
        self.physics.stalled = False
        self.physics.overload = False
        self.stop.repair_wire()
        self.home.stuck_open = False
        self.home.stuck_closed = False

    def power_off(self):
        """Mains gone: the bridge loses power and the actuator holds."""
        self.physics.powered = False
        self.actuator.off()

    def power_on(self):
        self.physics.powered = True
