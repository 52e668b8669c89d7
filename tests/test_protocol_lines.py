"""The lines the firmware formats without allocating (issue 14): boot,
telemetry, state and warning events, line_too_long, and the plain STOP
request with its reply (firmware/protocol.py, ``Protocol._send_line`` and
``Protocol._plain_stop``).

On the wire they must stay what json.dumps gave (host/client.py and
docs/protocol.md are the contract): under CPython byte for byte what
``json.dumps`` of the same dict gives; under both MicroPython interpreters
the same JSON value. Extreme values included (negative angles, the largest
small ints, the longest codes, an uptime of weeks), and no line is ever cut
short: the buffer holds the worst case, and a line that could not fit goes
out whole through json.dumps.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invtable.boards import esp32_devkitc, esp32_s3_devkitc
from invtable.firmware import app as app_mod
from invtable.firmware import protocol as proto
from invtable.firmware.controller import FAULT
from invtable.hal_sim.scenario import Scenario

BOARD = esp32_devkitc.BOARD
PROGRAM = dict(angle_mdeg=20000, hold_ms=10000, sets=1, rest_ms=0, speed_mdeg_s=4000,
               exit_pause_ms=0)
LIMITS = dict(max_angle_mdeg=20000, max_inverted_ms=60000, max_speed_mdeg_s=4000)
FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"

SMALL_64 = (1 << 62) - 1  # the unix port's largest small int
SMALL_32 = (1 << 30) - 1  # the ESP32's
INTS = [0, 1, -1, 9, 10, -10, 7, -60012, 99999, SMALL_32, -SMALL_32 - 1, SMALL_32 + 1,
        2147483647, SMALL_64, -SMALL_64 - 1, 10**30, -(10**30)]
LONGEST_STATE = max((app_mod.SETUP, "BOOT", "HOME", "WARN", "RAMP", "HOLD", "RETURN", "PAUSE",
                     "REST", FAULT), key=len)
# Uptimes as (seconds, ms remainder): boot, weeks, the seconds' cap.
UPTIMES = [(0, 0), (0, 7), (0, 999), (1, 0), (1, 7), (59, 40), (12 * 86400, 5),
           (40 * 86400, 999), (app_mod._UPTIME_S_MAX, 999)]

SPECS = {"boot": proto._BOOT_LINE, "telemetry": proto._TELEMETRY_LINE,
         "state": proto._STATE_LINE, "warning": proto._WARNING_LINE}


def _protocol():
    sim = Scenario(BOARD, PROGRAM, LIMITS, seed=1)
    sim.table.link.host_read()
    return sim.app.protocol, sim.table.link


def _line(p, link, spec, values, uptime=(0, 0)):
    """The line _send_line writes for `values` (_UPTIME: the uptime given)."""
    p.app.uptime_s, p.app.uptime_rem_ms = uptime
    for i, value in enumerate(values):
        p._vals[i] = value
    p._send_line(spec)
    return link.host_read()


def _expected(spec, values, uptime=(0, 0)):
    event, keys = spec
    obj = {"event": event}
    for key, value in zip(keys, values, strict=True):
        obj[key] = uptime[0] * 1000 + uptime[1] if value is proto._UPTIME else value
    return (json.dumps(obj) + "\n").encode()


def _values(kind, ints, strings, uptime_marker=proto._UPTIME):
    """Values for each event's keys: ints and strings taken in turn."""
    ints = list(ints)
    strings = list(strings)
    if kind == "telemetry":
        return [uptime_marker, strings[0], ints[0], ints[1], ints[2], ints[3], ints[4],
                strings[1]]
    if kind == "state":
        return [strings[0], strings[1], strings[2], uptime_marker]
    if kind == "warning":
        return [strings[0], uptime_marker]
    return [strings[0], ints[0], strings[1], strings[2], strings[3], True,
            list(app_mod._SAVED_FILES)]


