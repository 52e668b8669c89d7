"""`invtable setup`: commission the table (firmware/commission.py).

The firmware runs the routine and does all the measuring; this command speaks
its protocol (``setup.start``, ``setup.status``, ``setup.level``,
``setup.cancel``: docs/protocol.md), tells the builder what to do at each step,
gives the level reference and shows what was measured and saved.

The table moves only while the builder holds GO on the table (hold-to-run);
STOP on the table, ``invtable stop`` or Ctrl-C here abandon the routine with
the drive off and keep the previous calibration.

Exit codes as in host/cli_common.py: a step that fails (the firmware says what
to check) is the board refusing, EXIT_REFUSED; Ctrl-C exits 130.
"""

import time

import click
from rich.markup import escape
from rich.padding import Padding
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from invtable.host import cli_common
from invtable.host import client as client_mod
from invtable.host.cli_common import (
    EXIT_REFUSED,
    Failure,
    board_command,
    calibration_rows,
    connect,
    emit_json,
    err,
    failure_for,
    kv_table,
    out,
    pin_option,
    resolve_pin,
)

POLL_S = 0.2  # setup.status about five times a second
CANCEL_TIMEOUT_S = 5.0  # Ctrl-C: send setup.cancel until confirmed, at most this long
AFTER_END_S = 3.0  # the board's controller restarts (BOOT) after the routine: wait for it
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C

LEVEL = "level"
STEP_TITLES = {
    "wiring": "wiring check",
    "go_press": "GO button",
    "axes": "IMU axes",
    LEVEL: "level reference",
    "travel_out": "travel head-down",
    "travel_home": "travel back home",
    "jog_home": "back home (setup stopped)",
}
LEVEL_REFERENCES = {"home": "inclinometer reading at home", "here": "level here"}

INTRO = (
    "Setup (commissioning) measures the table that is really there: how the IMU is "
    "mounted, the actuator's speed and lag each way, where the home switch opens and "
    "closes, how far the table travels. The firmware runs sessions on these values; "
    "until setup has run, GO is refused. Run it once on a new table and again after "
    "changing the actuator, the IMU or the home switch.\n\n"
    "The table must be [bold]EMPTY[/] (nobody on it) and [bold]at home[/] (upright).\n"
    "It moves only while you hold GO on the table: release GO to pause; STOP (or Ctrl-C "
    "here) abandons setup with the drive off and keeps the previous calibration."
)
LEVEL_QUESTION = (
    "Level reference: the angle an inclinometer on the bed reads at home, in degrees "
    "(e.g. -58.5), or hold GO until a spirit level on the bed reads level, release, "
    "and type h"
)

LEVEL_HERE_TEXT = (
    "  Hold GO until a spirit level on the bed reads level, then release GO: --level-here "
    "takes the reference once the table has come to rest."
)


def step_title(step):
    return STEP_TITLES.get(step, str(step))


def _finished(status):
    # setup.start's reply has no "active"; setup.status says False once it ended.
    return bool(status.get("done")) or status.get("active") is False


class StepView:
    """One "Step i/n" heading, the firmware's prompt and a progress bar per step."""

    def __init__(self, console):
        self.console = console
        self.step = None
        self.drove = False  # the drive was on in this step
        self._bar = None
        self._task = None

    def show(self, status):
        step = status.get("step")
        if step != self.step:
            self._end_step(done=True)
            self.step = step
            self.drove = False
            number = (status.get("index") or 0) + 1
            self.console.print(f"[bold]Step {number}/{status.get('steps', '?')}: "
                               f"{escape(step_title(step))}[/]")
            self.console.print(Padding(escape(str(status.get("prompt", ""))), (0, 0, 0, 2),
                                       expand=False))
            if step != LEVEL:  # the level step waits for the builder: no bar
                self._bar = Progress(TextColumn("  {task.description}"), BarColumn(),
                                     TaskProgressColumn(), TextColumn("{task.fields[drive]}"),
                                     console=self.console, transient=False)
                self._task = self._bar.add_task(step_title(step), total=1000, drive="")
                self._bar.start()
        driving = bool(status.get("driving"))
        self.drove = self.drove or driving
        if self._bar is not None:
            self._bar.update(self._task, completed=status.get("progress") or 0,
                             drive="[cyan]driving[/]" if driving else "[dim]drive off[/]")

    def _end_step(self, done):
        if self._bar is not None:
            if done:
                self._bar.update(self._task, completed=1000, drive="[dim]drive off[/]")
            self._bar.stop()
            self._bar = None
        if done and self.drove:
            self.console.print(f"  {escape(step_title(self.step))} done: [bold]release GO[/].")

    def close(self, status):
        """The routine ended: the last step counts as done only if it succeeded."""
        ok = status.get("done") and not status.get("error")
        self._end_step(done=bool(ok))


