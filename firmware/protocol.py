"""The serial protocol: JSON lines over ``hal.link`` (contract: docs/protocol.md).

``Protocol.poll(now_ms)`` runs once per control tick, after the control step:

* it reads at most ``BYTES_PER_TICK`` bytes into a preallocated line buffer
  and handles at most one complete line (request) per tick, so serial input
  costs the loop a bounded amount of work;
* a line longer than ``LINE_MAX`` bytes (newline included) is answered with
  ``line_too_long`` as soon as it overflows and discarded up to its newline;
* it writes the events (``boot``, ``state``, ``warning``, ``session_end``,
  ``telemetry``) that became due.

Allocation (proved with ``heap_lock`` on the unix port,
tests/test_heap_lock_unix.py): the ``telemetry``, ``state`` and ``warning``
lines, ``line_too_long`` and a plain STOP request with its reply allocate
nothing: they are formatted into one preallocated buffer (``OUT_MAX``
bytes, in json.dumps' layout) and written with ``link.write_buf`` where the
link has it. Any other request allocates (json.loads, the reply's dict and
json.dumps): a measured bound per kind, bench/heap_tick.py. A line that would
not fit the buffer (it cannot, for the values the firmware has; a test sizes
it) goes out through json.dumps instead, never truncated. Any exception while
handling a request becomes an ``internal`` error reply; nothing ever
propagates to the control loop.

Validation order for a request: UTF-8, JSON, object, a repeated ``id``,
``id``, any other repeated member (``duplicate_key``), ``cmd``, unknown and
missing fields, argument types, then the ``home`` rule (``busy``), then the
admin PIN, then the operation itself (``Settings`` checks ranges and names).
Every check runs before anything changes; ``Settings`` saves atomically and
only then updates RAM, so an error reply means nothing changed (a wrong PIN
is counted by ``Auth``, by design).
"""

import json
import sys

from .auth import AuthError
from .compat import const, ticks_diff
from .controller import HOME
from .program import DEFAULT_MAX_INVERTED_MS
from .settings import (
    LIMIT_FIELDS,
    MAX_USERS,
    PROGRAM_FIELDS,
    PROGRESSION_FIELDS,
    SettingsError,
)

PROTOCOL_VERSION = 1
FIRMWARE_VERSION = "0.1.0"
LINE_MAX = const(512)  # bytes per request line, newline included
BYTES_PER_TICK = const(64)  # serial bytes read per control tick at most
ID_MAX = 2147483647
_ID_MAX_DIGITS = b"2147483647"
ID_STR_MAX = 16
# The preallocated buffer of the lines formatted without allocating. At
# their worst (every number at a 64-bit small int's extreme, codes and the
# board name of CODE_MAX characters, every file interrupted) boot is 354
# bytes, telemetry 335, state 200, warning 96 (tests/test_protocol_lines.py).
OUT_MAX = const(448)
CODE_MAX = 40  # the longest code such a line is sized for (fault, warning, state)
_COUNT_MAX = const(1 << 29)  # counters stop here: a small int on the ESP32
TELEMETRY_MAX_HZ = 10
LOG_READ_MAX = 10
EPOCH_MIN_S = 946684800  # 2000-01-01: anything earlier is a host without a clock
EPOCH_MAX_S = 4102444800  # 2100-01-01

_NL = const(10)
_CR = const(13)

# Argument kinds.
_INT = "int"
_STR = "str"

# cmd -> (handler name, required {field: kind}, optional {field: kind}, home, admin)
_NO_ARGS = {}


def _int_fields(table):
    out = {}
    for field in table:
        out[field[0]] = _INT
    return out


