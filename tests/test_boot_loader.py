"""The boot loader (firmware/main.py, loader.py): its decision table, under real MicroPython
and CPython.

Each case is a flash laid out by the same code deploy uses (host/deploy_slots.py:
slots with a manifest, the pointer), then damaged as the case says. The
loader runs on it with a recording ``machine`` (every Pin it sets) and
``time`` (its alarm wait); each slot's ``firmware/start.py`` only says which
slot was started, with what the loader handed it. What must hold:

- a complete active slot starts silently, nothing else touched;
- a bad active slot is never imported: one boot_error line with its code, the
  motor pins low (enable first), the beeper on, the alarm wait, then the other
  slot if it is complete (the message says so);
- with no complete slot: the codes, drive off, alarm on, nothing started;
- a board with nothing at all says ``firmware_missing``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from invtable.boards import esp32_devkitc
from invtable.host import deploy_slots as slots

ROOT = Path(__file__).resolve().parent.parent
MAIN = ROOT / "firmware" / "main.py"
LOADER = ROOT / "firmware" / "loader.py"
BOARD = esp32_devkitc.BOARD
MOTOR = [BOARD["actuator"][k] for k in ("enable", "pwm_fwd", "pwm_rev")]
BEEPER = BOARD["beeper_pin"]
SAFE_PINS = [[pin, 0] for pin in MOTOR] + [[BEEPER, 1]]  # what a bad slot leads to

# What the loader reads of a board file (the real one is bigger, same keys).
BOARD_FILE = "BOARD = %r\n" % ({key: BOARD[key] for key in ("name", "chip", "beeper_pin")} | {
    "actuator": {k: BOARD["actuator"][k] for k in ("enable", "pwm_fwd", "pwm_rev")}})

STUB_START = """\
import json
def main(slot):
    print("START " + json.dumps(slot))
