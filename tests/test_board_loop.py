"""firmware.app.run, the board's main loop, on the simulated table.

The loop is run for real with a simulated `time` module whose sleep advances
the simulated table, so these tests check what only the board loop does:
pacing, starting the watchdog, and the Ctrl-C policy (interruptible only at
rest at home, never during a session or a return).
"""

from invtable.boards.esp32_devkitc import BOARD
from invtable.firmware import compat
from invtable.firmware.app import run
from invtable.hal_sim.flash import SimFlash
from invtable.hal_sim.scenario import build_hal, commission_flash
from invtable.hal_sim.table import SimTable

PROGRAM = dict(angle_mdeg=20000, hold_ms=3000, sets=1, rest_ms=0, speed_mdeg_s=5000,
               exit_pause_ms=0)
LIMITS = dict(max_angle_mdeg=20000, max_inverted_ms=60000, max_speed_mdeg_s=5000)


class SimTime:
    """MicroPython's time API over the simulated table: sleeping runs physics."""

    def __init__(self, table):
        self.table = table
        self.slept_ms = 0

    def ticks_ms(self):
        return self.table.clock.ticks_ms()

    def ticks_add(self, ticks, delta):
        return compat.ticks_add(ticks, delta)

    def ticks_diff(self, end, start):
        return compat.ticks_diff(end, start)

    def sleep_ms(self, ms):
        self.slept_ms += ms
        self.table.step(ms)


class Console:
    def __init__(self):
        self.calls = []  # (tick index, allowed)

    def allow_interrupt(self, allowed):
        self.calls.append(allowed)


class StartableWdt:
    def __init__(self, wdt):
        self.wdt = wdt
        self.started = 0

    def start_watchdog(self):
        self.started += 1

    def feed(self):
        self.wdt.feed()


def make_board_loop():
    table = SimTable(BOARD, seed=2)
    hal = build_hal(table, commission_flash(SimFlash(), BOARD, seed=2))
    hal.console = Console()
    hal.wdt = StartableWdt(table.wdt)
    return table, hal, SimTime(table)


def test_loop_paces_ticks_and_starts_the_watchdog_once():
    table, hal, sim_time = make_board_loop()
    run(hal, BOARD, time_module=sim_time, ticks=100)
    period_ms = 1000 // BOARD["control_hz"]
    assert sim_time.slept_ms == 100 * period_ms  # the tick itself takes no simulated time
    assert hal.wdt.started == 1
    assert not table.wdt.expired()


def test_ctrl_c_only_at_rest_at_home():
    table, hal, sim_time = make_board_loop()
    app = run(hal, BOARD, time_module=sim_time, ticks=50)  # booted, at HOME
    app.set_program(PROGRAM, LIMITS)
    assert hal.console.calls[-1] is True
    table.inject("go")
    states = []
    allowed_in = {}
    for _ in range(3000):
        run(hal, BOARD, app=app, time_module=sim_time, ticks=1)
        state = app.ctl.state
        states.append(state)
        allowed_in.setdefault(state, set()).add(hal.console.calls[-1])
        if state == "HOME" and "RETURN" in states:
            break
    assert {"WARN", "RAMP", "HOLD", "RETURN"} <= set(states)
    for state in ("WARN", "RAMP", "HOLD", "RETURN"):
        assert allowed_in[state] == {False}, state
    assert hal.console.calls[-1] is True  # home again, maintenance allowed