class LevelReference:
    """The level step: --home-angle, --level-here, or the builder's answer."""

    def __init__(self, home_angle, level_here, console):
        self.home_angle = home_angle
        self.level_here = level_here
        self.console = console
        self.given = False
        # --level-here: the drive was seen off, then on (a jog started in the
        # level step, not a GO still held from the step before), in this step.
        self._seen_off = False
        self._jogged = False

    def poll(self, board, status):
        """Called at each status poll of the level step until the firmware took it."""
        if self.home_angle is not None:
            self._give(board, round(self.home_angle * 1000), "home", retry=False)
        elif self.level_here:
            driving = bool(status.get("driving"))
            if not self._seen_off and not driving:
                self._seen_off = True
                self.console.print(LEVEL_HERE_TEXT)
            self._jogged = self._jogged or (self._seen_off and driving)
            if self._jogged and not driving:
                # The firmware says "moving" until the table has rested.
                self._give(board, 0, "here", retry=True)
        else:
            self._ask(board)

    def _give(self, board, angle_mdeg, where, retry):
        """True once the firmware took (or can no longer take) the reference.
        A refusal: False with ``retry`` ("moving": sent again at the next poll);
        raised for --home-angle / --level-here; else printed, and the builder
        is asked again."""
        try:
            board.request("setup.level", angle_mdeg=angle_mdeg, where=where)
        except client_mod.ProtocolError as error:
            if error.code in ("not_running", "wrong_step"):
                self.given = True  # the routine moved on: the next status says how
                return True
            if retry and error.code == "moving":
                return False
            if self.home_angle is not None or self.level_here:
                raise
            self.console.print(f"  [yellow]{escape(error.message)}[/]")
            return False
        self.given = True
        text = LEVEL_REFERENCES.get(where, where)
        if where == "home":
            text += f" {angle_mdeg / 1000:g} deg"
        self.console.print(f"  level reference given: {text}")
        return True

    def _ask(self, board):
        while True:
            answer = click.prompt(LEVEL_QUESTION, err=self.console is err).strip().lower()
            if answer in ("h", "here", "level here"):
                if self._give(board, 0, "here", retry=False):
                    return
                continue
            try:
                degrees = float(answer)
            except ValueError:
                self.console.print("  [yellow]type the inclinometer's angle in degrees "
                                   "(e.g. -58.5), or h[/]")
                continue
            if self._give(board, round(degrees * 1000), "home", retry=False):
                return


def _start(board, pin, as_json):
    try:
        return board.request("setup.start", pin=pin)
    except client_mod.ProtocolError as error:
        if error.code not in ("busy", "not_home"):
            raise
        raise Failure(f"cannot start setup: {error.message} (`invtable status` shows the "
                      "table's state)", EXIT_REFUSED, error.code, error.details, as_json) from None


def _follow(board, status, level, view):
    """Poll setup.status until the routine ends; the final status."""
    while not _finished(status):
        view.show(status)
        if status.get("step") == LEVEL and not level.given:
            level.poll(board, status)
        time.sleep(POLL_S)
        status = board.request("setup.status")
        board.drain_events()  # state events meanwhile: the status says it all
    view.close(status)
    return status


def _cancel(board):
    """setup.cancel until the board says setup is not running; False at the timeout."""
    deadline = time.monotonic() + CANCEL_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            board.request("setup.cancel", timeout=1.0)
            if not board.request("setup.status", timeout=1.0).get("active"):
                return True
        except KeyboardInterrupt:
            continue  # Ctrl-C again: keep cancelling
        except client_mod.ClientError:
            time.sleep(0.1)
    return False


