"""A deploy killed at any moment leaves a board that boots a complete firmware.

Real processes: `invtable sim board --state-dir` (the WebAssembly MicroPython
behind a pty, its flash kept in a folder), `invtable deploy` with real
mpremote. Each run starts from a copy of one prepared flash, deploys a firmware
that `info` tells apart (another FIRMWARE_VERSION, ``--firmware-dir``), and
SIGKILLs the deploy and every process under it (its mpremote runs in a
session of its own, out of reach of the deploy's process group) at one moment
of its run; then the board process is restarted on the same flash. Checked
each time:

- the flash holds a complete firmware, the old or the new one, never a mix:
  the slot the loader boots matches its manifest, and that manifest is the
  old or the new one (read from the state folder, as the loader reads it);
- the board runs exactly that firmware (`info`: version and manifest), with
  no boot error; a fresh board runs the new one or says it has none;
- the user made before, with its limits, is intact;
- a later deploy completes.

The moments are spread over a full deploy's run, measured first on the same
flash: ten over an update of a board whose firmware is in slots, and three
each over the first update of a board with the layout from before the
slots (``/firmware`` at the root, whose main.py must keep booting it until
the new slot is complete and active) and over a fresh board. Runs go three
at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from firmware_variants import firmware_copy, reboot_and_read
from test_vboard_session import SimBoardProcess, invtable_cmd

from invtable.host import deploy as dep
from invtable.host import deploy_slots as slots
from invtable.host.client import Client

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")

BOARD = "esp32_devkitc"
OLD, NEW = "0.1.0-old", "0.1.0-new"
ADMIN_PIN = "0000"  # the factory default: the console stays unlocked
USER = "ana"
LIMITS = {"max_angle_mdeg": 25000, "max_inverted_ms": 60000, "max_speed_mdeg_s": 3000}
# The main.py of the layout before slots: the firmware imported from the root
# (as that main.py did, with today's start-up).
OLD_MAIN = "from firmware.start import main\nmain().run()\n"
PARALLEL = 3  # boards at once (much of a run waits on the serial line)
DEPLOY_TIMEOUT_S = 120


def compile_into(fw_dir: Path, folder: Path) -> None:
    plan = dep.deploy_plan(BOARD, fw_dir)
    sources = [(name, src) for name, src, _ in plan if not name.startswith("/")]
    slots.build_slot(sources, folder, lambda src, dest: dep.compile_mpy(src, dest, None))


def old_layout_flash(root: Path, fw_dir: Path) -> None:
    """The flash as deploy left it before slots (see deploy_slots.OLD_LAYOUT)."""
    compile_into(fw_dir, root)
    shutil.copyfile(fw_dir / "boot.py", root / "boot.py")
    (root / "main.py").write_text(OLD_MAIN)
    files = {"/" + p.relative_to(root).as_posix(): slots.file_entry(p.read_bytes())[0]
             for p in root.rglob("*") if p.is_file()}
    (root / "invtable_manifest.json").write_text(json.dumps(
        {"version": 1, "board": BOARD, "files": files}))


def slots_flash(root: Path, fw_dir: Path) -> None:
    compile_into(fw_dir, root / "fw" / "a")
    slots.finish_flash(root, "a", BOARD, OLD, fw_dir)


def state_from_dir(root: Path) -> slots.BoardState:
    """What the state query would find on this flash (host/deploy_slots.py)."""
    def entry(path: Path):
        return slots.file_entry(path.read_bytes()) if path.is_file() else None

    def files(folder: Path) -> dict:
        return {p.relative_to(folder).as_posix(): entry(p)
                for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else {}

    pointer = root / "fw" / "active"
    answer = {
        "pointer": pointer.read_bytes().hex() if pointer.is_file() else None,
        "slots": {n: {"manifest": (root / "fw" / n / slots.MANIFEST).read_bytes().hex()
                      if (root / "fw" / n / slots.MANIFEST).is_file() else None,
                      "files": files(root / "fw" / n)} for n in slots.SLOTS},
        "root": {p: entry(root / p.lstrip("/")) for p in slots.ROOT_FILES},
    }
    for folder in slots.ROOT_DIRS:
        answer["root"].update({f"{folder}/{k}": v
                               for k, v in files(root / folder.lstrip("/")).items()})
    return slots.BoardState.from_answer(answer)


def what_boots(root: Path, old_files: dict) -> str | None:
    """The version of the complete firmware this flash boots (None: none),
    as the loader (or the old layout's main.py) decides; fails on a mix."""
    main = (root / "main.py").read_bytes() if (root / "main.py").is_file() else None
    loader = (dep.FIRMWARE_DIR / "main.py").read_bytes()
    if main == OLD_MAIN.encode():  # the old layout boots: it must be whole
        on_flash = {k: v for k, v in state_from_dir(root).root.items()
                    if k.startswith("/firmware/") and v is not None}
        assert on_flash == old_files, "the old layout's firmware is not whole"
        return OLD
    if main is None:
        assert not (root / "fw").exists() or state_from_dir(root).running() is None
        return None
    assert main == loader, "/main.py is neither the old one nor the loader"
    state = state_from_dir(root)
    running = state.running()
    if running is None:
        return None
    return json.loads(state.slots[running].manifest)["firmware"]


class Runs:
    """The prepared flashes and firmware folders of one test."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.old_fw = firmware_copy(tmp / "fw_old", OLD)
        self.new_fw = firmware_copy(tmp / "fw_new", NEW)
        self.user = None  # the user as the board reported it before

    def board(self, state_dir: Path) -> SimBoardProcess:
        logs = Path(str(state_dir) + "_logs")
        logs.mkdir(exist_ok=True)
        return SimBoardProcess(Path(str(logs)), "--state-dir", str(state_dir))

    def prepare(self, kind: str) -> Path:
        """A flash with the old firmware and a user with limits (a fresh one: nothing)."""
        root = self.tmp / f"before_{kind}"
        root.mkdir()
        if kind == "fresh":
            return root
        (old_layout_flash if kind == "old_layout" else slots_flash)(root, self.old_fw)
        board = self.board(root)
        try:
            with Client(board.port, timeout=5) as client:
                wait_home(client)
                client.request("user.create", name=USER, pin=ADMIN_PIN)
                client.request("limits.set", name=USER, pin=ADMIN_PIN, **LIMITS)
                self.user = client.request("user.get", name=USER)
                assert client.request("info")["firmware"] == OLD
        finally:
            assert board.close() == 0
        return root

    def deploy(self, port: str, kill_at=None) -> tuple[int | None, list[tuple[float, str]]]:
        """`invtable deploy` of the new firmware: (exit status, None if killed;
        [(seconds since start, stderr line)]). ``kill_at`` (line index, delay):
        SIGKILL its process group that long after that line."""
        started = time.monotonic()
        proc = subprocess.Popen(
            [*invtable_cmd(), "deploy", "--port", port, "--force-unverified",
             "--firmware-dir", str(self.new_fw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)  # its own process group: mpremote's too
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr] + [lines.put(None)],
                         daemon=True).start()
        seen: list[tuple[float, str]] = []
        killed = False
        while True:
            line = lines.get(timeout=DEPLOY_TIMEOUT_S)
            if line is None:
                break
            seen.append((time.monotonic() - started, line.rstrip("\n")))
            if kill_at is not None and len(seen) - 1 == kill_at[0] and not killed:
                time.sleep(kill_at[1])
                kill_tree(proc.pid)
                killed = True
        status = proc.wait(DEPLOY_TIMEOUT_S)
        proc.stderr.close()
        return (None if killed else status), seen


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants. deploy starts mpremote in a
    session of its own (a terminal's Ctrl-C must reach deploy first), so
    killing deploy's process group would leave mpremote running: an orphan
    that goes on talking to a pty number another run's board may get next.
    Each process is stopped first, so that none starts another unseen."""
    doomed: list[int] = []
    found = [pid]
    while found:
        for p in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        doomed += found
        tree = _children()
        found = [c for p in doomed for c in tree.get(p, []) if c not in doomed]
    for p in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def wait_home(client, timeout_s=30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        data = client.request("status")
        if data["state"] == "HOME":
            return data
        assert time.monotonic() < deadline, data
        time.sleep(0.2)


def moments(measured: list[tuple[float, str]], n: int) -> list[tuple[int, float]]:
    """``n`` kill moments spread evenly over the measured run's time, each as
    (the last line before it, how long after that line)."""
    end = measured[-1][0]
    out = []
    for k in range(n):
        t = end * (k + 0.5) / n
        index = max(i for i, (at, _) in enumerate(measured) if at <= t or i == 0)
        out.append((index, max(0.0, t - measured[index][0])))
    # However loaded the machine, one moment after the switch: at the reset.
    reset = [i for i, (_, line) in enumerate(measured) if line.startswith("resetting the board")]
    if reset and n > 1:
        out[-1] = (reset[0], 0.0)
    return out


def kill_run(runs: Runs, kind: str, before: Path, k: int, moment, new_sha: str,
             old_files: dict) -> dict:
    state_dir = runs.tmp / f"{kind}_{k}"
    shutil.copytree(before, state_dir)
    board = runs.board(state_dir)
    try:
        status, seen = runs.deploy(board.port, kill_at=moment)
    finally:
        assert board.close() == 0
    boots = what_boots(state_dir, old_files)
    board = runs.board(state_dir)
    try:
        codes = []
        if boots is None:
            assert kind == "fresh", f"{kind}: no complete firmware after the kill"
            lines = reboot_and_read(board.port)
            codes = [json.loads(x)["code"] for x in lines if '"boot_error"' in x]
            # It says it has none, or it was killed before anything was written.
            assert codes in ([], ["firmware_missing"]), lines
            assert bool(codes) == (state_dir / "main.py").exists(), lines
        else:
            with Client(board.port, timeout=5) as client:
                wait_home(client)
                info = client.request("info")
                assert info["firmware"] == boots, (info, boots)
                slot = info.get("slot")
                if boots == NEW:
                    assert slot["manifest_sha256"] == new_sha and not slot.get("fallback_code")
                assert client.request("status")["boot_errors"] == []
                if runs.user is not None and kind != "fresh":
                    assert client.request("user.get", name=USER) == runs.user
        # A later deploy completes (in this process: no interpreter to start).
        dep.deploy(board.port, BOARD, force_unverified=True, firmware_dir=runs.new_fw)
        with Client(board.port, timeout=5) as client:
            info = client.request("info")
            assert info["firmware"] == NEW and info["slot"]["manifest_sha256"] == new_sha
            if kind != "fresh":
                assert client.request("user.get", name=USER) == runs.user
    finally:
        board.close()
    return {"kind": kind, "k": k, "killed_after": seen[-1][0] if seen else 0.0,
            "line": seen[-1][1] if seen else "", "exit": status, "boots": boots,
            "codes": codes if boots is None else []}


def measure(runs: Runs, kind: str, before: Path) -> tuple[list, str]:
    """A whole deploy on a copy of ``before``: its progress lines, timed, and
    the new firmware's manifest sha256 as the board reports it."""
    measure_dir = runs.tmp / f"measure_{kind}"
    shutil.copytree(before, measure_dir)
    board = runs.board(measure_dir)
    try:
        status, measured = runs.deploy(board.port)
        assert status == 0, "\n".join(line for _, line in measured)
        with Client(board.port, timeout=5) as client:
            return measured, client.request("info")["slot"]["manifest_sha256"]
    finally:
        board.close()


def test_a_deploy_killed_at_any_moment_leaves_a_complete_firmware(micropython_setup, tmp_path):
    started = time.monotonic()
    runs = Runs(tmp_path)
    kinds = {"slots": 10, "old_layout": 3, "fresh": 3}
    befores = {kind: runs.prepare(kind) for kind in kinds}
    with ThreadPoolExecutor(PARALLEL) as pool:
        measured = dict(zip(kinds, pool.map(lambda k: measure(runs, k, befores[k]), kinds),
                            strict=True))
        shas = {sha for _, sha in measured.values()}
        assert len(shas) == 1  # the same firmware, whatever the board had
        (new_sha,) = shas
        plans = []
        for kind, n in kinds.items():
            lines = measured[kind][0]
            print(f"{kind}: a whole deploy {lines[-1][0]:.1f} s, {len(lines)} progress lines")
            old_files = {k: v for k, v in state_from_dir(befores[kind]).root.items()
                         if k.startswith("/firmware/") and v is not None}
            plans += [(kind, k, m, old_files) for k, m in enumerate(moments(lines, n))]
        results = list(pool.map(
            lambda p: kill_run(runs, p[0], befores[p[0]], p[1], p[2], new_sha, p[3]), plans))
    for r in results:
        print(f"{r['kind']} #{r['k']}: killed {r['killed_after']:.1f} s in, after "
              f"{r['line'][:60]!r}: boots {r['boots'] or 'no firmware'} {r['codes']}")
    print(f"kill test: {len(results)} runs in {time.monotonic() - started:.1f} s")
    for kind in ("slots", "old_layout"):  # the moments reached both sides of the switch
        assert {r["boots"] for r in results if r["kind"] == kind} == {OLD, NEW}, kind
    fresh = [r for r in results if r["kind"] == "fresh"]
    assert ["firmware_missing"] in [r["codes"] for r in fresh]
