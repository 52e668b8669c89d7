"""`invtable sim serve`: a simulated board on a pseudo-terminal.

Registered in host/cli.py under the `sim` group; also runnable on its own as
``python -m invtable.host.cli_serve``.
"""

import sys

import click

from invtable.host.boards import DEFAULT_BOARD, board_names, load_board
from invtable.host.worlds import make_world, world_option


def _board(ctx, param, name):
    try:
        return name, load_board(name)
    except KeyError as error:
        raise click.BadParameter(error.args[0], ctx=ctx, param=param) from None


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
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
@world_option
def serve(board, state_dir, speed, seed, world_data):
    """Run the firmware on the simulated table behind a serial device.

    The first line on stdout is the device path (e.g. /dev/pts/7): open it
    with the invtable host commands, pyserial or a terminal and speak the serial
    protocol (docs/protocol.md). Then come short notes on what the table does.

    \b
    Physical inputs, one per line on stdin:
      go            tap GO; go_down / go_up hold / release it
      stop          tap STOP; stop_down / stop_up hold / release it
      power_loss    the board loses power (RAM lost, flash kept) and reboots
      torn_write    the power goes in the middle of the next flash write
      imu_disconnect, imu_stuck, imu_spike, imu_drift, stall, overload,
      stop_wire_cut, stop_wire_repair, home_switch_fail,
      home_switch_stuck_closed
                    inject that hardware fault
      status        print the firmware's status
      help          list these inputs
      quit          shut down (so do SIGTERM and Ctrl-C)
    End of stdin does not stop the server.

    Example:

      invtable sim serve --state-dir ~/.invtable-sim --speed 10
    """
    from invtable.hal_sim.serve import Server

    _name, board_dict = board
    world = make_world(board_dict, world_data) if world_data is not None else None
    server = Server(board_dict, state_dir=state_dir, speed=speed, seed=seed, world=world)
    sys.exit(server.run())


if __name__ == "__main__":
    serve()
