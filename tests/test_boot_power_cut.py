"""A power cut while the board boots (issue 10, item 6).

The App writes the session log while it is being built: a session that a
reset interrupted is logged at boot (App._record_interrupted_session). A
power cut in that write used to escape the simulators as an uncaught
PowerLoss; now the board goes dark and boots again, and the second boot
finds the old log intact and logs the interrupted session once.
"""

import json

import pytest
from click.testing import CliRunner

from invtable.boards.esp32_devkitc import BOARD
from invtable.firmware import storage
from invtable.firmware.app import MARKER_FILE
from invtable.firmware.controller import FAULT, HOME, WARN
from invtable.firmware.sessionlog import LOG_FILE
from invtable.hal_sim import scenario
from invtable.hal_sim.serve import SimBoard
from invtable.host.cli import main

KINDS = ["hang", "power_loss"]
REPRODUCER = ["--event", "1:go", "--event", "5:torn_write"]


def _sim_run(*args):
    return CliRunner().invoke(main, ["sim", "run", *args])


def stored_log(flash):
    """The session log's entries as they are on flash (schema 2 layout)."""
    data, status = storage.load(flash, LOG_FILE)
    assert status == storage.OK and data["schema"] == 2, (status, data)
    return data["entries"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_reproducer_runs_to_the_end(kind):
    result = _sim_run(*REPRODUCER, "--event", "20:" + kind)
    assert result.exit_code == 0, result.output
    assert "final state" in result.output


@pytest.mark.parametrize("kind", KINDS)
def test_the_board_boots_again_and_ends_safe(kind):
    result = _sim_run(*REPRODUCER, "--event", "20:" + kind, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["final_state"] in (HOME, FAULT)
    assert summary["drive_off"]
    assert summary["final_angle_deg"] < -55  # back at home
    # The first boot, the one the power cut ended, and the one after it.
    assert summary["boots"] == 3
    # The interrupted session is logged exactly once, by the last boot.
    assert [e["end"] for e in summary["log"]] == ["interrupted"]


PROGRAM = dict(angle_mdeg=30000, hold_ms=45000, sets=2, rest_ms=15000, speed_mdeg_s=4000,
               exit_pause_ms=5000)
LIMITS = dict(max_angle_mdeg=30000, max_inverted_ms=150000, max_speed_mdeg_s=4000)


@pytest.mark.parametrize("kind", KINDS)
def test_the_log_is_intact_after_the_extra_reboot(kind):
    sim = scenario.Scenario(BOARD, PROGRAM, LIMITS)
    events = {1000: "go", 5000: "torn_write", 20000: kind}
    states = []
    while sim.now_ms < 60000:
        if sim.now_ms in events:
            sim.inject(events[sim.now_ms])
        sim.tick()
        states.append(sim.row()[5])
    assert sim.boots == 3
    # Dark after the power cut in the boot's log write (and, for a power
    # loss, before that boot too): POWER_OFF_MS each.
    dark_ms = states.count("OFF") * sim.dt_ms
    cuts = 2 if kind == "power_loss" else 1
    assert abs(dark_ms - cuts * scenario.POWER_OFF_MS) <= sim.dt_ms
    app = sim.app
    assert app is not None and app.interrupted
    # The cut write was reported; the old copy (here: no log yet) was used.
    assert LOG_FILE in app.interrupted_writes
    entries = stored_log(sim.flash)
    assert [e["end"] for e in entries] == ["interrupted"]
    assert app.log.entries() == entries
    assert sim.flash.read_bytes(MARKER_FILE) is None  # the session is closed
    assert sim.ctl.state in (HOME, FAULT) and not sim.ctl.power
    assert sim.table.physics.angle_deg < -55


def test_an_old_log_survives_a_power_cut_in_the_boot_write():
    sim = scenario.Scenario(BOARD, PROGRAM, LIMITS)
    for _ in range(50):  # booted, at HOME
        sim.tick()
    sim.inject("go")
    for _ in range(20):
        sim.tick()
    assert sim.ctl.state == WARN
    sim.app.log.append({"user": "guest", "start_s": None, "uptime_ms": 1, "max_angle_mdeg": 0,
                        "inverted_ms": 0, "end": "completed", "fault": None})
    for _ in range(100):
        sim.tick()
    sim.inject("torn_write")
    sim.inject("power_loss")
    for _ in range(200):  # dark, boot (cut), dark, boot
        sim.tick()
    assert sim.boots == 3 and sim.app is not None
    entries = stored_log(sim.flash)
    assert [e["end"] for e in entries] == ["completed", "interrupted"]


def test_sim_serve_boots_again_after_a_power_cut_in_the_boot_write(tmp_path):
    board = SimBoard(BOARD, str(tmp_path / "state"))
    for _ in range(50):  # booted, at HOME
        board.tick()
    board.inject("go")
    for _ in range(20):  # into WARN: the session marker is on flash
        board.tick()
    assert board.flash.read_bytes(MARKER_FILE) is not None
    board.inject("torn_write")
    board.inject("power_loss")
    for _ in range(200):  # 4 s: dark, boot (cut), dark, boot
        board.tick()
    assert board.boots == 3
    assert board.powered
    app = board.app
    assert LOG_FILE in app.interrupted_writes
    entries = stored_log(board.flash)
    assert [e["end"] for e in entries] == ["interrupted"]
    assert board.flash.read_bytes(MARKER_FILE) is None
