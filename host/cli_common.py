"""What every `invtable` board command shares: the connection options, units,
errors and exit codes, the PIN and confirmation rules, tables.

People get degrees and seconds (converted to the protocol's mdeg/ms); ``--json``
prints the board's data unchanged (units in the key names) for scripts.

Exit codes (stable, for scripts):

    0    success
    1    any other error (a file that cannot be written, matplotlib missing...);
         also a closed pipe (`invtable monitor --json | head`), silently
    2    usage error (bad option, a file that cannot be written, missing PIN or
         confirmation without a terminal)
    3    no board / cannot open the port / no reply / connection lost
    4    the board refused the request (out of range, busy, no such user...)
    5    wrong admin PIN or admin commands locked
    130  interrupted with Ctrl-C
"""

import datetime
import functools
import json
import math
import os
import re
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from invtable.firmware.auth import DEFAULT_PIN, PIN_MAX_LEN, PIN_MIN_LEN, pin_format_ok
from invtable.firmware.rider import (
    CHECK_IN_ANSWER_MS,
    END_GRIP_RELEASED,
    END_NO_RESPONSE,
    GRIP_RELEASE_MS,
)
from invtable.host import client as client_mod
from invtable.host import portshare
from invtable.host.simview import STATE_STYLE, STATE_TEXT

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_REFUSED = 4
EXIT_PIN = 5
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C

PIN_ENV = "INVTABLE_PIN"
PORT_ENV = "INVTABLE_PORT"

# The board's rules (firmware.auth), checked before anything is sent.
PIN_RULE = f"a PIN is {PIN_MIN_LEN} to {PIN_MAX_LEN} digits 0-9"
NEW_PIN_RULE = (f"a new PIN is {PIN_MIN_LEN} to {PIN_MAX_LEN} digits 0-9, not the factory "
                f"default {DEFAULT_PIN}")

# Protocol field -> (command-line option, unit, label). Units: deg (mdeg on the
# wire), s (ms), deg/s (mdeg/s), or None (a plain count).
FIELDS = {
    "max_angle_mdeg": ("--max-angle", "deg", "max angle"),
    "max_inverted_ms": ("--max-inverted", "s", "max time inverted per session"),
    "max_speed_mdeg_s": ("--max-speed", "deg/s", "max speed"),
    "max_daily_inverted_ms": ("--max-daily", "s", "max time inverted per day"),
    "check_in_ms": ("--check-in", "s", "rider check-in"),
    "angle_mdeg": ("--angle", "deg", "angle"),
    "hold_ms": ("--hold", "s", "hold per set"),
    "sets": ("--sets", None, "sets"),
    "rest_ms": ("--rest", "s", "rest between sets"),
    "speed_mdeg_s": ("--speed", "deg/s", "speed"),
    "exit_pause_ms": ("--exit-pause", "s", "pause near horizontal on the way up"),
    "angle_step_mdeg": ("--angle-step", "deg", "angle step per session"),
    "hold_step_ms": ("--hold-step", "s", "hold step per session"),
    "rate_hz": ("RATE", "Hz", "telemetry rate"),
    "epoch_s": ("WHEN", None, "clock"),
}
LIMIT_KEYS = ("max_angle_mdeg", "max_inverted_ms", "max_speed_mdeg_s", "max_daily_inverted_ms",
              "check_in_ms")
PROGRAM_KEYS = ("angle_mdeg", "hold_ms", "sets", "rest_ms", "speed_mdeg_s", "exit_pause_ms")
PROGRESSION_KEYS = ("angle_step_mdeg", "hold_step_ms")

# How a session ended (log `end`, status `last_end`): the log's colour (the
# plot's too), and plain words where the code alone does not say it.
END_STYLE = {"completed": "green", "stopped": "yellow", "limit": "yellow", "fault": "red",
             "interrupted": "red", "calibration_changed": "red", END_NO_RESPONSE: "red",
             END_GRIP_RELEASED: "red"}
