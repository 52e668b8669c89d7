"""`invtable status`, `info`, `stop`, `telemetry` and `monitor`: what the table is
doing now, with words for every fault and notice code (host/codes.py)."""

import contextlib
import csv
import json
import os
import signal
import sys
import textwrap
import time

import click
from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from invtable.firmware.settings import DEFAULT_USER
from invtable.host import cli_common as common
from invtable.host import client as client_mod
from invtable.host import portshare
from invtable.host.cli_common import (
    board_command,
    call,
    connect,
    degrees,
    emit_json,
    end_text,
    human,
    kv_table,
    out,
    plural,
    seconds,
    state_text,
    today_text,
    writable_file,
)
from invtable.host.codes import LOG_TEXT, SETTINGS_MOOT_WITH_USERS, SETTINGS_TEXT, explain

RECORD_COLUMNS = ("t_s", "t_ms", "state", "angle_deg", "target_deg", "inverted_s",
                  "remaining_s", "sets_done", "fault")


KIND_STYLE = {"fault": "red", "later fault": "red", "boot error": "red", "notice": "yellow",
              "settings": "yellow", "log": "yellow"}


def advice(items):
    """For each (kind, code, words), once: the code, then the words (by default
    what the code means and what to do), indented and wrapped."""
    shown, seen = [], set()
    for kind, code, words in items:
        if not code or code in seen:
            continue
        seen.add(code)
        words = words or explain(code) or \
            "a code this invtable has no words for (a newer firmware?)"
        shown.append(f"[{KIND_STYLE[kind]}]{kind} [bold]{escape(code)}[/][/]")
        shown.append(escape(textwrap.fill(words, max(40, out.width - 1), initial_indent="  ",
                                          subsequent_indent="  ", break_long_words=False,
                                          break_on_hyphens=False)))
    return shown


def _storage_notes(data, users):
    """Rows and advice items for the settings and log status, only while they still
    apply: the settings' defaults until a user other than the default one exists,
    the log only when damaged or a newer firmware's ("missing" is no session yet)."""
    rows, items = [], []
    settings = data.get("settings_status")
    moot = settings in SETTINGS_MOOT_WITH_USERS and users is not None and \
        not {u.get("name") for u in users} <= {DEFAULT_USER}
    if settings not in (None, "ok") and not moot:
        rows.append(("settings", f"[yellow]{escape(str(settings))}[/]"))
        if settings in SETTINGS_TEXT:
            items.append(("settings", settings, SETTINGS_TEXT[settings]))
    log_status = data.get("log_status")
    if log_status not in (None, "ok", "missing"):
        rows.append(("log", f"[yellow]{escape(str(log_status))}[/]"))
        if log_status in LOG_TEXT:
            items.append(("log", log_status, LOG_TEXT[log_status]))
    return rows, items