def _table_after(board):
    """What the table does once the routine has ended early: the board starts its
    controller again (state BOOT). A table left away from home (setup cancelled
    before it was jogged back) stays there, drive off: FAULT setup_left_away,
    until a reboot. A sentence saying so, or ''."""
    deadline = time.monotonic() + AFTER_END_S
    while True:
        try:
            data = board.request("status", timeout=1.0)
        except client_mod.ClientError:
            return ""
        state = data.get("state")
        if state != "BOOT" or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    if state == "FAULT" and data.get("fault") == "setup_left_away":
        return (" The table was left away from home and stays there, drive off "
                "(FAULT setup_left_away): restart the board to bring it home, keep clear.")
    if state == "FAULT":
        return f" The board now reports FAULT {data.get('fault')} (see `invtable status`)."
    return ""


def _result(status, last_step, console, as_json, after=""):
    """Show the final status; a Failure if the routine failed (in ``last_step``,
    the last one seen: the final status says only "done")."""
    error = status.get("error")
    if not status.get("done") and not error:
        error = {"code": "not_running",
                 "message": "setup is no longer running on the board (did it restart?)"}
    if error:
        last_step = status.get("failed_step") or last_step  # the firmware says which
        where = f" in step {step_title(last_step)}" if last_step else ""
        raise Failure(f"setup failed{where}: {error.get('message', error.get('code'))}. The "
                      "previous calibration is kept; run `invtable setup` again once it is fixed."
                      + after,
                      EXIT_REFUSED, str(error.get("code", "error")),
                      {"step": last_step, "status": status}, as_json)
    if as_json:
        return emit_json(status)
    rows = calibration_rows(status.get("calibration") or {})
    reference = (status.get("measured") or {}).get("level_reference")
    if reference:
        rows.append(("level reference", LEVEL_REFERENCES.get(reference, str(reference))))
    console.print(kv_table("measured", rows))
    if status.get("saved"):
        console.print("[green]Saved: the table is commissioned; GO runs sessions on these "
                      "values.[/]")


@click.command()
@pin_option
@click.option("--home-angle", type=click.FloatRange(-89, -10), metavar="DEG",
              help="Level reference without asking: the angle an inclinometer on the bed "
              "reads at home, degrees (0 = horizontal; home is about -60).")
@click.option("--level-here", is_flag=True,
              help="Level reference without asking: 'level here' (0 deg), taken once the bed "
              "has been jogged level with GO in the level step and has come to rest.")
@board_command
def setup(pin, home_angle, level_here, opts):
    """Commission the table (admin): measure the table that is really there.

    Run on an EMPTY table at home. Each step says what to do on the table
    (press GO, hold GO); the level step asks for the level reference unless
    --home-angle or --level-here gives it. The measured values are saved on
    the board; `invtable info` shows them. Ctrl-C cancels with the drive off."""
    as_json = opts["as_json"]
    console = err if as_json else out
    if home_angle is not None and level_here:
        raise click.UsageError("give either --home-angle or --level-here, not both")
    if home_angle is None and not level_here and not cli_common._stdin_is_tty():
        raise click.UsageError("the level step needs the level reference: give --home-angle "
                               "DEG or --level-here, or run in a terminal to be asked")
    console.print(Panel(INTRO, title="[bold]invtable setup[/]", title_align="left"))
    pin = resolve_pin(pin)
    view = StepView(console)
    level = LevelReference(home_angle, level_here, console)
    with connect(opts) as board:
        started = False
        try:
            status = _start(board, pin, as_json)
            started = True
            status = _follow(board, status, level, view)
        except (KeyboardInterrupt, click.Abort):
            view.close({})
            if _cancel(board):
                message = ("setup cancelled: the drive is off; the previous calibration is kept."
                           + _table_after(board))
            else:
                message = ("setup interrupted, but the board did not confirm the cancel: "
                           "release GO and press STOP on the table")
            raise Failure(message, EXIT_INTERRUPTED, "interrupted", None, as_json) from None
        except client_mod.ConnectionProblem as error:
            if not started:
                raise
            failure = failure_for(error, as_json)
            failure.message += (". Setup may still be running on the board: release GO, and "
                                "press STOP on the table to abandon it.")
            raise failure from None
        except client_mod.ClientError:
            if started:
                view.close({})
                _cancel(board)  # never leave the routine waiting on the board
            raise
        after = _table_after(board) if status.get("error") else ""
    _result(status, view.step, console, as_json, after)