END_TEXT = {
    END_NO_RESPONSE: f"no GO tap within {CHECK_IN_ANSWER_MS / 1000:g} s of a check-in chirp: "
    "the table returned home",
    END_GRIP_RELEASED: f"the grip was let go for more than {GRIP_RELEASE_MS / 1000:g} s: "
    "the session ended and the table returned home",
}

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


# -- units -----------------------------------------------------------------
def to_wire(field, value):
    """A human value (deg, s) of ``field`` in the protocol's integer unit."""
    option, unit, _label = FIELDS[field]
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number", param_hint=option)
    if unit in ("deg", "s", "deg/s"):
        return round(value * 1000)
    return int(value)


def from_wire(field, value):
    """A protocol value of ``field`` in people's unit (deg, s): the inverse of to_wire."""
    return value / 1000 if FIELDS[field][1] in ("deg", "s", "deg/s") else value


def human(field, value, unit=True):
    """A protocol value of ``field`` for people: '30 deg', '2 min (120 s)', '3',
    'every 60 s' / 'off' (check-ins)."""
    if value is None:
        return "-"
    kind = FIELDS.get(field, (None, None))[1]
    if field == "check_in_ms" and unit:
        return f"every {value / 1000:g} s" if value else "off"
    if kind in ("deg", "deg/s"):
        text = f"{value / 1000:g}"
        return f"{text} {kind}" if unit else text
    if kind == "s":
        return seconds(value) if unit else f"{value / 1000:g}"
    return str(value)


def seconds(ms, precise=False):
    """'45 s', '2 min', '2 min 30 s' (precise: '45.2 s')."""
    if ms is None:
        return "-"
    s = ms / 1000
    if precise or s < 60:
        return f"{s:.1f} s" if precise else f"{s:g} s"
    minutes, rest = divmod(round(s), 60)
    return f"{minutes} min" + (f" {rest} s" if rest else "")


def whole_seconds(ms):
    """seconds() to the nearest second: '12 min 30 s', '45 s'."""
    return seconds(None if ms is None else round(ms, -3))


def today_text(used_ms, limit_ms):
    """'12 min 30 s of 20 min inverted': a user's time inverted today, of today's
    allowance (status / user.get ``daily_used_ms``, ``daily_limit_ms``)."""
    return f"{whole_seconds(used_ms)} of {whole_seconds(limit_ms)} inverted"


def end_text(end):
    """A session end code, with plain words where the code alone does not say it."""
    return f"{end} ({END_TEXT[end]})" if end in END_TEXT else str(end)


def degrees(mdeg, digits=1):
    if mdeg is None:
        return "-"
    text = f"{mdeg / 1000:.{digits}f}"
    return ("0." + "0" * digits if text == "-0." + "0" * digits else text) + " deg"