_COMMANDS = {
    "info": ("_cmd_info", _NO_ARGS, _NO_ARGS, False, False),
    "status": ("_cmd_status", _NO_ARGS, _NO_ARGS, False, False),
    "stop": ("_cmd_stop", _NO_ARGS, _NO_ARGS, False, False),
    "telemetry": ("_cmd_telemetry", {"rate_hz": _INT}, _NO_ARGS, False, False),
    "user.list": ("_cmd_user_list", _NO_ARGS, _NO_ARGS, False, False),
    "user.get": ("_cmd_user_get", {"name": _STR}, _NO_ARGS, False, False),
    "user.create": ("_cmd_user_create", {"name": _STR, "pin": _STR}, _NO_ARGS, True, True),
    "user.delete": ("_cmd_user_delete", {"name": _STR, "pin": _STR}, _NO_ARGS, True, True),
    "user.select": ("_cmd_user_select", {"name": _STR}, _NO_ARGS, True, False),
    "program.set": (
        "_cmd_program_set",
        {"name": _STR},
        _int_fields(PROGRAM_FIELDS),
        True,
        False,
    ),
    "limits.set": (
        "_cmd_limits_set",
        {"name": _STR, "pin": _STR},
        _int_fields(LIMIT_FIELDS),
        True,
        True,
    ),
    "progression.set": (
        "_cmd_progression_set",
        {"name": _STR, "pin": _STR},
        _int_fields(PROGRESSION_FIELDS),
        True,
        True,
    ),
    "pin.change": ("_cmd_pin_change", {"pin": _STR, "new_pin": _STR}, _NO_ARGS, True, True),
    "log.read": ("_cmd_log_read", _NO_ARGS, {"start": _INT, "count": _INT}, False, False),
    "log.clear": ("_cmd_log_clear", {"pin": _STR}, _NO_ARGS, True, True),
    "clock.set": ("_cmd_clock_set", {"epoch_s": _INT}, {"utc_offset_s": _INT}, False, False),
    # The console lock (App.console_allowed): the admin turns it on or off, and
    # opens the REPL for one maintenance session (until the next reboot).
    "console.lock": ("_cmd_console_lock", {"pin": _STR, "on": _INT}, _NO_ARGS, True, True),
    "maintenance.unlock": ("_cmd_maintenance_unlock", {"pin": _STR}, _NO_ARGS, True, True),
    # Commissioning (firmware/commission.py): start needs the admin PIN and
    # the table at rest at home (checked by App.start_setup); cancel is
    # always allowed, as STOP is.
    "setup.start": ("_cmd_setup_start", {"pin": _STR}, _NO_ARGS, False, True),
    "setup.status": ("_cmd_setup_status", _NO_ARGS, _NO_ARGS, False, False),
    "setup.level": ("_cmd_setup_level", {"angle_mdeg": _INT, "where": _STR}, _NO_ARGS, False,
                    False),
    "setup.cancel": ("_cmd_setup_cancel", _NO_ARGS, _NO_ARGS, False, False),
}
COMMANDS = tuple(sorted(_COMMANDS))
# Requests that only read (or, like stop and telemetry, do the same however
# often they come): a repeat is simply done again. Any other request that
# repeats one of the last _REPLAYS exactly (the same id and the same line) is
# answered with its first reply, not done twice: a host that lost the reply
# sends the same request again.
_READ_ONLY = ("info", "status", "stop", "telemetry", "user.list", "user.get", "log.read",
              "setup.status")
_REPLAYS = const(2)


class ProtocolError(Exception):
    """A refused request: stable ``code``, human ``message``, extra members."""

    def __init__(self, code, message, details=None):
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.details = details


def _is_int(value):
    # bool is an int in CPython: never accept it as a number.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_range(field, value, lo, hi):
    if value < lo or value > hi:
        raise ProtocolError(
            "out_of_range",
            "%s must be %d..%d (got %d)" % (field, lo, hi, value),
            {"allowed": [lo, hi]},
        )
    return value


def utf8_valid(buf, n):
    """True if buf[0:n] is well-formed UTF-8 (no overlongs, surrogates or
    code points above U+10FFFF). Allocation-free; portable (MicroPython's
    decoder does not check everything)."""
    i = 0
    while i < n:
        b = buf[i]
        if b < 0x80:
            i += 1
            continue
        if 0xC2 <= b <= 0xDF:
            need = 1
            lo = 0x80
            hi = 0xBF
        elif 0xE0 <= b <= 0xEF:
            need = 2
            lo = 0xA0 if b == 0xE0 else 0x80
            hi = 0x9F if b == 0xED else 0xBF
        elif 0xF0 <= b <= 0xF4:
            need = 3
            lo = 0x90 if b == 0xF0 else 0x80
            hi = 0x8F if b == 0xF4 else 0xBF
        else:
            return False
        if i + need >= n:
            return False  # truncated sequence
        c = buf[i + 1]
        if c < lo or c > hi:
            return False
        for k in range(2, need + 1):
            c = buf[i + k]
            if c < 0x80 or c > 0xBF:
                return False
        i += need + 1
    return True


_QUOTE = const(34)  # "
_BACKSLASH = const(92)
_COLON = const(58)
_COMMA = const(44)
_LBRACE = const(123)
_RBRACE = const(125)
_LBRACKET = const(91)
_RBRACKET = const(93)


def _string_end(buf, i, n):
    """Index of the quote that closes the JSON string opening at buf[i], or -1."""
    i += 1
    while i < n:
        b = buf[i]
        if b == _BACKSLASH:
            i += 2
        elif b == _QUOTE:
            return i
        else:
            i += 1
    return -1


