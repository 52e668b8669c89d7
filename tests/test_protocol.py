"""The serial protocol (docs/protocol.md), in-process on the simulated table.

The firmware's App runs on a SimTable with a SimLink; requests are written to
the link's host side and the replies read back after control ticks.
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invtable.boards.esp32_devkitc import BOARD
from invtable.firmware import protocol as proto
from invtable.firmware.app import App
from invtable.firmware.auth import DEFAULT_PIN
from invtable.firmware.controller import HOME, RAMP, RETURN, WARN
from invtable.firmware.hal import Hal
from invtable.hal_sim.flash import PowerLoss, SimFlash
from invtable.hal_sim.scenario import commission_flash
from invtable.hal_sim.table import SimTable

ADMIN_PIN = "73914682"  # set on the fixture boards; the fuzzers never send it
DT_MS = 1000 // BOARD["control_hz"]


class Rig:
    """One simulated board with the firmware, a flash that survives reboots
    and a host side that parses the lines the firmware writes."""

    def __init__(self, flash=None, seed=0, board=BOARD):
        self.board = board
        self.seed = seed
        if flash is None:
            flash = commission_flash(SimFlash(), board, seed)
        self.flash = flash
        self.boot()

    def boot(self):
        """A fresh board (RAM lost) on the same flash."""
        self.table = SimTable(self.board, self.seed)
        t = self.table
        hal = Hal(
            t.clock, t.imu, t.actuator, t.go, t.stop, t.home, t.indicator, self.flash, t.wdt, t.link
        )
        self.app = App(hal, self.board)
        self.events = []
        self.replies = []
        self.raw = b""

    @property
    def link(self):
        return self.table.link

    @property
    def ctl(self):
        return self.app.ctl

    def tick(self, n=1):
        for _ in range(n):
            self.app.tick()
            self.table.step(DT_MS)
            self._collect()

    def _collect(self):
        self.raw += self.link.host_read()
        while b"\n" in self.raw:
            line, self.raw = self.raw.split(b"\n", 1)
            msg = json.loads(line)
            (self.events if "event" in msg else self.replies).append(msg)

    def send(self, obj):
        data = obj if isinstance(obj, bytes) else (json.dumps(obj) + "\n").encode()
        self.link.host_write(data)

    def request(self, obj, max_ticks=20):
        """Send one request, tick until its reply, return it."""
        before = len(self.replies)
        self.send(obj)
        for _ in range(max_ticks):
            self.tick()
            if len(self.replies) > before:
                assert len(self.replies) == before + 1
                return self.replies[-1]
        raise AssertionError(f"no reply to {obj!r}")

    def ok(self, obj):
        reply = self.request(obj)
        assert reply["ok"] is True, reply
        return reply["data"]

    def error(self, obj, code):
        reply = self.request(obj)
        assert reply["ok"] is False, reply
        assert reply["error"]["code"] == code, reply
        assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
        return reply["error"]

    def tick_until(self, cond, max_ticks=5000):
        for _ in range(max_ticks):
            if cond():
                return
            self.tick()
        raise AssertionError(f"condition not reached; state {self.ctl.state}")

    def home(self):
        self.tick_until(lambda: self.ctl.state == HOME and self.ctl.session is None)

    def press(self, action):
        self.table.inject(action)

    def settings_state(self):
        """Everything a settings change could touch: RAM and flash."""
        s = self.app.settings
        users = [s.get_user(n) for n in s.list_users()]
        files = self.flash.snapshot()
        return (
            s.active_name(),
            users,
            files.get("settings.json"),
            files.get("sessions.json"),
            self.app.log.entries(),
            self.ctl._pending,
        )


def _admin_rig():
    rig = Rig()
    rig.home()
    rig.ok({"id": 1, "cmd": "pin.change", "pin": DEFAULT_PIN, "new_pin": ADMIN_PIN})
    rig.ok({"id": 2, "cmd": "user.select", "name": "guest"})  # settings.json on flash
    return rig


@pytest.fixture
def rig():
    return _admin_rig()


_TEMPLATE = {}


def _fresh_admin_rig():
    """Like the fixture, but built once and copied (for hypothesis)."""
    if "flash" not in _TEMPLATE:
        _TEMPLATE["flash"] = _admin_rig().flash.snapshot()
    flash = SimFlash()
    flash.restore(_TEMPLATE["flash"])
    rig = Rig(flash)
    rig.home()
    return rig


# --------------------------------------------------------------------- basics
def test_boot_event_comes_first_and_says_how_it_started():
    rig = Rig()
    rig.tick()
    boot = rig.events[0]
    assert boot["event"] == "boot"
    assert boot["protocol"] == 1 and boot["firmware"] == proto.FIRMWARE_VERSION
    assert boot["board"] == BOARD["name"]
    assert boot["settings_status"] == "defaults_missing"
    assert boot["reset_fault"] is None and boot["interrupted"] is False
    assert rig.events[1] == {
        "event": "state",
        "state": "BOOT",
        "from": None,
        "fault": None,
        "t_ms": rig.events[1]["t_ms"],
    }


def test_info(rig):
    data = rig.ok({"id": "i", "cmd": "info"})
    assert data["protocol"] == 1
    assert data["board"] == "esp32_devkitc" and data["chip"] == "esp32"
    assert data["micropython"] is None  # CPython
    assert data["caps"] == {"max_angle_mdeg": 90000, "max_speed_mdeg_s": 10000,
                            "max_inverted_ms": 600000, "max_daily_inverted_ms": 1200000,
                            "grip": False}
    assert data["max_users"] == 8 and data["line_max"] == 512


def test_status_reports_pin_and_settings_status():
    rig = Rig()
    rig.home()
    data = rig.ok({"id": 1, "cmd": "status"})
    for key in (
        "state",
        "angle_mdeg",
        "target_mdeg",
        "fault",
        "warning",
        "user",
        "session",
        "sets_done",
        "inverted_ms",
        "inverted_limit_ms",
        "last_end",
        "last_error",
        "uptime_ms",
        "pin_is_default",
        "settings_status",
        "log_status",
    ):
        assert key in data
    assert data["state"] == "HOME" and data["user"] == "guest" and data["session"] is False
    assert data["pin_is_default"] is True and data["settings_status"] == "defaults_missing"
    rig.ok({"id": 2, "cmd": "pin.change", "pin": DEFAULT_PIN, "new_pin": ADMIN_PIN})
    rig.ok({"id": 3, "cmd": "user.select", "name": "guest"})  # writes settings.json
    assert rig.ok({"id": 4, "cmd": "status"})["pin_is_default"] is False
    rig.boot()
    rig.home()
    data = rig.ok({"id": 5, "cmd": "status"})
    assert data["settings_status"] == "ok" and data["pin_is_default"] is False


def test_ids_are_echoed_and_optional(rig):
    assert rig.request({"id": 0, "cmd": "info"})["id"] == 0
    assert rig.request({"id": 2147483647, "cmd": "info"})["id"] == 2147483647
    assert rig.request({"id": "x" * 16, "cmd": "info"})["id"] == "x" * 16
    assert rig.request({"id": "", "cmd": "info"})["id"] == ""
    assert rig.request({"cmd": "info"})["id"] is None


def test_crlf_and_empty_lines(rig):
    reply = rig.request(b'\r\n\n{"id": 3, "cmd": "info"}\r\n')
    assert reply["id"] == 3 and reply["ok"]
    rig.tick(5)
    assert len(rig.replies) == 3  # the fixture's two, then this one


# ---------------------------------------------------------------- user admin
def test_user_lifecycle(rig):
    data = rig.ok({"id": 1, "cmd": "user.create", "name": "ana", "pin": ADMIN_PIN})
    assert data["name"] == "ana" and data["active"] is False
    assert data["limits"]["max_angle_mdeg"] == 30000
    assert set(data["program"]) == {
        "angle_mdeg",
        "hold_ms",
        "sets",
        "rest_ms",
        "speed_mdeg_s",
        "exit_pause_ms",
    }
    assert data["progression"] == {"angle_step_mdeg": 0, "hold_step_ms": 0}
    listing = rig.ok({"id": 2, "cmd": "user.list"})
    assert listing == {
        "users": [{"name": "guest", "active": True}, {"name": "ana", "active": False}],
        "max_users": 8,
    }
    assert rig.ok({"id": 3, "cmd": "user.select", "name": "ANA"}) == {"active": "ana"}
    assert rig.ok({"id": 4, "cmd": "user.get", "name": "ana"})["active"] is True
    assert rig.app.status()["user"] == "ana"
    assert rig.ok({"id": 5, "cmd": "user.delete", "name": "ana", "pin": ADMIN_PIN}) == {}
    assert rig.ok({"id": 6, "cmd": "user.list"})["users"] == [{"name": "guest", "active": True}]
    assert rig.app.status()["user"] == "guest"


def test_program_limits_progression(rig):
    prog = rig.ok(
        {
            "id": 1,
            "cmd": "program.set",
            "name": "guest",
            "angle_mdeg": 25000,
            "hold_ms": 30000,
            "sets": 2,
        }
    )["program"]
    assert prog["angle_mdeg"] == 25000 and prog["hold_ms"] == 30000 and prog["sets"] == 2
    data = rig.ok(
        {
            "id": 2,
            "cmd": "limits.set",
            "name": "guest",
            "pin": ADMIN_PIN,
            "max_angle_mdeg": 20000,
            "max_inverted_ms": 45000,
        }
    )
    assert data["limits"]["max_angle_mdeg"] == 20000
    assert data["program"]["angle_mdeg"] == 20000  # lowered to fit
    assert data["program"]["sets"] * data["program"]["hold_ms"] <= 45000
    data = rig.ok(
        {
            "id": 3,
            "cmd": "progression.set",
            "name": "guest",
            "pin": ADMIN_PIN,
            "angle_step_mdeg": 1000,
        }
    )
    assert data["progression"] == {"angle_step_mdeg": 1000, "hold_step_ms": 0}
    # The controller's next GO uses the new values.
    program, limits = rig.ctl._pending
    assert program["angle_mdeg"] == 20000 and limits["max_inverted_ms"] == 45000
    # No fields: nothing to change, the current values come back.
    assert rig.ok({"id": 4, "cmd": "program.set", "name": "guest"})["program"] == program


def test_limits_never_above_board_caps(rig):
    err = rig.error(
        {"id": 1, "cmd": "limits.set", "name": "guest", "pin": ADMIN_PIN, "max_angle_mdeg": 90001},
        "out_of_range",
    )
    assert err["allowed"] == [1000, 90000]
    assert (
        rig.ok(
            {
                "id": 2,
                "cmd": "limits.set",
                "name": "guest",
                "pin": ADMIN_PIN,
                "max_angle_mdeg": 90000,
                "max_speed_mdeg_s": 10000,
            }
        )["limits"]["max_angle_mdeg"]
        == 90000
    )


def test_pin_change_and_log_clear(rig):
    rig.error({"id": 1, "cmd": "pin.change", "pin": ADMIN_PIN, "new_pin": "12"}, "invalid_pin")
    rig.error(
        {"id": 2, "cmd": "pin.change", "pin": ADMIN_PIN, "new_pin": DEFAULT_PIN}, "invalid_pin"
    )
    assert rig.app.auth.fails == 0  # a bad new PIN uses no attempt
    rig.ok({"id": 3, "cmd": "pin.change", "pin": ADMIN_PIN, "new_pin": "5555"})
    rig.error({"id": 4, "cmd": "log.clear", "pin": ADMIN_PIN}, "bad_pin")
    assert rig.ok({"id": 5, "cmd": "log.clear", "pin": "5555"}) == {}


def test_clock_and_log_read(rig):
    assert rig.ok({"id": 1, "cmd": "clock.set", "epoch_s": 1700000000}) == {
        "epoch_s": 1700000000, "utc_offset_s": 0}
    rig.error({"id": 2, "cmd": "clock.set", "epoch_s": 5}, "out_of_range")
    for _ in range(3):  # three sessions, each stopped during WARN
        rig.press("go")
        rig.tick_until(lambda: rig.ctl.state == WARN)
        rig.press("stop")
        rig.home()
        rig.tick(30)  # STOP released and debounced
    data = rig.ok({"id": 3, "cmd": "log.read"})
    assert data["total"] == 3 and data["status"] == "ok" and len(data["entries"]) == 3
    entry = data["entries"][0]
    assert entry["end"] == "stopped" and entry["user"] == "guest"
    assert 1700000000 <= entry["start_s"] < 1700000100
    assert rig.ok({"id": 4, "cmd": "log.read", "start": 1, "count": 1})["entries"] == [
        data["entries"][1]
    ]
    assert rig.ok({"id": 5, "cmd": "log.read", "start": 7})["entries"] == []
    ends = [e for e in rig.events if e["event"] == "session_end"]
    assert len(ends) == 3 and ends[0]["end"] == "stopped"
    rig.ok({"id": 6, "cmd": "log.clear", "pin": ADMIN_PIN})
    assert rig.ok({"id": 7, "cmd": "log.read"})["total"] == 0


# --------------------------------------------------------------- error codes
BAD_REQUESTS = [
    # (line bytes, code, id in the reply)
    (b'{"id": 1, "cmd": info}\n', "bad_json", None),
    (b"\xff\xfe{}\n", "bad_utf8", None),
    (b'{"id": 1, "cmd": "\xc0\xaf"}\n', "bad_utf8", None),  # overlong "/"
    (b'{"id": 1, "cmd": "\xed\xa0\x80"}\n', "bad_utf8", None),  # surrogate
    (b'{"id": 1, "cmd": "\xe2\x82"}\n', "bad_utf8", None),  # truncated
    (b"[1, 2]\n", "not_object", None),
    (b'"status"\n', "not_object", None),
    (b'{"id": 4}\n', "not_object", 4),
    (b'{"id": 4, "cmd": 5}\n', "not_object", 4),
    (b'{"id": -1, "cmd": "info"}\n', "bad_id", None),
    (b'{"id": true, "cmd": "info"}\n', "bad_id", None),
    (b'{"id": 1.0, "cmd": "info"}\n', "bad_id", None),
    (b'{"id": null, "cmd": "info"}\n', "bad_id", None),
    (b'{"id": 2147483648, "cmd": "info"}\n', "bad_id", None),
    (b'{"id": "12345678901234567", "cmd": "info"}\n', "bad_id", None),
    (b'{"id": [1], "cmd": "info"}\n', "bad_id", None),
    (b'{"id": 5, "cmd": "reboot"}\n', "unknown_cmd", 5),
    (b'{"id": 5, "cmd": "info", "verbose": 1}\n', "unknown_field", 5),
    (b'{"id": 5, "cmd": "program.set", "name": "guest", "angle": 5}\n', "unknown_field", 5),
    (b'{"id": 5, "cmd": "user.get"}\n', "missing_field", 5),
    (b'{"id": 5, "cmd": "limits.set", "name": "guest"}\n', "missing_field", 5),
    (b'{"id": 5, "cmd": "telemetry", "rate_hz": true}\n', "bad_type", 5),
    (b'{"id": 5, "cmd": "telemetry", "rate_hz": 5.0}\n', "bad_type", 5),
    (b'{"id": 5, "cmd": "telemetry", "rate_hz": "5"}\n', "bad_type", 5),
    (b'{"id": 5, "cmd": "user.get", "name": 3}\n', "bad_type", 5),
    (b'{"id": 5, "cmd": "program.set", "name": "guest", "sets": false}\n', "bad_type", 5),
    (b'{"id": 5, "cmd": "user.create", "name": "x", "pin": 73914682}\n', "bad_type", 5),
    (b'{"id": 5, "cmd": "telemetry", "rate_hz": 11}\n', "out_of_range", 5),
    (b'{"id": 5, "cmd": "telemetry", "rate_hz": -1}\n', "out_of_range", 5),
    (b'{"id": 5, "cmd": "program.set", "name": "guest", "angle_mdeg": 45000}\n', "out_of_range", 5),
    (
        b'{"id": 5, "cmd": "program.set", "name": "guest", "sets": 5, "hold_ms": 60000}\n',
        "out_of_range",
        5,
    ),  # 5 x 60 s > the 120 s time limit
    (b'{"id": 5, "cmd": "log.read", "count": 0}\n', "out_of_range", 5),
    (b'{"id": 5, "cmd": "log.read", "start": -1}\n', "out_of_range", 5),
    (b'{"id": 5, "cmd": "user.get", "name": "nobody"}\n', "not_found", 5),
    (b'{"id": 5, "cmd": "user.select", "name": "nobody"}\n', "not_found", 5),
    (b'{"id": 5, "cmd": "program.set", "name": "nobody", "sets": 1}\n', "not_found", 5),
    (b'{"id": 5, "cmd": "user.create", "name": "", "pin": "73914682"}\n', "bad_name", 5),
    (
        b'{"id": 5, "cmd": "user.create", "name": "abcdefghijklmnopq", "pin": "73914682"}\n',
        "bad_name",
        5,
    ),
    (b'{"id": 5, "cmd": "user.create", "name": "\\u00e9", "pin": "73914682"}\n', "bad_name", 5),
    (b'{"id": 5, "cmd": "user.create", "name": "GUEST", "pin": "73914682"}\n', "exists", 5),
    (b'{"id": 5, "cmd": "user.delete", "name": "guest", "pin": "73914682"}\n', "last_user", 5),
    (b'{"id": 5, "cmd": "user.delete", "name": "guest", "pin": "1111"}\n', "bad_pin", 5),
    (b'{"id": 5, "cmd": "pin.change", "pin": "73914682", "new_pin": "12a4"}\n', "invalid_pin", 5),
]


@pytest.mark.parametrize("line,code,req_id", BAD_REQUESTS)
def test_errors_have_stable_codes_and_change_nothing(rig, line, code, req_id):
    before = rig.settings_state()
    reply = rig.request(line)
    assert reply == {"id": req_id, "ok": False, "error": reply["error"]}
    assert reply["error"]["code"] == code, reply
    assert reply["error"]["message"]
    assert rig.settings_state() == before
    assert rig.app.crashes == 0 and rig.app.last_error is None
    assert rig.ok({"id": 99, "cmd": "info"})  # still answering


def test_out_of_range_says_the_allowed_range(rig):
    err = rig.error(
        {"id": 1, "cmd": "program.set", "name": "guest", "angle_mdeg": 45000}, "out_of_range"
    )
    assert err["allowed"] == [1000, 30000] and "1000..30000" in err["message"]
    err = rig.error({"id": 2, "cmd": "telemetry", "rate_hz": 11}, "out_of_range")
    assert err["allowed"] == [0, 10]


def test_full(rig):
    for i in range(7):
        rig.ok({"id": i, "cmd": "user.create", "name": f"u{i}", "pin": ADMIN_PIN})
    before = rig.settings_state()
    rig.error({"id": 9, "cmd": "user.create", "name": "one_more", "pin": ADMIN_PIN}, "full")
    assert rig.settings_state() == before


def test_storage_error_changes_nothing(rig):
    before = rig.settings_state()
    rig.flash.fail_next_write()
    rig.error(
        {"id": 1, "cmd": "program.set", "name": "guest", "sets": 2, "hold_ms": 30000},
        "storage_error",
    )
    assert rig.settings_state() == before
    rig.flash.fail_next_write()  # the PIN check's own write fails: refused, nothing changes
    rig.error({"id": 2, "cmd": "user.create", "name": "ana", "pin": ADMIN_PIN}, "storage_error")
    assert rig.settings_state() == before


def test_internal_error_is_reported_and_the_loop_runs_on(rig, monkeypatch):
    def boom():
        raise ZeroDivisionError("injected")

    monkeypatch.setattr(rig.app.settings, "list_users", boom)
    err = rig.error({"id": 1, "cmd": "user.list"}, "internal")
    assert "ZeroDivisionError" in err["message"]
    assert rig.app.crashes == 0 and rig.ctl.fault is None
    assert rig.ok({"id": 2, "cmd": "status"})["state"] == "HOME"


def test_broken_link_write_never_reaches_the_control_loop(rig, monkeypatch):
    def broken(data):
        raise OSError(5, "EIO")

    monkeypatch.setattr(rig.link, "write", broken)
    rig.send({"id": 1, "cmd": "status"})
    rig.tick(5)
    assert rig.app.crashes == 0 and rig.ctl.fault is None
    assert rig.app.last_error.startswith("protocol:")


# -------------------------------------------------------------- PIN lockout
def test_pin_lockout_and_its_persistence_across_a_reboot(rig):
    req = {"cmd": "user.create", "name": "ana"}
    e1 = rig.error(dict(req, id=1, pin="1111"), "bad_pin")
    e2 = rig.error(dict(req, id=2, pin="2222"), "bad_pin")
    e3 = rig.error(dict(req, id=3, pin="3333"), "bad_pin")
    assert (e1["attempts_left"], e2["attempts_left"], e3["attempts_left"]) == (2, 1, 0)
    assert e3["retry_after_ms"] == 30000
    locked = rig.error(dict(req, id=4, pin=ADMIN_PIN), "locked")  # even the right PIN
    assert 0 < locked["retry_after_ms"] <= 30000
    before = rig.settings_state()
    rig.boot()  # power cycle: RAM lost, flash kept
    rig.home()
    locked = rig.error(dict(req, id=5, pin=ADMIN_PIN), "locked")
    assert locked["retry_after_ms"] > 29000  # restarted in full, never shortened
    assert rig.settings_state()[:2] == before[:2]
    rig.tick(30000 // DT_MS)
    assert rig.ok(dict(req, id=6, pin=ADMIN_PIN))["name"] == "ana"


# ---------------------------------------------------------------- home rule
HOME_ONLY = [
    {"cmd": "user.create", "name": "ana", "pin": ADMIN_PIN},
    {"cmd": "user.delete", "name": "guest", "pin": ADMIN_PIN},
    {"cmd": "user.select", "name": "guest"},
    {"cmd": "program.set", "name": "guest", "angle_mdeg": 10000},
    {"cmd": "limits.set", "name": "guest", "pin": ADMIN_PIN, "max_angle_mdeg": 10000},
    {"cmd": "progression.set", "name": "guest", "pin": ADMIN_PIN, "angle_step_mdeg": 100},
    {"cmd": "pin.change", "pin": ADMIN_PIN, "new_pin": "5555"},
    {"cmd": "log.clear", "pin": ADMIN_PIN},
]


def test_home_rule_refuses_settings_changes_under_a_rider(rig):
    rig.press("go")
    rig.tick_until(lambda: rig.ctl.state == WARN)
    checked = set()
    fails = rig.app.auth.fails
    before = rig.settings_state()
    for state in (WARN, RAMP):
        rig.tick_until(lambda s=state: rig.ctl.state == s)
        for i, req in enumerate(HOME_ONLY):
            err = rig.error(dict(req, id=i), "busy")
            assert err["state"] == rig.ctl.state and rig.ctl.state in err["message"]
        checked.add(state)
        # Reading is fine during a session.
        assert rig.ok({"id": 50, "cmd": "status"})["session"] is True
        assert rig.ok({"id": 51, "cmd": "user.list"})
        assert rig.ok({"id": 52, "cmd": "user.get", "name": "guest"})
        assert rig.ok({"id": 53, "cmd": "log.read"}) is not None
    assert checked == {WARN, RAMP}
    assert rig.app.auth.fails == fails  # busy is decided before the PIN is looked at
    assert rig.settings_state() == before
    rig.ok({"id": 60, "cmd": "stop"})
    rig.home()
    rig.ok({"id": 61, "cmd": "user.select", "name": "guest"})


# ------------------------------------------------------------------- stop
def test_stop_is_accepted_at_home(rig):
    assert rig.ok({"id": 1, "cmd": "stop"}) == {"state": "HOME"}
    rig.tick(5)
    assert rig.ctl.state == HOME and rig.ctl.fault is None


def test_remote_stop_acts_exactly_like_a_stop_press():
    """The same session twice (same seed): STOP pressed on the button at tick
    N, or `stop` read from the serial line in tick N-1 (it acts in tick N).
    The way home must be identical, drive command by drive command."""

    def run(remote):
        rig = _fresh_admin_rig()
        rig.ok(
            {
                "id": 1,
                "cmd": "program.set",
                "name": "guest",
                "angle_mdeg": 20000,
                "exit_pause_ms": 2000,
            }
        )
        rig.press("go")
        rig.tick_until(lambda: rig.ctl.state == RAMP)
        rig.tick_until(lambda: rig.ctl.angle_mdeg > -20000)
        if remote:
            rig.send({"id": 2, "cmd": "stop"})
        rig.tick()
        if not remote:
            rig.press("stop")
        trace = []
        for _ in range(3000):
            rig.tick()
            trace.append((rig.ctl.state, rig.table.actuator.last_drive, rig.ctl.angle_mdeg))
            if rig.ctl.state == HOME:
                break
        return rig, trace

    remote, remote_trace = run(True)
    button, button_trace = run(False)
    assert remote.replies[-1]["data"] == {"state": "RAMP"}
    assert remote_trace == button_trace
    assert remote_trace[0][0] == RETURN and remote_trace[-1][0] == HOME
    assert remote.app.log.entries()[-1]["end"] == "stopped"
    states = [e["state"] for e in remote.events if e["event"] == "state"]
    assert states[-2:] == [RETURN, HOME]


@pytest.mark.parametrize(
    "line, code",
    [
        ({"id": 1, "cmd": "stop", "now": True}, "unknown_field"),  # a stray member
        ({"id": -5, "cmd": "stop"}, "bad_id"),
        ({"cmd": "stop", "id": "x" * 40}, "bad_id"),
    ],
)
def test_a_malformed_stop_still_stops_the_table(rig, line, code):
    rig.press("go")
    rig.tick_until(lambda: rig.ctl.state == RAMP)
    rig.tick(50)
    rig.error(line, code)  # the malformed request gets its error reply...
    rig.tick(2)
    assert rig.ctl.state == RETURN  # ...and the table heads home all the same


def test_stop_during_warn_cancels_the_session(rig):
    rig.press("go")
    rig.tick_until(lambda: rig.ctl.state == WARN)
    rig.ok({"id": 1, "cmd": "stop"})
    rig.tick(2)
    assert rig.ctl.state == HOME and rig.ctl.session is None
    assert rig.ctl.end_reason == "stopped"


# -------------------------------------------------------------- telemetry
@pytest.mark.parametrize("rate", [1, 5, 10])
def test_telemetry_rate(rig, rate):
    rig.ok({"id": 1, "cmd": "telemetry", "rate_hz": rate})
    start = len(rig.events)
    rig.tick(2000 // DT_MS)  # 2 s
    tele = [e for e in rig.events[start:] if e["event"] == "telemetry"]
    assert abs(len(tele) - 2 * rate) <= 1
    gaps = {b["t_ms"] - a["t_ms"] for a, b in zip(tele, tele[1:], strict=False)}
    assert gaps == {1000 // rate}
    t = tele[0]
    assert set(t) == {
        "event",
        "t_ms",
        "state",
        "angle_mdeg",
        "target_mdeg",
        "inverted_ms",
        "remaining_ms",
        "sets_done",
        "fault",
    }
    assert t["state"] == "HOME" and t["remaining_ms"] is None
    rig.ok({"id": 2, "cmd": "telemetry", "rate_hz": 0})
    start = len(rig.events)
    rig.tick(50)
    assert not [e for e in rig.events[start:] if e["event"] == "telemetry"]


def test_telemetry_during_a_session_counts_down_the_budget(rig):
    rig.ok({"id": 1, "cmd": "telemetry", "rate_hz": 10})
    rig.press("go")
    rig.tick_until(lambda: rig.ctl.state == RAMP)
    tele = [e for e in rig.events if e["event"] == "telemetry"]
    assert tele[-1]["remaining_ms"] == 120000
    assert [e for e in rig.events if e["event"] == "state"][-1]["state"] == "RAMP"


def test_warning_event_on_refused_go(rig):
    rig.press("stop_down")
    rig.tick(3)
    rig.press("go")
    rig.tick(25)
    warnings = [e for e in rig.events if e["event"] == "warning"]
    assert warnings[-1]["code"] == "go_refused_stop_pressed"
    rig.press("go")  # the same refusal again is a new event
    rig.tick(20)
    assert len([e for e in rig.events if e["event"] == "warning"]) == len(warnings) + 1


# ------------------------------------------------------- line reader bounds
def test_line_too_long_is_refused_and_discarded(rig):
    n = len(rig.replies)
    reply = rig.request(b"x" * 600 + b'{"id": 11, "cmd": "info"}\n', max_ticks=40)
    assert reply["id"] is None and reply["error"]["code"] == "line_too_long"
    rig.tick(20)  # the rest of the long line (with its embedded JSON) is dropped
    assert len(rig.replies) == n + 1
    assert rig.ok({"id": 2, "cmd": "info"})


def test_line_limit_is_512_bytes_with_the_newline(rig):
    base = b'{"id": 1, "cmd": "info"}'
    exact = base + b" " * (511 - len(base)) + b"\n"
    assert len(exact) == 512
    assert rig.request(exact, max_ticks=30)["ok"] is True
    over = base + b" " * (512 - len(base)) + b"\n"
    assert rig.request(over, max_ticks=30)["error"]["code"] == "line_too_long"
    crlf = base + b" " * (510 - len(base)) + b"\r\n"
    assert len(crlf) == 512 and rig.request(crlf, max_ticks=30)["ok"] is True


def test_at_most_64_bytes_and_one_request_per_tick(rig):
    rig.send(b"z" * 1000)
    rig.tick()
    assert rig.link.pending() == 1000 - proto.BYTES_PER_TICK
    rig.tick(1000 // 64 + 1)
    assert rig.link.pending() == 0
    rig.send(b"\n")  # ends the garbage line (it was too long: already answered)
    rig.tick()
    n = len(rig.replies)
    rig.send(b'{"id": 1, "cmd": "info"}\n{"id": 2, "cmd": "info"}\n')
    rig.tick()
    assert [r["id"] for r in rig.replies[n:]] == [1]
    rig.tick()
    assert [r["id"] for r in rig.replies[n:]] == [1, 2]


def test_reply_latency_is_one_tick(rig):
    n = len(rig.replies)
    rig.send({"id": 1, "cmd": "status"})
    rig.tick()
    assert rig.replies[n]["id"] == 1


def test_idle_poll_reads_one_byte_and_writes_nothing(rig):
    calls = []
    read = rig.link.read_byte

    def counting():
        calls.append(1)
        return read()

    rig.link.read_byte = counting
    rig.link.host_read()
    rig.app.protocol.poll(rig.table.clock.ticks_ms())
    assert len(calls) == 1 and rig.link.host_read() == b""


def test_garbage_bytes(rig):
    before = rig.settings_state()
    rig.send(bytes(range(256)) * 3 + b"\n")
    rig.tick(30)
    assert rig.app.crashes == 0 and rig.ctl.fault is None
    assert rig.settings_state() == before
    assert rig.ok({"id": 1, "cmd": "info"})


# ------------------------------------------------------------------ fuzzing
FUZZ_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@FUZZ_SETTINGS
@given(st.binary(max_size=700))
def test_fuzz_random_bytes_never_raise_nor_change_settings(data):
    rig = _fresh_admin_rig()
    before = rig.settings_state()
    rig.send(data + b"\n")
    rig.tick(len(data) // 64 + 5)
    assert rig.app.crashes == 0 and rig.ctl.fault is None
    assert rig.app.last_error is None
    assert rig.settings_state() == before
    for reply in rig.replies:
        assert reply["ok"] is False  # random bytes are never a valid request here


_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.text(alphabet="0123456789", min_size=3, max_size=9).filter(lambda s: s != ADMIN_PIN),
)
_json_value = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_field_names = st.sampled_from(
    [
        "id",
        "name",
        "pin",
        "new_pin",
        "rate_hz",
        "start",
        "count",
        "epoch_s",
        "angle_mdeg",
        "hold_ms",
        "sets",
        "max_angle_mdeg",
        "angle_step_mdeg",
        "junk",
    ]
) | st.text(max_size=8)


@FUZZ_SETTINGS
@given(
    st.sampled_from(proto.COMMANDS + ("nope", "")),
    st.dictionaries(_field_names, _json_value, max_size=5),
)
def test_fuzz_random_json_requests(cmd, fields):
    rig = _fresh_admin_rig()
    before = rig.settings_state()
    req = dict(fields)
    req["cmd"] = cmd
    assert req.get("pin") != ADMIN_PIN
    line = (json.dumps(req) + "\n").encode()
    rig.send(line)
    rig.tick(len(line) // 64 + 3)
    assert rig.app.crashes == 0 and rig.app.last_error is None
    assert len(rig.replies) == 1, rig.replies
    reply = rig.replies[0]
    if len(line) > proto.LINE_MAX:
        assert reply["error"]["code"] == "line_too_long"
    if reply["ok"] and cmd in ("program.set", "user.select", "telemetry", "clock.set", "stop"):
        return  # a valid non-admin request did what it says
    assert rig.settings_state() == before, reply


# ----------------------------------------------- settings drive the sessions
def test_go_uses_the_active_users_program(rig):
    rig.ok({"id": 1, "cmd": "user.create", "name": "ana", "pin": ADMIN_PIN})
    rig.ok(
        {"id": 2, "cmd": "program.set", "name": "ana", "angle_mdeg": 12000, "speed_mdeg_s": 2000}
    )
    rig.ok({"id": 3, "cmd": "user.select", "name": "ana"})
    rig.press("go")
    rig.tick_until(lambda: rig.ctl.state == WARN)
    session = rig.ctl.session
    assert session.angle_mdeg == 12000 and session.speed_mdeg_s == 2000
    assert rig.ok({"id": 4, "cmd": "status"})["user"] == "ana"
    rig.ok({"id": 5, "cmd": "stop"})
    rig.home()
    assert rig.app.log.entries()[-1]["user"] == "ana"


def test_explicit_set_program_wins_over_settings(rig):
    program = {
        "angle_mdeg": 5000,
        "hold_ms": 10000,
        "sets": 1,
        "rest_ms": 10000,
        "speed_mdeg_s": 5000,
        "exit_pause_ms": 0,
    }
    limits = {"max_angle_mdeg": 5000, "max_inverted_ms": 60000, "max_speed_mdeg_s": 5000}
    rig.app.set_program(program, limits, user="scenario")
    rig.ok({"id": 1, "cmd": "program.set", "name": "guest", "angle_mdeg": 9000})
    assert rig.ctl._pending == (program, limits)
    assert rig.app.status()["user"] == "scenario"


def _short_session_rig():
    rig = _fresh_admin_rig()
    rig.ok(
        {"id": 1, "cmd": "limits.set", "name": "guest", "pin": ADMIN_PIN, "max_speed_mdeg_s": 10000}
    )
    rig.ok(
        {
            "id": 2,
            "cmd": "program.set",
            "name": "guest",
            "angle_mdeg": 5000,
            "hold_ms": 10000,
            "speed_mdeg_s": 10000,
            "exit_pause_ms": 0,
        }
    )
    rig.ok(
        {
            "id": 3,
            "cmd": "progression.set",
            "name": "guest",
            "pin": ADMIN_PIN,
            "angle_step_mdeg": 2000,
            "hold_step_ms": 5000,
        }
    )
    return rig


def test_progression_after_a_completed_session_only():
    rig = _short_session_rig()
    rig.press("go")
    rig.tick_until(lambda: rig.ctl.state == RAMP)
    rig.home()
    rig.tick(5)
    assert rig.app.log.entries()[-1]["end"] == "completed"
    program = rig.ok({"id": 4, "cmd": "user.get", "name": "guest"})["program"]
    assert program["angle_mdeg"] == 7000 and program["hold_ms"] == 15000
    assert rig.ctl._pending[0]["angle_mdeg"] == 7000  # the next GO uses it
    # A stopped session does not progress.
    rig.press("go")
    rig.tick_until(lambda: rig.ctl.state == RAMP)
    rig.tick(50)
    rig.ok({"id": 5, "cmd": "stop"})
    rig.home()
    rig.tick(5)
    assert rig.app.log.entries()[-1]["end"] == "stopped"
    assert rig.ok({"id": 6, "cmd": "user.get", "name": "guest"})["program"] == program


# ------------------------------------------------------ torn flash writes
@pytest.mark.parametrize("at_byte", [0, 1, 40, 64, 65, 200, None, 10**6])
@pytest.mark.parametrize("admin", [False, True])
def test_torn_settings_save_then_reboot_keeps_settings_and_log(at_byte, admin):
    rig = _fresh_admin_rig()
    rig.press("go")  # one logged session first
    rig.tick_until(lambda: rig.ctl.state == WARN)
    rig.press("stop")
    rig.home()
    rig.tick(30)
    old = rig.settings_state()
    assert len(old[4]) == 1
    rig.flash.tear_next_write(at_byte)
    if admin:  # the tear hits the PIN check's write first
        rig.send({"id": 1, "cmd": "user.create", "name": "ana", "pin": ADMIN_PIN})
    else:
        rig.send({"id": 1, "cmd": "program.set", "name": "guest", "angle_mdeg": 9000})
    with pytest.raises(PowerLoss):
        rig.tick(5)
    rig.boot()
    rig.home()
    assert rig.app.settings_status == "ok"
    # The lost change is reported (the cut file exists even at 0 bytes).
    expected = ["auth.json" if admin else "settings.json"]
    assert rig.app.interrupted_writes == expected
    assert rig.app.status()["interrupted_writes"] == expected
    assert rig.app.log.entries() == old[4]
    assert rig.app.settings.get_user("guest") == old[1][0]
    assert rig.app.settings.list_users() == ["guest"]
    assert rig.app.auth.pin_is_default is False
    # and the board still works: the change can be made now
    assert rig.ok({"id": 2, "cmd": "user.create", "name": "ana", "pin": ADMIN_PIN})


def test_interrupted_session_is_reported_at_boot():
    rig = _fresh_admin_rig()
    rig.press("go")
    rig.tick_until(lambda: rig.ctl.state == RAMP)
    rig.boot()  # power cut mid-session
    rig.tick()
    boot = rig.events[0]
    assert boot["event"] == "boot" and boot["interrupted"] is True
    ends = [e for e in rig.events if e["event"] == "session_end"]
    assert ends and ends[0]["end"] == "interrupted"


def test_utf8_validator_matches_cpython():
    samples = [
        b"",
        b"abc",
        "é€𝄞".encode(),
        b"\xc0\x80",
        b"\xe0\x80\x80",
        b"\xf4\x90\x80\x80",
        b"\xed\xbf\xbf",
        b"\xee\x80\x80",
        b"\xf0\x9f\x98",
        b"\x80",
        b"\xf5\x80\x80\x80",
        b"a\xc3",
        b"\xef\xbb\xbf{}",
    ]
    for s in samples:
        try:
            s.decode("utf-8")
            expected = True
        except UnicodeDecodeError:
            expected = False
        assert proto.utf8_valid(s, len(s)) is expected, s


@given(st.binary(max_size=12))
def test_utf8_validator_fuzz(data):
    try:
        data.decode("utf-8")
        expected = True
    except UnicodeDecodeError:
        expected = False
    assert proto.utf8_valid(data, len(data)) is expected


# ------------------------------------------------------ under MicroPython
_MPY_CODE = """
import gc, json
from invtable.firmware.app import App
from invtable.firmware.hal import Hal
from invtable.hal_sim.flash import SimFlash
from invtable.hal_sim.table import SimTable
from invtable.boards.esp32_devkitc import BOARD

