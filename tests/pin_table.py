"""A simulated table behind hal_sim.machine_sim's pins, on a virtual clock.

For running firmware/main.py (the ESP32 HAL, the app loop, the last-resort
loop) end to end on a PC: what the actuator pins carry drives the table's
physics, the home switch and the buttons drive the input pins, and the
MPU-6050 register model on the I2C bus reads the table's IMU (or is left off
the bus: ``imu=False``). ``SimTime`` is the ``time`` module the loops pace
themselves with: sleeping runs the physics and checks the watchdog.

Portable (CPython and MicroPython): the MicroPython tests mount this folder.
It is the virtual-clock counterpart of hal_sim/vboard_main.VirtualTable,
which runs on the interpreter's real clock.
"""

from invtable.firmware import compat
from invtable.hal_sim import machine_sim as ms
from invtable.hal_sim.mpu6050_model import MPU6050Model
from invtable.hal_sim.table import SimTable


class PinTable:
    def __init__(self, board, start_angle_deg=None, seed=0):
        self.board = board
        self.sim = SimTable(board, seed, start_angle_deg=start_angle_deg)
        self.trace = []  # (t_ms, angle_deg, drive_permille, beep, home_closed), per sleep

    def wire(self, imu=True):
        """Connect to machine_sim (call after sim_clear): clock, IMU, input pins."""
        ms.sim_set_ticks(self.sim.clock.ticks_ms)
        if imu:
            cfg = self.board["imu"]
            ms.sim_i2c_bus(cfg["i2c_id"]).attach(cfg["addr"], MPU6050Model(self.sim.imu))
        self.update_pins()

    def drive_permille(self):
        """What the BTS7960 outputs now, from its pins (+ = towards inversion)."""
        act = self.board["actuator"]
        if not ms.sim_level(act["enable"]):
            return 0
        fwd = ms.sim_pwm_duty_u16(act["pwm_fwd"]) or 0
        rev = ms.sim_pwm_duty_u16(act["pwm_rev"]) or 0
        return (fwd - rev) * 1000 // 65535

    def update_pins(self):
        board = self.board
        sim = self.sim
        # Contacts to GND with pull-ups: closed = driven low, open = not driven.
        ms.sim_set_input(board["home_pin"], 0 if sim.home.closed() else None)
        ms.sim_set_input(board["go_pin"], 0 if sim.go.pressed() else None)
        ms.sim_set_input(board["stop_pin"], None if sim.stop.pressed() else 0)  # NC

    def step(self, dt_ms):
        ms.sim_run_due_timers()  # the drive deadline, as the chip's timer runs it
        drive = self.drive_permille()
        self.sim.actuator.drive(drive)
        self.sim.step(dt_ms)
        self.update_pins()
        ms.sim_check_wdt()  # SimReset if the started watchdog went hungry
        self.trace.append(
            (
                self.sim.clock.elapsed_ms,
                self.sim.physics.angle_deg,
                drive,
                ms.sim_level(self.board["beeper_pin"]),
                self.sim.home.closed(),
            )
        )


class SimTime:
    """The MicroPython ``time`` API over a PinTable: sleeping runs physics."""

    def __init__(self, table):
        self.table = table

    def ticks_ms(self):
        return self.table.sim.clock.ticks_ms()

    def ticks_add(self, ticks, delta):
        return compat.ticks_add(ticks, delta)

    def ticks_diff(self, end, start):
        return compat.ticks_diff(end, start)

    def sleep_ms(self, ms_):
        self.table.step(ms_)
