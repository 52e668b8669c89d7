"""`invtable` commands that talk to a board: users, limits, status, log, monitor, plot.

People get degrees and seconds (converted to the protocol's mdeg/ms); ``--json``
prints the board's data unchanged (units in the key names) for scripts.

Exit codes (stable, for scripts):

    0  success
    1  any other error (a file that cannot be written, matplotlib missing...)
    2  usage error (bad option, missing PIN without a terminal)
    3  no board / cannot open the port / no reply / connection lost
    4  the board refused the request (out of range, busy, no such user...)
    5  wrong admin PIN or admin commands locked
"""

import contextlib
import csv
import datetime
import functools
import json
import math
import os
import re
import sys
import time

import click
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from invtable.firmware.auth import PIN_MAX_LEN, PIN_MIN_LEN, pin_format_ok
from invtable.firmware.rider import (
    CHECK_IN_ANSWER_MS,
    CHECK_IN_MIN_MS,
    END_GRIP_RELEASED,
    END_NO_RESPONSE,
    GRIP_RELEASE_MS,
)
from invtable.firmware.settings import LIMIT_FIELDS
from invtable.host import client as client_mod
from invtable.host.simview import STATE_STYLE, STATE_TEXT

# The board's rule (firmware.auth), checked before anything is sent.
PIN_RULE = f"a PIN is {PIN_MIN_LEN} to {PIN_MAX_LEN} digits 0-9"

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_REFUSED = 4
EXIT_PIN = 5

PIN_ENV = "INVTABLE_PIN"
PORT_ENV = "INVTABLE_PORT"

# Contraindications shown when a user is created (docs/DESIGN.md and the
# manufacturers' and clinical sources it cites).
SCREENING = (
    "high blood pressure (hypertension)",
    "heart disease or circulatory problems, a history of stroke",
    "glaucoma, retinal detachment or other eye conditions",
    "pregnancy",
    "hernias (hiatal, abdominal or inguinal)",
    "severe osteoporosis or other bone weakness",
    "recent surgery, fractures or injuries of the spine, hips, knees or ankles",
    "use of anticoagulants (blood thinners)",
    "middle ear infection or inner-ear balance problems",
    "severe obesity",
)


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

RECORD_COLUMNS = ("t_s", "t_ms", "state", "angle_deg", "target_deg", "inverted_s",
                  "remaining_s", "sets_done", "fault")

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


# -- errors ----------------------------------------------------------------
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
            click.echo(json.dumps({"ok": False, "error": error}))
        click.echo(f"Error: {self.message}", err=True)


def _range_message(error):
    """'--angle must be 1..30 deg (got 45 deg)' from an out_of_range error."""
    field = error.details.get("field")
    if field not in FIELDS:
        first = error.message.split(" ", 1)[0]
        field = first if first in FIELDS else None
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
                text = f"wrong PIN: {left} attempt{'s' if left != 1 else ''} left before " \
                       "admin commands are locked"
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
            "invalid_pin": " (a new PIN is 4 to 8 digits and not the factory default)",
            "full": " (delete a user first: `invtable user delete NAME`)",
            "unknown_cmd": " (is the firmware older than this invtable?)",
            "unknown_field": " (is the firmware older than this invtable?)",
            "internal": " (a firmware bug: please report it)",
        }
        return Failure(f"the board refused: {error.message}{hints.get(code, '')}",
                       EXIT_REFUSED, code, details, as_json)
    return Failure(str(error), EXIT_ERROR, "error", None, as_json)


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
        except OSError as error:
            raise Failure(str(error), EXIT_ERROR, "os_error", None, as_json) from None

    return wrapper


def connect(opts):
    return client_mod.Client(opts["port"], timeout=opts["timeout"])


def call(opts, cmd, **args):
    """One request on a fresh connection."""
    with connect(opts) as board:
        return board.request(cmd, **args)


def emit_json(data):
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _stdin_is_tty():
    return sys.stdin.isatty()


def resolve_pin(pin, prompt="Admin PIN"):
    """--pin / INVTABLE_PIN, or a hidden prompt in a terminal; checked for format so a
    typo does not cost an attempt."""
    if pin is None:
        if not _stdin_is_tty():
            raise click.UsageError(
                f"this command needs the admin PIN: give --pin, set {PIN_ENV}, "
                "or run it in a terminal to be asked")
        pin = click.prompt(prompt, hide_input=True)
    pin = pin.strip()
    if not pin_format_ok(pin):
        raise click.BadParameter(PIN_RULE, param_hint="PIN")
    return pin


pin_option = click.option(
    "--pin", envvar=PIN_ENV, metavar="PIN",
    help=f"Admin PIN [env {PIN_ENV}; asked with hidden input when omitted in a terminal]. "
    "On the command line it is visible to other users and in shell history.")


