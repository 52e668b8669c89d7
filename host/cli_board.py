"""`invtable sim board` and `invtable deploy` (registered in host/cli.py)."""

from __future__ import annotations

import signal
import sys
import threading

import click

from invtable.host.boards import DEFAULT_BOARD, board_names, load_board
from invtable.host.worlds import make_world, world_option


def _known_board(ctx, param, name):
    if name not in board_names():
        raise click.BadParameter(
            f"unknown board {name!r}; known boards: {', '.join(board_names())}",
            ctx=ctx,
            param=param,
        )
    return name


# The stdin of `invtable sim board` (also its `help` input).
INPUT_HELP = """\
Physical inputs, one per line on stdin, acted on at the firmware's next
control tick (20 ms at 50 Hz) while it runs on the virtual board:
  go, stop      tap GO / STOP (pressed for 200 ms)
  go_down, go_up, stop_down, stop_up
                press and hold / let go (a held GO stays held until go_up)
  power_loss    power cut: the firmware restarts with cause PWRON_RESET
  imu_disconnect, imu_stuck, imu_spike, imu_drift, stall, overload,
  stop_wire_cut, stop_wire_repair, home_switch_fail, home_switch_stuck_closed
                inject that hardware fault into the simulated table
  faint         the rider answers no check-in any more and lets go of the grip
                (otherwise the simulated rider, hearing the beeper's chirp,
                taps GO 1-5 s later)
  grip_release, grip_hold
                the rider lets go of / takes the dead-man grip (read only by a
                board file with a grip_pin)
  status        the simulated table now: angle, drive, buttons, faults
                (the firmware's own status: `invtable status --port DEVICE`)
  help          this list
  quit          shut down (so do SIGTERM and Ctrl-C)
Answers go to stdout after the device line. End of stdin does not stop the
board."""


def _read_inputs(vb, stdin, quit_event, note):
    """Lines of ``stdin`` -> the virtual board's physical inputs."""
    from invtable.host.vboard import VirtualBoardError

    try:
        for line in stdin:
            action = line.strip()
            if not action:
                continue
            if action == "quit":
                quit_event.set()
                return
            if action == "help":
                for text in INPUT_HELP.splitlines():
                    note(text)
                continue
            try:
                vb.send_input(action)
            except ValueError as error:
                note(str(error))
            except VirtualBoardError:
                return
    except (OSError, ValueError):
        pass  # stdin closed under us


def _note(text):
    try:
        click.echo(text)
        sys.stdout.flush()
    except (OSError, ValueError):
        pass  # nobody reads stdout any more: keep the board running


SIM_BOARD_HELP = f"""\
A virtual board: real MicroPython 1.27 on a serial port, with the table inside.

Prints the serial device (a pseudo-terminal) as the FIRST line, then runs
until Ctrl-C, SIGTERM or `quit` on stdin. Use it as a board on USB, e.g.:

  mpremote connect /dev/pts/N exec "print(1+1)"

  invtable deploy --port /dev/pts/N --force-unverified

Without --world the table starts commissioned (the calibration that
commissioning measures on it is on its flash); with --world it waits for
`invtable setup`. With --state-dir DIR the board's flash (the deployed
firmware, settings, calibration, log) is kept in DIR across restarts.

\b
{INPUT_HELP}
"""


@click.command("board", help=SIM_BOARD_HELP)
@click.option("--board", default=DEFAULT_BOARD, show_default=True, callback=_known_board,
              help=f"Board file to simulate ({', '.join(board_names())}).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for the simulated IMU's noise and biases.")
@click.option("--start-angle", "start_angle_deg", type=float,
              help="Table angle at power-on, degrees [default: the world's home].")
@world_option
@click.option("--no-imu", "no_imu", is_flag=True,
              help="No MPU-6050 answers on the I2C bus from power-on (a loose connector, "
              "a brown-out): the firmware reports boot_error imu_not_found, sounds the "
              "alarm and, off its home switch, returns blind to it.")
@click.option("--state-dir", "state_dir", type=click.Path(file_okay=False),
              help="Keep the board's flash (its filesystem) in this folder across restarts: "
              "loaded at start, every completed write saved at once [default: none, the "
              "flash is lost at exit].")
