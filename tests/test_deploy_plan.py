"""deploy_slots.plan_update: where a deploy builds, what it copies, in what order.

Pure planning from what the board holds (no board): the slot the board boots
is never the one built; files the board has anywhere with the same sha256 are
copied on the board; a fresh board gets the loader first; a board with the
layout from before slots keeps it until the switch, then loses it.
"""

from __future__ import annotations

import json

from invtable.host import deploy_slots as slots

WANTED = {"board.py": ["b0", 10], "firmware/start.mpy": ["s1", 20],
          "firmware/app.mpy": ["a1", 30]}
LOADER = {"/loader.py": ["l1", 5], "/main.py": ["m1", 6], "/boot.py": ["o1", 7]}


def manifest(files: dict, version="1") -> bytes:
    return json.dumps({"version": 1, "firmware": version, "board": "x", "files": files},
                      sort_keys=True).encode()


NEW = manifest(WANTED, "2")
OLD_FILES = dict(WANTED, **{"firmware/app.mpy": ["a0", 31]})
OLD = manifest(OLD_FILES, "1")


def state(pointer=None, a=None, b=None, root=None) -> slots.BoardState:
    """a, b: (manifest bytes or None, files)."""
    def slot(s):
        raw, files = s or (None, {})
        return {"manifest": None if raw is None else raw.hex(), "files": files}

    return slots.BoardState.from_answer({
        "pointer": None if pointer is None else pointer.hex(),
        "slots": {"a": slot(a), "b": slot(b)}, "root": root or {}})


def with_manifest(files, raw):
    return dict(files, **{slots.MANIFEST: ["m", len(raw)]})


def test_a_fresh_board_gets_the_loader_first_and_slot_a():
    plan = slots.plan_update(state(), WANTED, NEW, LOADER)
    assert plan.slot == "a" and plan.build and plan.switch and plan.loader_first
    assert sorted(plan.serial) == sorted(WANTED) and plan.board_copies == []
    assert plan.loader == list(LOADER)
    assert plan.differences[0] == "no complete firmware on the board"


def test_an_update_builds_the_other_slot_from_what_the_board_has():
    board = state(b"a\n", a=(OLD, with_manifest(OLD_FILES, OLD)), root=LOADER)
    plan = slots.plan_update(board, WANTED, NEW, LOADER)
    assert plan.slot == "b" and plan.build and plan.switch and not plan.loader_first
    assert plan.serial == ["firmware/app.mpy"]
    assert sorted(plan.board_copies) == [("/fw/a/board.py", "/fw/b/board.py"),
                                         ("/fw/a/firmware/start.mpy", "/fw/b/firmware/start.mpy")]
    assert plan.loader == [] and plan.cleanup == []
    assert plan.differences == ["firmware/app.mpy: differs"]


def test_nothing_to_do_when_the_board_boots_exactly_this_firmware():
    board = state(b"b\n", b=(NEW, with_manifest(WANTED, NEW)), root=LOADER)
    plan = slots.plan_update(board, WANTED, NEW, LOADER)
    assert plan.nothing_to_do and plan.differences == [] and plan.slot == "b"


def test_a_complete_previous_slot_is_only_switched_to():
    board = state(b"b\n", a=(NEW, with_manifest(WANTED, NEW)), b=(OLD, with_manifest(
        OLD_FILES, OLD)), root=LOADER)
    plan = slots.plan_update(board, WANTED, NEW, LOADER)
    assert plan.slot == "a" and not plan.build and plan.switch and plan.serial == []


def test_a_corrupt_active_slot_is_rebuilt_keeping_the_fallback():
    broken = with_manifest(WANTED, NEW) | {"firmware/app.mpy": ["zz", 30]}
    board = state(b"a\n", a=(NEW, broken), b=(OLD, with_manifest(OLD_FILES, OLD)), root=LOADER)
    assert board.running() == "b"  # what the loader falls back to
    plan = slots.plan_update(board, WANTED, NEW, LOADER)
    assert plan.slot == "a" and plan.build and not plan.switch  # b stays complete meanwhile
    assert plan.serial == ["firmware/app.mpy"] and plan.keep == ["board.py",
                                                                 "firmware/start.mpy"]
    assert plan.differences[0].startswith("the board boots /fw/b as a fallback")


def test_a_garbage_pointer_is_rewritten():
    board = state(b"\xff\x00", a=(NEW, with_manifest(WANTED, NEW)), root=LOADER)
    plan = slots.plan_update(board, WANTED, NEW, LOADER)
    assert plan.slot == "a" and not plan.build and plan.switch


def test_the_old_layout_stays_until_the_switch_then_goes():
    root = {"/main.py": ["old", 9], "/boot.py": LOADER["/boot.py"], "/board.py": ["b0", 10],
            "/firmware/start.mpy": ["s1", 20], "/firmware/app.mpy": ["a0", 31],
            "/invtable_manifest.json": ["x", 3]}
    plan = slots.plan_update(state(root=root), WANTED, NEW, LOADER)
    assert plan.slot == "a" and plan.build and not plan.loader_first  # old main.py boots
    assert sorted(plan.board_copies) == [("/board.py", "/fw/a/board.py"),
                                         ("/firmware/start.mpy", "/fw/a/firmware/start.mpy")]
    assert plan.loader == ["/loader.py", "/main.py"]  # in this order: main.py needs loader.py
    assert plan.cleanup == ["/board.py", "/firmware", "/invtable_manifest.json"]


def test_the_commit_script_switches_only_a_checked_slot_and_in_order():
    script = slots.COMMIT_SCRIPT % {
        "slot_dir": "/fw/b", "manifest": slots.MANIFEST, "manifest_entry": ["m", 1],
        "switch": True, "pointer": slots.POINTER, "slot": "b",
        "moves": [("/loader.py.new", "/loader.py", ["l", 1])], "cleanup": ["/firmware"],
        "mark": "DONE "}
    compile(script, "commit", "exec")  # valid Python (MicroPython runs the same text)
    check = script.index("_bad.append(_n)")
    assert check < script.index(f"os.rename({slots.POINTER!r} + ")
    assert script.index("os.rename(_a, _z)") < script.index("_rm(_p)")
