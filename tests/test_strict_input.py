"""Strict input: ASCII-only PIN digits, and no duplicate keys in a request.

``str.isdigit`` accepts other scripts' digits under CPython but not under
MicroPython, so a PIN like "١٢٣٤" (Arabic-Indic) was accepted by the
simulator only. ``json.loads`` keeps the last value of a repeated key on both
interpreters, so ``{"cmd": "stop", "cmd": "status"}`` silently became a
status request. Both are refused now, the same way on CPython and on the
board; STOP is obeyed even from a request with repeated keys.
"""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_protocol import ADMIN_PIN, Rig, _admin_rig

from invtable.boards.esp32_devkitc import BOARD
from invtable.firmware import auth
from invtable.firmware import protocol as proto
from invtable.firmware.auth import DEFAULT_PIN
from invtable.firmware.controller import RAMP, RETURN
from invtable.hal_sim.flash import SimFlash
from invtable.hal_sim.scenario import commission_flash

NON_ASCII_DIGIT_PINS = [
    "\u0661\u0662\u0663\u0664",  # Arabic-Indic 1234
    "\u0967\u0968\u0969\u096a\u096b",  # Devanagari 12345
    "\uff11\uff12\uff13\uff14",  # fullwidth 1234
    "\u00b9\u00b2\u00b3\u2074",  # superscripts 1234
    "12\u0663\u0664",  # mixed
]


@pytest.fixture
def rig():
    return _admin_rig()


# ------------------------------------------------------------------ PIN digits
@pytest.mark.parametrize("pin", NON_ASCII_DIGIT_PINS)
def test_pin_format_accepts_ascii_digits_only(pin):
    assert pin.isdigit()  # what CPython's isdigit says (MicroPython's does not)
    assert not auth.ascii_digits(pin)
    assert not auth.pin_format_ok(pin)


@pytest.mark.parametrize("text, ok", [
    ("0000", True), ("73914682", True), ("", False), ("12a4", False), ("12 4", False),
    ("-123", False), ("+123", False), ("1.23", False), ("/123", False), (":123", False),
])
def test_ascii_digits(text, ok):
    assert auth.ascii_digits(text) is ok


@pytest.mark.parametrize("pin", NON_ASCII_DIGIT_PINS)
def test_a_new_pin_in_another_script_is_refused_and_changes_nothing(rig, pin):
    before = rig.settings_state()
    auth_file = rig.flash.read_bytes("auth.json")
    error = rig.error({"id": 3, "cmd": "pin.change", "pin": ADMIN_PIN, "new_pin": pin},
                      "invalid_pin")
    assert "0-9" in error["message"]
    assert rig.settings_state() == before
    assert rig.flash.read_bytes("auth.json") == auth_file
    # The old PIN still works.
    rig.ok({"id": 4, "cmd": "user.create", "name": "ana", "pin": ADMIN_PIN})


def test_the_admin_pin_in_another_script_is_a_wrong_pin(rig):
    arabic = "".join(chr(0x0660 + int(d)) for d in ADMIN_PIN)
    error = rig.error({"id": 3, "cmd": "user.create", "name": "ana", "pin": arabic}, "bad_pin")
    assert error["attempts_left"] == auth.FREE_ATTEMPTS - 1
    assert rig.app.settings.list_users() == ["guest"]


def test_a_fresh_board_refuses_a_non_ascii_new_pin():
    fresh = Rig()
    fresh.home()
    fresh.error(
        {"id": 1, "cmd": "pin.change", "pin": DEFAULT_PIN, "new_pin": NON_ASCII_DIGIT_PINS[0]},
        "invalid_pin",
    )
    assert fresh.app.auth.pin_is_default


# ------------------------------------------------------------- duplicate keys
DUPLICATES = [
    # (line, the key named, the id echoed)
    (b'{"id": 5, "cmd": "user.select", "name": "guest", "name": "nobody"}\n', "name", 5),
    (b'{"id": 5, "cmd": "info", "cmd": "status"}\n', "cmd", 5),
    (b'{"id": 1, "id": 2, "cmd": "info"}\n', "id", None),
    (b'{"id": 5, "cmd": "info", "\\u0063md": "status"}\n', "cmd", 5),  # the same key, escaped
    (b'{"id": "a", "cmd": "telemetry", "rate_hz": 1, "rate_hz": 10}\n', "rate_hz", "a"),
    (
        b'{"id": 5, "cmd": "limits.set", "name": "guest", "pin": "1111", "pin": "'
        + ADMIN_PIN.encode()
        + b'", "max_angle_mdeg": 20000}\n',
        "pin",
        5,
    ),
]


