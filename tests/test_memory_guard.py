"""The low-memory GO block (firmware/memory_guard.py): the guard's own rules."""

from invtable.firmware.memory_guard import MIN_FREE_BYTES, MemoryGuard


class Heap:
    def __init__(self, free):
        self.free = free
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.free


def test_measures_at_once_when_idle_then_once_a_period():
    heap = Heap(MIN_FREE_BYTES - 1)
    guard = MemoryGuard(period_ms=5000, mem_free=heap)
    assert guard.update(1000, idle=True) is True
    assert guard.free_bytes == MIN_FREE_BYTES - 1
    heap.free = MIN_FREE_BYTES
    assert guard.update(5999, idle=True) is True  # not yet: the last figure stands
    assert heap.calls == 1
    assert guard.update(6000, idle=True) is False  # exactly the minimum is enough
    assert heap.calls == 2


def test_never_measures_while_not_idle_and_keeps_its_verdict():
    heap = Heap(100)
    guard = MemoryGuard(mem_free=heap)
    assert guard.update(0, idle=False) is False  # never measured: no block
    assert heap.calls == 0
    assert guard.update(10, idle=True) is True
    heap.free = 10**6
    for t in range(0, 100_000, 1000):  # a whole session: no collection, same verdict
        assert guard.update(20 + t, idle=False) is True
    assert heap.calls == 1
    assert guard.update(200_000, idle=True) is False


def test_the_period_survives_the_tick_counter_wrapping():
    heap = Heap(100)
    guard = MemoryGuard(period_ms=5000, mem_free=heap)
    near_wrap = (1 << 30) - 1000  # the ESP32's ticks_ms wraps at 2**30
    guard.update(near_wrap, idle=True)
    guard.update(3000, idle=True)  # 4 s later, across the wrap: not yet
    assert heap.calls == 1
    guard.update(4000, idle=True)  # 5 s after, across the wrap
    assert heap.calls == 2


def test_without_gc_mem_free_it_never_blocks():
    guard = MemoryGuard()  # CPython: no gc.mem_free
    assert guard.update(0, idle=True) is False
    assert guard.free_bytes is None


# ------------------------------------------------ on the simulated table
import textwrap  # noqa: E402

from invtable.boards.esp32_devkitc import BOARD  # noqa: E402
from invtable.hal_sim import scenario  # noqa: E402

PROGRAM = dict(angle_mdeg=20000, hold_ms=10000, sets=1, rest_ms=0, speed_mdeg_s=5000,
               exit_pause_ms=0)
LIMITS = dict(max_angle_mdeg=30000, max_inverted_ms=60000, max_speed_mdeg_s=5000,
              check_in_ms=0)


def _table_with_heap(free_bytes):
    sim = scenario.Scenario(BOARD, PROGRAM, LIMITS, seed=4)
    while sim.app is None or sim.ctl.state != "HOME":
        sim.tick()
    heap = Heap(free_bytes)
    sim.app.memory = MemoryGuard(period_ms=1000, mem_free=heap)
    return sim, heap


def _press_go(sim, ms=600):
    sim.inject("go")
    end = sim.now_ms + ms
    while sim.now_ms < end:
        sim.tick()


def test_go_is_refused_while_the_heap_is_low_and_allowed_once_it_is_not():
    sim, heap = _table_with_heap(MIN_FREE_BYTES - 1)
    _press_go(sim)
    assert sim.ctl.state == "HOME" and sim.ctl.session is None
    assert "go_refused_low_memory" in sim.warnings_seen
    assert sim.app.status()["heap_free_bytes"] == MIN_FREE_BYTES - 1
    heap.free = 40_000
    end = sim.now_ms + 1500  # the next measurement at home lifts the block
    while sim.now_ms < end:
        sim.tick()
    _press_go(sim)
    assert sim.ctl.session is not None, sim.ctl.state


def test_a_session_under_way_is_never_cut_short_by_the_guard():
    sim, heap = _table_with_heap(40_000)
    _press_go(sim)
    assert sim.ctl.session is not None
    heap.free = 10  # the heap runs low during the session: nothing is measured
    while sim.ctl.session is not None:
        sim.tick()
        assert sim.now_ms < 200_000
    assert sim.ctl.end_reason == "completed"
    assert heap.calls == 1  # only the measurement at home before GO
    end = sim.now_ms + 1500
    while sim.now_ms < end:
        sim.tick()
    _press_go(sim)  # back home it is measured again: the next GO is refused
    assert sim.ctl.session is None and "go_refused_low_memory" in sim.warnings_seen


# ------------------------------------------------ on a real interpreter
UNIX_CODE = """
import gc
from invtable.boards.esp32_devkitc import BOARD
from invtable.firmware.memory_guard import MIN_FREE_BYTES, MemoryGuard
from invtable.hal_sim.scenario import Scenario

PROGRAM = %r
LIMITS = %r
sim = Scenario(BOARD, PROGRAM, LIMITS, seed=4)
while sim.app is None or sim.ctl.state != "HOME":
    sim.tick()

def run_ms(ms):
    end = sim.now_ms + ms
    while sim.now_ms < end:
        sim.tick()

def go():
    sim.inject("go")
    run_ms(300)
    return sim.ctl.session is not None

# The board's guard on this interpreter's own gc.collect and gc.mem_free,
# measuring every 100 ms; first with a minimum above all this heap has free.
gc.collect()
sim.app.memory = MemoryGuard(min_free_bytes=gc.mem_free() + (1 << 20), period_ms=100)
run_ms(200)
print("SHORT", go(), "go_refused_low_memory" in sim.warnings_seen,
      sim.app.status()["heap_free_bytes"] > 0)
sim.app.memory = MemoryGuard(period_ms=100)  # the firmware's own minimum
run_ms(200)
print("ROOM", go(), sim.app.status()["heap_free_bytes"] >= MIN_FREE_BYTES)
"""


def test_the_guard_measures_the_real_heap_under_micropython(micropython):
    """Under both real interpreters, on their own gc.mem_free: a heap with
    less free than the minimum refuses GO; with room, GO starts a session.
    (The rules themselves are tested above with a heap that is told.)"""
    code = textwrap.dedent(UNIX_CODE % (PROGRAM, LIMITS))
    out = micropython(code, timeout_s=120).stdout
    assert "SHORT False True True" in out, out
    assert "ROOM True True" in out, out
