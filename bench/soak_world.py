# ruff: noqa: F821, UP031 - CONFIG is prepended by the launcher; % is MicroPython's cheap format
# The world side of the soak (bench/soak.py): the simulated table, its rider
# and the host, in their own MicroPython interpreter (a worker thread of
# bench/soak_runner.mjs), so that none of their memory or garbage is in the
# firmware's heap. The launcher prepends CONFIG = {...}.
#
# Each control tick `_world_step(ret)` takes what the board output in the
# tick just run (drive, beeper, the controller's state), steps the table by
# one control period and returns the next tick's inputs as text:
# "ax,ay,az,gx,gy,gz,inputs,request,action" (see bench/soak_board.py).
#
# The day: the host sets the clock and a short program at the first boot; a
# `status` request every second; every hour a session (telemetry on at
# 10 Hz, GO, the rider answering check-ins, telemetry off once the table is
# home); in some sessions one random fault (seeded), and now and then a bad
# line on the serial port or a power cut at home. After a latched fault the
# table is left to come to rest, then the hardware fault is cleared and the
# board power-cycled (only a reboot clears a fault).
import json
import sys

sys.path.insert(0, CONFIG["stage"])
from hal_sim.rng import Rng  # noqa: E402
from hal_sim.table import SimTable  # noqa: E402

sys.path.pop(0)

BOARD = CONFIG["board"]
TICK_MS = 1000 // BOARD["control_hz"]
TICKS_PER_S = 1000 // TICK_MS
SESSION_EVERY_S = CONFIG["session_every_s"]
FIRST_SESSION_S = CONFIG["first_session_s"]
FAULT_CHANCE = CONFIG["fault_chance"]
REQ = CONFIG["request_index"]  # request name -> number (bench/soak_board.py's REQUESTS)
STATES = ("BOOT", "HOME", "WARN", "RAMP", "HOLD", "RETURN", "PAUSE", "REST", "FAULT", "SETUP")
FAULT_STATE = STATES.index("FAULT")
HOME_STATE = STATES.index("HOME")
BOOT_STATE = STATES.index("BOOT")

# Faults a session may meet (SimTable.ACTIONS, plus the board's own events).
FAULTS = (
    "stop", "stop_hold", "imu_spike", "imu_stuck", "imu_drift", "imu_disconnect", "stall",
    "overload", "stop_wire_cut", "home_switch_fail", "power_loss", "faint", "bad_lines",
)
# Bad lines on the serial port (what a noisy or buggy host might send).
BAD_REQUESTS = ("garbage", "bad_json", "unknown_cmd", "too_long", "bad_field")

IN_HOME = 1
IN_GO = 2
IN_STOP = 4
IN_GRIP = 8
IN_OVERLOAD = 16
IN_IMU_GONE = 32
ACT_POWER_OFF = 1
ACT_POWER_ON = 2
POWER_OFF_TICKS = 25  # 500 ms dark, as hal_sim/scenario.py


