"""The `invtable` command."""

import csv
import json
import sys

import click

from invtable import __version__
from invtable.firmware.program import DEFAULT_MAX_INVERTED_MS
from invtable.hal_sim.scenario import ACTIONS as SIM_ACTIONS
from invtable.host import simview
from invtable.host.boards import DEFAULT_BOARD, board_names, board_with_grip, load_board
from invtable.host.cli_common import InvtableGroup, writable_file
from invtable.host.ranges import session_range, setting_range
from invtable.host.worlds import make_world, read_world_file, world_option

# A beginner's session from the source documents: 15-30 deg for 30 s - 2 min,
# building from one-minute sets; about 3-5 deg/s; a short rest near
# horizontal on the way up.
DEMO_PROGRAM = {
    "angle_deg": 30.0,
    "hold_s": 45.0,
    "sets": 2,
    "rest_s": 15.0,
    "speed_deg_s": 4.0,
    "exit_pause_s": 5.0,
}
DEMO_LIMITS = {"max_angle_deg": 30.0, "max_inverted_s": 150.0}


@click.group(cls=InvtableGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="invtable")
def main():
    """Firmware and host tools for a motorised inversion table.

    Start with `invtable sim run`: a demo session on the simulated table.
    """


@main.group()
def sim():
    """The simulated table: the real firmware on simulated hardware."""


def _validate_event(ctx, param, values):
    from invtable.hal_sim.scenario import parse_event

    events = []
    for text in values:
        try:
            events.append(parse_event(text))
        except ValueError as error:
            raise click.BadParameter(str(error), ctx=ctx, param=param) from None
    return events


def _board(ctx, param, name):
    try:
        return name, load_board(name)
    except KeyError as error:
        raise click.BadParameter(error.args[0], ctx=ctx, param=param) from None


def _session_s(field):
    """The controller's bounds of a program time (firmware/program.Session), in s."""
    return tuple(value / 1000 for value in session_range(field))


@sim.command("run")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, writable=True),
              callback=writable_file,
              help="Write one CSV row per control tick to this file.")
@click.option("--board", "board", default=DEFAULT_BOARD, show_default=True, callback=_board,
              help=f"Board file to simulate ({', '.join(board_names())}).")
@click.option("--angle", "angle_deg", type=click.FloatRange(1, 90),
              default=DEMO_PROGRAM["angle_deg"], show_default=True,
              help="Target inversion angle, degrees (0 = horizontal, 90 = vertical).")
@click.option("--hold", "hold_s", type=click.FloatRange(*_session_s("hold_ms")),
              default=DEMO_PROGRAM["hold_s"], show_default=True, help="Hold per set, seconds.")
@click.option("--sets", type=click.IntRange(*session_range("sets")),
              default=DEMO_PROGRAM["sets"], show_default=True,
              help="Number of sets; each set after the first needs GO. The simulator hands "
              "its program straight to the controller, so this is what the controller runs "
              "(firmware/program.py); a program stored on a board (`invtable program set`) "
              f"has at most {setting_range('sets')[1]}.")
@click.option("--rest", "rest_s", type=click.FloatRange(*_session_s("rest_ms")),
              default=DEMO_PROGRAM["rest_s"], show_default=True,
              help="Rest at home between sets, seconds.")
@click.option("--speed", "speed_deg_s", type=click.FloatRange(0.1, 10),
              default=DEMO_PROGRAM["speed_deg_s"], show_default=True,
              help="Tilt speed, degrees per second.")
@click.option("--max-angle", "max_angle_deg", type=click.FloatRange(1, 90),
              help="The user's angle limit, degrees [default: the --angle].")
@click.option("--max-inverted", "max_inverted_s", type=click.FloatRange(1, 3600),
              default=DEMO_LIMITS["max_inverted_s"], show_default=True,
              help="The user's limit on time above 0 degrees per session, seconds.")
@click.option("--check-in", "check_in_s", type=click.FloatRange(0, 600), default=60,
              show_default=True,
              help="The user's rider check-ins: every S seconds of tilting and holding the "
              "beeper chirps and the rider must tap GO within 10 s, or the table returns "
              "(session end no_response). 0 = off, else 10..600. The simulated rider "
              "answers after 1-5 s until a faint event.")
@click.option("--grip", is_flag=True,
              help="The board has a dead-man grip (grip_pin), held by the simulated rider: "
              "a session starts only with it held; let go for more than 1 s (events "
              "grip_release, faint) and the table returns (end grip_released).")
@click.option("--exit-pause", "exit_pause_s", type=click.FloatRange(*_session_s("exit_pause_ms")),
              default=DEMO_PROGRAM["exit_pause_s"], show_default=True,
              help="Pause near horizontal on the way home, seconds.")
@click.option("--event", "events", multiple=True, callback=_validate_event, metavar="T:ACTION",
              help="At T seconds of simulated time, an input or a fault (repeatable): "
              + ", ".join(SIM_ACTIONS) + ". Without a go event a simulated rider "
              "presses GO at 1 s and after each rest.")
@click.option("--duration", "duration_s", type=click.FloatRange(0.1, 24 * 3600),
              help="Stop after this many simulated seconds [default: when the table settles].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for sensor noise and biases.")