"""


def make_slot(root: Path, slot: str, version: str) -> None:
    folder = root / "fw" / slot
    (folder / "firmware").mkdir(parents=True)
    (folder / "firmware" / "__init__.py").write_text("")
    (folder / "firmware" / "start.py").write_text(STUB_START)
    (folder / "firmware" / "app.py").write_text(f"VERSION = {version!r}\n" + "# padding\n" * 80)
    (folder / "board.py").write_text(BOARD_FILE)
    (folder / slots.MANIFEST).write_bytes(slots.slot_manifest(folder, "esp32_devkitc", version))


def flash(root: Path, pointer: bytes | None = b"a\n") -> Path:
    """Both slots complete (a: 1.0, b: 0.9), the pointer as given."""
    make_slot(root, "a", "1.0")
    make_slot(root, "b", "0.9")
    if pointer is not None:
        (root / "fw" / "active").write_bytes(pointer)
    return root


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit: same size, another sha256
    path.write_bytes(bytes(data))


# name -> (lay the flash out in this folder, expected: boot_error codes, pins set,
#          alarm wait ms, slot started (None: none), part of the first message)
def _ok(root):
    flash(root)


def _active_corrupt(root):
    flash(root)
    corrupt(root / "fw/a/firmware/app.py")


def _active_file_missing(root):
    flash(root)
    (root / "fw/a/firmware/app.py").unlink()


def _active_wrong_size(root):
    flash(root)
    with open(root / "fw/a/board.py", "ab") as f:
        f.write(b"\n")


def _both_bad(root):
    flash(root)
    corrupt(root / "fw/a/firmware/start.py")
    (root / "fw/b" / slots.MANIFEST).unlink()


def _pointer_missing(root):
    flash(root, pointer=None)


def _pointer_missing_a_partial(root):
    flash(root, pointer=None)
    (root / "fw/a" / slots.MANIFEST).unlink()


def _pointer_garbage(root):
    flash(root, pointer=b"\xff\x00zz")


def _manifest_garbage(root):
    flash(root)
    (root / "fw/a" / slots.MANIFEST).write_bytes(b'{"files": [1, 2')


def _manifest_without_start(root):
    flash(root, pointer=b"b\n")
    (root / "fw/b" / slots.MANIFEST).write_bytes(b'{"files": {}}')


def _nothing(root):
    root.mkdir(parents=True, exist_ok=True)  # nothing but loader.py


def _board_file_damaged(root):
    """Slot a's board.py still parses but names other pins; b is not complete
    but its board.py is the one its manifest names: that one is used."""
    flash(root)
    (root / "fw/a/board.py").write_text(BOARD_FILE.replace(
        f"'enable': {MOTOR[0]}", "'enable': 4"))
    corrupt(root / "fw/b/firmware/app.py")


def _no_loader(root):
    flash(root)
    (root / "loader.py").unlink()


def _nothing_partial(root):
    flash(root, pointer=None)
    for name in ("a", "b"):
        (root / "fw" / name / slots.MANIFEST).unlink()
    shutil.rmtree(root / "fw/b")


CASES = {
    "active_ok": (_ok, [], [], None, "a", None),
    "active_corrupt_other_ok": (_active_corrupt, ["firmware_corrupt"], SAFE_PINS, 2000, "b",
                                "fw/a/firmware/app.py does not match the manifest; booting "
                                "the complete firmware in fw/b"),
    "active_file_missing_other_ok": (_active_file_missing, ["firmware_incomplete"], SAFE_PINS,
                                     2000, "b", "fw/a/firmware/app.py missing; booting"),
    "active_wrong_size": (_active_wrong_size, ["firmware_corrupt"], SAFE_PINS, 2000, "b",
                          "fw/a/board.py does not match"),
    "both_bad": (_both_bad, ["firmware_corrupt", "firmware_incomplete"], SAFE_PINS, None,
                 None, "fw/a/firmware/start.py does not match the manifest"),
    "pointer_missing": (_pointer_missing, ["firmware_incomplete"], SAFE_PINS, 2000, "a",
                        "no fw/active; booting the complete firmware in fw/a"),
    "pointer_missing_a_partial": (_pointer_missing_a_partial, ["firmware_incomplete",
                                  "firmware_incomplete"], SAFE_PINS, 2000, "b", "no fw/active"),
    "pointer_garbage": (_pointer_garbage, ["firmware_corrupt"], SAFE_PINS, 2000, "a",
                        "fw/active names no slot"),
    "manifest_garbage": (_manifest_garbage, ["firmware_corrupt"], SAFE_PINS, 2000, "b",
                         "fw/a/manifest.json unreadable; booting the complete firmware in fw/b"),
    "manifest_without_start": (_manifest_without_start, ["firmware_corrupt"], SAFE_PINS, 2000,
                               "a", "fw/b/manifest.json unreadable"),
    "nothing": (_nothing, ["firmware_missing"], [], None, None,
                "no firmware on this board (no fw/active; fw/a/manifest.json missing; "
                "fw/b/manifest.json missing): drive off, alarm on"),
    "nothing_complete_no_pointer": (_nothing_partial, ["firmware_missing"], SAFE_PINS, None,
                                    None, "no firmware on this board"),
    "board_file_damaged": (_board_file_damaged, ["firmware_corrupt", "firmware_corrupt"],
                           SAFE_PINS, None, None, "fw/a/board.py does not match"),
    "no_loader": (_no_loader, ["firmware_missing"], [], None, None,
                  "no loader.py beside main.py"),
}

# Runs every case in one interpreter: a recording machine and time, the loader
# exec'd in each case's folder, then everything it imported forgotten.
RUNNER = """\
import os, sys
class _Pin:
    OUT = 1
    IN = 0
    def __init__(self, pin, mode=-1, pull=-1, value=None):
        print("PIN %d %d" % (pin, -1 if value is None else value))
class _Machine:
    Pin = _Pin