def _deg(name, help_text, low=0.0, high=90.0):
    return click.option(name, type=click.FloatRange(low, high), metavar="DEG", help=help_text)


def _sec(name, help_text, low=0.0, high=3600.0):
    return click.option(name, type=click.FloatRange(low, high), metavar="S", help=help_text)


def _limit_range(field):
    """(low, high) of a limit in people's units, from the firmware's own table
    (firmware.settings.LIMIT_FIELDS); high is None where it is the board's cap."""
    for name, low, high, _default in LIMIT_FIELDS:
        if name == field:
            return from_wire(field, low), None if high is None else from_wire(field, high)
    raise KeyError(field)


def _limit(field, help_text, **kwargs):
    """A `limits set` option, checked here with the firmware's bounds; a board cap
    (which this side cannot know) is left to the board, whose refusal names it."""
    option, unit, _label = FIELDS[field]
    return click.option(option, type=click.FloatRange(*_limit_range(field)),
                        metavar=unit.upper(), help=help_text, **kwargs)


CHECK_IN_RULE = "0 (off) or {:g}..{:g} s".format(from_wire("check_in_ms", CHECK_IN_MIN_MS),
                                                   _limit_range("check_in_ms")[1])


def _check_in(ctx, param, value):
    """--check-in: 0 (off), or at least CHECK_IN_MIN_MS (the board's rule)."""
    if value is None or value == 0 or to_wire("check_in_ms", value) >= CHECK_IN_MIN_MS:
        return value
    raise click.BadParameter(f"{value:g} s: a check-in is {CHECK_IN_RULE}", ctx=ctx, param=param)


def _collect(keys, values):
    """Protocol args from the options given (None = not given)."""
    args = {}
    for key, value in zip(keys, values, strict=True):
        if value is not None:
            args[key] = to_wire(key, value)
    if not args:
        options = ", ".join(FIELDS[k][0] for k in keys)
        raise click.UsageError(f"nothing to change: give at least one of {options}")
    return args


# -- rendering -------------------------------------------------------------
def kv_table(title, rows):
    table = Table(title=title, show_header=False, title_justify="left", title_style="bold")
    table.add_column(style="bold")
    table.add_column()
    for row in rows:
        table.add_row(*row)
    return table


def settings_table(title, section, keys, before=None):
    rows = []
    for key in keys:
        if key not in section:
            continue
        value = human(key, section[key])
        if before and key in before and before[key] != section[key]:
            value += f"  [yellow](was {human(key, before[key])})[/]"
        rows.append((FIELDS[key][2], value))
    return kv_table(title, rows)


def print_user(user, before=None):
    name = escape(str(user.get("name", "?")))
    active = " [green](active)[/]" if user.get("active") else ""
    out.print(f"[bold]user {name}[/]{active}")
    before = before or {}
    if "limits" in user:
        out.print(settings_table("limits (admin)", user["limits"], LIMIT_KEYS,
                                 before.get("limits")))
    if user.get("daily_limit_ms") is not None:
        out.print(f"today: {today_text(user.get('daily_used_ms'), user['daily_limit_ms'])}")
    if "program" in user:
        out.print(settings_table("program", user["program"], PROGRAM_KEYS,
                                 before.get("program")))
    if "progression" in user:
        out.print(settings_table("progression (admin)", user["progression"], PROGRESSION_KEYS,
                                 before.get("progression")))


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


# What to do about a notice (status "warning"), in plain words.
NOTICE_HINTS = {
    "go_refused_not_commissioned": "not commissioned: run `invtable setup`",
    "go_refused_calibration_changed": "the angle at home no longer matches commissioning: "
    "run `invtable setup` again",
    "calibration_changed": "the home switch is no longer where commissioning saw it: "
    "run `invtable setup` again",
    "go_refused_daily_limit": "GO refused: this user's time inverted for today is used up. "
    "It comes back tomorrow by the board's clock (`invtable clock set` sets it), or 24 h "
    "of powered-on time later if the clock was not set since the board started.",
    "go_refused_grip_released": "GO refused: hold the grip, then press GO. A session starts "
    f"only with the grip held, and the table returns home when it is let go for more than "
    f"{GRIP_RELEASE_MS / 1000:g} s.",
}


def _local_time(epoch_s):
    if epoch_s is None:
        return "-"
    return datetime.datetime.fromtimestamp(epoch_s).strftime("%Y-%m-%d %H:%M")