@pytest.mark.parametrize("line, key, req_id", DUPLICATES)
def test_duplicate_keys_are_refused_and_change_nothing(rig, line, key, req_id):
    before = rig.settings_state()
    fails = rig.app.auth.status()["fails"]
    reply = rig.request(line)
    assert reply["ok"] is False and reply["id"] == req_id, reply
    assert reply["error"]["code"] == "duplicate_key"
    assert repr(key) in reply["error"]["message"]
    assert rig.settings_state() == before
    assert rig.app.auth.status()["fails"] == fails  # no PIN was even checked
    assert rig.app.crashes == 0 and rig.app.last_error is None
    assert rig.ok({"id": 99, "cmd": "info"})  # still answering


@pytest.mark.parametrize("line, code", [
    # Only the top-level object's keys count; these are other errors.
    (b'{"id": 5, "cmd": "info", "x": {"a": 1, "a": 2}}\n', "unknown_field"),
    (b'{"id": 5, "cmd": "user.get", "name": "\\"name\\": 1, \\"name\\""}\n', "not_found"),
    (b'{"id": 5, "cmd": "user.get", "name": "}, \\"cmd\\": \\"x"}\n', "not_found"),
])
def test_look_alike_duplicates_are_not_duplicates(rig, line, code):
    reply = rig.request(line)
    assert reply["error"]["code"] == code, reply


def test_distinct_keys_still_work(rig):
    assert rig.ok({"id": 7, "cmd": "telemetry", "rate_hz": 0}) == {"rate_hz": 0}


STOPS = [
    b'{"id": 1, "cmd": "stop", "cmd": "stop"}\n',
    b'{"id": 1, "cmd": "stop", "cmd": "status"}\n',  # json.loads keeps "status"
    b'{"id": 1, "cmd": "status", "\\u0063md": "st\\u006fp"}\n',
    b'{"id": 1, "id": 2, "cmd": "stop"}\n',
    b'{"cmd": "stop", "now": 1, "now": 2}\n',
]


@pytest.mark.parametrize("line", STOPS)
def test_a_duplicate_key_stop_still_stops_the_table(rig, line):
    rig.press("go")
    rig.tick_until(lambda: rig.ctl.state == RAMP)
    rig.tick(50)
    reply = rig.request(line)
    assert reply["ok"] is False and reply["error"]["code"] == "duplicate_key"
    rig.tick(2)
    assert rig.ctl.state == RETURN  # the table heads home all the same


# -------------------------------------------------------------- the scanner
_keys = st.sampled_from(["id", "cmd", "name", "pin", "a", "\u00e9", "k\"q", "b\\s", "x y"])
_scalars = st.one_of(
    st.integers(-(10**6), 10**6), st.booleans(), st.none(), st.sampled_from(["stop", "status"]),
    st.text(max_size=6),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(_keys, inner, max_size=3)),
    max_leaves=6,
)


def _encode_key(key, escape):
    if escape:
        return "\"" + "".join(f"\\u{ord(c):04x}" for c in key) + "\""
    return json.dumps(key)


@given(st.lists(st.tuples(_keys, _values, st.booleans()), max_size=6),
       st.sampled_from(["", " ", "\t ", "\r\n"]))
def test_scanner_agrees_with_cpython_json(members, space):
    text = "{" + space + ("," + space).join(
        _encode_key(k, esc) + space + ":" + space + json.dumps(v) for k, v, esc in members
    ) + space + "}"
    seen = []
    expected_dup = None
    expected_stop = False

    def pairs_hook(pairs):
        return pairs

    for key, value in json.loads(text, object_pairs_hook=pairs_hook):
        if key in seen and expected_dup is None:
            expected_dup = key
        seen.append(key)
        if key == "cmd" and value == "stop":
            expected_stop = True
    raw = bytearray(text.encode())
    assert proto.scan_members(raw, len(raw)) == (expected_dup, expected_stop)


