"""The virtual board: real MicroPython behind a pseudo-terminal, with the table inside.

``VirtualBoard`` starts ``vboard_node.mjs`` (the npm MicroPython 1.27
WebAssembly interpreter's REPL, with ``hal_sim`` installed as ``machine`` and
a simulated table behind the pins) and bridges its stdin/stdout to a pty, so
real serial tools talk to it as to a board on USB::

    with VirtualBoard("esp32_devkitc") as vb:
        subprocess.run(["mpremote", "connect", vb.port, "exec", "print(1+1)"])

A board without a world starts commissioned (the calibration commissioning
would measure on that table is on its flash before it first boots); with a
world it waits for ``invtable setup``. ``send_input("go")`` and the other
physical inputs (``INPUTS``) reach the simulated table through a control
pipe beside the serial line, while the firmware runs. With ``state_dir`` the
board's flash (its whole filesystem: the deployed firmware, settings,
calibration, log) is kept in that folder across restarts: loaded before the
first boot, every completed write saved at once (host/mpy_fs.mjs).

``invtable sim board`` runs one until Ctrl-C. POSIX only (pty).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import subprocess
import threading
import time
import tty
from pathlib import Path

from invtable.hal_sim.table import SimTable
from invtable.hal_sim.world import World
from invtable.host import micropython as mpy
from invtable.host.boards import DEFAULT_BOARD, load_board

NODE_RUNNER = Path(__file__).with_name("vboard_node.mjs")
STAGE_DEST = "/tmp/_vboard/hal_sim"  # removed again once imported
READY_LINE = b"vboard: ready"
NOTE_PREFIX = "vboard: note: "  # the board's answers to physical inputs
# The physical inputs the simulated table takes (send_input).
INPUTS = SimTable.ACTIONS + ("power_loss", "status")
START_TIMEOUT_S = 20.0
# How long output may wait for a reader of the pty before it is dropped (a
# UART with nobody listening loses bytes too; a connected client never waits).
OUTPUT_STALL_S = 1.0
# How long a board with a state dir may take to save its flash and exit.
CLOSE_TIMEOUT_S = 5.0


class VirtualBoardError(RuntimeError):
    """The virtual board could not be started or died."""


def _hal_sim_dir() -> Path:
    import invtable.hal_sim as pkg

    return Path(next(iter(pkg.__path__)))


class VirtualBoard:
    """One virtual board. ``port`` is its serial device path once started."""

    def __init__(
        self,
        board: str = DEFAULT_BOARD,
        *,
        seed: int = 0,
        start_angle_deg: float | None = None,
        world: dict | None = None,
        commissioned: bool | None = None,
        imu: bool = True,
        state_dir: str | os.PathLike[str] | None = None,
        heap_bytes: int = 8 * 1024 * 1024,
        log=None,
        on_note=None,
    ):
        """``world``: a world file's dict (hal_sim/world.py), the table that is
        really there; None = exactly the board file. Checked here (WorldError)
        and handed to the board's hal_sim in the --config JSON.

        ``commissioned``: start with the calibration commissioning measures on
        this table on the flash; None = only without a world (a --world
        table waits for ``invtable setup``, as with ``sim serve``).
        ``imu`` False: no MPU-6050 answers on the bus, from power-on.
        ``state_dir``: a folder that keeps the flash across restarts (made if
        missing); None = the flash lives and dies with the interpreter.
        ``on_note(text)``: the board's answers to physical inputs (default:
        the log)."""
        self.board_name = board
        self.board = load_board(board)  # KeyError naming the known boards
        self.seed = seed
        self.start_angle_deg = start_angle_deg
        if world is not None:
            World.from_dict(world, self.board)  # WorldError before node starts
        self.world = world
        self.commissioned = world is None if commissioned is None else commissioned
        self.imu = imu
        self.state_dir = None if state_dir is None else Path(state_dir).resolve()
        self.heap_bytes = heap_bytes
        self.log = log  # a text stream for the interpreter's diagnostics (stderr)
        self.on_note = on_note
        self.port: str | None = None
        self.proc: subprocess.Popen | None = None
        self._master = -1
        self._slave = -1
        self._to_node = -1
        self._control = -1  # write end of the physical-input pipe
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._stderr_tail: list[str] = []

    # --- life cycle ---------------------------------------------------------------

    def flash_files(self) -> dict[str, str]:
        """{name: text} to put on the board's flash before it first boots."""
        if not self.commissioned:
            return {}
        from invtable.firmware.calibration import CALIB_FILE
        from invtable.hal_sim.flash import SimFlash
        from invtable.hal_sim.scenario import commission_flash

        world = World.from_dict(self.world, self.board) if self.world is not None else None
        flash = commission_flash(SimFlash(), self.board, self.seed, world)
        return {CALIB_FILE: flash.read_bytes(CALIB_FILE).decode("ascii")}

    def command(self, control_fd: int | None = None) -> list[str]:
        """The Node command line; ``control_fd``: the read end of the
        physical-input pipe, inherited by node."""
        node = mpy.node_executable()
        if node is None:
            raise mpy.MicroPythonUnavailable("`node` not found on PATH; install Node.js >= 18")
        pkg = mpy.micropython_package_dir()
        if pkg is None:
            raise mpy.MicroPythonUnavailable(
                f"npm package {mpy.NPM_PACKAGE} is not installed: {mpy.FIX_HINT}"
            )
        config = {
            "board": self.board,
            "seed": self.seed,
            "start_angle_deg": self.start_angle_deg,
            "world": self.world,
            "imu": self.imu,
            "files": self.flash_files(),
        }
        extra = [] if control_fd is None else ["--control", str(control_fd)]
        if self.state_dir is not None:
            extra += ["--state-dir", str(self.state_dir)]
        return [
            node,
            str(NODE_RUNNER),
            "--micropython",
            str(pkg / "micropython.mjs"),
            "--heap",
            str(self.heap_bytes),
            "--mount",
            f"{_hal_sim_dir()}:{STAGE_DEST}",
            "--config",
            json.dumps(config),
            *extra,
        ]

    def start(self) -> VirtualBoard:
        if self.state_dir is not None:
            try:
                self.state_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise VirtualBoardError(f"cannot use the state dir {self.state_dir}: {error}") \
                    from None
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: a plain serial line
        os.set_blocking(self._master, False)
        read_end, self._to_node = os.pipe()
        control_end, self._control = os.pipe()
        for fd in (read_end, control_end):
            os.set_blocking(fd, False)  # the Node side polls them
        try:
            self.proc = subprocess.Popen(
                self.command(control_end),
                stdin=read_end,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(control_end,),
                start_new_session=True,  # Ctrl-C in a terminal goes to us, not node
            )
        except BaseException:
            self.close()
            raise
        finally:
            os.close(read_end)
            os.close(control_end)
        self.port = os.ttyname(self._slave)
        for target in (self._pump_input, self._pump_output, self._pump_stderr):
            thread = threading.Thread(target=target, daemon=True, name=target.__name__)
            thread.start()
            self._threads.append(thread)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = "".join(self._stderr_tail[-20:])
                self.close()
                raise VirtualBoardError(f"the virtual board did not start:\n{tail}")
        return self

    def close(self) -> None:
        self._stop.set()
        proc = self.proc
        if proc is not None and self.state_dir is not None and self._to_node >= 0:
            # End of its stdin: node saves the flash and exits by itself (it
            # sees it at the next sleep or serial read, or at once at the REPL).
            for thread in self._threads:
                if thread.name == "_pump_input":
                    thread.join(1)  # it writes to that pipe: let it stop first
            with contextlib.suppress(OSError):
                os.close(self._to_node)
            self._to_node = -1
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(CLOSE_TIMEOUT_S)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for fd_name in ("_to_node", "_control", "_master", "_slave"):
            fd = getattr(self, fd_name)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, fd_name, -1)
        for thread in self._threads:
            thread.join(2)
        self._threads = []
        if proc is not None:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def __enter__(self) -> VirtualBoard:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self) -> int:
        """Until the interpreter exits; its exit status."""
        assert self.proc is not None
        return self.proc.wait()

    def send_input(self, action: str) -> None:
        """A physical input (one of ``INPUTS``: go, go_down, stop, a hardware
        fault, power_loss, status), acted on at the firmware's next control
        tick (or at once while the REPL idles). ValueError for an unknown one."""
        if action not in INPUTS:
            raise ValueError(f"unknown input {action!r}; valid: {', '.join(INPUTS)}")
        if self._control < 0:
            raise VirtualBoardError("the virtual board is not running")
        try:
            os.write(self._control, action.encode() + b"\n")  # a few bytes: never blocks
        except OSError as error:  # EPIPE: node has exited
            raise VirtualBoardError(f"the virtual board is not running ({error})") from None

    # --- the bridge -----------------------------------------------------------------

    def _pump_input(self) -> None:
        """pty (what the serial client writes) -> node's stdin."""
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(self._master, 4096)
            except OSError as error:
                if error.errno in (errno.EAGAIN, errno.EINTR):
                    continue
                return  # EIO: the pty is gone
            if not data:
                return
            try:
                while data:
                    data = data[os.write(self._to_node, data) :]
            except OSError:
                return

    def _pump_output(self) -> None:
        """node's stdout (the board's serial output) -> pty."""
        assert self.proc is not None and self.proc.stdout is not None
        out = self.proc.stdout.fileno()
        while not self._stop.is_set():
            try:
                data = os.read(out, 65536)
            except OSError:
                return
            if not data:
                return
            self._write_master(data)

    def _write_master(self, data: bytes) -> None:
        view = memoryview(data)
        stalled_since = None
        while view and not self._stop.is_set():
            try:
                n = os.write(self._master, view)
                view = view[n:]
                stalled_since = None
            except BlockingIOError:
                now = time.monotonic()
                if stalled_since is None:
                    stalled_since = now
                elif now - stalled_since > OUTPUT_STALL_S:
                    return  # nobody reads the port: drop, as a UART would
                time.sleep(0.005)
            except OSError:
                return

    def _pump_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            if not self._ready.is_set() and line.strip() == READY_LINE:
                self._ready.set()
                continue
            text = line.decode("utf-8", "replace")
            if text.startswith(NOTE_PREFIX) and self.on_note is not None:
                self.on_note(text[len(NOTE_PREFIX) :].rstrip("\n"))
                continue
            self._stderr_tail.append(text)
            del self._stderr_tail[:-50]
            if self.log is not None:
                try:
                    self.log.write(text)
                    self.log.flush()
                except (OSError, ValueError):
                    pass
