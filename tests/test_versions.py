"""Data that survives a new firmware (issue 13): every file on flash names its
schema; files of every earlier schema are migrated on boot, a file from a
newer firmware is never misread nor overwritten (and GO is refused until it
is resolved), and no migration loosens a limit."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_protocol import ADMIN_PIN, Rig

from invtable.boards.esp32_devkitc import BOARD
from invtable.firmware import storage
from invtable.firmware.auth import AUTH_FILE
from invtable.firmware.exposure import EXPOSURE_FILE
from invtable.firmware.sessionlog import LOG_FILE
from invtable.firmware.settings import SETTINGS_FILE, Settings
from invtable.hal_sim.flash import SimFlash
from invtable.hal_sim.scenario import commission_flash

# What the firmware before schemas wrote (schema 1 of each file).
V1_LIMITS = {"max_angle_mdeg": 45000, "max_inverted_ms": 300000, "max_speed_mdeg_s": 5000}
V1_PROGRAM = {"angle_mdeg": 40000, "hold_ms": 60000, "sets": 2, "rest_ms": 30000,
              "speed_mdeg_s": 4000, "exit_pause_ms": 10000}
V1_PROGRESSION = {"angle_step_mdeg": 0, "hold_step_ms": 0}
V1_SETTINGS = {
    "users": [
        {"name": "guest", "limits": dict(V1_LIMITS), "program": dict(V1_PROGRAM),
         "progression": dict(V1_PROGRESSION)},
        {"name": "Ann", "limits": dict(V1_LIMITS, max_inverted_ms=900000),
         "program": dict(V1_PROGRAM), "progression": dict(V1_PROGRESSION)},
    ],
    "active": "Ann",
}
V1_LOG = [{"user": "Ann", "start_s": 1700000000, "uptime_ms": 5000, "max_angle_mdeg": 40000,
           "inverted_ms": 90000, "end": "completed", "fault": None}]


def v1_flash():
    """A board's flash as the firmware before schemas left it, with PIN 4321."""
    rig = Rig()
    rig.home()
    rig.ok({"id": 1, "cmd": "pin.change", "pin": "0000", "new_pin": "4321"})
    flash = rig.flash
    auth, _ = storage.load(flash, AUTH_FILE)
    auth.pop("schema")
    storage.save(flash, AUTH_FILE, auth)
    storage.save(flash, SETTINGS_FILE, V1_SETTINGS)
    storage.save(flash, LOG_FILE, V1_LOG)
    flash.remove(EXPOSURE_FILE)
    return flash


def test_a_board_from_before_schemas_boots_with_everything_migrated():
    rig = Rig(flash=v1_flash())
    rig.home()
    app = rig.app
    assert app.settings_status == "ok" and app.log.status == "ok"
    assert app.newer_files == []
    ann = app.settings.get_user("Ann")["limits"]
    # Kept, or tightened to today's caps; the new limits take the safe defaults.
    assert ann["max_angle_mdeg"] == 45000 and ann["max_speed_mdeg_s"] == 5000
    assert ann["max_inverted_ms"] == BOARD["max_inverted_ms"]  # was 900 s
    assert ann["check_in_ms"] == 60000 and ann["max_daily_inverted_ms"] == 600000
    assert app.settings.active_name() == "Ann"
    assert [e["end"] for e in app.log.entries()] == ["completed"]
    assert app.log.entries()[0]["daily_ms"] is None
    # The old PIN still works, and the next saves write today's schemas.
    rig.ok({"id": 2, "cmd": "log.clear", "pin": "4321"})
    rig.ok({"id": 3, "cmd": "user.select", "name": "guest"})
    assert storage.load(rig.flash, SETTINGS_FILE)[0]["schema"] == 2
    assert storage.load(rig.flash, LOG_FILE)[0]["schema"] == 2
    rig.ok({"id": 4, "cmd": "pin.change", "pin": "4321", "new_pin": "5678"})
    assert storage.load(rig.flash, AUTH_FILE)[0]["schema"] == 2


def newer(flash, name):
    data, _ = storage.load(flash, name)
    if data is None or isinstance(data, list):
        data = {"entries": data or []}  # (no session logged yet)
    data["schema"] = 99
    storage.save(flash, name, data)
    return flash.read_bytes(name)