# ------------------------------------------------------------ under MicroPython
_MPY_CODE = """
import json
from invtable.firmware import auth
from invtable.firmware.app import App
from invtable.firmware.hal import Hal
from invtable.hal_sim.flash import SimFlash
from invtable.hal_sim.table import SimTable
from invtable.boards.esp32_devkitc import BOARD

for pin in PINS:
    print("pin=%r,%r" % (auth.pin_format_ok(pin), auth.pin_format_ok(pin.encode().decode())))
flash = SimFlash()
flash.restore(FILES)
t = SimTable(BOARD, 0)
hal = Hal(t.clock, t.imu, t.actuator, t.go, t.stop, t.home, t.indicator, flash, t.wdt, t.link)
app = App(hal, BOARD)
app.set_program(PROGRAM, LIMITS)

def tick(n):
    for _ in range(n):
        app.tick()
        t.step(20)

def replies():
    out = []
    for line in t.link.host_read().split(b"\\n"):
        if line:
            m = json.loads(line)
            if "event" not in m:
                out.append("%s,%s" % (m["id"], m.get("error", {}).get("code", "ok")))
    return out

tick(60)
t.link.host_read()
for r in REQUESTS:
    t.link.host_write(r)
    tick(3)
for r in replies():
    print("reply=" + r)
for line in STOPS:
    t.inject("go")
    tick(200)
    before = app.ctl.state
    t.link.host_write(line)
    tick(3)
    print("stop=%s,%s,%s" % (before, app.ctl.state, ";".join(replies())))
    tick(2500)
    print("home=%s" % app.ctl.state)
print("crashes=%d" % app.crashes)
"""


def test_strict_input_under_micropython(micropython):
    files = commission_flash(SimFlash(), BOARD).snapshot()
    program = dict(angle_mdeg=10000, hold_ms=2000, sets=1, rest_ms=0, speed_mdeg_s=5000,
                   exit_pause_ms=0)
    limits = dict(max_angle_mdeg=10000, max_inverted_ms=60000, max_speed_mdeg_s=5000)
    requests = [
        b'{"id": 1, "cmd": "pin.change", "pin": "0000", "new_pin": "'
        + NON_ASCII_DIGIT_PINS[0].encode()
        + b'"}\n',
        b'{"id": 2, "cmd": "info", "cmd": "status"}\n',
        b'{"id": 3, "id": 4, "cmd": "info"}\n',
        b'{"id": 5, "cmd": "info", "\\u0063md": "status"}\n',
        b'{"id": 6, "cmd": "info", "x": {"a": 1, "a": 2}}\n',
        b'{"id": 7, "cmd": "info"}\n',
    ]
    stops = [STOPS[1], STOPS[2]]
    code = (
        f"PINS = {NON_ASCII_DIGIT_PINS + ['1234']!r}\nFILES = {files!r}\n"
        f"PROGRAM = {program!r}\nLIMITS = {limits!r}\n"
        f"REQUESTS = {requests!r}\nSTOPS = {stops!r}\n" + _MPY_CODE
    )
    out = micropython(code, timeout_s=300).stdout
    lines = out.splitlines()
    pins = [ln.split("=", 1)[1] for ln in lines if ln.startswith("pin=")]
    assert pins == ["False,False"] * len(NON_ASCII_DIGIT_PINS) + ["True,True"], out
    replies = [ln.split("=", 1)[1] for ln in lines if ln.startswith("reply=")]
    assert replies == [
        "1,invalid_pin",
        "2,duplicate_key",
        "None,duplicate_key",
        "5,duplicate_key",
        "6,unknown_field",
        "7,ok",
    ], out
    stopped = [ln.split("=", 1)[1] for ln in lines if ln.startswith("stop=")]
    assert stopped == ["RAMP,RETURN,1,duplicate_key"] * 2, out
    assert [ln for ln in lines if ln.startswith("home=")] == ["home=HOME"] * 2, out
    assert "crashes=0" in lines, out
