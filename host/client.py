"""Serial client for the board's JSON-lines protocol (docs/protocol.md, version 1).

    with Client("/dev/ttyUSB0") as board:        # or a pyserial URL, or None to discover
        board.request("status")                  # -> the reply's data dict
        board.request("telemetry", rate_hz=5)
        for event in board.events(duration_s=10):
            ...

``request`` sends one line with a fresh ``id`` and reads lines until the reply
with that id; events read meanwhile are queued for ``events()`` /
``next_event()``. Each request starts with a newline, so garbage left on the
line by anything else ends before it (the board drops an over-long line up
to its newline, and would drop the request with it); a request without a
reply is sent again, with the same id, every ``RESEND_S`` until the timeout
(the board answers a repeated state-changing request from its first reply
instead of doing it twice; docs/protocol.md). An error reply raises
``ProtocolError`` (or a subclass for the codes a caller treats differently)
carrying the stable ``code``, the human ``message`` and the ``details``.
Problems with the link itself raise ``ConnectionProblem`` subclasses.
"""

import collections
import contextlib
import errno
import json
import random
import time

import serial
import serial.tools.list_ports

PROTOCOL_VERSION = 1
LINE_MAX = 512
DEFAULT_TIMEOUT_S = 3.0
RESEND_S = 1.0  # a request without a reply this long is sent again (same id)
ID_MAX = 2147483647
BAUDRATE = 115200
# Input without a newline beyond this is garbage (a board's lines are <= 512 bytes,
# telemetry far less): dropped so a noisy line cannot grow memory without bound.
_RX_LINE_MAX = 8192

# USB VID:PID of the serial bridges and native USB found on ESP32 boards.
KNOWN_USB_IDS = {
    (0x10C4, 0xEA60): "CP210x",
    (0x1A86, 0x7523): "CH340",
    (0x1A86, 0x55D4): "CH9102",
    (0x0403, 0x6001): "FTDI FT232",
    (0x303A, 0x1001): "ESP32-S3/C3 native USB",
}


class ClientError(Exception):
    """Base of everything this module raises."""


class ConnectionProblem(ClientError):
    """No board, an unusable port, a lost link or no reply in time."""


class NoBoardError(ConnectionProblem):
    pass


class SeveralBoardsError(ConnectionProblem):
    def __init__(self, message, ports):
        super().__init__(message)
        self.ports = ports


class PortBusyError(ConnectionProblem):
    pass


class ReplyTimeout(ConnectionProblem):
    pass


class ProtocolError(ClientError):
    """The board refused a request: ``code``, ``message`` and ``details`` as sent."""

    def __init__(self, code, message, details=None, cmd=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}
        self.cmd = cmd


class BadPinError(ProtocolError):
    @property
    def attempts_left(self):
        return self.details.get("attempts_left")

    @property
    def retry_after_ms(self):
        return self.details.get("retry_after_ms") or 0


class LockedError(ProtocolError):
    @property
    def retry_after_ms(self):
        return self.details.get("retry_after_ms") or 0


class OutOfRangeError(ProtocolError):
    @property
    def allowed(self):
        return self.details.get("allowed")


class BusyError(ProtocolError):
    @property
    def state(self):
        return self.details.get("state")


_ERROR_CLASSES = {
    "bad_pin": BadPinError,
    "locked": LockedError,
    "out_of_range": OutOfRangeError,
    "busy": BusyError,
}


def protocol_error(error, cmd=None):
    """The exception for an ``error`` object of a reply."""
    if not isinstance(error, dict):
        error = {"code": "internal", "message": f"malformed error reply: {error!r}"}
    code = str(error.get("code", "internal"))
    message = str(error.get("message", ""))
    details = {k: v for k, v in error.items() if k not in ("code", "message")}
    return _ERROR_CLASSES.get(code, ProtocolError)(code, message, details, cmd)


