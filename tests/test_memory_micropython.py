"""Memory on the board (issue 14): what the firmware does not need resident it
lets go of, and the heap after boot and over a short soak stays within its
budget, on the 32-bit interpreter (the npm WebAssembly build).

The figures themselves are benchmarks (``bench/boot_heap.py``, ``bench/soak.py``,
docs/performance.md); these tests fail when they regress. The budgets are the
figures measured when they were written plus a few KB: raising one is a
decision to make consciously (the ESP32 has about 100 KB for everything).
The issue's goals (48 KB after boot, a soak at 100 KB) are not met yet:
those tests are strict xfails, so meeting them turns them into failures that
ask for the budgets to come down.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # bench/ is run from the repo root, not installed
    sys.path.insert(0, str(REPO))

# Measured on the virtual board's boot (bench/boot_heap.py, firmware as .mpy,
# -O3 as deploy compiles it): 108.8 KB (firmware 104.2 KB + the bare
# interpreter 4.7 KB); it was 107.4 KB before the allocation-free lines (+4.2
# KB of protocol code), the boot loader and the memory guard, and -O3 (-3.7 KB).
BOOT_HEAP_BUDGET_BYTES = 112 * 1024
BOOT_HEAP_GOAL_BYTES = 48 * 1024
# The short soak: a used board (full session log, 8 users), 3 simulated
# minutes with a session in them. Measured: 121.3 KB live after boot, the
# largest tick (the session's end: the full log saved) 18.3 KB.
SOAK_MINUTES = 3
SOAK_BUDGET_KB = 150
SOAK_LIVE_BUDGET_BYTES = 124 * 1024
SOAK_GOAL_KB = 100

RELEASE = """
import sys
from invtable.firmware import compat
import invtable.firmware.stall as first
import invtable.firmware as package
compat.release_module("invtable.firmware.stall")
print("gone", "invtable.firmware.stall" not in sys.modules, not hasattr(package, "stall"))
import invtable.firmware.stall as second
print("again", second is not first, second.StallMonitor is not first.StallMonitor)
compat.release_module("no.such.module")  # nothing to do
print("ok")
"""


def test_release_module_lets_go_and_a_new_import_loads_it_again(micropython):
    out = micropython(RELEASE).stdout.split("\n")
    assert "gone True True" in out
    assert "again True True" in out
    assert "ok" in out


def test_release_module_does_nothing_under_cpython():
    from invtable.firmware import compat, stall

    compat.release_module("invtable.firmware.stall")
    assert sys.modules["invtable.firmware.stall"] is stall


SETUP_RELEASE = """
import sys
from invtable.boards.esp32_devkitc import BOARD
from invtable.hal_sim.scenario import Scenario

sim = Scenario(BOARD, None, None, seed=0)
for _ in range(100):
    sim.tick()
name = "invtable.firmware.commission"
print("before", name in sys.modules)
app = sim.app
print("start", app.start_setup())
print("loaded", name in sys.modules)
app.setup.cancel()
for _ in range(10):
    sim.tick()
print("ended", app.setup is None, app.setup_last["error"]["code"])
print("released", name not in sys.modules)
print("again", app.start_setup(), name in sys.modules)
app.setup.cancel()
for _ in range(200):
    sim.tick()
print("state", app.state_name(), app.crashes)
"""


def test_commissioning_code_is_let_go_when_setup_ends(micropython):
    """firmware/commission.py is imported when setup starts and let go of
    when it ends (about 16 KB on the board); a second setup loads it again."""
    out = micropython(textwrap.dedent(SETUP_RELEASE)).stdout.split("\n")
    assert "before False" in out
    assert "start None" in out
    assert "loaded True" in out
    assert "ended True cancelled" in out
    assert "released True" in out
    assert "again None True" in out
    assert "state HOME 0" in out


BOOT_ONLY = """
import sys
from invtable.boards import validate  # as main.py imports it on the board: flat
sys.modules["validate"] = validate
sys.modules["chips"] = sys.modules["invtable.boards.chips"]
from invtable.boards.esp32_devkitc import BOARD
from invtable.firmware import app as app_module
from invtable.hal_sim.scenario import Scenario

sim = Scenario(BOARD, None, None, seed=0)
app_module.run(sim.app.hal, BOARD, app=sim.app, time_module=sim.table.clock, ticks=0)
print("released", "validate" not in sys.modules, "chips" not in sys.modules)
"""


@pytest.mark.interpreter("unix", reason="one interpreter is enough for this bookkeeping")
def test_the_board_loop_lets_go_of_the_board_file_validator(micropython):
    """main.py imports validate.py and chips.py (source) only to check the
    board file: once the loop starts they are let go of (about 9 KB)."""
    out = micropython(textwrap.dedent(BOOT_ONLY)).stdout.split("\n")
    assert "released True True" in out


@pytest.fixture(scope="module")
def boot_heap(micropython_setup):
    from bench import boot_heap as bh

    return bh.measure("mpy")


def test_heap_after_a_board_boot_stays_within_its_budget(boot_heap):
    """The virtual board's boot as deployed (.mpy), on the 32-bit interpreter."""
    assert boot_heap["interpreter"].endswith("32-bit")
    assert boot_heap["state_after_boot"] in ("BOOT", "HOME")
    assert boot_heap["resets"] == 0
    assert "commission" not in boot_heap["modules_loaded"]  # only when setup starts
    assert boot_heap["heap_after_boot_bytes"] <= BOOT_HEAP_BUDGET_BYTES, boot_heap


@pytest.mark.xfail(strict=True, reason="issue 14: the firmware's code sits in the heap "
                   "(.mpy bytecode, qstrs); docs/performance.md says what would meet it")
def test_heap_after_a_board_boot_meets_the_goal(boot_heap):
    assert boot_heap["heap_after_boot_bytes"] <= BOOT_HEAP_GOAL_BYTES


def _soak(heap_kb):
    from bench import soak

    return soak.run(hours=SOAK_MINUTES / 60, seed=3, heap_kb=heap_kb, timeout_s=120,
                    fault_chance=1.0)


def test_short_soak_stays_within_its_heap_budget(micropython_setup):
    """A few simulated minutes of a used board on the 32-bit interpreter: a
    status request every second, a session with telemetry at 10 Hz and a
    fault, the session log's save at its end: no tick over the budget, no
    crash, every request answered."""
    result = _soak(SOAK_BUDGET_KB)
    board, world = result["board"], result["world"]
    assert result["ok"], result
    assert board["heap"]["live_after_boot_bytes"] <= SOAK_LIVE_BUDGET_BYTES, board["heap"]
    assert world["sessions_started"] == 1
    assert board["link"]["telemetry_lines"] > 100
    assert board["link"]["replies_ok"] >= world["status_requests"] - 2
    assert board["heap"]["collections"] > 0


@pytest.mark.xfail(strict=True, reason="issue 14: a used board needs about 120 KB live "
                   "after boot (docs/performance.md)")
def test_short_soak_fits_an_esp32_heap(micropython_setup):
    assert _soak(SOAK_GOAL_KB)["ok"]