@world_option
@click.option("--commission", is_flag=True,
              help="Commission the table first (the firmware's `invtable setup` routine, "
              "the builder simulated); the session, its trace, --event times and "
              "--duration start when it has finished. Needed with --world: a table "
              "that is not the board file starts uncommissioned and refuses GO.")
@click.option("--commission-on", "commission_data", metavar="FILE2.json",
              callback=read_world_file,
              help="Commission on FILE2's hardware, then run the session on --world's "
              "(the hardware changed after commissioning). Implies --commission.")
@click.option("--json", "as_json", is_flag=True, help="Print only a JSON summary.")
def sim_run(trace_path, board, angle_deg, hold_s, sets, rest_s, speed_deg_s, max_angle_deg,
            max_inverted_s, check_in_s, grip, exit_pause_s, events, duration_s, seed, world_data,
            commission, commission_data, as_json):
    """Run one session on the simulated table, as fast as the CPU allows.

    The firmware is the real one; only the hardware is simulated, by default
    exactly as the board file describes it (and commissioned); --world says
    where the real table differs. Example:

      invtable sim run --angle 45 --hold 60 --event 30:stop --trace out.csv
      invtable sim run --world slow.json --commission --json
    """
    from invtable.hal_sim import scenario
    from invtable.hal_sim.builder import CommissionFailed

    board_name, board_dict = board
    if grip:
        board_dict = board_with_grip(board_dict)
    if 0 < check_in_s < 10:
        raise click.BadParameter(f"{check_in_s:g} s: 0 (off) or 10..600", param_hint="--check-in")
    world = make_world(board_dict, world_data)
    commission_world = None
    if commission_data is not None:
        commission_world = make_world(board_dict, commission_data, "--commission-on")
        commission = True
    # Without --world the table is the board file and starts commissioned; a
    # --world table is only commissioned by --commission.
    calibration = scenario.AUTO if world_data is None else None
    if max_angle_deg is None:
        max_angle_deg = angle_deg
    if angle_deg > max_angle_deg:
        raise click.BadParameter(
            f"--angle {angle_deg:g} is above the user's --max-angle {max_angle_deg:g}",
            param_hint="--angle")
    for name, value, low, cap in (
        ("--max-angle", max_angle_deg * 1000, 1, board_dict["max_angle_mdeg"]),
        ("--speed", speed_deg_s * 1000, 0.1, board_dict["max_speed_mdeg_s"]),
        ("--max-inverted", max_inverted_s * 1000, 1,
         board_dict.get("max_inverted_ms", DEFAULT_MAX_INVERTED_MS)),
    ):
        if value > cap:
            raise click.BadParameter(
                f"{value / 1000:g} is above board {board_name}'s hard cap of {cap / 1000:g} "
                f"(allowed: {low:g}..{cap / 1000:g})", param_hint=name)
    program = {
        "angle_mdeg": round(angle_deg * 1000),
        "hold_ms": round(hold_s * 1000),
        "sets": sets,
        "rest_ms": round(rest_s * 1000),
        "speed_mdeg_s": round(speed_deg_s * 1000),
        "exit_pause_ms": round(exit_pause_s * 1000),
    }
    limits = {
        "max_angle_mdeg": round(max_angle_deg * 1000),
        "max_inverted_ms": round(max_inverted_s * 1000),
        "max_speed_mdeg_s": round(speed_deg_s * 1000),
        "check_in_ms": round(check_in_s * 1000),
    }
    writer = None
    trace_file = None
    if trace_path:
        # Opened before anything is printed: a path that cannot be written is one line.
        try:
            trace_file = open(trace_path, "w", newline="")  # noqa: SIM115 - closed below
        except OSError as error:
            raise click.BadParameter(f"cannot write {trace_path}: {error.strerror}",
                                     param_hint="--trace") from None
        writer = csv.writer(trace_file)
        writer.writerow(scenario.COLUMNS)
    view = None
    if not as_json:
        world_text = world.describe() if world_data is not None else None
        view = simview.SessionView(board_name, program, limits, events, world=world_text,
                                   commissioned=commission or calibration is not None)

    def sink(row):
        if writer is not None:
            writer.writerow(simview.csv_row(row))
        if view is not None:
            view.add(row)

    try:
        summary = scenario.run(board_dict, program, limits, events=events,
                               duration_s=duration_s, seed=seed, sink=sink, world=world,
                               calibration=calibration, commission=commission,
                               commission_world=commission_world)
    except CommissionFailed as failed:
        raise click.ClickException(f"commissioning failed: {failed}") from None
    finally:
        if trace_file is not None:
            trace_file.close()
    summary["board"] = board_name
    summary["world"] = world.to_dict()
    if trace_path:
        summary["trace"] = trace_path
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        view.finish(summary)


# Further commands, defined in their own modules, registered onto the groups above.
from invtable.host import cli_board, cli_log, cli_maintenance, cli_status, cli_users  # noqa: E402
from invtable.host.cli_serve import serve as sim_serve  # noqa: E402

for _module in (cli_status, cli_users, cli_log, cli_maintenance):
    _module.register(main)
sim.add_command(sim_serve)
sim.add_command(cli_board.sim_board)
main.add_command(cli_board.deploy)
from invtable.host.cli_setup import setup as setup_command  # noqa: E402

main.add_command(setup_command)

if __name__ == "__main__":
    sys.exit(main())