def sim_board(board, seed, start_angle_deg, world_data, no_imu, state_dir):
    from invtable.host import micropython as mpy
    from invtable.host.vboard import VirtualBoard, VirtualBoardError

    if world_data is not None:
        make_world(load_board(board), world_data)  # check it here: one line, exit 2
    vb = VirtualBoard(board, seed=seed, start_angle_deg=start_angle_deg, world=world_data,
                      imu=not no_imu, state_dir=state_dir, log=sys.stderr, on_note=_note)
    try:
        vb.start()
    except (VirtualBoardError, mpy.MicroPythonUnavailable) as error:
        raise click.ClickException(str(error)) from None
    click.echo(vb.port)
    sys.stdout.flush()
    calibration = "commissioned" if vb.commissioned else "not commissioned (run `invtable setup`)"
    flash = f"flash kept in {vb.state_dir}" if vb.state_dir else "flash not kept"
    click.echo(
        f"virtual {board}: MicroPython 1.27 (WebAssembly) with the simulated table, "
        f"{flash}, {calibration}; `help` on stdin lists the physical inputs; Ctrl-C to stop",
        err=True,
    )
    quit_event = threading.Event()
    threading.Thread(
        target=_read_inputs, args=(vb, sys.stdin, quit_event, _note), daemon=True
    ).start()

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        while not quit_event.wait(0.2):
            if not vb.alive():
                status = vb.wait()
                raise click.ClickException(f"the virtual board's interpreter exited ({status})")
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        vb.close()


@click.command("deploy")
@click.option("--port", "-p", help="Serial port of the board [default: the first USB "
              "serial board mpremote finds].")
@click.option("--board", default=DEFAULT_BOARD, show_default=True,
              help=f"Board file to install as board.py ({', '.join(board_names())}).")
@click.option("--force-unverified", is_flag=True,
              help="Deploy although invtable cannot verify that the table is at home "
              "(check it yourself: upright, nobody on it).")
@click.option("--no-reset", is_flag=True, help="Do not reset the board after copying "
              "(the firmware stays stopped, also after a failure).")
@click.option("--pin", envvar="INVTABLE_PIN", metavar="PIN",
              help="Admin PIN: opens a locked console for this deploy (`invtable "
              "maintenance`) [env INVTABLE_PIN].")
@click.option("--check", is_flag=True, help="Compare the board's firmware with what would "
              "be deployed and write nothing: exit 0 when equal, 7 when different (listed).")
@click.option("--firmware-dir", type=click.Path(file_okay=False, exists=True), hidden=True,
              help="Deploy the firmware sources of this folder (tests).")
def deploy(port, board, force_unverified, no_reset, pin, check, firmware_dir):
    """Compile the firmware and put it on the board atomically (mpremote).

    Checks the board's MicroPython version against mpy-cross (1.27) and its
    chip against the board file's, compiles firmware/*.py to .mpy and builds
    the new firmware in the slot the board does not boot (copying over
    serial only files it has nowhere else), checks every file there against
    the slot's manifest, then switches to it at once, keeping the previous
    firmware as the fallback. Resets the board and checks that the new
    firmware answers. Refuses while the table cannot be verified at home.
    Every step has a time limit (a port with no MicroPython raw REPL fails
    within seconds); after a failure or Ctrl-C the board is reset into the
    firmware it has, complete (the old one, or the new one once switched).

    Exit status: 0 ok (--check: the same firmware), 2 unknown board, 3 no
    board (or no MicroPython raw REPL) on the port, 4 wrong MicroPython
    version or chip, 5 table not verified at home, 6 other failures,
    7 --check: the board's firmware differs, 130 interrupted (Ctrl-C).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from invtable.host.deploy import EXIT_DIFFERENT, DeployError, DeployInterrupted
    from invtable.host.deploy import deploy as run_deploy

    console = Console(stderr=True)
    try:
        with Progress(
            TextColumn("{task.description:<36}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            result = run_deploy(
                port, board, force_unverified=force_unverified, progress=progress,
                reset=not no_reset, pin=pin, check=check, firmware_dir=firmware_dir,
            )
    except DeployError as error:
        # One line however wide the terminal (soft_wrap): scripts grep it.
        head = "deploy" if isinstance(error, DeployInterrupted) else "deploy failed:"
        console.print(f"[red]{head}[/red] {escape(str(error))}", highlight=False,
                      soft_wrap=True)
        sys.exit(error.exit_code)
    firmware = f"firmware {result.firmware}, manifest {result.manifest_sha256[:12]}"
    if check:
        if not result.differences:
            click.echo(f"{result.port} has this firmware ({board}, {firmware}) in "
                       f"/fw/{result.slot}")
            return
        click.echo(f"{result.port} differs from what would be deployed ({board}, {firmware}):")
        for line in result.differences:
            click.echo(f"  {line}")
        sys.exit(EXIT_DIFFERENT)
    click.echo(
        f"deployed {board} to {result.port} (MicroPython {result.micropython}, "
        f"{result.arch or 'bytecode'}): {len(result.copied)} copied "
        f"({result.bytes_copied} bytes), {len(result.unchanged)} unchanged, "
        f"{len(result.removed)} removed, {result.seconds:.1f} s; "
        f"{firmware} in /fw/{result.slot}"
    )