@pytest.mark.parametrize("name", [SETTINGS_FILE, AUTH_FILE, LOG_FILE, EXPOSURE_FILE])
def test_a_file_from_a_newer_firmware_is_kept_untouched_and_go_is_refused(name):
    rig = Rig()
    rig.home()
    rig.ok({"id": 1, "cmd": "pin.change", "pin": "0000", "new_pin": ADMIN_PIN})
    rig.ok({"id": 2, "cmd": "user.select", "name": "guest"})  # settings.json written
    rig.app.exposure.save(0, -1)  # exposure.json written
    before = newer(rig.flash, name)
    rig.boot()
    rig.home()
    app = rig.app
    assert app.newer_files == [name]
    assert app.status()["newer_files"] == [name]
    if name == SETTINGS_FILE:
        assert app.status()["settings_status"] == "settings_newer_version"
    # Whatever the host asks, the file stays as the newer firmware wrote it.
    for k, req in enumerate([
        {"cmd": "user.create", "name": "kim", "pin": ADMIN_PIN},
        {"cmd": "user.select", "name": "guest"},
        {"cmd": "log.clear", "pin": ADMIN_PIN},
        {"cmd": "pin.change", "pin": ADMIN_PIN, "new_pin": "2468"},
    ]):
        rig.request(dict(req, id=10 + k))
    rig.press("go")
    rig.tick(50)
    assert rig.ctl.warning == "go_refused_newer_data"
    assert rig.ctl.state == "HOME" and rig.ctl.session is None
    assert rig.flash.read_bytes(name) == before


def test_a_newer_settings_file_refuses_changes_with_its_own_code():
    rig = Rig()
    rig.home()
    rig.ok({"id": 1, "cmd": "pin.change", "pin": "0000", "new_pin": ADMIN_PIN})
    rig.ok({"id": 2, "cmd": "user.select", "name": "guest"})
    newer(rig.flash, SETTINGS_FILE)
    rig.boot()
    rig.home()
    error = rig.error({"id": 3, "cmd": "user.create", "name": "kim", "pin": ADMIN_PIN},
                      "newer_version")
    assert "newer firmware" in error["message"]


V1_RANGES = {"max_angle_mdeg": (1000, 90000), "max_inverted_ms": (10000, 900000),
             "max_speed_mdeg_s": (1000, 10000)}


@st.composite
def v1_users(draw):
    limits = {k: draw(st.integers(lo, hi)) for k, (lo, hi) in V1_RANGES.items()}
    program = dict(V1_PROGRAM, angle_mdeg=draw(st.integers(1000, limits["max_angle_mdeg"])),
                   speed_mdeg_s=draw(st.integers(1000, limits["max_speed_mdeg_s"])),
                   hold_ms=draw(st.integers(10000, min(600000, limits["max_inverted_ms"]))),
                   sets=1)
    return {"name": "u", "limits": limits, "program": program,
            "progression": dict(V1_PROGRESSION)}


@settings(max_examples=100, deadline=None)
@given(v1_users())
def test_no_migration_loosens_a_limit(user):
    flash = SimFlash()
    storage.save(flash, SETTINGS_FILE, {"users": [user], "active": "u"})
    s = Settings(flash, BOARD)
    assert s.load() == "ok"
    migrated = s.get_user("u")
    for key, old in user["limits"].items():
        assert migrated["limits"][key] <= old
        assert migrated["limits"][key] <= BOARD.get(key, old)
    assert migrated["limits"]["check_in_ms"] > 0  # check-ins on
    assert migrated["limits"]["max_daily_inverted_ms"] <= BOARD["max_daily_inverted_ms"]
    p = migrated["program"]
    assert p["angle_mdeg"] <= migrated["limits"]["max_angle_mdeg"]
    assert p["hold_ms"] * p["sets"] <= migrated["limits"]["max_inverted_ms"]
    assert json.loads(json.dumps(migrated)) == migrated


def test_the_calibration_from_a_newer_firmware_is_reported_too():
    flash = commission_flash(SimFlash(), BOARD)
    doc, _ = storage.load(flash, "calib.json")
    doc["schema"] = 99
    storage.save(flash, "calib.json", doc)
    rig = Rig(flash=flash)
    rig.home()
    assert "calib.json" in rig.app.newer_files
    assert rig.app.calib_status == "newer_version"