t = SimTable(BOARD, 0)
hal = Hal(t.clock, t.imu, t.actuator, t.go, t.stop, t.home, t.indicator, SimFlash(), t.wdt,
          t.link)
app = App(hal, BOARD)
def tick(n):
    for _ in range(n):
        app.tick()
        t.step(20)
tick(40)
t.link.host_read()
for r in REQUESTS:
    t.link.host_write(r)
    tick(12)
for line in t.link.host_read().split(b"\\n"):
    if line:
        m = json.loads(line)
        if "event" not in m:
            print("reply=%s,%s" % (m["id"], m.get("error", {}).get("code", "ok")))
p = app.protocol
now = t.clock.ticks_ms()
p.poll(now)
gc.collect()
gc.disable()
a = gc.mem_alloc()
for _ in range(100):
    p.poll(now)
b = gc.mem_alloc()
gc.enable()
print("idle_poll_bytes=%d" % (b - a))
print("crashes=%d" % app.crashes)
"""

_MPY_REQUESTS = [
    (b'{"id": 1, "cmd": "info"}\n', "1,ok"),
    (b'{"id": 2, "cmd": "status"}\n', "2,ok"),
    (b"\xc0\xaf\n", "None,bad_utf8"),
    (b'{"id": 3, "cmd": info}\n', "None,bad_json"),
    (b"[1]\n", "None,not_object"),
    (b'{"id": true, "cmd": "info"}\n', "None,bad_id"),
    (b'{"id": 4, "cmd": "telemetry", "rate_hz": true}\n', "4,bad_type"),
    (b'{"id": 5, "cmd": "pin.change", "pin": "0000", "new_pin": "4821"}\n', "5,ok"),
    (b'{"id": 6, "cmd": "user.create", "name": "ana", "pin": "4821"}\n', "6,ok"),
    (b'{"id": 7, "cmd": "user.create", "name": "bob", "pin": "1111"}\n', "7,bad_pin"),
    (b'{"id": 8, "cmd": "program.set", "name": "ana", "angle_mdeg": 45000}\n', "8,out_of_range"),
    (b'{"id": 9, "cmd": "user.select", "name": "ana"}\n', "9,ok"),
    (b"x" * 600 + b"\n", "None,line_too_long"),
    (b'{"id": 10, "cmd": "stop"}\n', "10,ok"),
]


def test_protocol_under_micropython_and_idle_poll_allocates_nothing(micropython):
    code = "REQUESTS = %r\n" % [r for r, _ in _MPY_REQUESTS] + _MPY_CODE
    out = micropython(code, timeout_s=300).stdout
    replies = [line.split("=", 1)[1] for line in out.splitlines() if line.startswith("reply=")]
    assert replies == [expected for _, expected in _MPY_REQUESTS]
    assert "idle_poll_bytes=0" in out.splitlines()
    assert "crashes=0" in out.splitlines()


def test_random_bytes_falls_back_without_urandom(monkeypatch):
    import os

    from invtable.firmware.app import random_bytes

    assert len(random_bytes(16)) == 16

    def missing(n):
        raise NotImplementedError

    monkeypatch.setattr(os, "urandom", missing)
    a = random_bytes(16, lambda: 1234)
    b = random_bytes(16, lambda: 1234)
    assert len(a) == 16 and a != b  # differs per call even at the same tick


# ------------------------------------------------ repeated requests (a lost reply)
def test_a_repeated_state_changing_request_is_answered_again_not_done_twice(rig):
    """A host whose reply got lost sends the very same line again: the board
    answers it with the first reply and does nothing twice."""
    create = {"id": 77, "cmd": "user.create", "name": "kim", "pin": ADMIN_PIN}
    first = rig.request(create)
    again = rig.request(create)
    assert first["ok"] is True and again == first
    assert rig.app.settings.list_users().count("kim") == 1
    assert rig.app.protocol.replayed == 1
    # The same request with a new id is a new request (and refused: it exists).
    rig.error(dict(create, id=78), "exists")


def test_a_repeated_wrong_pin_costs_one_attempt(rig):
    wrong = {"id": 90, "cmd": "log.clear", "pin": "9999"}
    first = rig.request(wrong)
    assert rig.request(wrong) == first and first["error"]["code"] == "bad_pin"
    assert rig.app.auth.fails == 1


def test_reads_are_done_again_and_only_the_last_two_changes_are_remembered(rig):
    before = rig.app.protocol.requests
    rig.ok({"id": 5, "cmd": "status"})
    rig.ok({"id": 5, "cmd": "status"})
    assert rig.app.protocol.replayed == 0 and rig.app.protocol.requests == before + 2
    for k, name in enumerate(("a1", "a2", "a3")):
        rig.ok({"id": 200 + k, "cmd": "user.create", "name": name, "pin": ADMIN_PIN})
    # The oldest of the three is forgotten: repeating it is a new request.
    rig.error({"id": 200, "cmd": "user.create", "name": "a1", "pin": ADMIN_PIN}, "exists")
    again = rig.request({"id": 202, "cmd": "user.create", "name": "a3", "pin": ADMIN_PIN})
    assert again["ok"] is True and rig.app.protocol.replayed == 1


# ------------------------------------------------------------ the console lock
def test_with_an_admin_pin_the_console_is_locked_until_maintenance_unlock(rig):
    """The admin PIN is set (not 0000): Ctrl-C cannot reach the REPL even at
    home, until maintenance.unlock with the PIN; a reboot locks it again."""
    rig.home()
    assert rig.app.console_locked() and not rig.app.console_allowed()
    rig.error({"id": 40, "cmd": "maintenance.unlock", "pin": "9999"}, "bad_pin")
    assert not rig.app.console_allowed()
    data = rig.ok({"id": 41, "cmd": "maintenance.unlock", "pin": ADMIN_PIN})
    assert data == {"console_lock": True, "console_locked": True, "maintenance_unlocked": True}
    assert rig.app.console_allowed()
    rig.press("go")  # a session: never the REPL, unlocked or not
    rig.tick_until(lambda: rig.ctl.state == WARN)
    assert not rig.app.console_allowed()
    rig.press("stop")
    rig.home()
    rig.boot()
    rig.home()
    assert not rig.app.console_allowed() and rig.ok({"id": 1, "cmd": "info"})["console_locked"]


def test_the_console_lock_can_be_turned_off_and_stays_off(rig):
    rig.home()
    rig.ok({"id": 50, "cmd": "console.lock", "pin": ADMIN_PIN, "on": 0})
    assert rig.app.console_allowed()
    rig.boot()
    rig.home()
    assert not rig.app.console_locked() and rig.app.console_allowed()
    rig.error({"id": 51, "cmd": "console.lock", "pin": ADMIN_PIN, "on": 2}, "out_of_range")


def test_with_the_factory_pin_the_lock_protects_nothing_and_is_not_in_force():
    rig = Rig()
    rig.home()
    assert rig.app.auth.pin_is_default and rig.app.settings.console_lock
    assert not rig.app.console_locked() and rig.app.console_allowed()