@pytest.mark.parametrize("kind", list(SPECS))
@pytest.mark.parametrize("value", INTS)
def test_each_line_is_what_json_dumps_gives_for_extreme_ints(kind, value):
    p, link = _protocol()
    for uptime in UPTIMES:
        values = _values(kind, [value] * 5, ["HOLD", "imu_lost", None, "ok"])
        got = _line(p, link, SPECS[kind], values, uptime)
        assert got == _expected(SPECS[kind], values, uptime)
        assert json.loads(got) == json.loads(_expected(SPECS[kind], values, uptime))


@given(ints=st.lists(st.integers(-(1 << 64), 1 << 64), min_size=5, max_size=5),
       strings=st.lists(st.one_of(st.none(), st.text(max_size=50)), min_size=4, max_size=4),
       uptime=st.tuples(st.integers(0, app_mod._UPTIME_S_MAX), st.integers(0, 999)),
       none_int=st.integers(0, 4), flag=st.booleans())
@settings(max_examples=300, deadline=None)
def test_lines_match_json_dumps_for_any_values(ints, strings, uptime, none_int, flag):
    """Any ints, None, any text (quotes, backslashes, control and non-ASCII
    characters go through json.dumps whole): always json.dumps' bytes."""
    p, link = _protocol()
    ints[none_int] = None if flag else ints[none_int]
    for kind, spec in SPECS.items():
        values = _values(kind, ints, strings)
        assert _line(p, link, spec, values, uptime) == _expected(spec, values, uptime), kind


def _worst(kind):
    code = "x" * proto.CODE_MAX
    values = _values(kind, [-SMALL_64 - 1] * 5, [code] * 4)
    if kind == "boot":
        values[0] = proto.FIRMWARE_VERSION  # the board name is a code's length here
        values[1] = proto.PROTOCOL_VERSION
    return values


@pytest.mark.parametrize("kind", list(SPECS))
def test_the_buffer_holds_each_line_at_its_worst(kind):
    """Every number at a 64-bit small int's extreme, codes of CODE_MAX
    characters, the uptime at its cap: formatted in the buffer (no fallback),
    not one byte cut."""
    p, link = _protocol()
    values = _worst(kind)
    if kind == "boot":  # the board name: no real one is longer
        assert len(esp32_devkitc.BOARD["name"]) <= len(values[2])
        assert len(esp32_s3_devkitc.BOARD["name"]) <= len(values[2])
    uptime = (app_mod._UPTIME_S_MAX, 999)
    got = _line(p, link, SPECS[kind], values, uptime)
    assert not p._over, kind
    assert got == _expected(SPECS[kind], values, uptime)
    assert len(got) <= proto.OUT_MAX


def test_the_worst_case_lengths_are_the_ones_protocol_py_gives():
    p, link = _protocol()
    lengths = {}
    for kind in SPECS:
        lengths[kind] = len(_line(p, link, SPECS[kind], _worst(kind), (app_mod._UPTIME_S_MAX, 9)))
    assert lengths == {"boot": 354, "telemetry": 335, "state": 200, "warning": 96}
    assert max(lengths.values()) + 64 <= proto.OUT_MAX


def test_a_line_too_long_for_the_buffer_is_sent_whole_through_json():
    p, link = _protocol()
    values = _values("telemetry", [5] * 5, ["HOLD", "f" * (proto.OUT_MAX + 100)])
    got = _line(p, link, proto._TELEMETRY_LINE, values, (3, 4))
    assert p._over
    assert got == _expected(proto._TELEMETRY_LINE, values, (3, 4))
    assert len(got) > proto.OUT_MAX


def test_every_code_the_firmware_has_fits_code_max():
    """Fault, warning, end and state codes are the firmware's own string
    literals (identifiers): none is longer than CODE_MAX."""
    found = set()
    for path in FIRMWARE.glob("*.py"):
        found.update(re.findall(r'"([a-z][a-z0-9_]*)"', path.read_text(encoding="utf-8")))
    assert len(found) > 100
    assert max(len(c) for c in found) <= proto.CODE_MAX
    for state in ("BOOT", "HOME", "WARN", "RAMP", "HOLD", "RETURN", "PAUSE", "REST", "FAULT",
                  "SETUP"):
        assert len(state) <= len(LONGEST_STATE) <= proto.CODE_MAX