def _value_end(buf, i, n):
    """Index just past the JSON value starting at buf[i] (at least i + 1)."""
    b = buf[i]
    if b == _QUOTE:
        end = _string_end(buf, i, n)
        return n if end < 0 else end + 1
    if b == _LBRACE or b == _LBRACKET:
        depth = 0
        while i < n:
            b = buf[i]
            if b == _QUOTE:
                end = _string_end(buf, i, n)
                if end < 0:
                    return n
                i = end
            elif b == _LBRACE or b == _LBRACKET:
                depth += 1
            elif b == _RBRACE or b == _RBRACKET:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return n
    start = i  # a number, true, false or null: up to the next , or }
    while i < n and buf[i] != _COMMA and buf[i] != _RBRACE:
        i += 1
    return i if i > start else start + 1


def _json_string(buf, start, end):
    """The str value of the JSON string literal buf[start:end + 1] (quotes included)."""
    raw = bytes(buf[start + 1 : end])
    if raw.find(b"\\") >= 0:  # escapes: let json undo them
        try:
            return json.loads(bytes(buf[start : end + 1]).decode())
        except ValueError:
            pass
    return raw.decode()


def scan_members(buf, n):
    """What ``json.loads`` hides about the top-level object in buf[0:n] (a line
    it has parsed into a dict): it keeps the last value of a repeated key.

    Returns ``(duplicate, stop)``: the first key that occurs more than once
    (compared after unescaping: "cmd" and "\\u0063md" are the same key), or
    None; and whether any "cmd" member has the value "stop". Needs no
    object_pairs_hook (MicroPython's json has none); allocates only the key
    strings. Requests are at most LINE_MAX bytes."""
    i = 0
    while i < n and buf[i] != _LBRACE:
        i += 1
    i += 1
    keys = []
    duplicate = None
    stop = False
    while i < n:
        b = buf[i]
        if b == _RBRACE:
            break
        if b != _QUOTE:
            i += 1  # whitespace, the comma between members
            continue
        end = _string_end(buf, i, n)
        if end < 0:
            break
        key = _json_string(buf, i, end)
        i = end + 1
        while i < n and buf[i] != _COLON:
            i += 1
        i += 1
        while i < n and buf[i] <= 32:  # whitespace before the value
            i += 1
        if i >= n:
            break
        value_start = i
        i = _value_end(buf, i, n)
        if key in keys:
            if duplicate is None:
                duplicate = key
        else:
            keys.append(key)
        is_string = buf[value_start] == _QUOTE and i - 1 > value_start
        if key == "cmd" and is_string and _json_string(buf, value_start, i - 1) == "stop":
            stop = True
    return duplicate, stop


def _duplicate_error(key):
    return ProtocolError(
        "duplicate_key",
        "member %s appears more than once: send each member once" % _short(key),
    )


def _skip_ws(buf, i, n):
    while i < n and (buf[i] == 32 or buf[i] == 9 or buf[i] == _CR or buf[i] == _NL):
        i += 1
    return i


def _word_at(buf, i, n, word):
    """Index past the plain JSON string "word" at buf[i], or -1."""
    k = len(word)
    if i + k + 2 > n or buf[i] != _QUOTE or buf[i + k + 1] != _QUOTE:
        return -1
    for j in range(k):
        if buf[i + 1 + j] != word[j]:
            return -1
    return i + k + 2


def _colon(buf, i, n):
    """Index of the value after the ':' at buf[i] (whitespace around), or -1."""
    i = _skip_ws(buf, i, n)
    if i >= n or buf[i] != _COLON:
        return -1
    i = _skip_ws(buf, i + 1, n)
    return i if i < n else -1


def _plain_id_end(buf, i, n):
    """Index past a plain id at buf[i] (see Protocol._plain_stop), or -1."""
    if buf[i] == _QUOTE:
        j = i + 1
        while j < n and buf[j] != _QUOTE:
            c = buf[j]
            if c < 32 or c > 126 or c == _BACKSLASH or j - i > ID_STR_MAX:
                return -1
            j += 1
        return j + 1 if j < n else -1
    j = i
    while j < n and 48 <= buf[j] <= 57:
        j += 1
    digits = j - i
    if digits == 0 or digits > 10 or (digits > 1 and buf[i] == 48):
        return -1
    if digits == 10:  # above ID_MAX? compared as text: no big int
        for k in range(10):
            if buf[i + k] != _ID_MAX_DIGITS[k]:
                if buf[i + k] > _ID_MAX_DIGITS[k]:
                    return -1
                break
    if j < n and _skip_ws(buf, j, n) == j and buf[j] != _COMMA and buf[j] != _RBRACE:
        return -1  # 1.5, 1e3, 12x: not a plain integer
    return j


# The boot, telemetry, state and warning lines: (event, keys), written in
# json.dumps' layout and key order (CPython's: the same bytes as json.dumps
# of the dict). A value _UPTIME is the uptime.
_UPTIME = object()
_BOOT_LINE = ("boot", ("firmware", "protocol", "board", "reset_fault", "settings_status",
                       "interrupted", "interrupted_writes"))
