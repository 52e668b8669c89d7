"""The ``--world FILE.json`` option of `invtable sim run / serve / board`.

A world file describes the table that is really there where it differs from
the board file (hal_sim/world.py has the keys and ranges). The option reads
the file; ``make_world`` checks it against the board, which click may not
have parsed yet when the option's callback runs. Every problem is one line
and exit status 2 (click.BadParameter on --world).
"""

import json

import click

from invtable.hal_sim.world import World, WorldError

WORLD_HELP = (
    "World file (JSON): the table that is really there - actuator speed and lag, "
    "rider's weight, home switch angle, IMU mounting; keys as in the README. "
    "[default: exactly the board file]"
)


def _bad(message, ctx=None, param=None, option="--world"):
    hint = None if param is not None else f"'{option}'"
    return click.BadParameter(message, ctx=ctx, param=param, param_hint=hint)


def read_world_file(ctx, param, path):
    """Option callback (--world, --commission-on): the file's JSON value (any
    type; None when the option is not given)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise _bad(f"world file: cannot read {path}: {reason}", ctx, param) from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise _bad(f"world file: {path} is not JSON: {error}", ctx, param) from None


def world_option(command):
    """Decorator: adds ``--world FILE.json`` as the ``world_data`` argument."""
    return click.option(
        "--world", "world_data", metavar="FILE.json", callback=read_world_file, help=WORLD_HELP
    )(command)


def make_world(board, world_data, option="--world"):
    """The World of ``option``'s data for this BOARD dict; the board file's own
    world without it."""
    if world_data is None:
        return World.from_board(board)
    try:
        return World.from_dict(world_data, board)
    except WorldError as error:
        raise _bad(str(error), option=option) from None