def test_line_too_long_is_the_error_reply_it_was():
    error = {"code": "line_too_long", "message": "line exceeds 512 bytes"}
    expected = (json.dumps({"id": None, "ok": False, "error": error}) + "\n").encode()
    assert expected == proto._LINE_TOO_LONG


# ------------------------------------------------------------- plain STOP
def _stop_reply(line, fast=True, monkeypatch=None):
    """(reply bytes, remote stop set, the fast path taken) for one request line."""
    p, link = _protocol()
    taken = []
    plain = p._plain_stop

    def spy(n):
        result = plain(n)
        taken.append(result)
        return result and fast

    p._plain_stop = spy
    data = line.encode() if isinstance(line, str) else line
    n = len(data)
    p._buf[:n] = data
    p._handle_line(n, 0)
    return link.host_read(), p.app.ctl._remote_stop, taken[0]


PLAIN = ['{"id":5,"cmd":"stop"}', '{"cmd":"stop","id":5}', '{"cmd": "stop"}',
         '{"id": 0, "cmd": "stop"}', '{"id": 2147483647, "cmd": "stop"}',
         ' \t{ "id" : "abc" ,\t"cmd" : "stop" } ', '{"id": "", "cmd": "stop"}',
         '{"id": "0123456789abcdef", "cmd": "stop"}', '{"id": "a b/c", "cmd": "stop"}',
         '{"id":1073741823,"cmd":"stop"}', '{"id":\r7,"cmd":"stop"}']
NOT_PLAIN = ['{"id":5,"cmd":"stop","x":1}', '{"id":5,"cmd":"stop",}', '{"id":5,"cmd":"status"}',
             '{"id":5,"cmd":"st\\u006fp"}', '{"i\\u0064":5,"cmd":"stop"}',
             '{"id":2147483648,"cmd":"stop"}', '{"id":9999999999,"cmd":"stop"}',
             '{"id":01,"cmd":"stop"}', '{"id":-1,"cmd":"stop"}', '{"id":1.0,"cmd":"stop"}',
             '{"id":1e3,"cmd":"stop"}', '{"id":"0123456789abcdefg","cmd":"stop"}',
             '{"id":"é","cmd":"stop"}', '{"id":"a\\"b","cmd":"stop"}', '{"id":null,"cmd":"stop"}',
             '{"id":5,"id":5,"cmd":"stop"}', '{"id":5,"cmd":"stop","cmd":"stop"}',
             '{"id":5,"cmd":"stop"} x', '{"id":5,"cmd":"stop"', '["stop"]', '{}', 'stop',
             '{"id":true,"cmd":"stop"}', '{"id":5 "cmd":"stop"}', '{"id":5,"cmd":"stop"}}',
             '{"id":[5],"cmd":"stop"}', '{"cmd":"stop","id":"\u0001"}']


@pytest.mark.parametrize("line", PLAIN)
def test_a_plain_stop_is_answered_as_the_general_path_answers_it(line):
    fast = _stop_reply(line)
    slow = _stop_reply(line, fast=False)
    assert fast[2] is True
    assert fast == (slow[0], True, True)
    assert json.loads(fast[0])["ok"] is True


@pytest.mark.parametrize("line", NOT_PLAIN)
def test_any_other_line_takes_the_general_path(line):
    reply, _stopped, taken = _stop_reply(line)
    assert taken is False
    assert reply == _stop_reply(line, fast=False)[0]


_ws = st.sampled_from(["", " ", "\t", "  ", "\r"])


@given(rid=st.one_of(st.none(), st.integers(-5, (1 << 31) + 5),
                     st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=300),
                             max_size=18)),
       id_first=st.booleans(), extra=st.booleans(), spaces=st.lists(_ws, min_size=8, max_size=8))