def describe_port(info):
    """One line about a list_ports entry: device, chip and description."""
    chip = KNOWN_USB_IDS.get((info.vid, info.pid))
    parts = [info.device]
    if chip:
        parts.append(f"{chip} {info.vid:04X}:{info.pid:04X}")
    if info.description and info.description != "n/a":
        parts.append(info.description)
    return " - ".join(parts)


def candidate_ports(ports=None):
    """The connected serial ports that look like an ESP32 board (by USB VID:PID)."""
    if ports is None:
        ports = serial.tools.list_ports.comports()
    return [p for p in ports if (p.vid, p.pid) in KNOWN_USB_IDS]


def discover_port(ports=None):
    """The device path of the one likely board, or NoBoardError / SeveralBoardsError."""
    found = candidate_ports(ports)
    if not found:
        known = ", ".join(f"{v:04X}:{p:04X} {n}" for (v, p), n in KNOWN_USB_IDS.items())
        raise NoBoardError(
            "no board found: connect it with a data USB cable, or name the port with "
            f"--port (or INVTABLE_PORT). Looked for USB serial adapters {known}."
        )
    if len(found) > 1:
        listing = "\n".join("  " + describe_port(p) for p in found)
        raise SeveralBoardsError(
            f"{len(found)} possible boards connected; choose one with --port:\n{listing}",
            [p.device for p in found],
        )
    return found[0].device


def _open_serial(port, baudrate):
    try:
        ser = serial.serial_for_url(port, do_not_open=True, baudrate=baudrate, timeout=0.05,
                                    write_timeout=2)
    except (ValueError, serial.SerialException) as error:
        raise ConnectionProblem(f"cannot use port {port!r}: {error}") from None
    # Opening must not reset an ESP32 (its auto-reset circuit uses DTR/RTS).
    ser.dtr = False
    ser.rts = False
    if hasattr(ser, "exclusive"):
        # Two readers on one port would steal each other's lines.
        with contextlib.suppress(ValueError, serial.SerialException):
            ser.exclusive = True
    try:
        ser.open()
    except serial.SerialException as error:
        text = str(error)
        err = getattr(error, "errno", None)
        if err == errno.ENOENT or "No such file" in text or "FileNotFoundError" in text:
            raise NoBoardError(f"no such port {port}: is the board plugged in?") from None
        if err == errno.EACCES or "Permission denied" in text or "PermissionError" in text:
            raise ConnectionProblem(
                f"permission denied opening {port}: add yourself to the port's group "
                "(often `dialout` or `uucp`) and log in again") from None
        if (err == errno.EBUSY or "lock" in text.lower() or "busy" in text.lower()
                or "Access is denied" in text):
            raise PortBusyError(
                f"port {port} is busy: another program has it open (an `invtable monitor`, "
                "mpremote, a serial terminal?). Close it and try again.") from None
        raise ConnectionProblem(f"cannot open {port}: {text}") from None
    return ser


