"""`invtable console` and `invtable maintenance`: the console lock.

With the console lock in force (on by default, once the admin PIN is not the
factory one) the firmware never lets Ctrl-C on the serial line reach the
REPL, so mpremote and serial terminals cannot get in; `invtable maintenance`
opens it with the admin PIN for one maintenance session (until the board
restarts), at rest at home only. `invtable deploy --pin` does the same itself.
"""

import click

from invtable.host import cli_common as common
from invtable.host.cli_common import board_command, call, emit_json, out, pin_option, resolve_pin


def _console_text(data):
    if not data.get("console_lock"):
        return "console lock off: Ctrl-C reaches the REPL whenever the table is at rest at home"
    if not data.get("console_locked"):
        return ("console lock on, not in force yet: the admin PIN is the factory one "
                "(change it: `invtable pin change`)")
    if data.get("maintenance_unlocked"):
        return "console open for maintenance until the board restarts (at rest at home only)"
    return "console locked: mpremote and serial terminals cannot reach the REPL"


@click.group()
def console():
    """The console lock: whether mpremote can reach the board's REPL."""


@console.command("lock")
@click.argument("state", type=click.Choice(["on", "off"]))
@pin_option
@board_command
def console_lock(state, pin, opts):
    """Turn the console lock on (the default) or off (admin)."""
    pin = resolve_pin(pin, as_json=opts["as_json"])
    data = call(opts, "console.lock", pin=pin, on=1 if state == "on" else 0)
    if opts["as_json"]:
        return emit_json(data)
    out.print(_console_text(data))


@click.command()
@pin_option
@board_command
def maintenance(pin, opts):
    """Open the board's REPL for one maintenance session (admin, at home).

    Until the board restarts, Ctrl-C on the serial line reaches the REPL while
    the table is at rest at home, so mpremote works. `invtable deploy --pin` does this
    itself."""
    pin = resolve_pin(pin, as_json=opts["as_json"])
    data = call(opts, "maintenance.unlock", pin=pin)
    if opts["as_json"]:
        return emit_json(data)
    out.print(_console_text(data))


COMMANDS = (console, maintenance)


def register(group):
    common.register(group, COMMANDS)