# -- commands --------------------------------------------------------------
@click.command()
@board_command
def status(opts):
    """The table's state, angle, active user and session."""
    data = call(opts, "status")
    if opts["as_json"]:
        return emit_json(data)
    rows = [
        ("state", state_text(data.get("state", "?"), data.get("fault"))),
        ("angle", degrees(data.get("angle_mdeg"))),
        ("target", degrees(data.get("target_mdeg"))),
        ("user", escape(str(data.get("user") or "-"))),
        ("session", "open" if data.get("session") else "none"),
    ]
    if data.get("session"):
        rows.append(("sets done", str(data.get("sets_done", 0))))
        rows.append(("inverted", f"{seconds(data.get('inverted_ms'), precise=True)} of "
                                 f"{seconds(data.get('inverted_limit_ms'))}"))
    if data.get("daily_limit_ms") is not None:
        rows.append(("today", today_text(data.get("daily_used_ms"), data["daily_limit_ms"])))
    if data.get("check_in_waiting"):
        rows.append(("check-in", "[bold reverse yellow] tap GO now [/]"))
    if data.get("warning"):
        rows.append(("notice", f"[yellow]{escape(str(data['warning']))}[/]"))
    last_end = data.get("last_end")
    if last_end:
        if isinstance(last_end, dict):
            last_end = last_end.get("end", json.dumps(last_end))
        rows.append(("last session", escape(end_text(last_end))))
    if data.get("last_error"):
        rows.append(("last error", f"[red]{escape(str(data['last_error']))}[/]"))
    if data.get("boot_errors"):
        rows.append(("boot errors", f"[red]{escape(', '.join(data['boot_errors']))}[/] "
                                    "(see README: fault codes)"))
    if data.get("uptime_ms") is not None:
        rows.append(("uptime", seconds(data["uptime_ms"] // 1000 * 1000)))
    for key, label in (("settings_status", "settings"), ("log_status", "log")):
        value = data.get(key)
        if value and value != "ok":
            rows.append((label, f"[yellow]{value}[/]"))
    if data.get("commissioned") is False:
        rows.append(("commissioned", "[yellow]no[/] "
                     f"({escape(str(data.get('calibration_status', '?')))})"))
    out.print(kv_table("invtable status", rows))
    hints = []
    if data.get("commissioned") is False:
        hints.append(NOTICE_HINTS["go_refused_not_commissioned"])
    hint = NOTICE_HINTS.get(data.get("warning"))
    if hint and hint not in hints:
        hints.append(hint)
    for hint in hints:
        out.print(f"[yellow]{hint}[/]")
    if data.get("pin_is_default"):
        out.print("[yellow]The admin PIN is the factory default: change it with "
                  "`invtable pin change`.[/]")


@click.command()
@board_command
def info(opts):
    """Firmware, board, the board's hard caps and this table's calibration."""
    data = call(opts, "info")
    if opts["as_json"]:
        return emit_json(data)
    caps = data.get("caps") or {}
    rows = [
        ("firmware", str(data.get("firmware", "?"))),
        ("protocol", str(data.get("protocol", "?"))),
        ("board", str(data.get("board", "?"))),
        ("chip", str(data.get("chip", "?"))),
        ("MicroPython", str(data.get("micropython", "?"))),
        ("max angle (board cap)", human("max_angle_mdeg", caps.get("max_angle_mdeg"))),
        ("max speed (board cap)", human("max_speed_mdeg_s", caps.get("max_speed_mdeg_s"))),
        ("max users", str(data.get("max_users", "?"))),
    ]
    commissioned = data.get("commissioned")
    if commissioned is not None:
        rows.append(("commissioned", f"{'yes' if commissioned else '[yellow]no[/]'} "
                     f"({escape(str(data.get('calibration_status', '?')))})"))
    out.print(kv_table("invtable board", rows))
    if data.get("calibration"):
        out.print(kv_table("calibration (measured by invtable setup)",
                           calibration_rows(data["calibration"])))
    if commissioned is False:
        out.print("[yellow]not commissioned: GO is refused until `invtable setup` has run "
                  "on the empty table.[/]")
    if data.get("protocol") not in (None, client_mod.PROTOCOL_VERSION):
        out.print(f"[yellow]protocol {data.get('protocol')} differs from this invtable's "
                  f"{client_mod.PROTOCOL_VERSION}: update one of them.[/]")


@click.command()
@board_command
def stop(opts):
    """STOP: a ramped return home, the same as the STOP button (always accepted)."""
    data = call(opts, "stop")
    if opts["as_json"]:
        return emit_json(data)
    out.print(f"STOP sent; state {state_text(data.get('state', '?'))}")


@click.group()
def user():
    """Users: list, show, create, delete, select."""


@user.command("list")
@board_command
def user_list(opts):
    """The users on the board; the active one is marked."""
    data = call(opts, "user.list")
    if opts["as_json"]:
        return emit_json(data)
    table = Table(title=f"users ({len(data.get('users', []))} of {data.get('max_users', '?')})",
                  title_justify="left", title_style="bold")
    table.add_column("name")
    table.add_column("active")
    for entry in data.get("users", []):
        mark = "[green]*[/]" if entry.get("active") else ""
        table.add_row(escape(str(entry.get("name", "?"))), mark)
    out.print(table)


@user.command("show")
@click.argument("name")
@board_command
def user_show(name, opts):
    """A user's limits, program and progression."""
    data = call(opts, "user.get", name=name)
    if opts["as_json"]:
        return emit_json(data)
    print_user(data)


def print_screening(console):
    console.print(Panel(
        "\n".join(f"  - {item}" for item in SCREENING)
        + "\n\nAnyone with one of these (or unsure) must [bold]consult a doctor[/] before "
        "using an inversion table. Inversion raises blood pressure and eye pressure; "
        "start low (15-30 deg) and short (30 s - 2 min). Dizziness, headache or pain: "
        "press STOP at once.",
        title="[bold yellow]Before inverting: health screening[/]", title_align="left",
        border_style="yellow"))


@user.command("create")
@click.argument("name")
@pin_option
@click.option("--yes", "-y", is_flag=True,
              help="Confirm the health screening was done (for scripts).")
@board_command
def user_create(name, pin, yes, opts):
    """Create user NAME with conservative defaults (admin).

    Shows the health-screening list of contraindications first and asks for
    confirmation (--yes skips the question)."""
    print_screening(err if opts["as_json"] else out)
    if not yes:
        click.confirm(f"Has {name} read this and, where it applies, consulted a doctor?",
                      abort=True, err=opts["as_json"])
    pin = resolve_pin(pin)
    data = call(opts, "user.create", name=name, pin=pin)
    if opts["as_json"]:
        return emit_json(data)
    out.print(f"[green]created user {escape(str(data.get('name', name)))}[/]")
    print_user(data)
    out.print(f"Select it with `invtable user select {data.get('name', name)}`.")


@user.command("delete")
@click.argument("name")
@pin_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@board_command
def user_delete(name, pin, yes, opts):
    """Delete user NAME (admin)."""
    if not yes:
        click.confirm(f"Delete user {name} and their settings?", abort=True,
                      err=opts["as_json"])
    pin = resolve_pin(pin)
    data = call(opts, "user.delete", name=name, pin=pin)
    if opts["as_json"]:
        return emit_json(data or {"deleted": name})
    out.print(f"deleted user {name}")


@user.command("select")
@click.argument("name")
@board_command
def user_select(name, opts):
    """Make NAME the active user (the next GO runs their program)."""
    data = call(opts, "user.select", name=name)
    if opts["as_json"]:
        return emit_json(data)
    out.print(f"active user: [bold]{escape(str(data.get('active', name)))}[/]")


@click.group()
def program():
    """A user's session program."""


@program.command("set")
@click.argument("name")
@_deg("--angle", "Target angle, degrees (0 = horizontal, 90 = vertical).", 0, 90)
@_sec("--hold", "Hold per set, seconds.")
@click.option("--sets", type=click.IntRange(1, 100), help="Number of sets.")
@_sec("--rest", "Rest at home between sets, seconds.")
@click.option("--speed", type=click.FloatRange(0, 90), metavar="DEG/S",
              help="Tilt speed, degrees per second.")
@_sec("--exit-pause", "Pause near horizontal on the way up, seconds.")
@board_command
def program_set(name, angle, hold, sets, rest, speed, exit_pause, opts):
    """Change NAME's program; values must fit inside the user's limits."""
    args = _collect(PROGRAM_KEYS, (angle, hold, sets, rest, speed, exit_pause))
    with connect(opts) as board:
        before = board.request("user.get", name=name)
        data = board.request("program.set", name=name, **args)
    if opts["as_json"]:
        return emit_json(data)
    program_data = data.get("program", data)
    out.print(settings_table(f"program of {name}", program_data, PROGRAM_KEYS,
                             before.get("program")))


@click.group()
def limits():
    """A user's limits (admin)."""


@limits.command("set")
@click.argument("name")
@_limit("max_angle_mdeg", "Highest angle, degrees (never above the board's cap).")
@_limit("max_inverted_ms", "Most time above horizontal per session, seconds (never above "
        "the board's cap).")
@_limit("max_speed_mdeg_s", "Fastest tilt, degrees per second (never above the board's cap).")
@_limit("max_daily_inverted_ms", "Most time above horizontal per day, all sessions together, "
        "seconds (never above the board's cap).")
@_limit("check_in_ms", "Rider check-ins: every S seconds of tilting and holding, the beeper "
        f"chirps and the rider must tap GO within {CHECK_IN_ANSWER_MS / 1000:g} s, or the table "
        f"returns home. {CHECK_IN_RULE}.", callback=_check_in)
@pin_option
@board_command
def limits_set(name, max_angle, max_inverted, max_speed, max_daily, check_in, pin, opts):
    """Change NAME's limits (admin); the program is lowered to fit."""
    args = _collect(LIMIT_KEYS, (max_angle, max_inverted, max_speed, max_daily, check_in))
    pin = resolve_pin(pin)
    with connect(opts) as board:
        before = board.request("user.get", name=name)
        data = board.request("limits.set", name=name, pin=pin, **args)
    if opts["as_json"]:
        return emit_json(data)
    out.print(settings_table(f"limits of {name}", data.get("limits", {}), LIMIT_KEYS,
                             before.get("limits")))
    if "program" in data:
        out.print(settings_table(f"program of {name}", data["program"], PROGRAM_KEYS,
                                 before.get("program")))


@click.group()
def progression():
    """How a user's program grows per completed session (admin)."""


@progression.command("set")
@click.argument("name")
@_deg("--angle-step", "Degrees added to the angle after each completed session.", 0, 90)
@_sec("--hold-step", "Seconds added to the hold after each completed session.")
@pin_option
@board_command
def progression_set(name, angle_step, hold_step, pin, opts):
    """Change NAME's progression (admin); 0 = no growth (the default)."""
    args = _collect(PROGRESSION_KEYS, (angle_step, hold_step))
    pin = resolve_pin(pin)
    data = call(opts, "progression.set", name=name, pin=pin, **args)
    if opts["as_json"]:
        return emit_json(data)
    out.print(settings_table(f"progression of {name}", data.get("progression", data),
                             PROGRESSION_KEYS))


@click.group()
def pin():
    """The admin PIN."""


@pin.command("change")
@pin_option
@click.option("--new-pin", envvar="INVTABLE_NEW_PIN", metavar="PIN",
              help="The new PIN, 4 to 8 digits [env INVTABLE_NEW_PIN; asked when omitted].")
@board_command
def pin_change(pin, new_pin, opts):
    """Change the admin PIN (4 to 8 digits, not the factory default)."""
    pin = resolve_pin(pin, "Current admin PIN")
    if new_pin is None:
        if not _stdin_is_tty():
            raise click.UsageError("give --new-pin or INVTABLE_NEW_PIN, or run in a terminal")
        new_pin = click.prompt("New admin PIN", hide_input=True, confirmation_prompt=True)
    new_pin = new_pin.strip()
    if not pin_format_ok(new_pin):
        raise click.BadParameter(PIN_RULE, param_hint="--new-pin")
    data = call(opts, "pin.change", pin=pin, new_pin=new_pin)
    if opts["as_json"]:
        return emit_json(data or {"changed": True})
    out.print("[green]admin PIN changed[/]")


def read_log(board):
    """Every log entry (the board sends at most 10 per request), and the log status."""
    entries, start, total, status_text = [], 0, None, None
    while total is None or start < total:
        data = board.request("log.read", start=start, count=10)
        page = data.get("entries", [])
        total = data.get("total", 0)
        status_text = data.get("status")
        entries.extend(page)
        if not page:
            break
        start += len(page)
    return entries, total or 0, status_text


@click.group(invoke_without_command=True)
@click.option("--user", "user_name", metavar="NAME", help="Only this user's sessions.")
@board_command
@click.pass_context
def log(ctx, user_name, opts):
    """The session log (one summary per session); `log clear` empties it."""
    if ctx.invoked_subcommand is not None:
        return
    with connect(opts) as board:
        entries, total, status_text = read_log(board)
    numbered = [(i + 1, e) for i, e in enumerate(entries)
                if user_name is None or e.get("user") == user_name]
    if opts["as_json"]:
        return emit_json({"entries": [e for _, e in numbered], "total": total,
                          "status": status_text})
    table = Table(title=f"session log ({total} session{'s' if total != 1 else ''})",
                  title_justify="left", title_style="bold")
    # The user's time inverted that day, this session included (older entries: none).
    daily = any(e.get("daily_ms") is not None for _, e in numbered)
    numbers = ("#", "max angle", "inverted", "that day")
    for column in ("#", "user", "started", "max angle", "inverted",
                   *(("that day",) if daily else ()), "end", "fault"):
        table.add_column(column, justify="right" if column in numbers else "left")
    for number, e in numbered:
        end = escape(str(e.get("end", "?")))
        table.add_row(str(number), escape(str(e.get("user", "?"))), _local_time(e.get("start_s")),
                      degrees(e.get("max_angle_mdeg")),
                      seconds(e.get("inverted_ms"), precise=True),
                      *((whole_seconds(e.get("daily_ms")),) if daily else ()),
                      f"[{END_STYLE[end]}]{end}[/]" if end in END_STYLE else end,
                      escape(str(e.get("fault") or "")))
    out.print(table)
    if status_text and status_text != "ok":
        out.print(f"[yellow]log status: {status_text}[/]")


@log.command("clear")
@pin_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@board_command
def log_clear(pin, yes, opts):
    """Delete every entry of the session log (admin)."""
    if not yes:
        click.confirm("Delete the whole session log?", abort=True, err=opts["as_json"])
    pin = resolve_pin(pin)
    data = call(opts, "log.clear", pin=pin)
    if opts["as_json"]:
        return emit_json(data or {"cleared": True})
    out.print("session log cleared")


@click.group()
def clock():
    """The board's wall clock (stamps the session log)."""


def _parse_when(ctx, param, value):
    if value is None:
        return int(time.time())
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use ISO 8601, e.g. 2025-03-01T09:30 or 2025-03-01 09:30:00",
                                 ctx=ctx, param=param) from None
    if when.tzinfo is None:
        when = when.astimezone()  # a naive time is local time
    return int(when.timestamp())


@clock.command("set")
@click.argument("when", required=False, callback=_parse_when)
@board_command
def clock_set(when, opts):
    """Set the board's clock to WHEN (ISO 8601, local time unless an offset is given;
    default: now), and this computer's offset from UTC now, which gives the board
    its calendar day for the daily limit."""
    offset = int(datetime.datetime.now().astimezone().utcoffset().total_seconds())
    data = call(opts, "clock.set", epoch_s=when, utc_offset_s=offset)
    if opts["as_json"]:
        return emit_json(data)
    offset = data.get("utc_offset_s", offset)
    hours, minutes = divmod(abs(offset) // 60, 60)
    out.print(f"board clock set to {_local_time(data.get('epoch_s', when))}, "
              f"UTC{'-' if offset < 0 else '+'}{hours:02d}:{minutes:02d} (the daily limit's "
              "days start at local midnight)")


@click.command()
@click.argument("rate", type=click.IntRange(0, 10))
@board_command
def telemetry(rate, opts):
    """Set the board's telemetry rate to RATE lines per second (0 = off).

    The lines are events on the serial port; `invtable monitor` shows them."""
    data = call(opts, "telemetry", rate_hz=rate)
    if opts["as_json"]:
        return emit_json(data)
    out.print(f"telemetry: {data.get('rate_hz', rate)} Hz")


# -- monitor ---------------------------------------------------------------
class MonitorView:
    """What the monitor shows: the latest telemetry and the recent events."""

    def __init__(self, port, status_data):
        self.port = port
        self.user = status_data.get("user")
        self.limit_ms = status_data.get("inverted_limit_ms")
        self.latest = {
            "state": status_data.get("state"),
            "angle_mdeg": status_data.get("angle_mdeg"),
            "target_mdeg": status_data.get("target_mdeg"),
            "inverted_ms": status_data.get("inverted_ms") if status_data.get("session") else None,
            "remaining_ms": None,
            "sets_done": status_data.get("sets_done"),
            "fault": status_data.get("fault"),
        }
        if status_data.get("session") and self.limit_ms is not None:
            self.latest["remaining_ms"] = self.limit_ms - (status_data.get("inverted_ms") or 0)
        self.last_seen = None
        self.started = time.monotonic()
        self.telemetry_count = 0

    def event_line(self, event):
        """A one-line description of a non-telemetry event, or None."""
        kind = event.get("event")
        if kind == "state":
            text = f"state {event.get('from', '?')} -> {event.get('state', '?')}"
            if event.get("fault"):
                text += f" (fault {event['fault']})"
            return text
        if kind == "warning":
            return f"notice: {event.get('code')}"
        if kind == "session_end":
            return (f"session ended: {end_text(event.get('end'))}"
                    f", max {degrees(event.get('max_angle_mdeg'))}"
                    f", inverted {seconds(event.get('inverted_ms'), precise=True)}"
                    + (f", fault {event['fault']}" if event.get("fault") else ""))
        if kind == "boot":
            return f"board restarted (reset_fault {event.get('reset_fault')})"
        return None

    def update(self, event):
        if event.get("event") == "telemetry":
            self.latest.update({k: event.get(k) for k in (
                "state", "angle_mdeg", "target_mdeg", "inverted_ms", "remaining_ms",
                "sets_done", "fault")})
            self.last_seen = time.monotonic()
            self.telemetry_count += 1
        elif event.get("event") == "state":
            self.latest["state"] = event.get("state")
            self.latest["fault"] = event.get("fault")

    def render(self, live=True):
        d = self.latest
        state = d.get("state") or "?"
        angle = d.get("angle_mdeg")
        rows = [
            ("state", state_text(state, d.get("fault"))),
            ("angle", f"[bold]{degrees(angle)}[/]  {self._bar(angle, d.get('target_mdeg'))}"),
            ("target", degrees(d.get("target_mdeg"))),
            ("inverted", seconds(d.get("inverted_ms"), precise=True)
             + (f" of {seconds(self.limit_ms)}" if self.limit_ms and d.get("inverted_ms")
                is not None else "")),
            ("time left", seconds(d.get("remaining_ms"), precise=True)),
            ("sets done", "-" if d.get("sets_done") is None else str(d["sets_done"])),
            ("user", escape(str(self.user or "-"))),
        ]
        table = kv_table(None, rows)
        if not live:
            return table
        if self.last_seen is None:
            footer = "[dim]waiting for telemetry...[/]"
            if time.monotonic() - self.started > 3:
                footer = "[yellow]no telemetry yet: is the firmware running?[/]"
        else:
            age = time.monotonic() - self.last_seen
            footer = (f"[red]no telemetry for {age:.0f} s[/]" if age > 3
                      else f"[dim]{self.port}, telemetry {age:.1f} s ago[/]")
        hint = Text.from_markup("[dim]Ctrl-C exits (the table carries on); s: send STOP[/]")
        return Panel(Group(table, Text.from_markup(footer), hint),
                     title="[bold]invtable monitor[/]", title_align="left")

    @staticmethod
    def _bar(angle_mdeg, target_mdeg, width=30, low=-60000, high=90000):
        if angle_mdeg is None:
            return ""
        cells = ["-"] * width

        def col(mdeg):
            return max(0, min(width - 1, round((mdeg - low) / (high - low) * (width - 1))))

        cells[col(0)] = "|"
        if target_mdeg is not None:
            cells[col(target_mdeg)] = "T"
        cells[col(angle_mdeg)] = "#"
        return "[dim]upright[/] " + "".join(cells) + " [dim]90[/]"


def record_row(t0, event):
    def num(key, scale=1000):
        value = event.get(key)
        return "" if value is None else round(value / scale, 3)

    return [round(time.monotonic() - t0, 3), event.get("t_ms", ""), event.get("state", ""),
            num("angle_mdeg"), num("target_mdeg"), num("inverted_ms"), num("remaining_ms"),
            event.get("sets_done", ""), event.get("fault") or ""]


class _Keys:
    """Single key presses from a terminal (cbreak mode), restored on exit."""

    def __init__(self):
        self.fd = None
        self.saved = None

    def __enter__(self):
        try:
            import termios
            import tty

            if sys.stdin.isatty():
                self.fd = sys.stdin.fileno()
                self.saved = termios.tcgetattr(self.fd)
                tty.setcbreak(self.fd)
        except (ImportError, OSError, ValueError):
            self.fd = None
        return self

    def read(self):
        if self.fd is None:
            return ""
        import select

        ready, _, _ = select.select([self.fd], [], [], 0)
        return os.read(self.fd, 16).decode(errors="ignore") if ready else ""

    def __exit__(self, *exc):
        if self.fd is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


@click.command()
@click.option("--rate", type=click.IntRange(1, 10), default=5, show_default=True,
              help="Telemetry lines per second to ask the board for.")
@click.option("--duration", type=click.FloatRange(0.1, 24 * 3600), metavar="S",
              help="Exit after S seconds (default: run until Ctrl-C).")
@click.option("--once", is_flag=True, help="Print the current status once and exit.")
@click.option("--record", type=click.Path(dir_okay=False, writable=True), metavar="FILE.csv",
              help="Also save every telemetry line to a CSV file (for `invtable plot --trace`).")
@board_command
def monitor(rate, duration, once, record, opts):
    """Live view of angle, target, state, time inverted and time left.

    Ctrl-C exits; the table carries on (STOP is the button, or `s` here, or
    `invtable stop`). With --json, prints each event as one JSON line."""
    as_json = opts["as_json"]
    with connect(opts) as board:
        status_data = board.request("status")
        view = MonitorView(board.port, status_data)
        if once:
            if as_json:
                return emit_json(status_data)
            out.print(view.render(live=False))
            return
        record_file = writer = None
        if record:
            record_file = open(record, "w", newline="")  # noqa: SIM115 - closed below
            writer = csv.writer(record_file)
            writer.writerow(RECORD_COLUMNS)
        t0 = time.monotonic()
        board.request("telemetry", rate_hz=rate)
        try:
            if as_json:
                for event in board.events(duration_s=duration):
                    if event is None:
                        continue
                    if writer is not None and event.get("event") == "telemetry":
                        writer.writerow(record_row(t0, event))
                    click.echo(json.dumps(event))
            else:
                _monitor_live(board, view, duration, writer, t0)
        except KeyboardInterrupt:
            pass
        finally:
            if record_file is not None:
                record_file.close()
            with contextlib.suppress(client_mod.ClientError):
                board.request("telemetry", rate_hz=0)
    if not as_json:
        if not out.is_terminal:
            out.print()  # a live view printed once at the end leaves no newline
        out.print(f"[dim]monitor ended; {view.telemetry_count} telemetry lines"
                  + (f", recorded to {record}" if record else "") + "[/]")


def _monitor_live(board, view, duration, writer, t0):
    from rich.live import Live

    with Live(view.render(), console=out, refresh_per_second=8, transient=False) as live, \
            _Keys() as keys:
        for event in board.events(duration_s=duration, idle_s=0.2):
            if event is not None:
                view.update(event)
                if writer is not None and event.get("event") == "telemetry":
                    writer.writerow(record_row(t0, event))
                line = view.event_line(event)
                if line:
                    live.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {escape(line)}")
            pressed = keys.read()
            if "s" in pressed.lower() or " " in pressed:
                board.request("stop")
                live.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] [bold]STOP sent[/]")
            live.update(view.render())


# -- plot ------------------------------------------------------------------
def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise Failure("plotting needs matplotlib: pip install 'invtable[plot]'") from None
    return plt


def read_trace(path):
    """(t_s, angle_deg, target_deg, label) lists from a `sim run --trace` CSV or a
    `monitor --record` CSV."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise Failure(f"{path}: no rows")
    columns = rows[0].keys()
    if "angle_true_deg" in columns:  # sim run --trace
        t_key, angle_key, t_scale, label = "t_ms", "angle_true_deg", 1000, "true angle"
    elif "angle_deg" in columns:  # monitor --record
        # The board's own clock (t_ms), not the host's: it is the table's time
        # even when a simulated board runs faster than real time.
        t_key, angle_key, t_scale, label = "t_ms", "angle_deg", 1000, "angle"
    else:
        raise Failure(f"{path}: not a trace (expected the columns of `invtable sim run --trace` "
                      "or `invtable monitor --record`)")

    def num(text):
        try:
            return float(text)
        except (TypeError, ValueError):
            return float("nan")

    t = [num(r[t_key]) / t_scale for r in rows]
    t0 = t[0]
    t = [value - t0 for value in t]
    return t, [num(r[angle_key]) for r in rows], [num(r.get("target_deg")) for r in rows], label


@click.command()
@click.option("--trace", type=click.Path(exists=True, dir_okay=False), metavar="FILE.csv",
              help="Plot angle over time from a `sim run --trace` or `monitor --record` CSV "
              "(no board needed).")
@click.option("--user", "user_name", metavar="NAME", help="Progress of this user only.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, writable=True),
              metavar="FILE.png", help="PNG to write [default: invtable-progress.png, or "
              "the trace's name with .png].")
@board_command
def plot(trace, user_name, out_path, opts):
    """Write a PNG: progress across sessions (from the board's log), or with --trace,
    the angle over time of one recorded session."""
    if trace:
        out_path = out_path or os.path.splitext(trace)[0] + ".png"
        t, angle, target, label = read_trace(trace)
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(10, 4.5))
        ax.plot(t, angle, label=label, color="tab:blue")
        ax.plot(t, target, label="target", color="tab:orange", linestyle="--")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xlabel("time, s")
        ax.set_ylabel("angle, degrees (0 = horizontal)")
        ax.set_title(f"invtable session: {os.path.basename(trace)}")
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
        result = {"png": out_path, "trace": trace, "rows": len(t)}
    else:
        with connect(opts) as board:
            entries, _, _ = read_log(board)
        if user_name:
            entries = [e for e in entries if e.get("user") == user_name]
        if not entries:
            raise Failure("no sessions in the log" + (f" for {user_name}" if user_name else ""),
                          EXIT_ERROR, "empty_log", None, opts["as_json"])
        out_path = out_path or "invtable-progress.png"
        plt = _pyplot()
        n = list(range(1, len(entries) + 1))
        palette = {"green": "tab:green", "yellow": "tab:orange", "red": "tab:red"}
        colors = [palette.get(END_STYLE.get(e.get("end")), "tab:gray") for e in entries]
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
        ax1.plot(n, [(e.get("max_angle_mdeg") or 0) / 1000 for e in entries], color="tab:blue",
                 zorder=1)
        ax1.scatter(n, [(e.get("max_angle_mdeg") or 0) / 1000 for e in entries], c=colors,
                    zorder=2)
        ax1.set_ylabel("max angle, deg")
        ax2.bar(n, [(e.get("inverted_ms") or 0) / 1000 for e in entries], color=colors)
        ax2.set_ylabel("time inverted, s")
        ax2.set_xlabel("session (green completed, orange stopped/limit, red fault or the "
                       "rider not answering)")
        who = f" of {user_name}" if user_name else ""
        ax1.set_title(f"invtable progress{who}: {len(entries)} sessions")
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
        result = {"png": out_path, "sessions": len(entries)}
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    if opts["as_json"]:
        return emit_json(result)
    out.print(f"wrote {out_path}")


COMMANDS = (status, info, stop, user, program, limits, progression, pin, log, clock, telemetry,
            monitor, plot)


def register(main_group):
    """Add the board commands to the `invtable` click group."""
    for command in COMMANDS:
        main_group.add_command(command)