_TELEMETRY_LINE = ("telemetry", ("t_ms", "state", "angle_mdeg", "target_mdeg", "inverted_ms",
                                 "remaining_ms", "sets_done", "fault"))
_STATE_LINE = ("state", ("state", "from", "fault", "t_ms"))
_WARNING_LINE = ("warning", ("code", "t_ms"))
_LINE_TOO_LONG = (json.dumps({"id": None, "ok": False, "error": {
    "code": "line_too_long", "message": "line exceeds %d bytes" % LINE_MAX}}) + "\n").encode()


class Protocol:
    def __init__(self, app):
        self.app = app
        self.link = app.hal.link
        self._buf = bytearray(LINE_MAX)
        self._n = 0  # bytes of the current line in _buf
        self._discarding = False  # inside an over-long line, until its newline
        self._boot_sent = False
        self._last_state = None
        self._last_warnings = 0
        self._last_warning = None
        self._rate_hz = 0
        self._period_ms = 0
        self._last_tele_ms = 0
        self.requests = 0  # requests handled (for tests and benchmarks)
        # (id, hash of the line, reply bytes) of the last state-changing
        # requests, newest last.
        self._replays = []
        self._replay_key = None
        self._last_sent = None
        self.replayed = 0  # repeats answered from _replays (for tests)
        # The allocation-free lines: their buffer, its fill, "did not fit",
        # the values of the line being written, the plain STOP's id span.
        self._out = bytearray(OUT_MAX)
        self._o = 0
        self._over = False
        self._vals = [None] * 8
        self._id_a = -1
        self._id_b = -1
        self._write_buf = getattr(self.link, "write_buf", None)

    # ------------------------------------------------------------------ poll
    def poll(self, now_ms):
        """One tick of the protocol. Never raises (except BaseException such
        as the simulator's PowerLoss)."""
        try:
            if not self._boot_sent:
                self._boot_sent = True
                self._send_boot()
            self._events(now_ms)
        except Exception as error:  # noqa: BLE001 - never into the control loop
            self._caught(error)
        try:  # whatever the events did: a STOP request is still read
            self._read(now_ms)
        except Exception as error:  # noqa: BLE001
            self._caught(error)

    def _caught(self, error):
        try:
            self.app.last_error = "protocol: %s: %s" % (type(error).__name__, error)
        except Exception:  # noqa: BLE001 - e.g. MemoryError: no room for the text
            pass

    def _read(self, now_ms):
        link = self.link
        buf = self._buf
        for _ in range(BYTES_PER_TICK):
            b = link.read_byte()
            if b < 0:
                return
            if b == _NL:
                n = self._n
                self._n = 0
                if self._discarding:
                    self._discarding = False
                    continue
                if n > 0 and buf[n - 1] == _CR:
                    n -= 1
                if n == 0:
                    continue  # empty lines are ignored
                self._handle_line(n, now_ms)
                return  # at most one request per tick
            if self._discarding:
                continue
            if self._n >= LINE_MAX - 1:
                # This line is longer than LINE_MAX with its newline.
                self._discarding = True
                self._n = 0
                self._write(_LINE_TOO_LONG, len(_LINE_TOO_LONG))
                continue
            buf[self._n] = b
            self._n += 1

    # -------------------------------------------------------------- requests
    def _handle_line(self, n, now_ms):
        if self._plain_stop(n):
            # STOP in the form the host sends: obeyed and answered without
            # allocating, so it works on a full heap too.
            self._count_request()
            self._stop_all()
            self._reply_stop()
            return
        self._replay_key = None
        self._last_sent = None
        self._answer(n, now_ms)
        key = self._replay_key
        if key is not None and self._last_sent is not None:
            # Its reply (ok or error), for a repeat of the same line.
            self._replays.append((key[0], key[1], self._last_sent))
            if len(self._replays) > _REPLAYS:
                self._replays.pop(0)

    def _count_request(self):
        if self.requests < _COUNT_MAX:
            self.requests += 1

    def _stop_all(self):
        self.app.ctl.remote_stop()
        if self.app.setup is not None:
            self.app.setup.stop()

    def _plain_stop(self, n):
        """True if the line buf[0:n] is exactly a stop request in plain form:
        one object of "cmd": "stop" and an optional "id" (digits 0..ID_MAX, or
        a string of at most ID_STR_MAX printable ASCII characters other than
        quote and backslash), each once, no escapes, JSON whitespace anywhere
        between. The id's span (quotes included) is left in _id_a.._id_b (-1:
        none). Allocation-free; any other line takes the general path."""
        buf = self._buf
        self._id_a = -1
        i = _skip_ws(buf, 0, n)
        if i >= n or buf[i] != _LBRACE:
            return False
        i = _skip_ws(buf, i + 1, n)
        if i < n and buf[i] == _RBRACE:
            return False  # {}: no cmd
        cmd = False
        while True:
            value = -1
            key_end = _word_at(buf, i, n, b"cmd")
            if key_end > 0:
                if cmd:
                    return False
                cmd = True
                i = _colon(buf, key_end, n)
                if i > 0:
                    value = _word_at(buf, i, n, b"stop")
            else:
                key_end = _word_at(buf, i, n, b"id")
                if key_end < 0 or self._id_a >= 0:
                    return False  # another member, or a second id
                i = _colon(buf, key_end, n)
                if i > 0:
                    value = _plain_id_end(buf, i, n)
                self._id_a = i
                self._id_b = value
            if value < 0:
                return False  # no colon, or not a plain value
            i = _skip_ws(buf, value, n)
            if i >= n:
                return False
            if buf[i] == _RBRACE:
                return cmd and _skip_ws(buf, i + 1, n) == n
            if buf[i] != _COMMA:
                return False
            i = _skip_ws(buf, i + 1, n)

    def _reply_stop(self):
        self._o = 0
        self._over = False
        self._put(b'{"id": ')
        a = self._id_a
        if a < 0:
            self._put(b"null")
        else:
            out = self._out
            buf = self._buf
            o = self._o
            for k in range(self._id_b - a):  # at most 18 bytes: always fits
                out[o + k] = buf[a + k]
            self._o = o + self._id_b - a
        self._put(b', "ok": true, "data": {"state": ')
        self._put_str(self.app.ctl.state)
        self._put(b"}}\n")
        self._write(self._out, self._o)

    def _answer(self, n, now_ms):
        self._count_request()
        req_id = None
        try:
            if not utf8_valid(self._buf, n):
                raise ProtocolError("bad_utf8", "the line is not valid UTF-8")
            text = bytes(self._buf[:n]).decode()
            try:
                req = json.loads(text)
            except Exception:  # ValueError on both interpreters
                raise ProtocolError("bad_json", "the line is not valid JSON") from None
            if not isinstance(req, dict):
                raise ProtocolError("not_object", "a request must be a JSON object")
            duplicate, any_stop = scan_members(self._buf, n)
            if any_stop or req.get("cmd") == "stop":
                # STOP is obeyed before anything else is checked: a bad id, a
                # stray or repeated member (even a second "cmd") still gets
                # its error reply, but never keeps the table from heading home.
                self._stop_all()
            if duplicate == "id":
                raise _duplicate_error(duplicate)  # which id to echo? none
            if "id" in req:
                rid = req["id"]
                int_ok = _is_int(rid) and 0 <= rid <= ID_MAX
                if int_ok or (isinstance(rid, str) and len(rid) <= ID_STR_MAX):
                    req_id = rid
                else:
                    raise ProtocolError(
                        "bad_id",
                        "id must be an integer 0..%d or a string of at most %d characters"
                        % (ID_MAX, ID_STR_MAX),
                    )
            if duplicate is not None:
                raise _duplicate_error(duplicate)
            cmd = req.get("cmd")
            if not isinstance(cmd, str):
                raise ProtocolError("not_object", "a request needs a cmd string")
            spec = _COMMANDS.get(cmd)
            if spec is None:
                raise ProtocolError("unknown_cmd", "no command %s" % _short(cmd))
            if req_id is not None and cmd not in _READ_ONLY:
                line = hash(text)
                for rid, rline, reply in self._replays:
                    if rid == req_id and rline == line:
                        if self.replayed < _COUNT_MAX:
                            self.replayed += 1
                        self.link.write(reply)  # done once already: the same answer
                        return
                self._replay_key = (req_id, line)
            data = self._dispatch(cmd, spec, req, now_ms)
        except ProtocolError as error:
            self._send_error(req_id, error.code, error.message, error.details)
            return
        except SettingsError as error:
            details = None
            if error.allowed is not None:
                details = {"allowed": error.allowed}
            self._send_error(req_id, error.code, error.message, details)
            return
        except AuthError as error:
            details = {"retry_after_ms": error.retry_after_ms}
            if error.attempts_left is not None:
                details["attempts_left"] = error.attempts_left
            self._send_error(req_id, error.code, error.message, details)
            return
        except OSError as error:
            self._send_error(req_id, "storage_error", "flash write failed: %s" % (error,))
            return
        except Exception as error:  # noqa: BLE001 - a bug: report it, keep running
            message = "%s: %s" % (type(error).__name__, error)
            self.app.last_error = "protocol: " + message
            self._send_error(req_id, "internal", message)
            return
        self._reply(req_id, data)

    def _reply(self, req_id, data):
        self._send({"id": req_id, "ok": True, "data": data})

    def _dispatch(self, cmd, spec, req, now_ms):
        handler, required, optional, home_only, admin = spec
        args = {}
        for key in req:
            if key == "id" or key == "cmd":
                continue
            if key not in required and key not in optional:
                raise ProtocolError("unknown_field", "%s takes no argument %s" % (cmd, _short(key)))
        for key in required:
            if key not in req:
                raise ProtocolError("missing_field", "%s needs %s" % (cmd, key))
        for key in req:
            if key == "id" or key == "cmd":
                continue
            kind = required.get(key) or optional.get(key)
            value = req[key]
            if kind == _INT and not _is_int(value):
                raise ProtocolError("bad_type", "%s must be an integer" % key)
            if kind == _STR and not isinstance(value, str):
                raise ProtocolError("bad_type", "%s must be a string" % key)
            args[key] = value
        if home_only:
            self._require_home()
        if admin and cmd != "pin.change":
            self.app.auth.check(args.pop("pin"), now_ms)
        return getattr(self, handler)(args, now_ms)

    def _require_home(self):
        if self.app.setup is not None:
            raise ProtocolError("busy", "commissioning is running (setup.cancel ends it)",
                                {"state": "SETUP"})
        ctl = self.app.ctl
        if ctl.state != HOME or ctl.session is not None:
            state = ctl.state
            where = state if ctl.session is None else state + " (session open)"
            raise ProtocolError(
                "busy",
                "the table is in %s: settings change only at HOME with no session" % where,
                {"state": state},
            )

    # -------------------------------------------------------------- commands
    def _cmd_info(self, args, now_ms):
        board = self.app.board
        return {
            "firmware": FIRMWARE_VERSION,
            "protocol": PROTOCOL_VERSION,
            "board": board.get("name"),
            "chip": board.get("chip"),
            "micropython": _micropython_version(),
            "caps": {
                "max_angle_mdeg": board["max_angle_mdeg"],
                "max_speed_mdeg_s": board["max_speed_mdeg_s"],
                "max_inverted_ms": board.get("max_inverted_ms", DEFAULT_MAX_INVERTED_MS),
                "max_daily_inverted_ms": self.app.daily_cap_ms,
                "grip": board.get("grip_pin") is not None,
            },
            "max_users": MAX_USERS,
            "line_max": LINE_MAX,
            "commissioned": self.app.calib is not None,
            "calibration_status": self.app.calib_status,
            "console_locked": self.app.console_locked(),
            "calibration": self.app.calib,
            # What the boot loader checked and started (firmware/main.py): None
            # when the firmware was started otherwise (the simulator).
            "slot": getattr(self.app.hal, "firmware", None),
        }

    def _cmd_status(self, args, now_ms):
        return self.app.status()

    def _cmd_stop(self, args, now_ms):
        ctl = self.app.ctl
        ctl.remote_stop()
        return {"state": ctl.state}

    def _cmd_setup_start(self, args, now_ms):
        refused = self.app.start_setup()
        if refused is not None:
            raise ProtocolError(refused[0], refused[1])
        return self.app.setup.status()

    def _cmd_setup_status(self, args, now_ms):
        app = self.app
        if app.setup is not None:
            status = app.setup.status()
            status["active"] = True
            return status
        if app.setup_last is not None:
            status = dict(app.setup_last)
            status["active"] = False
            return status
        return {"active": False, "step": None, "done": False}

    def _cmd_setup_level(self, args, now_ms):
        setup = self.app.setup
        if setup is None:
            raise ProtocolError("not_running", "commissioning is not running (setup.start)")
        refused = setup.give_level(args["angle_mdeg"], args["where"])
        if refused is not None:
            raise ProtocolError(refused[0], refused[1])
        return {"step": setup.step_name}

    def _cmd_setup_cancel(self, args, now_ms):
        setup = self.app.setup
        if setup is not None:
            setup.cancel()
        return {"cancelled": setup is not None}

    def _cmd_telemetry(self, args, now_ms):
        rate = _check_range("rate_hz", args["rate_hz"], 0, TELEMETRY_MAX_HZ)
        self._rate_hz = rate
        if rate:
            self._period_ms = 1000 // rate
            # The first telemetry line goes out on the next tick.
            self._last_tele_ms = now_ms - self._period_ms
        return {"rate_hz": rate}

    def _user_data(self, user):
        app = self.app
        settings = app.settings
        return {
            "name": user["name"],
            "limits": user["limits"],
            "program": user["program"],
            "progression": user["progression"],
            "active": user["name"] == settings.active_name(),
            # Today's inverted time (exposure.py) against the daily allowance.
            "daily_used_ms": app.daily_used_ms(user["name"]),
            "daily_limit_ms": app.daily_limit_ms(user["limits"]),
        }

    def _cmd_user_list(self, args, now_ms):
        settings = self.app.settings
        active = settings.active_name()
        users = []
        for name in settings.list_users():
            users.append({"name": name, "active": name == active})
        return {"users": users, "max_users": MAX_USERS}

    def _cmd_user_get(self, args, now_ms):
        return self._user_data(self.app.settings.get_user(args["name"]))

    def _cmd_user_create(self, args, now_ms):
        user = self.app.settings.create_user(args["name"])
        self.app.settings_changed()
        return self._user_data(user)

    def _cmd_user_delete(self, args, now_ms):
        self.app.settings.delete_user(args["name"])
        self.app.settings_changed()
        return {}

    def _cmd_user_select(self, args, now_ms):
        settings = self.app.settings
        settings.select_user(args["name"])
        self.app.settings_changed()
        return {"active": settings.active_name()}

    def _cmd_program_set(self, args, now_ms):
        settings = self.app.settings
        name = args.pop("name")
        if args:
            user = settings.set_program(name, **args)
            self.app.settings_changed()
        else:
            user = settings.get_user(name)  # nothing to change: no flash write
        return {"program": user["program"]}

    def _cmd_limits_set(self, args, now_ms):
        settings = self.app.settings
        name = args.pop("name")
        if args:
            user = settings.set_limits(name, **args)
            self.app.settings_changed()
        else:
            user = settings.get_user(name)
        return {"limits": user["limits"], "program": user["program"]}

    def _cmd_progression_set(self, args, now_ms):
        settings = self.app.settings
        name = args.pop("name")
        if args:
            user = settings.set_progression(name, **args)
            self.app.settings_changed()
        else:
            user = settings.get_user(name)
        return {"progression": user["progression"]}

    def _cmd_pin_change(self, args, now_ms):
        # Auth.change refuses a bad new PIN first (no attempt used), then
        # checks the current one like any admin command.
        self.app.auth.change(args["pin"], args["new_pin"], now_ms)
        return {}

    def _cmd_log_read(self, args, now_ms):
        start = args.get("start", 0)
        count = args.get("count", LOG_READ_MAX)
        _check_range("start", start, 0, ID_MAX)
        _check_range("count", count, 1, LOG_READ_MAX)
        log = self.app.log
        return {
            "entries": log.entries(start, count),  # only these become dicts
            "total": len(log),
            "status": log.status,
        }

    def _cmd_log_clear(self, args, now_ms):
        if self.app.log.status == "newer_version":
            raise ProtocolError("newer_version", "the session log was written by a newer "
                                "firmware: it is kept as it is")
        self.app.log.clear()
        return {}

    def _console_data(self):
        app = self.app
        return {"console_lock": app.settings.console_lock if app.settings is not None else True,
                "console_locked": app.console_locked(),
                "maintenance_unlocked": app.maintenance_unlocked}

    def _cmd_console_lock(self, args, now_ms):
        on = _check_range("on", args["on"], 0, 1)
        self.app.settings.set_console_lock(on == 1)
        return self._console_data()

    def _cmd_maintenance_unlock(self, args, now_ms):
        self.app.maintenance_unlocked = True  # Ctrl-C reaches the REPL, at home, until reboot
        return self._console_data()

    def _cmd_clock_set(self, args, now_ms):
        epoch_s = _check_range("epoch_s", args["epoch_s"], EPOCH_MIN_S, EPOCH_MAX_S)
        # The host's offset from UTC, for the calendar day of the daily cap.
        offset = _check_range("utc_offset_s", args.get("utc_offset_s", 0), -50400, 50400)
        self.app.set_clock(epoch_s, offset)
        return {"epoch_s": epoch_s, "utc_offset_s": offset}

    # ---------------------------------------------------------------- events
    def _send_boot(self):
        app = self.app
        vals = self._vals
        vals[0] = FIRMWARE_VERSION
        vals[1] = PROTOCOL_VERSION
        vals[2] = app.board.get("name")
        vals[3] = app.reset_fault
        vals[4] = app.settings_status
        vals[5] = app.interrupted
        vals[6] = app.interrupted_writes
        self._send_line(_BOOT_LINE)

    def _events(self, now_ms):
        app = self.app
        ctl = app.ctl
        vals = self._vals
        state = app.state_name()
        if state is not self._last_state and state != self._last_state:
            vals[0] = state
            vals[1] = self._last_state
            vals[2] = ctl.fault
            vals[3] = _UPTIME
            self._send_line(_STATE_LINE)
            self._last_state = state
        warning = ctl.warning
        if ctl.warnings != self._last_warnings or warning is not self._last_warning:
            self._last_warnings = ctl.warnings
            self._last_warning = warning
            if warning is not None:
                vals[0] = warning
                vals[1] = _UPTIME
                self._send_line(_WARNING_LINE)
        if app.ended_entry is not None:
            entry = app.ended_entry
            app.ended_entry = None
            event = dict(entry)  # after a flash write: this tick allocates anyway
            event["event"] = "session_end"
            self._send(event)
        if self._rate_hz and ticks_diff(now_ms, self._last_tele_ms) >= self._period_ms:
            self._last_tele_ms = now_ms
            self._send_telemetry()

    def _send_telemetry(self):
        app = self.app
        ctl = app.ctl
        session = ctl.session
        remaining = None
        if session is not None:
            remaining = session.max_inverted_ms - ctl.inverted_ms
            if remaining < 0:
                remaining = 0
        vals = self._vals
        vals[0] = _UPTIME
        vals[1] = app.state_name()
        vals[2] = ctl.angle_mdeg
        vals[3] = ctl.profile.pos_mdeg
        vals[4] = ctl.inverted_ms
        vals[5] = remaining
        vals[6] = ctl.sets_done
        vals[7] = ctl.fault
        self._send_line(_TELEMETRY_LINE)

    # ------------------------------------------- lines without allocation
    def _send_line(self, spec):
        """The event ``spec`` (_TELEMETRY_LINE...) with the values in _vals, formatted
        into the preallocated buffer; through json.dumps if it does not fit."""
        event, keys = spec
        vals = self._vals
        self._o = 0
        self._over = False
        self._put(b'{"event": ')
        self._put_str(event)
        for i in range(len(keys)):
            self._put(b", ")
            self._put_str(keys[i])
            self._put(b": ")
            self._put_value(vals[i])
        self._put(b"}\n")
        if not self._over:
            self._write(self._out, self._o)
            return
        obj = {"event": event}  # never truncated: the same line, allocating
        for i in range(len(keys)):
            value = vals[i]
            obj[keys[i]] = self.app.uptime_ms if value is _UPTIME else value
        self._send(obj)

    def _put(self, piece):
        o = self._o
        end = o + len(piece)
        if end > OUT_MAX:
            self._over = True
            return
        self._out[o:end] = piece  # from bytes: no allocation (1.2x)
        self._o = end

    def _put_value(self, value):
        if value is None:
            self._put(b"null")
        elif value is True:
            self._put(b"true")
        elif value is False:
            self._put(b"false")
        elif value is _UPTIME:
            self._put_uptime()
        elif isinstance(value, int):
            self._put_int(value)
        elif isinstance(value, str):
            self._put_str(value)
        elif isinstance(value, list):
            self._put(b"[")
            for i in range(len(value)):
                if i:
                    self._put(b", ")
                self._put_value(value[i])
            self._put(b"]")
        else:
            self._over = True  # not a kind these lines carry: json.dumps

    def _put_int(self, value):
        if value < 0:
            # Digit by digit from the negative side: -value may not be a small int.
            self._put(b"-")
            rest = value // -10
            last = -(value % -10)
            if rest:
                self._put_int(rest)
            self._put_digits(last, 1)
            return
        n = 1
        t = value
        while t >= 10:
            t //= 10
            n += 1
        self._put_digits(value, n)

    def _put_digits(self, value, n):
        """value (>= 0) as exactly n decimal digits, zero-padded."""
        o = self._o
        if o + n > OUT_MAX:
            self._over = True
            return
        out = self._out
        i = o + n - 1
        while i >= o:
            out[i] = 48 + value % 10
            value //= 10
            i -= 1
        self._o = o + n

    def _put_uptime(self):
        # uptime_s * 1000 + ms written as digits: the product would outgrow a
        # small int on the ESP32 after 12.4 days (and allocate every line).
        app = self.app
        if app.uptime_s:
            self._put_int(app.uptime_s)
            self._put_digits(app.uptime_rem_ms, 3)
        else:
            self._put_int(app.uptime_rem_ms)

    def _put_str(self, text):
        n = len(text)
        o = self._o
        if o + n + 2 > OUT_MAX:
            self._over = True
            return
        out = self._out
        out[o] = _QUOTE
        for i in range(n):
            c = ord(text[i])
            if c < 32 or c > 126 or c == _QUOTE or c == _BACKSLASH:
                self._over = True  # needs escaping: json.dumps does it
                return
            out[o + 1 + i] = c
        out[o + n + 1] = _QUOTE
        self._o = o + n + 2

    def _write(self, buf, n):
        if self._write_buf is not None:
            self._write_buf(buf, n)
        else:  # a link without write_buf: a copy (allocates), as bytes as before
            self.link.write(bytes(buf[:n]))

    # ---------------------------------------------------------------- output
    def _send_error(self, req_id, code, message, details=None):
        error = {"code": code, "message": message}
        if details:
            for key in details:
                error[key] = details[key]
        self._send({"id": req_id, "ok": False, "error": error})

    def _send(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        self._last_sent = data
        self.link.write(data)


def _short(value):
    """A user-supplied string for a message, shortened."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _micropython_version():
    impl = sys.implementation
    if impl.name != "micropython":
        return None  # CPython: the simulator
    return "%d.%d.%d" % (impl.version[0], impl.version[1], impl.version[2])
