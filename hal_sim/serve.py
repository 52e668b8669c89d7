"""A simulated board behind a pseudo-terminal: ``invtable sim serve``.

The unmodified firmware (CPython) runs on the simulated table in real time
(times ``speed``); its serial link is bridged to a pty, so the host tool,
pyserial or a terminal talk to it exactly as to a board on a USB port.
Physical inputs (buttons, faults, power loss) come in as lines on stdin.

stdout: the first line is the pty's device path (flushed at once), then short
human-readable notes (state changes, warnings, session ends, acknowledged
inputs). Keep reading stdout, or send it to a file: a full pipe would stall
the simulation.

CPython only (pty, termios, threads).
"""

import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
import tty

from ..firmware.app import App
from ..firmware.calibration import CALIB_FILE
from ..firmware.hal import DRIVE_DEADLINE_MS
from .dirflash import DirFlash
from .flash import PowerLoss
from .scenario import build_hal, commission_flash
from .table import SimTable

POWER_OFF_MS = 500  # the board stays dark this long after "power_loss"
MAX_SPEED = 50.0
RX_BACKLOG_MAX = 4096  # bytes waiting for the firmware; more is dropped (UART overrun)
TX_BACKLOG_MAX = 65536  # bytes waiting for a host that does not read; more is dropped
LATE_RESYNC_S = 0.25  # fell this far behind real time: carry on, no catch-up burst

BOARD_INPUTS = ("power_loss", "torn_write")
CONTROL_INPUTS = ("status", "help", "quit")
INPUTS = SimTable.ACTIONS + BOARD_INPUTS + CONTROL_INPUTS

INPUT_HELP = """\
Physical inputs, one per line on stdin:
  go            tap GO (held 200 ms of sim time); go_down / go_up hold / release it
  stop          tap STOP; stop_down / stop_up hold / release it
  power_loss    the board loses power (RAM lost, flash kept) and boots again
  torn_write    the board loses power in the middle of its next flash write
  imu_disconnect imu_stuck imu_spike imu_drift stall overload stop_wire_cut
  stop_wire_repair home_switch_fail home_switch_stuck_closed
                inject that hardware fault (see `invtable sim run --help`)
  faint         the rider answers no check-in any more and lets go of the grip
                (otherwise the simulated rider taps GO 1-5 s after each chirp)
  grip_release / grip_hold   the rider lets go of / takes the dead-man grip
                (read only by a board with a grip_pin: `sim serve --grip`)
  status        print the firmware's status on stdout
  quit          shut down (as do SIGTERM, SIGINT and Ctrl-C)
End of stdin does not stop the server."""


class SimBoard:
    """The simulated table with the firmware and a file-backed flash."""

    def __init__(self, board, state_dir, seed=0, world=None):
        """``world``: the table that is really there (None: the board file)."""
        self.board = board
        self.dt_ms = 1000 // board["control_hz"]
        self.table = SimTable(board, seed, world=world, drive_deadline_ms=DRIVE_DEADLINE_MS)
        self.table.wdt.timeout_ms = board.get("wdt_timeout_ms", 1000)
        self.flash = DirFlash(state_dir)
        if world is None and self.flash.read_bytes(CALIB_FILE) is None:
            # A table exactly as its board file says starts commissioned (as a
            # builder would have left it); a --world table waits for
            # `invtable setup`. A state dir keeps whatever it holds.
            commission_flash(self.flash, board, seed)
        self.app = None
        self.boots = 0
        self._dark_until_ms = None
        self._boot()

    @property
    def link(self):
        return self.table.link

    @property
    def now_ms(self):
        return self.table.clock.elapsed_ms

    @property
    def powered(self):
        return self.app is not None

    def _boot(self):
        self.boots += 1
        try:
            self.app = App(build_hal(self.table, self.flash), self.board)
        except PowerLoss:
            # A power cut during boot (the App writes the log while it is
            # built): dark again, boots again later.
            self.power_loss()
            return
        self.table.wdt.reset()

    def power_loss(self):
        """RAM lost (the App goes), flash kept; boots again POWER_OFF_MS later."""
        self.app = None
        self.table.power_off()
        self._dark_until_ms = self.now_ms + POWER_OFF_MS
        link = self.table.link
        while link.read_byte() >= 0:  # bytes in flight die with the board
            pass
        link.host_read()

    def inject(self, action):
        if action == "power_loss":
            self.power_loss()
        elif action == "torn_write":
            self.flash.tear_next_write()
        else:
            self.table.inject(action)  # ValueError for an unknown action

    def tick(self):
        t = self.table
        if self._dark_until_ms is not None and self.now_ms >= self._dark_until_ms:
            self._dark_until_ms = None
            t.power_on()
            self._boot()
        if self.app is not None:
            try:
                self.app.tick()
            except PowerLoss:  # a flash write torn by an injected power cut
                self.power_loss()
        t.step(self.dt_ms)


