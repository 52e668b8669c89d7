"""The firmware slots on a board's flash: what deploy builds, and how it plans an update.

The layout (what firmware/main.py, the boot loader, expects)::

    /main.py /loader.py          the boot loader (firmware/main.py runs loader.py: the
                                 checks; source)
    /boot.py                     firmware/boot.py (source)
    /fw/active                   one line: the slot to boot ("a" or "b")
    /fw/a/manifest.json          sha256 and size of every other file of the slot,
                                 the firmware version, the board name
    /fw/a/board.py               boards/<NAME>.py
    /fw/a/chips.py /validate.py  boards/chips.py, boards/validate.py (flat)
    /fw/a/firmware/*.mpy         the firmware package, compiled (start.mpy: the start-up)
    /fw/b/...                    the other slot: the previous firmware (the fallback),
                                 or the next one while a deploy builds it

The settings, users, log and calibration stay at the root; no deploy touches them.

Before slots, deploy put the firmware at the root (``/firmware/*.mpy``,
``/board.py``, ``/chips.py``, ``/validate.py``, ``/invtable_manifest.json``;
``/invtable_new/`` while it copied): :data:`OLD_LAYOUT`. Its main.py keeps
booting that until the first slot is complete and active; then deploy removes it.

This module holds the pure parts: building a slot in a local folder
(:func:`build_slot`, :func:`slot_manifest`, :func:`lay_out_flash`), the scripts
deploy runs on the board, and :func:`plan_update`, which decides from what
the board holds (:data:`STATE_SCRIPT`'s answer) what to copy where.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

FW_DIR = "/fw"
POINTER = FW_DIR + "/active"
SLOTS = ("a", "b")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# Source at the root: the port runs boot.py and main.py by name; main.py runs
# loader.py. In this order they are put in place (main.py needs its loader.py).
LOADER = ("/loader.py", "/main.py", "/boot.py")
OLD_LAYOUT = ("/firmware", "/board.py", "/chips.py", "/validate.py",
              "/invtable_manifest.json", "/invtable_new")
FLAT_BOARD_FILES = ("chips.py", "validate.py")
TEMP_FILES = tuple(p + ".new" for p in (*LOADER, POINTER))  # written, then renamed
# What the state query hashes at the root (files, then folders walked).
ROOT_FILES = (*LOADER, *TEMP_FILES, *(p for p in OLD_LAYOUT if p.endswith((".py", ".json"))))
ROOT_DIRS = tuple(p for p in OLD_LAYOUT if not p.endswith((".py", ".json")))


def slot_dir(slot: str) -> str:
    return f"{FW_DIR}/{slot}"


def other_slot(slot: str) -> str:
    return "b" if slot == "a" else "a"


# --- local side ------------------------------------------------------------------------


def firmware_version(firmware_dir: Path) -> str:
    """FIRMWARE_VERSION of firmware_dir/protocol.py (what `info` reports)."""
    text = (firmware_dir / "protocol.py").read_text(encoding="utf-8")
    m = re.search(r'^FIRMWARE_VERSION\s*=\s*"([^"]+)"', text, re.M)
    if not m:
        raise ValueError(f"no FIRMWARE_VERSION in {firmware_dir / 'protocol.py'}")
    return m[1]


def slot_sources(board_file: Path, boards_dir: Path, firmware_dir: Path) -> list[tuple[str, Path]]:
    """(name in the slot, local source) of every slot file; .py firmware
    modules are named as their .mpy (compiled by deploy)."""
    files = [("board.py", board_file)]
    files += [(name, boards_dir / name) for name in FLAT_BOARD_FILES]
    loader = {name.lstrip("/") for name in LOADER}
    for src in sorted(firmware_dir.glob("*.py")):
        if src.name not in loader:
            files.append((f"firmware/{src.stem}.mpy", src))
    return files


def file_entry(data: bytes) -> list:
    """[sha256 hex, size]: how a manifest (and the board's answers) name a file."""
    return [hashlib.sha256(data).hexdigest(), len(data)]


def slot_manifest(folder: Path, board: str, version: str) -> bytes:
    """The manifest of a slot built in ``folder``: every file in it but the
    manifest itself. Deterministic bytes (sorted keys): its sha256 names
    the firmware (``info``'s manifest_sha256)."""
    files = {
        path.relative_to(folder).as_posix(): file_entry(path.read_bytes())
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    doc = {"version": MANIFEST_VERSION, "firmware": version, "board": board, "files": files}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def build_slot(sources: list[tuple[str, Path]], folder: Path, compile_mpy) -> None:
    """Write a slot's files into ``folder``; ``compile_mpy(src, dest)`` makes
    each .mpy (deploy: mpy-cross with the board's -march)."""
    for name, src in sources:
        dest = folder / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".mpy"):
            compile_mpy(src, dest)
        else:
            shutil.copyfile(src, dest)


def finish_flash(root: Path, slot: str, board: str, version: str,
                 firmware_dir: Path) -> bytes:
    """Around a slot built in ``root``/fw/``slot``: its manifest, the
    pointer naming it, the loader at the root (a flash as deploy leaves it).
    The manifest's bytes."""
    folder = root / slot_dir(slot).lstrip("/")
    manifest = slot_manifest(folder, board, version)
    (folder / MANIFEST).write_bytes(manifest)
    (root / POINTER.lstrip("/")).write_text(slot + "\n")
    for name in LOADER:
        shutil.copyfile(firmware_dir / name.lstrip("/"), root / name.lstrip("/"))
    return manifest


# --- the board side --------------------------------------------------------------------

def _loader_functions(*names: str) -> str:
    """The source of these functions of firmware/loader.py: the board
    scripts hash files exactly as the boot loader does."""
    import ast

    path = Path(__file__).resolve().parent.parent / "firmware" / "loader.py"
    text = path.read_text(encoding="utf-8")
    found = {node.name: ast.get_source_segment(text, node)
             for node in ast.parse(text).body if isinstance(node, ast.FunctionDef)}
    return "\n".join(found[name] for name in names) + "\n"


# Helpers of every board script: _h(path) -> [sha256 hex, size] or None (the
# loader's _entry); _rm(path) removes a file or a folder with everything in it.
_HELPERS = "import os, json, binascii\n" + _loader_functions("_hex", "_entry") + """\
_h = _entry
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
"""

# What the board holds: the pointer, each slot's manifest (hex: it may be
# garbage) and files, the loader and the old layout's files.
STATE_SCRIPT = _HELPERS + """\
def _walk(d, out, pre):
    try:
        es = list(os.ilistdir(d))
    except OSError:
        return
    for e in es:
        if e[1] & 0x4000:
            _walk(d + "/" + e[0], out, pre + e[0] + "/")
        else:
            out[pre + e[0]] = _h(d + "/" + e[0])
def _raw(p):
    try:
        with open(p, "rb") as f:
            return binascii.hexlify(f.read()).decode()
    except OSError:
        return None
_s = {"pointer": _raw(%(pointer)r), "slots": {}, "root": {}}
for _n in %(slots)r:
    _f = {}
    _walk(%(fw)r + "/" + _n, _f, "")
    _s["slots"][_n] = {"manifest": _raw(%(fw)r + "/" + _n + "/" + %(manifest)r), "files": _f}
for _p in %(root_files)r:
    _s["root"][_p] = _h(_p)
for _p in %(root_dirs)r:
    _f = {}
    _walk(_p, _f, _p + "/")
    _s["root"].update(_f)
print(%(mark)r + json.dumps(_s))
"""

# Before the copies: the target slot loses its manifest first (from then on
# the loader never takes it for complete), then what it holds that the new
# firmware does not; its folders are made, files the board already has are
# copied there on the board.
PREP_SCRIPT = _HELPERS + """\
_rm(%(target)r + "/" + %(manifest)r)
for _p in %(remove)r:
    _rm(_p)
for _d in %(dirs)r:
    try:
        os.mkdir(_d)
    except OSError:
        pass
_b = bytearray(512)
for _a, _z in %(copies)r:
    with open(_a, "rb") as _f:
        with open(_z, "wb") as _g:
            _k = _f.readinto(_b)
            while _k:
                _g.write(memoryview(_b)[:_k])
                _k = _f.readinto(_b)
print(%(mark)r)
"""

# Puts loader files in place, in order: each temp copy only if it is exactly
# what was sent, by one rename (atomic on LittleFS); none after a bad one.
_PLACE = """\
_bad = []
for _a, _z, _w in %(moves)r:
    if _bad or _h(_a) != _w:
        _bad.append(_z)
    else:
        os.rename(_a, _z)
"""
LOADER_SCRIPT = _HELPERS + _PLACE + """\
print(%(mark)r + json.dumps(_bad))
"""

# The switch: every file of the slot checked against its manifest (and the
# manifest against what was sent); only then the pointer is written (a temp
# file renamed), the loader files put in place, the old layout removed.
COMMIT_SCRIPT = _HELPERS + """\
_bad = []
if _h(%(slot_dir)r + "/" + %(manifest)r) != %(manifest_entry)r:
    _bad.append(%(manifest)r)
else:
    with open(%(slot_dir)r + "/" + %(manifest)r) as _f:
        _m = json.load(_f)["files"]
    for _n in _m:
        if _h(%(slot_dir)r + "/" + _n) != list(_m[_n]):
            _bad.append(_n)
if not _bad and %(switch)r:
    with open(%(pointer)r + ".new", "w") as _f:
        _f.write(%(slot)r + "\\n")
    os.rename(%(pointer)r + ".new", %(pointer)r)
if not _bad:
""" + "\n".join("    " + line for line in _PLACE.splitlines()) + """
if not _bad:
    for _p in %(cleanup)r:
        _rm(_p)
print(%(mark)r + json.dumps(_bad))
"""


# --- planning --------------------------------------------------------------------------


def _unhex(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        return None


def manifest_files(raw: bytes | None) -> dict[str, list] | None:
    """The manifest's files, or None when it is missing or unreadable."""
    if raw is None:
        return None
    try:
        files = json.loads(raw)["files"]
    except (ValueError, KeyError, TypeError):
        return None
    return files if isinstance(files, dict) else None


@dataclass
class SlotState:
    name: str
    manifest: bytes | None  # None: no manifest.json
    files: dict[str, list | None]  # name in the slot -> [sha256, size] (None: unreadable)

    @property
    def complete(self) -> bool:
        """As the loader decides: a readable manifest naming the start-up and
        every file it names there with its sha256 and size."""
        files = manifest_files(self.manifest)
        if not files or not ({"firmware/start.mpy", "firmware/start.py"} & set(files)):
            return False
        return all(self.files.get(name) == list(entry) for name, entry in files.items())

    @property
    def manifest_sha256(self) -> str | None:
        return None if self.manifest is None else hashlib.sha256(self.manifest).hexdigest()


@dataclass
class BoardState:
    """What :data:`STATE_SCRIPT` found on the board."""

    pointer: str | None  # the slot fw/active names; None: missing or garbage
    pointer_raw: bytes | None
    slots: dict[str, SlotState]
    root: dict[str, list | None]  # loader and old-layout files -> [sha256, size]

    @classmethod
    def from_answer(cls, answer: dict) -> BoardState:
        raw = _unhex(answer.get("pointer"))
        text = raw.strip().decode("ascii", "replace") if raw is not None else None
        slots = {
            name: SlotState(name, _unhex(s.get("manifest")), s.get("files") or {})
            for name, s in answer["slots"].items()
        }
        return cls(text if text in SLOTS else None, raw, slots, answer.get("root") or {})

    def running(self) -> str | None:
        """The slot the loader boots: the pointer's if complete, else the
        other one if complete (the order the loader tries them in)."""
        order = (self.pointer, other_slot(self.pointer)) if self.pointer else SLOTS
        for name in order:
            if self.slots[name].complete:
                return name
        return None

    def old_layout(self) -> list[str]:
        """The old layout's files on the board."""
        return sorted(p for p, entry in self.root.items()
                      if entry is not None and "/" + p.split("/")[1] in OLD_LAYOUT)

    def leftovers(self) -> list[str]:
        """Temp files an interrupted switch left (``*.new``)."""
        return sorted(p for p in TEMP_FILES if self.root.get(p) is not None)

    def has_firmware(self) -> bool:
        """Something boots a firmware now: a complete slot or the old layout."""
        return self.running() is not None or any(
            p.startswith("/firmware/") for p in self.old_layout())


@dataclass
class Plan:
    """What a deploy does on the board (all paths absolute)."""

    slot: str  # the slot that will be active
    build: bool  # the slot is (re)built: its manifest removed first, written last
    switch: bool  # fw/active is written
    keep: list[str] = field(default_factory=list)  # already right in the slot
    board_copies: list[tuple[str, str]] = field(default_factory=list)  # (from, to) on the board
    serial: list[str] = field(default_factory=list)  # names in the slot sent over serial
    remove: list[str] = field(default_factory=list)  # in the slot, no longer shipped
    loader: list[str] = field(default_factory=list)  # loader files to send and put in place
    loader_first: bool = False  # before the slot (nothing boots now: a fresh board)
    cleanup: list[str] = field(default_factory=list)  # old layout, after the switch
    differences: list[str] = field(default_factory=list)  # for --check, human words

    @property
    def nothing_to_do(self) -> bool:
        return not (self.build or self.switch or self.loader or self.cleanup)


def plan_update(state: BoardState, wanted: dict[str, list], manifest: bytes,
                loader: dict[str, list]) -> Plan:
    """What to do so that the board boots exactly ``wanted`` (slot name ->
    [sha256, size]) with this ``manifest``, and has ``loader`` (root path ->
    entry) at its root.

    The slot to build is never the one the board boots now (that stays
    complete until the switch, and after it as the fallback): the other
    one; a slot that already holds exactly this firmware is only switched
    to. A file is copied on the board from wherever it already is with the
    same sha256 (the running slot, the old layout), over serial otherwise."""
    running = state.running()
    wanted_sha = hashlib.sha256(manifest).hexdigest()
    same = [n for n in SLOTS if state.slots[n].complete
            and state.slots[n].manifest_sha256 == wanted_sha]
    if running in same:
        slot = running
    elif same:
        slot = same[0]
    elif running is not None:
        slot = other_slot(running)
    else:
        slot = state.pointer or "a"
    build = slot not in same
    plan = Plan(slot=slot, build=build, switch=state.pointer != slot or state.pointer_raw
                != (slot + "\n").encode())
    target = state.slots[slot]
    folder = slot_dir(slot)
    if build:
        where: dict[tuple, str] = {}  # entry -> a path on the board that has it
        for other in SLOTS:
            for name, entry in state.slots[other].files.items():
                if entry is not None and other != slot:
                    where.setdefault(tuple(entry), f"{slot_dir(other)}/{name}")
        for path, entry in state.root.items():
            if entry is not None:
                where.setdefault(tuple(entry), path)
        for name, entry in wanted.items():
            if target.files.get(name) == list(entry):
                plan.keep.append(name)
            elif tuple(entry) in where:
                plan.board_copies.append((where[tuple(entry)], f"{folder}/{name}"))
            else:
                plan.serial.append(name)
        plan.remove = [f"{folder}/{name}" for name in sorted(target.files)
                       if name not in wanted and name != MANIFEST]
    plan.loader = [p for p, entry in loader.items() if state.root.get(p) != list(entry)]
    plan.loader_first = bool(plan.loader) and not state.has_firmware()
    plan.cleanup = sorted({"/" + p.split("/")[1] for p in state.old_layout()}) + [
        p for p in state.leftovers() if p[:-4] not in plan.loader]
    # --check: how the board differs from what would be deployed.
    now = state.slots[running].files if running else {}
    if running is None and state.has_firmware():
        plan.differences.append("the board has the firmware layout from before slots "
                                "(/firmware at the root)")
    elif running is None:
        plan.differences.append("no complete firmware on the board")
    elif state.pointer != running:
        plan.differences.append(f"the board boots {slot_dir(running)} as a fallback "
                                f"({POINTER} names {state.pointer or 'no slot'})")
    files = [f"{name}: " + ("differs" if name in now else "missing")
             for name, entry in sorted(wanted.items()) if running and now.get(name) != list(entry)]
    files += [f"{name}: on the board, no longer shipped"
              for name in sorted(set(now) - set(wanted) - {MANIFEST})]
    if running and not files and state.slots[running].manifest_sha256 != wanted_sha:
        files.append(f"{MANIFEST}: differs (firmware version or board name)")
    plan.differences += files
    plan.differences += [f"{p}: " + ("differs" if state.root.get(p) else "missing")
                         for p in plan.loader]
    plan.differences += [f"{p}: to remove" for p in plan.cleanup]
    if plan.nothing_to_do:
        plan.differences = []
    return plan