@settings(max_examples=400, deadline=None)
def test_the_fast_path_never_answers_differently(rid, id_first, extra, spaces):
    s = spaces
    members = [f'{s[0]}"cmd"{s[1]}:{s[2]}"stop"{s[3]}']
    if rid is not None:
        members.insert(0 if id_first else 1, f'{s[4]}"id"{s[5]}:{s[6]}{json.dumps(rid)}{s[7]}')
    if extra:
        members.append('"x":1')
    line = "{" + ",".join(members) + "}"
    fast = _stop_reply(line)
    slow = _stop_reply(line, fast=False)
    assert fast[0] == slow[0] and fast[1] == slow[1]


# ------------------------------------------------ under real MicroPython
MPY_LINES = """
import json, sys
from invtable.boards.esp32_devkitc import BOARD
from invtable.hal_sim.scenario import Scenario
from invtable.firmware import protocol as proto
from invtable.firmware import app as app_mod

sim = Scenario(BOARD, %r, %r, seed=1)
p = sim.app.protocol
link = sim.table.link
link.host_read()
CASES = json.loads(%r)
U = proto._UPTIME
SPECS = {"boot": proto._BOOT_LINE, "telemetry": proto._TELEMETRY_LINE,
         "state": proto._STATE_LINE, "warning": proto._WARNING_LINE}
bad = []
n = 0
for kind, values, uptime in CASES:
    values = [U if v == "<uptime>" else v for v in values]
    spec = SPECS[kind]
    p.app.uptime_s, p.app.uptime_rem_ms = uptime
    for i in range(len(values)):
        p._vals[i] = values[i]
    p._send_line(spec)
    got = link.host_read()
    expected = {"event": spec[0]}
    for i in range(len(values)):
        v = values[i]
        expected[spec[1][i]] = uptime[0] * 1000 + uptime[1] if v is U else v
    n += 1
    if json.loads(got) != expected or not got.endswith(b"\\n") or got.count(b"\\n") != 1:
        bad.append([kind, got.decode()])
    if len(got) > proto.OUT_MAX or (p._over and len(json.dumps(values)) < 300):
        bad.append(["over", kind, got.decode()])
print("LINES_JSON " + json.dumps({"n": n, "bad": bad}))
"""


def test_lines_are_the_same_json_under_micropython(micropython):
    """Both interpreters (their dicts keep no insertion order, so the JSON
    value is compared): extreme ints for the interpreter's word, worst-case
    codes, weeks of uptime."""
    small = SMALL_64 if micropython.word_bits == 64 else SMALL_32
    ints = [0, -1, 10, -60012, small, -small - 1, 2147483647, 10**20, -(10**20)]
    cases = []
    for kind in SPECS:
        for value in ints:
            for uptime in UPTIMES:
                values = _values(kind, [value] * 5, ["x" * proto.CODE_MAX, "imu_lost", None,
                                                     "ok"], "<uptime>")
                cases.append((kind, values, uptime))
    code = textwrap.dedent(MPY_LINES) % (PROGRAM, LIMITS, json.dumps(cases))
    out = micropython(code, timeout_s=300).stdout
    result = json.loads(next(ln[11:] for ln in out.splitlines() if ln.startswith("LINES_JSON ")))
    assert result["n"] == len(cases)
    assert result["bad"] == []


def test_a_stop_request_is_read_even_when_the_events_fail(monkeypatch):
    """Protocol.poll reads the line in a try of its own: a MemoryError while
    sending events (a full heap) does not keep a STOP request from the table."""
    sim = Scenario(BOARD, PROGRAM, LIMITS, seed=1)
    p, link = sim.app.protocol, sim.table.link
    for _ in range(100):
        sim.tick()
    link.host_read()

    def full_heap(now_ms):
        raise MemoryError("memory allocation failed")

    monkeypatch.setattr(p, "_events", full_heap)
    link.host_write(b'{"id":42,"cmd":"stop"}\n')
    sim.tick()
    assert json.loads(link.host_read()) == {"id": 42, "ok": True, "data": {"state": "HOME"}}
    assert sim.app.last_error == "protocol: MemoryError: memory allocation failed"