def plural(count, word):
    """'1 session', '2 sessions'."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def local_time(epoch_s):
    if epoch_s is None:
        return "-"
    return datetime.datetime.fromtimestamp(epoch_s).strftime("%Y-%m-%d %H:%M")


# -- errors ----------------------------------------------------------------
def quiet_stdout():
    """After a closed pipe (`invtable monitor --json | head -3`): point stdout at
    devnull, so that nothing more fails on the way out (the Python docs' recipe,
    "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (a test's captured stdout)
        pass


class InvtableGroup(click.Group):
    """The `invtable` command group: Ctrl-C (also at a prompt) exits 130 without
    click's "Aborted!", and a closed pipe ends the command silently (exit 1)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, EOFError, click.exceptions.Abort):
            click.echo(err=True)  # ends the terminal's "^C" line
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            quiet_stdout()
            raise click.exceptions.Exit(EXIT_ERROR) from None


class Failure(click.ClickException):
    """A clear message, an exit code and (with --json) a JSON error on stdout."""

    def __init__(self, message, exit_code=EXIT_ERROR, code="error", details=None,
                 as_json=False):
        super().__init__(message)
        self.exit_code = exit_code
        self.code = code
        self.details = details or {}
        self.as_json = as_json

    def show(self, file=None):
        if self.as_json:
            error = {"code": self.code, "message": self.message, "exit_code": self.exit_code}
            error.update(self.details)
            try:
                click.echo(json.dumps({"ok": False, "error": error}))
            except BrokenPipeError:
                quiet_stdout()
        click.echo(f"Error: {self.message}", err=True)


def range_field(error):
    """The protocol field an out_of_range error is about (its ``field`` detail, or the
    first word of its message), or None."""
    field = error.details.get("field")
    if field not in FIELDS:
        first = error.message.split(" ", 1)[0]
        field = first if first in FIELDS else None
    return field


def _range_message(error):
    """'--angle must be 1..30 deg (got 45 deg)' from an out_of_range error."""
    field = range_field(error)
    allowed = error.details.get("allowed")
    got = None
    match = re.search(r"(-?\d+)\s*\.\.\s*(-?\d+)", error.message)
    if not (isinstance(allowed, list) and len(allowed) == 2) and match:
        allowed = [int(match.group(1)), int(match.group(2))]
    match = re.search(r"got (-?\d+)", error.message)
    if match:
        got = int(match.group(1))
    if field is None or not allowed:
        return f"out of range: {error.message}" + (f" (allowed {allowed})" if allowed else "")
    option, unit, label = FIELDS[field]
    low, high = (human(field, v, unit=False) for v in allowed)
    suffix = f" {unit}" if unit else ""
    text = f"{option} ({label}) must be {low}..{high}{suffix}"
    if got is not None:
        text += f" (got {human(field, got, unit=False)}{suffix})"
    if field in PROGRAM_KEYS:
        text += (". A program must fit inside the user's limits (`invtable user show NAME`;"
                 " an admin can raise them with `invtable limits set`)")
    elif field in LIMIT_KEYS:
        text += ". Limits can never exceed the board's caps (`invtable info`)"
    return text


def failure_for(error, as_json=False):
    """The Failure (message and exit code) for an exception from the client."""
    if isinstance(error, client_mod.ConnectionProblem):
        code = {
            client_mod.NoBoardError: "no_board",
            client_mod.SeveralBoardsError: "several_boards",
            client_mod.PortBusyError: "port_busy",
            client_mod.ReplyTimeout: "timeout",
        }.get(type(error), "connection")
        details = {}
        if isinstance(error, client_mod.SeveralBoardsError):
            details["ports"] = error.ports
        return Failure(str(error), EXIT_CONNECTION, code, details, as_json)
    if isinstance(error, client_mod.ProtocolError):
        code, details = error.code, dict(error.details)
        if isinstance(error, client_mod.BadPinError):
            left = error.attempts_left
            if left:
                text = f"wrong PIN: {plural(left, 'attempt')} left before admin commands " \
                       "are locked"
            elif error.retry_after_ms:
                text = ("wrong PIN: admin commands are now locked for "
                        f"{seconds(error.retry_after_ms)}")
            else:
                text = "wrong PIN: the next wrong PIN locks admin commands"
            return Failure(text, EXIT_PIN, code, details, as_json)
        if isinstance(error, client_mod.LockedError):
            return Failure(
                "admin commands are locked after too many wrong PINs: try again in "
                f"{seconds(error.retry_after_ms)} (the wait survives a reboot)",
                EXIT_PIN, code, details, as_json)
        if isinstance(error, client_mod.OutOfRangeError):
            return Failure(_range_message(error), EXIT_REFUSED, code, details, as_json)
        if isinstance(error, client_mod.BusyError):
            state = error.state or "not HOME"
            return Failure(
                f"refused while the table is busy (state {state}): users, limits and the log "
                "change only at home with no session open. Wait for the session to end, or "
                "press STOP / run `invtable stop`.", EXIT_REFUSED, code, details, as_json)
        hints = {
            "not_found": " (see `invtable user list`)",
            "invalid_pin": f" ({NEW_PIN_RULE})",
            "full": " (delete a user first: `invtable user delete NAME`)",
            "unknown_cmd": " (is the firmware older than this invtable?)",
            "unknown_field": " (is the firmware older than this invtable?)",
            "internal": " (a firmware bug: please report it)",
            "newer_version": " (a newer firmware wrote this data: deploy it again, or remove "
            "the file; see `newer files` in `invtable status`)",
        }
        return Failure(f"the board refused: {error.message}{hints.get(code, '')}",
                       EXIT_REFUSED, code, details, as_json)
    return Failure(str(error), EXIT_ERROR, "error", None, as_json)


# -- talking to the board --------------------------------------------------
def board_command(fn):
    """Options --port/--timeout/--json, and errors turned into messages and exit codes."""

    @click.option("--port", "-p", envvar=PORT_ENV, metavar="PORT",
                  help="Serial device (/dev/ttyUSB0, COM3) or pyserial URL (socket://h:p, "
                  f"rfc2217://...) [env {PORT_ENV}; default: the one connected board].")
    @click.option("--timeout", type=click.FloatRange(0.1, 60), default=3.0, show_default=True,
                  metavar="S",
                  help="Seconds to wait for each reply.")
    @click.option("--json", "as_json", is_flag=True,
                  help="Print JSON (the board's data, units in the key names).")
    @functools.wraps(fn)
    def wrapper(*args, port, timeout, as_json, **kwargs):
        opts = {"port": port, "timeout": timeout, "as_json": as_json}
        try:
            return fn(*args, opts=opts, **kwargs)
        except client_mod.ClientError as error:
            raise failure_for(error, as_json) from None
        except BrokenPipeError:
            raise  # the reader went away: InvtableGroup ends quietly
        except OSError as error:
            raise Failure(str(error), EXIT_ERROR, "os_error", None, as_json) from None

    return wrapper


def connect(opts):
    """The board: its port, or, while another invtable process (a `monitor`)
    owns the port, that process's local socket (host/portshare.py)."""
    port = opts["port"] or client_mod.discover_port()
    try:
        return client_mod.Client(port, timeout=opts["timeout"])
    except client_mod.PortBusyError:
        shared = portshare.connect_shared(port, timeout=opts["timeout"])
        if shared is None:
            raise
        return shared


def call(opts, cmd, **args):
    """One request on a fresh connection."""
    with connect(opts) as board:
        return board.request(cmd, **args)


def emit_json(data):
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def register(group, commands):
    """Add ``commands`` to the `invtable` click group."""
    for command in commands:
        group.add_command(command)


# -- files, the PIN and confirmations: checked before anything happens -----
def writable_file(ctx, param, path):
    """Option callback: PATH can be written (its folder exists, it is not a
    folder), so that a typo is one line and exit 2 before anything is printed,
    sent or simulated."""
    if path is None:
        return None
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        reason = "it is a folder"
    elif not os.path.isdir(folder):
        reason = f"there is no folder {folder}"
    elif not os.access(path if os.path.exists(path) else folder, os.W_OK):
        reason = "permission denied"
    else:
        return path
    raise click.BadParameter(f"cannot write {path}: {reason}", ctx=ctx, param=param)


def _stdin_is_tty():
    return sys.stdin.isatty()


def needs_terminal(message, as_json=False):
    """The one-line error (exit 2) for a question that cannot be asked: no terminal."""
    return Failure(message, EXIT_USAGE, "no_terminal", None, as_json)


def given_pin(pin, as_json=False):
    """--pin / INVTABLE_PIN checked for format (a typo must not cost an attempt), or
    None when it is to be asked; exit 2 when there is no terminal to ask in."""
    if pin is None:
        if not _stdin_is_tty():
            raise needs_terminal(f"this command needs the admin PIN: give --pin, set {PIN_ENV}, "
                                 "or run it in a terminal to be asked", as_json)
        return None
    pin = pin.strip()
    if not pin_format_ok(pin):
        raise click.BadParameter(PIN_RULE, param_hint="PIN")
    return pin


def resolve_pin(pin, prompt="Admin PIN", as_json=False):
    """--pin / INVTABLE_PIN, or a hidden prompt in a terminal; checked for format."""
    pin = given_pin(pin, as_json)
    if pin is None:
        pin = click.prompt(prompt, hide_input=True).strip()
        if not pin_format_ok(pin):
            raise click.BadParameter(PIN_RULE, param_hint="PIN")
    return pin


def new_pin_ok(pin):
    """The board's rule for a new PIN (firmware.auth)."""
    return pin_format_ok(pin) and pin != DEFAULT_PIN


pin_option = click.option(
    "--pin", envvar=PIN_ENV, metavar="PIN",
    help=f"Admin PIN [env {PIN_ENV}; asked with hidden input when omitted in a terminal]. "
    "On the command line it is visible to other users and in shell history.")


def can_confirm(yes, what, as_json=False):
    """--yes, or a terminal to ask in; else exit 2 (before anything is shown or sent)."""
    if not yes and not _stdin_is_tty():
        raise needs_terminal(f"{what} asks for confirmation and there is no terminal to ask "
                             "in: pass --yes", as_json)


def confirm(question, yes, as_json, cancelled):
    """Returns with --yes or a 'y'; a 'n' is the Failure ``cancelled`` (exit 1)."""
    if yes:
        return
    if not click.confirm(question, err=as_json):
        raise Failure(cancelled, EXIT_ERROR, "cancelled", None, as_json)


# -- tables ----------------------------------------------------------------
def kv_table(title, rows):
    table = Table(title=title, show_header=False, title_justify="left", title_style="bold")
    table.add_column(style="bold")
    table.add_column()
    for row in rows:
        table.add_row(*row)
    return table


def state_text(state, fault=None):
    style = STATE_STYLE.get(state, "")
    detail = STATE_TEXT.get(state, "")
    if fault:
        detail = f"{detail}: {fault}" if detail else str(fault)
    state, detail = escape(str(state)), escape(str(detail))
    return f"[{style}]{state}[/] [dim]{detail}[/]" if style else f"{state} {detail}"


def calibration_rows(calib):
    """A calibration (firmware/calibration.py: what `invtable setup` measured) as
    (label, value) rows in people's units."""

    def deg(key):
        return degrees(calib.get(key))

    def rate(key):
        value = calib.get(key)
        return "-" if value is None else f"{value / 1000:.2f} deg/s"

    bias = calib.get("imu_accel_bias_mg")
    if isinstance(bias, list) and len(bias) == 3:
        bias = ", ".join(f"{axis} {value}" for axis, value in zip("xyz", bias, strict=True))
        bias += " mg"
    lag = calib.get("lag_ms")
    return [
        ("IMU axes", "along {}, normal {}, gyro {}".format(
            *(escape(str(calib.get(k, "?"))) for k in ("imu_along", "imu_normal", "imu_gyro")))),
        ("IMU mounting offset", deg("imu_offset_mdeg")),
        ("accelerometer bias", escape(str(bias if bias is not None else "-"))),
        ("gyro bias", rate("imu_gyro_bias_mdeg_s")),
        ("angle at home", deg("home_angle_mdeg")),
        ("home switch opens at", deg("home_open_mdeg")),
        ("home switch closes at", deg("home_close_mdeg")),
        ("speed head-down (full drive)", rate("speed_down_mdeg_s")),
        ("speed towards home (full drive)", rate("speed_up_mdeg_s")),
        ("lag", "-" if lag is None else f"{lag} ms"),
        ("travel up to", deg("travel_max_mdeg")),
    ]
