"""`invtable sim serve`: a simulated board on a pseudo-terminal.

Registered in host/cli.py under the `sim` group; also runnable on its own as
``python -m invtable.host.cli_serve``.
"""

import sys

import click

from invtable.hal_sim.serve import INPUT_HELP
from invtable.host.boards import DEFAULT_BOARD, board_names, board_with_grip, load_board
from invtable.host.worlds import make_world, world_option


def _board(ctx, param, name):
    try:
        return name, load_board(name)
    except KeyError as error:
        raise click.BadParameter(error.args[0], ctx=ctx, param=param) from None


SERVE_HELP = f"""Run the firmware on the simulated table behind a serial device.

The first line on stdout is the device path (e.g. /dev/pts/7): open it
with the invtable host commands, pyserial or a terminal and speak the serial
protocol (docs/protocol.md). Then come short notes on what the table does.

\b
{INPUT_HELP}

Example:

  invtable sim serve --state-dir ~/.invtable-sim --speed 10
"""


@click.command("serve", help=SERVE_HELP,
               context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--board",
    "board",
    default=DEFAULT_BOARD,
    show_default=True,
    callback=_board,
    help=f"Board file to simulate ({', '.join(board_names())}).",
)
@click.option(
    "--state-dir",
    "state_dir",
    type=click.Path(file_okay=False),
    help="Directory that stands for the board's flash (settings, PIN, session "
    "log); kept across restarts. [default: a new temporary directory, "
    "removed at exit]",
)
@click.option(
    "--speed",
    type=click.FloatRange(0.1, 50),
    default=1.0,
    show_default=True,
    help="Simulated seconds per real second.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for sensor noise and biases."
)
@click.option("--grip", is_flag=True,
              help="The board has a dead-man grip (grip_pin), held by the simulated rider "
              "until grip_release or faint on stdin.")
@world_option
def serve(board, state_dir, speed, seed, grip, world_data):
    from invtable.hal_sim.serve import Server

    _name, board_dict = board
    if grip:
        board_dict = board_with_grip(board_dict)
    world = make_world(board_dict, world_data) if world_data is not None else None
    server = Server(board_dict, state_dir=state_dir, speed=speed, seed=seed, world=world)
    sys.exit(server.run())


if __name__ == "__main__":
    serve()
