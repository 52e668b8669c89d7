"""`invtable log`, `log clear`, `clock set` and `plot`: the sessions that were,
and the board clock that stamps them."""

import datetime
import os
import time

import click
from rich.markup import escape
from rich.table import Table

from invtable.host import cli_common as common
from invtable.host import client as client_mod
from invtable.host import plots
from invtable.host.cli_common import (
    END_STYLE,
    END_TEXT,
    EXIT_ERROR,
    Failure,
    board_command,
    call,
    connect,
    degrees,
    emit_json,
    local_time,
    out,
    pin_option,
    plural,
    resolve_pin,
    seconds,
    whole_seconds,
    writable_file,
)
from invtable.host.codes import LOG_TEXT, explain


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


def legend_lines(entries):
    """Words for each fault and session end code the entries show, once each."""
    lines, seen = [], set()
    for e in entries:
        for code, words in ((e.get("fault"), explain(e.get("fault"))),
                            (e.get("end"), END_TEXT.get(e.get("end")))):
            if code and words and code not in seen:
                seen.add(code)
                lines.append(f"[dim]{escape(code)}: {escape(words)}[/]")
    return lines


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
    table = Table(title=f"session log ({plural(total, 'session')})",
                  title_justify="left", title_style="bold")
    # The user's time inverted that day, this session included (older entries: none).
    daily = any(e.get("daily_ms") is not None for _, e in numbered)
    numbers = ("#", "max angle", "inverted", "that day")
    for column in ("#", "user", "started", "max angle", "inverted",
                   *(("that day",) if daily else ()), "end", "fault"):
        table.add_column(column, justify="right" if column in numbers else "left")
    for number, e in numbered:
        end = escape(str(e.get("end", "?")))
        table.add_row(str(number), escape(str(e.get("user", "?"))), local_time(e.get("start_s")),
                      degrees(e.get("max_angle_mdeg")),
                      seconds(e.get("inverted_ms"), precise=True),
                      *((whole_seconds(e.get("daily_ms")),) if daily else ()),
                      f"[{END_STYLE[end]}]{end}[/]" if end in END_STYLE else end,
                      escape(str(e.get("fault") or "")))
    out.print(table)
    for line in legend_lines([e for _, e in numbered]):
        out.print(line)
    if status_text in LOG_TEXT:
        out.print(f"[yellow]log status {status_text}: {LOG_TEXT[status_text]}[/]")
    elif status_text not in (None, "ok", "missing"):
        out.print(f"[yellow]log status: {escape(str(status_text))}[/]")


@log.command("clear")
@pin_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@board_command
def log_clear(pin, yes, opts):
    """Delete every entry of the session log (admin)."""
    common.can_confirm(yes, "clearing the log", opts["as_json"])
    pin = common.given_pin(pin, opts["as_json"])
    common.confirm("Delete the whole session log?", yes, opts["as_json"],
                   "the session log was not cleared")
    pin = resolve_pin(pin, as_json=opts["as_json"])
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
    out.print(f"board clock set to {local_time(data.get('epoch_s', when))}, "
              f"UTC{'-' if offset < 0 else '+'}{hours:02d}:{minutes:02d} (the daily limit's "
              "days start at local midnight)")


def _user_settings(board, name):
    """(limits, program) of user NAME now, or (None, None) if there is no such user
    any more (the log keeps the sessions of deleted users)."""
    try:
        data = board.request("user.get", name=name)
    except client_mod.ProtocolError as error:
        if error.code == "not_found":
            return None, None
        raise
    return data.get("limits"), data.get("program")


@click.command()
@click.option("--trace", type=click.Path(exists=True, dir_okay=False), metavar="FILE.csv",
              help="Plot angle over time from a `sim run --trace` or `monitor --record` CSV, "
              "the background shaded by state (no board needed).")
@click.option("--user", "user_name", metavar="NAME", help="Progress of this user only.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, writable=True),
              callback=writable_file,
              metavar="FILE.png", help="PNG to write [default: invtable-progress.png, or "
              "the trace's name with .png].")
@board_command
def plot(trace, user_name, out_path, opts):
    """Write a PNG: progress across sessions (from the board's log), with the
    user's limits and program target where the sessions are one user's; or with
    --trace, the angle over time of one recorded session."""
    if trace:
        out_path = out_path or os.path.splitext(trace)[0] + ".png"
        data = plots.read_trace(trace)
        fig = plots.trace_figure(data, f"invtable session: {os.path.basename(trace)}")
        result = {"png": out_path, "trace": trace, "rows": len(data["t"])}
    else:
        with connect(opts) as board:
            entries, _, _ = read_log(board)
            if user_name:
                entries = [e for e in entries if e.get("user") == user_name]
            if not entries:
                raise Failure("no sessions in the log" + (f" for {user_name}" if user_name
                                                          else ""),
                              EXIT_ERROR, "empty_log", None, opts["as_json"])
            users = {e.get("user") for e in entries}
            who = user_name or (next(iter(users)) if len(users) == 1 else None)
            limits = program = None
            if who is not None:
                limits, program = _user_settings(board, who)
        out_path = out_path or "invtable-progress.png"
        fig = plots.progress_figure(entries, user_name, limits, program)
        result = {"png": out_path, "sessions": len(entries)}
    try:
        fig.savefig(out_path, dpi=100)
    finally:
        plots.pyplot().close(fig)
    if opts["as_json"]:
        return emit_json(result)
    out.print(f"wrote {out_path}")


COMMANDS = (log, clock, plot)


def register(group):
    common.register(group, COMMANDS)