class Server:
    def __init__(
        self, board, state_dir=None, speed=1.0, seed=0, out=None, stdin=None, world=None
    ):
        if not 0 < speed <= MAX_SPEED:
            raise ValueError("speed must be in (0, %g]" % MAX_SPEED)
        self.speed = float(speed)
        self.out = out if out is not None else sys.stdout
        self.stdin = stdin if stdin is not None else sys.stdin
        self.temp_dir = None
        if state_dir is None:
            state_dir = self.temp_dir = tempfile.mkdtemp(prefix="invtable-sim-")
        self.state_dir = os.path.abspath(state_dir)
        self.sim = SimBoard(board, self.state_dir, seed, world)
        self.world_given = world is not None
        self.board_name = board.get("name", "?")
        self._inputs = queue.Queue()
        self._stopping = False
        self._master = None
        self._slave = None
        self._tx = bytearray()
        self._last_state = None
        self._last_warnings = 0

    # ------------------------------------------------------------- plumbing
    def note(self, text):
        try:
            self.out.write("[%9.2f s] %s\n" % (self.sim.now_ms / 1000, text))
            self.out.flush()
        except (OSError, ValueError):
            pass  # nobody reads our stdout any more: keep serving the pty

    def request_stop(self, *_args):
        self._stopping = True

    def open_pty(self):
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing, no CR/LF translation
        os.set_blocking(master, False)
        self._master = master
        self._slave = slave  # kept open: the master never sees EIO between clients
        return os.ttyname(slave)

    def _read_stdin(self):
        try:
            for line in self.stdin:
                self._inputs.put(line.strip())
        except (OSError, ValueError):
            pass

    def _pump_rx(self):
        """Host -> firmware: whatever the pty holds, into the link."""
        link = self.sim.link
        while True:
            try:
                data = os.read(self._master, 4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not data:
                return
            if not self.sim.powered:
                continue  # the board is off: bytes are lost
            room = RX_BACKLOG_MAX - link.pending()
            if room > 0:
                link.host_write(data[:room])

    def _pump_tx(self):
        """Firmware -> host, never blocking; a host that does not read loses lines."""
        data = self.sim.link.host_read()
        if data and len(self._tx) + len(data) <= TX_BACKLOG_MAX:
            self._tx.extend(data)  # whole chunks only: lines stay intact
        while self._tx:
            try:
                n = os.write(self._master, self._tx)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._tx = bytearray()
                return
            del self._tx[:n]

    def _handle_inputs(self):
        while True:
            try:
                line = self._inputs.get_nowait()
            except queue.Empty:
                return
            if not line:
                continue
            if line == "quit":
                self._stopping = True
            elif line == "help":
                for text in INPUT_HELP.splitlines():
                    self.note(text)
            elif line == "status":
                app = self.sim.app
                self.note("status: " + (status_line(app.status()) if app is not None
                                        else "power off"))
            else:
                try:
                    self.sim.inject(line)
                except ValueError:
                    self.note("unknown input %r; valid: %s" % (line, ", ".join(INPUTS)))
                    continue
                self.note("input: " + line)

    def _report(self):
        app = self.sim.app
        if app is None:
            if self._last_state != "OFF":
                self._last_state = "OFF"
                self.note("power off")
            return
        ctl = app.ctl
        if ctl.state != self._last_state:
            fault = " (fault %s)" % ctl.fault if ctl.fault else ""
            self.note("state %s -> %s%s" % (self._last_state, ctl.state, fault))
            self._last_state = ctl.state
        if ctl.warnings != self._last_warnings:
            self._last_warnings = ctl.warnings
            if ctl.warning:
                self.note("warning " + ctl.warning)
        if ctl.session_ended:
            self.note("session ended: %s" % ctl.end_reason)

    # ----------------------------------------------------------------- run
    def run(self):
        """Serve until quit / SIGTERM / SIGINT. Returns the exit status."""
        old_handlers = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            old_handlers[sig] = signal.signal(sig, self.request_stop)
        try:
            path = self.open_pty()
            self.out.write(path + "\n")
            self.out.flush()
            where = "a temporary directory, removed at exit" if self.temp_dir else "kept"
            self.note(
                "board %s, speed x%g, state dir %s (%s)"
                % (self.board_name, self.speed, self.state_dir, where)
            )
            if self.world_given:
                self.note("world: " + self.sim.table.world.describe())
            self.note("type `help` on stdin for the physical inputs")
            threading.Thread(target=self._read_stdin, daemon=True).start()
            self._loop()
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            self.close()
        return 0

    def _loop(self):
        dt_s = self.sim.dt_ms / 1000.0 / self.speed
        start = time.monotonic()
        ticks = 0
        while not self._stopping:
            due = start + ticks * dt_s
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)  # a signal wakes it early; the loop re-checks
                continue
            if now - due > LATE_RESYNC_S:
                start += now - due  # the machine was busy: no catch-up burst
            self._pump_rx()
            self._handle_inputs()
            self.sim.tick()
            ticks += 1
            self._report()
            self._pump_tx()

    def close(self):
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None
        self.note("stopped")
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def status_line(status):
    """The firmware's status in one line for people (the `status` input);
    `invtable status --port DEVICE` shows it all."""
    parts = ["%s at %.1f deg" % (status["state"], status["angle_mdeg"] / 1000)]
    if status.get("fault"):
        parts.append("fault " + status["fault"])
    if status.get("warning"):
        parts.append("notice " + status["warning"])
    parts.append("user " + str(status.get("user")))
    if status.get("session"):
        parts.append("session open, %d set(s) done, %.1f s inverted"
                     % (status["sets_done"], status["inverted_ms"] / 1000))
    if status.get("check_in_waiting"):
        parts.append("check-in: tap GO")
    parts.append("today %.0f of %.0f s inverted"
                 % (status["daily_used_ms"] / 1000, status["daily_limit_ms"] / 1000))
    return ", ".join(parts)