@click.command()
@board_command
def status(opts):
    """The table's state, angle, active user and session, with what every fault
    and notice means and what to do."""
    with connect(opts) as board:
        data = board.request("status")
        if opts["as_json"]:
            return emit_json(data)
        users = None
        if data.get("settings_status") in SETTINGS_MOOT_WITH_USERS:
            users = board.request("user.list").get("users", [])
    rows = [
        ("state", state_text(data.get("state", "?"), data.get("fault"))),
        ("angle", degrees(data.get("angle_mdeg"))),
        ("target", degrees(data.get("target_mdeg"))),
        ("user", escape(str(data.get("user") or "-"))),
        ("session", "open" if data.get("session") else "none"),
    ]
    if data.get("fault_chain"):
        rows.append(("later faults", f"[red]{escape(', '.join(data['fault_chain']))}[/]"))
    if data.get("session"):
        rows.append(("sets done", str(data.get("sets_done", 0))))
        rows.append(("inverted", f"{seconds(data.get('inverted_ms'), precise=True)} of "
                                 f"{seconds(data.get('inverted_limit_ms'))}"))
    if data.get("daily_limit_ms") is not None:
        rows.append(("today", today_text(data.get("daily_used_ms"), data["daily_limit_ms"])))
    if data.get("check_in_waiting"):
        rows.append(("check-in", "[bold reverse yellow] tap GO now [/]"))
    if data.get("heap_free_bytes") is not None:
        free_kb = data["heap_free_bytes"] / 1024
        low = data.get("warning") == "go_refused_low_memory"
        rows.append(("heap free", f"[red]{free_kb:.1f} KB: too little to start a session[/]"
                     if low else f"{free_kb:.1f} KB"))
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
        rows.append(("boot errors", f"[red]{escape(', '.join(data['boot_errors']))}[/]"))
    if data.get("newer_files"):
        rows.append(("newer files", f"[yellow]{escape(', '.join(data['newer_files']))}[/]"))
    if data.get("uptime_ms") is not None:
        rows.append(("uptime", seconds(data["uptime_ms"] // 1000 * 1000)))
    storage_rows, storage_items = _storage_notes(data, users)
    rows += storage_rows
    if data.get("commissioned") is False:
        rows.append(("commissioned", "[yellow]no[/] "
                     f"({escape(str(data.get('calibration_status', '?')))})"))
    out.print(kv_table("invtable status", rows))
    items = [("fault", data.get("fault"), None)]
    items += [("later fault", code, None) for code in data.get("fault_chain") or ()]
    items += [("notice", data.get("warning"), None)]
    items += [("boot error", code, None) for code in data.get("boot_errors") or ()]
    if data.get("commissioned") is False:
        items.append(("notice", "go_refused_not_commissioned", None))
    for line in advice(items + storage_items):
        out.print(line, soft_wrap=True)
    if data.get("pin_is_default"):
        out.print("[yellow]The admin PIN is the factory default: change it with "
                  "`invtable pin change`.[/]")


def micropython_text(info_data):
    """The board's MicroPython version; the simulated board (the firmware under
    CPython) reports none."""
    if "micropython" not in info_data:
        return "?"
    version = info_data["micropython"]
    return "none: the simulated board (the firmware under CPython)" if version is None \
        else str(version)


def firmware_slot_text(slot):
    """Which slot the boot loader checked and started, and its manifest's hash."""
    if not slot:
        return "none: not started by the boot loader (the simulated board)"
    text = escape(f"/fw/{slot.get('slot')}, manifest sha256 {slot.get('manifest_sha256')}")
    if slot.get("fallback_code"):
        text += (f" [red](the fallback: /fw/{escape(str(slot.get('fallback_from')))} "
                 f"was not run, {escape(str(slot['fallback_code']))}; `invtable deploy` "
                 "repairs it)[/]")
    return text


@click.command()
@board_command
def info(opts):
    """Firmware, board, the board's hard caps and this table's calibration."""
    data = call(opts, "info")
    if opts["as_json"]:
        return emit_json(data)
    caps = data.get("caps") or {}
    slot = data.get("slot") or {}
    rows = [
        ("firmware", str(data.get("firmware", "?"))),
        ("firmware slot", firmware_slot_text(slot)),
        ("protocol", str(data.get("protocol", "?"))),
        ("board", str(data.get("board", "?"))),
        ("chip", str(data.get("chip", "?"))),
        ("MicroPython", micropython_text(data)),
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
                           common.calibration_rows(data["calibration"])))
    if commissioned is False:
        out.print("[yellow]not commissioned: GO is refused until `invtable setup` has run "
                  "on the empty table.[/]")
    if data.get("protocol") not in (None, client_mod.PROTOCOL_VERSION):
        out.print(f"[yellow]protocol {data.get('protocol')} differs from this invtable's "
                  f"{client_mod.PROTOCOL_VERSION}: update one of them.[/]")


@click.command()
@board_command
def stop(opts):
    """STOP: a ramped return home, the same as the STOP button (always accepted).

    Sent again every second until the board confirms it; if it never does,
    says so plainly (exit 3): then press the STOP button on the table."""
    try:
        data = call(opts, "stop")
    except client_mod.ConnectionProblem as error:
        raise client_mod.ConnectionProblem(
            f"STOP NOT CONFIRMED by the board: press the STOP button on the table now. "
            f"({error})") from None
    if opts["as_json"]:
        return emit_json(data)
    out.print(f"STOP sent; state {state_text(data.get('state', '?'))}")


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
def _with_words(code):
    """'stall (the actuator was driven...: if the table...)', or the bare code."""
    words = explain(code)
    return f"{code} ({words})" if words else str(code)


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
                text += f": fault {_with_words(event['fault'])}"
            return text
        if kind == "warning":
            return f"notice: {_with_words(event.get('code'))}"
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
        if d.get("fault") and explain(d["fault"]):
            rows.append(("fault", f"[red]{escape(explain(d['fault']))}[/]"))
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
              callback=writable_file,
              help="Also save every telemetry line to a CSV file (for `invtable plot --trace`).")
@board_command
def monitor(rate, duration, once, record, opts):
    """Live view of angle, target, state, time inverted and time left.

    Ctrl-C exits (exit 0); the table carries on (STOP is the button, or `s`
    here, or `invtable stop`). With --json, prints each event as one JSON line.
    While it runs, the other invtable commands (`invtable stop` first) reach
    the board through it, from any terminal of the same user."""
    as_json = opts["as_json"]
    with connect(opts) as board, _sharing(board) as share:
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
        if share is not None:  # (a monitor through another's port: its rate applies)
            board.request("telemetry", rate_hz=rate)
        try:
            if as_json:
                for event in _events(board, share, duration):
                    if event is None:
                        continue
                    if writer is not None and event.get("event") == "telemetry":
                        writer.writerow(record_row(t0, event))
                    click.echo(json.dumps(event))
            else:
                _monitor_live(board, share, view, duration, writer, t0)
        except KeyboardInterrupt:
            pass
        finally:
            if record_file is not None:
                record_file.close()
            if share is not None:
                with contextlib.suppress(client_mod.ClientError):
                    board.request("telemetry", rate_hz=0)
    if not as_json:
        if not out.is_terminal:
            out.print()  # a live view printed once at the end leaves no newline
        out.print(f"[dim]monitor ended; {plural(view.telemetry_count, 'telemetry line')}"
                  + (f", recorded to {record}" if record else "") + "[/]")


@contextlib.contextmanager
def _sharing(board):
    """While this command owns the port, serve it to the other invtable
    processes (host/portshare.py); None when it reaches the board through
    another's."""
    if board.shared:
        yield None
        return

    def _terminate(signum, frame):
        raise KeyboardInterrupt  # SIGTERM ends the monitor as Ctrl-C does: cleanly

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with portshare.PortShare(board) as share:
            yield share
    finally:
        signal.signal(signal.SIGTERM, previous)


def _events(board, share, duration, idle_s=0.1):
    """The board's events, relaying the other processes' requests in between
    (every idle_s at least: a STOP from another terminal waits no longer)."""
    for event in board.events(duration_s=duration, idle_s=idle_s):
        if share is not None:
            share.pump()
            if event is not None:
                share.broadcast(event)
        yield event


def _monitor_live(board, share, view, duration, writer, t0):
    from rich.live import Live

    with Live(view.render(), console=out, refresh_per_second=8, transient=False) as live, \
            _Keys() as keys:
        for event in _events(board, share, duration):
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


COMMANDS = (status, info, stop, telemetry, monitor)


def register(group):
    common.register(group, COMMANDS)