class _Time:
    @staticmethod
    def sleep_ms(ms):
        print("SLEEP %d" % ms)
sys.modules["machine"] = _Machine
sys.modules["time"] = _Time
top = os.getcwd()
path = list(sys.path)
def _mkdirs(p):
    at = ""
    for part in p.split("/")[:-1]:
        at += part + "/"
        try:
            os.mkdir(at)
        except OSError:
            pass
for name, data in FILES.items():
    _mkdirs(name)
    with open(name, "wb") as f:
        f.write(data)
for case in CASES:
    print("CASE " + case)
    _mkdirs(BASE + "/" + case + "/")  # a case with no files at all
    os.chdir(top + "/" + BASE + "/" + case)
    exec(MAIN, {"__name__": "__main__"})
    for name in ("firmware.start", "firmware"):
        if name in sys.modules:
            del sys.modules[name]
    sys.path[:] = path
    os.chdir(top)
print("END")
"""


def parse(out: str) -> dict:
    results: dict[str, dict] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("CASE "):
            current = results[line[5:]] = {"codes": [], "messages": [], "pins": [],
                                           "sleep": None, "start": None}
        elif line.startswith('{"event": "boot_error"'):
            event = json.loads(line)
            current["codes"].append(event["code"])
            current["messages"].append(event["message"])
        elif line.startswith("PIN "):
            current["pins"].append([int(v) for v in line.split()[1:]])
        elif line.startswith("SLEEP "):
            current["sleep"] = int(line.split()[1])
        elif line.startswith("START "):
            current["start"] = json.loads(line[6:])
    assert out.rstrip().endswith("END"), out
    return results


@pytest.fixture(scope="module")
def cases_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("loader_cases")
    for name, (lay_out, *_rest) in CASES.items():
        (base / name).mkdir()
        shutil.copyfile(LOADER, base / name / "loader.py")  # deploy puts it there first
        lay_out(base / name)
    return base


def check(results: dict, base: Path) -> None:
    assert set(results) == set(CASES)
    for name, (_lay, codes, pins, sleep, started, message) in CASES.items():
        got = results[name]
        assert got["codes"] == codes, (name, got)
        assert got["pins"] == pins, (name, got)
        assert got["sleep"] == sleep, (name, got)
        if message is not None:
            assert message in got["messages"][0], (name, got)
        if started is None:
            assert got["start"] is None, (name, got)
            continue
        slot = got["start"]
        assert slot["slot"] == started, (name, got)
        manifest = (base / name / "fw" / started / slots.MANIFEST).read_bytes()
        assert slot["manifest_sha256"] == slots.file_entry(manifest)[0]
        assert slot["firmware"] == {"a": "1.0", "b": "0.9"}[started]
        if codes:
            assert slot["fallback_code"] == codes[0], (name, got)
        else:
            assert "fallback_code" not in slot


def runner_code(base: Path) -> str:
    """The runner with the loader's source and every case's files (written
    by the interpreter itself into its working folder, under cases/)."""
    files = {f"cases/{path.relative_to(base).as_posix()}": path.read_bytes()
             for path in sorted(base.rglob("*")) if path.is_file()}
    return (f"MAIN = {MAIN.read_text()!r}\nBASE = 'cases'\nCASES = {sorted(CASES)!r}\n"
            f"FILES = {files!r}\n" + RUNNER)


def test_the_decision_table_under_micropython(micropython, cases_dir):
    proc = micropython(runner_code(cases_dir), mounts=[])
    check(parse(proc.stdout), cases_dir)


def test_the_decision_table_under_cpython(cases_dir, tmp_path):
    script = tmp_path / "runner.py"
    script.write_text(runner_code(cases_dir))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    check(parse(proc.stdout), cases_dir)


def test_main_py_stays_small():
    """It is compiled at every boot and held while the firmware runs
    (bench/boot_heap.py: main.py); loader.py's code is let go of."""
    assert len(MAIN.read_bytes()) < 1600
