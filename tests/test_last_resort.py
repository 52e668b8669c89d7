"""firmware/last_resort.py: the way home with no estimator and no state machine."""

import pytest

from invtable.boards import esp32_devkitc, esp32_s3_devkitc
from invtable.firmware import last_resort
from invtable.firmware.controller import Controller
from invtable.hal_sim.table import SimTable

BOARD = esp32_devkitc.BOARD
TICKS_MAX = (1 << 30) - 1


class Wdt:
    def __init__(self, startable=True):
        self.feeds = 0
        self.starts = 0
        if not startable:
            self.start_watchdog = None

    def start_watchdog(self):
        self.starts += 1

    def feed(self):
        self.feeds += 1


class Console:
    def __init__(self):
        self.calls = []

    def allow_interrupt(self, allowed):
        self.calls.append(allowed)


class Hal:
    """The simulated table's devices (the table does not move: only the
    commands matter here); the home switch is set by hand."""

    def __init__(self, start_ms=0):
        table = SimTable(BOARD)
        table.clock.start_ticks_ms = start_ms
        self.clock = table.clock
        self.actuator = table.actuator
        self.home = table.home
        self.indicator = table.indicator
        self.wdt = Wdt()
        self.console = Console()
        self.set_home(False)

    def set_home(self, closed):
        self.home.stuck_closed = closed
        self.home.stuck_open = not closed

    def advance(self, ms):
        self.clock.advance(ms)

    def command(self):
        """The bridge: None = off, else the drive (permille)."""
        return self.actuator.last_drive if self.actuator.enabled else None

    def alarm(self):
        return self.indicator.beep and self.indicator.led


class Time:
    """time.sleep_ms advances the fake clock; ``on_sleep(hal, elapsed)`` acts."""

    def __init__(self, hal, on_sleep=None):
        self.hal = hal
        self.on_sleep = on_sleep
        self.elapsed_ms = 0

    def sleep_ms(self, ms):
        self.hal.advance(ms)
        self.elapsed_ms += ms
        if self.on_sleep is not None:
            self.on_sleep(self.hal, self.elapsed_ms)


@pytest.mark.parametrize("board", [esp32_devkitc.BOARD, esp32_s3_devkitc.BOARD])
def test_cap_and_drive_are_the_controllers(board):
    # The same numbers as the controller's blind return (on the board file).
    assert last_resort.blind_cap_ms(board) == Controller(board).blind_cap_ms
    drive = last_resort.homeward_drive(board)
    assert drive == -(board["recovery_speed_mdeg_s"] * 1000 // board["actuator_speed_mdeg_s"])
    assert -1000 < drive < 0


def test_drives_home_until_the_switch_closes_alarm_on_fed_every_step():
    hal = Hal()
    routine = last_resort.LastResort(BOARD)
    for _ in range(10):
        assert routine.step(hal) == last_resort.homeward_drive(BOARD)
        hal.advance(20)
    assert hal.command() == last_resort.homeward_drive(BOARD)
    hal.set_home(True)
    assert routine.step(hal) == 0
    assert hal.command() is None  # off, not braking
    assert hal.alarm()
    assert hal.wdt.feeds == 11


@pytest.mark.parametrize("start_ms", [0, TICKS_MAX - 5000])  # across the ticks wrap too
def test_time_cap_then_off_for_good(start_ms):
    hal = Hal(start_ms)
    routine = last_resort.LastResort(BOARD, cap_ms=1000)
    for _ in range(50):
        assert routine.step(hal) < 0
        hal.advance(20)
    hal.advance(20)
    assert routine.step(hal) == 0  # 1020 ms > the 1000 ms cap
    assert routine.timed_out
    # Stays off: not when the switch chatters, not when ticks_diff wraps.
    closed = False
    for jump in (20, 1 << 29, 1 << 29):
        hal.advance(jump)
        closed = not closed
        hal.set_home(closed)
        assert routine.step(hal) == 0
        assert hal.command() is None
    assert hal.alarm()


def test_default_cap_is_the_blind_cap():
    assert last_resort.LastResort(BOARD).cap_ms == last_resort.blind_cap_ms(BOARD)


def test_run_starts_the_watchdog_once_and_allows_ctrl_c_only_at_home():
    hal = Hal()

    def table(hal, elapsed_ms):
        hal.set_home(1000 <= elapsed_ms < 2000)  # reaches home, then bounces open

    time = Time(hal, table)
    routine = last_resort.run(hal, BOARD, time_module=time, ticks=150)
    assert time.elapsed_ms == 150 * 1000 // BOARD["control_hz"]
    assert hal.wdt.starts == 1
    assert hal.wdt.feeds == 150
    # Disabled at once, enabled at the switch, disabled again when it opened.
    assert hal.console.calls == [False, True, False]
    assert hal.command() == last_resort.homeward_drive(BOARD)  # driving again
    assert not routine.timed_out


def test_run_without_a_startable_watchdog_or_console():
    hal = Hal()
    hal.wdt = Wdt(startable=False)
    hal.console = None
    last_resort.run(hal, BOARD, time_module=Time(hal), ticks=3)
    assert hal.wdt.feeds == 3


def test_keyboard_interrupt_reaches_the_caller():
    hal = Hal()

    def interrupt(hal, elapsed_ms):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        last_resort.run(hal, BOARD, time_module=Time(hal, interrupt), ticks=5)