class World:
    def __init__(self):
        self.table = SimTable(BOARD, CONFIG["table_seed"])
        self.rng = Rng(CONFIG["seed"])
        self.sample = [0] * 6
        self.n = 0  # ticks stepped
        self.dark_left = 0
        self.power_on_due = False
        self.imu_gone = False
        self.requests = []  # (tick due, request name), in order
        self.req_gap = 0
        self.session_open = False  # GO sent, table not back home yet
        self.telemetry_on = False
        self.fault_at = None  # (tick, fault name) of this session's fault
        self.fault_latched_at = None  # tick the board reported FAULT
        self.state = BOOT_STATE
        self.left_home = False
        self.stats = {
            "sessions_started": 0, "sessions_home": 0, "faults_injected": {},
            "fault_states": 0, "power_cycles": 0, "power_cuts": 0, "bad_requests": 0,
            "status_requests": 0, "requests": 0, "requests_dropped": 0, "max_angle_deg": -90.0,
            "states_seen": {}, "sessions_refused": 0,
        }
        self.release_stop_at = None
        self.session_start_n = 0
        self.program_set = False
        self.host_setup()

    # ------------------------------------------------------------- the host
    def host_setup(self):
        """At every boot the host sets the board's clock (midnight UTC of
        CONFIG["epoch_s"]'s day plus the time so far)."""
        self.ask("clock.set")

    def ask(self, name, delay_ticks=0):
        self.requests.append((self.n + delay_ticks, name))

    def next_request(self):
        if self.req_gap > 0:
            self.req_gap -= 1
            return 0
        if not self.requests or self.requests[0][0] > self.n:
            return 0
        name = self.requests.pop(0)[1]
        if self.dark_left or self.power_on_due:
            self.stats["requests_dropped"] += 1
            return 0
        # One line at a time: the board reads 64 bytes a tick.
        self.req_gap = CONFIG["request_bytes"][name] // 64 + 3
        self.stats["requests"] += 1
        if name in BAD_REQUESTS:
            self.stats["bad_requests"] += 1
        if name == "status":
            self.stats["status_requests"] += 1
        return REQ[name]

    # ------------------------------------------------------------ the table
    def step(self, ret):
        """The board's outputs of the tick just run -> the next tick's inputs."""
        table = self.table
        drive = (ret & 4095) - 2048
        beep = (ret >> 12) & 1
        state = ret >> 13
        self.state = state
        name = STATES[state]
        seen = self.stats["states_seen"]
        seen[name] = seen.get(name, 0) + 1
        if drive:
            table.actuator.drive(drive)
        else:
            table.actuator.off()
        table.indicator.beep = bool(beep)
        table.step(TICK_MS)
        self.n += 1
        angle = table.physics.angle_deg
        if angle > self.stats["max_angle_deg"]:
            self.stats["max_angle_deg"] = angle
        action = self.power(drive)
        if not self.dark_left:
            self.schedule(state, drive)
        request = self.next_request()
        return self.inputs(request, action)

    def power(self, drive):
        if self.dark_left:
            self.dark_left -= 1
            if self.dark_left == 0:
                self.power_on_due = True
            return 0
        if self.power_on_due:
            self.power_on_due = False
            self.table.power_on()
            self.host_setup()
            return ACT_POWER_ON
        return 0

    def power_cut(self):
        self.table.power_off()
        self.dark_left = POWER_OFF_TICKS
        self.session_open = False
        self.telemetry_on = False
        self.requests = []
        return ACT_POWER_OFF

    def inputs(self, request, action):
        table = self.table
        flags = 0
        if self.imu_gone:
            flags |= IN_IMU_GONE
        else:
            try:
                table.imu.read(self.sample)
            except OSError:
                flags |= IN_IMU_GONE
        if table.home.closed():
            flags |= IN_HOME
        if table.go.pressed():
            flags |= IN_GO
        if table.stop.pressed():
            flags |= IN_STOP
        if table.grip.pressed():
            flags |= IN_GRIP
        phys = table.physics
        if phys.current_high or phys.overload:
            flags |= IN_OVERLOAD
        s = self.sample
        return "%d,%d,%d,%d,%d,%d,%d,%d,%d" % (
            s[0], s[1], s[2], s[3], s[4], s[5], flags, request, action)

    # ------------------------------------------------------------ the day
    def schedule(self, state, drive):
        n = self.n
        t_s, frac = divmod(n, TICKS_PER_S)
        if frac == 7:
            self.ask("status")
            if self.rng.random() < CONFIG["bad_line_chance_per_s"]:
                self.ask(BAD_REQUESTS[int(self.rng.random() * len(BAD_REQUESTS))], 2)
        if state == FAULT_STATE:
            self.on_fault(drive)
            return
        if not self.program_set and state == HOME_STATE:
            self.program_set = True  # settings change only at HOME
            self.ask("program.set")
        if self.release_stop_at is not None and n >= self.release_stop_at:
            self.release_stop_at = None
            self.table.inject("stop_up")
        if self.session_open:
            if state != HOME_STATE:
                self.left_home = True
            elif self.left_home:
                self.session_over()
            elif n - self.session_start_n > 10 * TICKS_PER_S:
                self.stats["sessions_refused"] += 1  # GO refused (e.g. the daily cap)
                self.session_over()
                return
            if self.fault_at is not None and n >= self.fault_at[0]:
                name = self.fault_at[1]
                self.fault_at = None
                self.inject(name)
            return
        if frac == 0 and t_s >= FIRST_SESSION_S and (t_s - FIRST_SESSION_S) % SESSION_EVERY_S == 0:
            if state == HOME_STATE:
                self.start_session()
        elif frac == 0 and t_s % 600 == 300 and self.rng.random() < CONFIG["idle_power_cut_chance"]:
            # Now and then the mains go at home.
            self.stats["power_cuts"] += 1
            self.stats["faults_injected"]["idle_power_cut"] = (
                self.stats["faults_injected"].get("idle_power_cut", 0) + 1)
            self.pending_action = self.power_cut()

    def start_session(self):
        self.stats["sessions_started"] += 1
        self.session_open = True
        self.left_home = False
        self.telemetry_on = True
        self.ask("telemetry_on")
        self.table.inject("go")
        self.session_start_n = self.n
        self.fault_at = None
        if self.rng.random() < FAULT_CHANCE:
            name = FAULTS[int(self.rng.random() * len(FAULTS))]
            at = self.n + TICKS_PER_S * (3 + int(self.rng.random() * 50))
            self.fault_at = (at, name)

    def session_over(self):
        self.session_open = False
        self.stats["sessions_home"] += 1
        if self.telemetry_on:
            self.telemetry_on = False
            self.ask("telemetry_off")
        table = self.table
        rider = table.rider
        rider.conscious = True  # a fainted rider has been helped off
        rider.grip_held = True
        # Whatever went wrong with the hardware is put right before the next
        # session (a latched fault's board is power-cycled as well).
        table.clear_faults()
        self.imu_gone = False

    def inject(self, name):
        faults = self.stats["faults_injected"]
        faults[name] = faults.get(name, 0) + 1
        table = self.table
        if name == "stop_hold":
            table.inject("stop_down")
            self.release_stop_at = self.n + 3 * TICKS_PER_S
        elif name == "imu_disconnect":
            table.inject("imu_disconnect")
            self.imu_gone = True
        elif name == "power_loss":
            self.stats["power_cuts"] += 1
            self.pending_action = self.power_cut()
        elif name == "bad_lines":
            for bad in BAD_REQUESTS:
                self.ask(bad)
        else:
            table.inject(name)

    def on_fault(self, drive):
        if self.fault_latched_at is None:
            self.fault_latched_at = self.n
            self.stats["fault_states"] += 1
            if self.telemetry_on:
                self.telemetry_on = False
                self.ask("telemetry_off")
        # Left alone until the drive has been off for 30 s: then the
        # technician clears the fault's cause and power-cycles the board.
        if drive:
            self.fault_latched_at = self.n
        elif self.n - self.fault_latched_at >= 30 * TICKS_PER_S:
            self.fault_latched_at = None
            self.session_over()
            self.stats["power_cycles"] += 1
            self.pending_action = self.power_cut()


WORLD = World()
WORLD.pending_action = 0


def _world_step(ret):
    world = WORLD
    if ret < 0:  # before the first tick: its inputs
        return world.inputs(0, 0)
    text = world.step(ret)
    action = world.pending_action
    if action:
        world.pending_action = 0
        # The cut takes effect on the next tick: its inputs carry the action.
        head, _sep, _last = text.rpartition(",")
        text = head + "," + str(action)
    return text


def _world_end():
    stats = WORLD.stats
    stats["ticks"] = WORLD.n
    stats["final_angle_deg"] = WORLD.table.physics.angle_deg
    stats["rider_check_ins_answered"] = WORLD.table.rider.answered
    return json.dumps(stats)