class Client:
    """One open connection to a board. ``port_or_url``: a device path, a pyserial URL
    (``socket://host:port``, ``loop://``, ``rfc2217://``...) or None to discover.
    ``link``: an already open pyserial-like object to use instead (the owner of
    the port's local socket, host/portshare.py)."""

    def __init__(self, port_or_url=None, timeout=DEFAULT_TIMEOUT_S, baudrate=BAUDRATE,
                 link=None):
        self.port = port_or_url or discover_port()
        self.timeout = timeout
        self.shared = link is not None  # through the process that owns the port
        self._serial = link if link is not None else _open_serial(self.port, baudrate)
        self._rx = bytearray()
        self._lines = collections.deque()
        self._events = collections.deque()
        # Ids start at random, so two invtable processes one after the other
        # never send the same id for different requests (the board takes a
        # repeated id and line as a resend).
        self._next_id = random.SystemRandom().randint(1, ID_MAX // 2)
        self.ignored_lines = 0  # not JSON objects we know (e.g. a REPL banner)
        self.sends = 0  # times the last request was sent (1 + its resends)

    # -- lifetime -------------------------------------------------------
    def close(self):
        if self._serial is not None:
            try:
                self._serial.close()
            finally:
                self._serial = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- lines ----------------------------------------------------------
    def _read_line(self, deadline):
        """The next complete line (bytes, without the newline) or None at the deadline."""
        while not self._lines:
            if self._serial is None:
                raise ConnectionProblem("connection closed")
            try:
                chunk = self._serial.read(self._serial.in_waiting or 1)
            except (serial.SerialException, OSError) as error:
                raise ConnectionProblem(f"lost the connection to {self.port}: {error}") from None
            if chunk:
                self._rx += chunk
                *complete, rest = self._rx.split(b"\n")
                self._lines.extend(line.rstrip(b"\r") for line in complete)
                self._rx = bytearray(rest) if len(rest) <= _RX_LINE_MAX else bytearray()
            elif deadline is not None and time.monotonic() >= deadline:
                return None
        return self._lines.popleft()

    def _read_message(self, deadline):
        """The next JSON object line, or None at the deadline; other lines are skipped."""
        while True:
            line = self._read_line(deadline)
            if line is None:
                return None
            if not line.strip():
                continue
            try:
                message = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                self.ignored_lines += 1
                continue
            if isinstance(message, dict):
                return message
            self.ignored_lines += 1

    def send_line(self, text):
        data = text.encode("utf-8") + b"\n"
        if len(data) > LINE_MAX:
            raise ValueError(f"request is {len(data)} bytes; the board takes at most {LINE_MAX}")
        self._write(b"\n" + data)  # the newline first ends any garbage before it

    def _write(self, data):
        try:
            self._serial.write(data)
            self._serial.flush()
        except (serial.SerialException, OSError) as error:
            raise ConnectionProblem(f"lost the connection to {self.port}: {error}") from None

    # -- requests -------------------------------------------------------
    def request(self, cmd, timeout=None, **args):
        """Send ``cmd`` with ``args``; return the reply's data (a dict, {} if none).

        Raises ProtocolError (or a subclass) for an error reply and ReplyTimeout
        when no reply comes within ``timeout`` (default: the client's)."""
        request_id = self._next_id
        self._next_id = self._next_id + 1 if self._next_id < ID_MAX else 1
        message = {"id": request_id, "cmd": cmd}
        message.update(args)
        line = json.dumps(message, separators=(",", ":"))
        self.send_line(line)
        self.sends = 1
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            resend_at = min(deadline, time.monotonic() + RESEND_S)
            reply = self._read_message(resend_at)
            if reply is None and time.monotonic() < deadline:
                self.send_line(line)  # lost on the way there or back: again, same id
                self.sends += 1
                continue
            if reply is None:
                raise ReplyTimeout(
                    f"no reply to {cmd!r} from {self.port} within {wait:g} s: is the invtable "
                    "firmware running on it (not the REPL or another program)?")
            if "event" in reply and "id" not in reply:
                self._events.append(reply)
                continue
            if reply.get("id") != request_id:
                continue  # a late reply to an earlier, timed-out request
            if reply.get("ok") is True:
                data = reply.get("data")
                return data if isinstance(data, dict) else ({} if data is None else data)
            raise protocol_error(reply.get("error"), cmd)

    # -- events ---------------------------------------------------------
    def next_event(self, timeout=None):
        """The next event (a dict with ``event``), or None after ``timeout`` seconds
        (None = the client's timeout) without one."""
        if self._events:
            return self._events.popleft()
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            message = self._read_message(deadline)
            if message is None:
                return None
            if "event" in message and "id" not in message:
                return message

    def events(self, duration_s=None, idle_s=0.25):
        """Iterate over events for ``duration_s`` seconds (None: forever).

        Yields None after ``idle_s`` without an event, so a caller can refresh a
        display or notice silence."""
        end = None if duration_s is None else time.monotonic() + duration_s
        while True:
            wait = idle_s
            if end is not None:
                left = end - time.monotonic()
                if left <= 0:
                    return
                wait = min(idle_s, left)
            yield self.next_event(timeout=wait)

    def drain_events(self):
        """The events already queued, removed from the queue."""
        events = list(self._events)
        self._events.clear()
        return events
