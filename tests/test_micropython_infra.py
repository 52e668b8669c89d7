"""The MicroPython test layer runs real MicroPython (WebAssembly 1.27 and the unix
port) with our packages in it."""

from __future__ import annotations

import textwrap

import pytest

from invtable.host import micropython as mpy


def _values(stdout: str) -> dict[str, str]:
    """`key=value` lines printed by the MicroPython side."""
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def test_it_is_real_micropython_of_the_pinned_version(micropython):
    out = micropython(
        textwrap.dedent(
            """
            import os, sys
            print("impl=" + sys.implementation.name)
            print("version=%d.%d" % sys.implementation.version[:2])
            print("lib_on_path=%s" % ((os.getcwd().rstrip("/") + "/lib") in sys.path))
            print("bits=%d" % (64 if sys.maxsize > 2**31 else 32))
            """
        ),
        mounts=[],
    ).stdout
    values = _values(out)
    assert values["impl"] == "micropython"
    assert values["version"] == "{}.{}".format(*micropython.version[:2])
    assert values["lib_on_path"] == "True"
    assert values["bits"] == str(micropython.word_bits)


def test_invtable_packages_are_mounted_under_lib(micropython):
    out = micropython(
        textwrap.dedent(
            """
            import invtable
            import invtable.firmware.compat as compat
            import invtable.hal_sim
            import invtable.boards
            import os
            print("compat=" + compat.__file__)
            print("root=" + os.getcwd().rstrip("/"))
            print("version=" + invtable.__version__)
            """
        )
    ).stdout
    values = _values(out)
    assert values["compat"] == values["root"] + "/lib/invtable/firmware/compat.py"
    assert values["version"]


@pytest.mark.interpreter(
    "wasm", reason="the 64-bit unix port's ticks period is 2**62, not the ESP32's 2**30"
)
def test_compat_ticks_match_micropython_time_across_the_wrap(micropython):
    out = micropython(
        textwrap.dedent(
            """
            import time
            from invtable.firmware import compat
            period = 1 << 30
            assert time.ticks_add(period - 1, 1) == 0, "board tick period differs"
            starts = (0, 1, 1000, period // 2 - 1, period // 2, period // 2 + 1,
                      period - 1000, period - 2, period - 1)
            deltas = (0, 1, -1, 20, -20, 999, -999, 123456, -123456,
                      period // 2 - 1, -(period // 2 - 1))
            n = 0
            for a in starts:
                for d in deltas:
                    b = time.ticks_add(a, d)
                    assert compat.ticks_add(a, d) == b, (a, d)
                    assert compat.ticks_diff(b, a) == time.ticks_diff(b, a) == d, (a, d)
                    assert compat.ticks_diff(a, b) == time.ticks_diff(a, b), (a, d)
                    n += 1
            print("checked=%d" % n)
            """
        )
    ).stdout
    assert _values(out)["checked"] == "99"


def test_an_exception_exits_nonzero_with_traceback(micropython_setup):
    proc = mpy.run_micropython(
        'print("before")\ndef f():\n    raise ValueError("boom")\nf()\n', mounts=[]
    )
    assert proc.returncode == 1
    assert proc.stdout == "before\n"
    assert "Traceback (most recent call last):" in proc.stderr
    assert "ValueError: boom" in proc.stderr


def test_exception_in_a_mounted_module_names_its_file(micropython_setup):
    proc = mpy.run_micropython("from invtable.firmware import compat\ncompat.ticks_diff(None, 1)\n")
    assert proc.returncode == 1
    assert '"/lib/invtable/firmware/compat.py"' in proc.stderr
    assert "TypeError" in proc.stderr


@pytest.mark.parametrize(
    ("code", "status"),
    [("import sys\nsys.exit(0)", 0), ("import sys\nsys.exit(3)", 3), ("raise SystemExit", 0)],
)
def test_sys_exit_maps_to_the_exit_status(micropython_setup, code, status):
    assert mpy.run_micropython(code, mounts=[]).returncode == status


def test_stdout_stderr_stdin_and_argv(micropython_setup):
    proc = mpy.run_micropython(
        textwrap.dedent(
            """
            import sys
            print("argv=%s" % sys.argv[1:])
            print("line=%r" % sys.stdin.readline())
            print("to stderr", file=sys.stderr)
            sys.stdout.write("no newline at end")
            """
        ),
        mounts=[],
        stdin="hello\n",
        args=["a b", "c"],
    )
    assert proc.returncode == 0, proc.stderr
    assert "argv=['a b', 'c']" in proc.stdout
    assert "line='hello\\n'" in proc.stdout
    assert proc.stdout.endswith("no newline at end")
    assert proc.stderr == "to stderr\n"


@pytest.mark.interpreter("wasm", reason="top-level await is a feature of the Node runner")
def test_top_level_await_runs_asyncio_code(micropython):
    # This build has no asyncio.run(); the runner accepts top-level await.
    out = micropython(
        textwrap.dedent(
            """
            import asyncio
            async def main():
                await asyncio.sleep_ms(5)
                return 42
            print("has_run=%s" % hasattr(asyncio, "run"))
            print("result=%d" % (await main()))
            """
        ),
        mounts=[],
    ).stdout
    assert _values(out) == {"has_run": "False", "result": "42"}


@pytest.mark.interpreter(
    "wasm", reason="the unix port has a machine module of its own (mem8, PinBase, Signal)"
)
def test_no_machine_module(micropython):
    out = micropython(
        "try:\n    import machine\n    print('machine=yes')\n"
        "except ImportError:\n    print('machine=no')\n",
        mounts=[],
    ).stdout
    assert _values(out)["machine"] == "no"


def test_heap_probe_measures_allocations(micropython):
    out = micropython(
        mpy.HEAP_PROBE
        + textwrap.dedent(
            """
            import sys
            # Half the small-int range: 2**29 (32-bit) or 2**61 (64-bit).
            state = [12345, (sys.maxsize >> 2) + 1, 1.5]
            items = []
            def nothing():
                pass
            def small_int_math():
                x = state[0]
                return (x * 7 + 3) // 2 - (x >> 1)
            def list_append():
                items.append(1)
            def big_int():
                return state[1] + state[1]   # leaves the small-int range
            def float_math():
                return state[2] * 3.0         # floats are boxed
            for fn in (nothing, small_int_math, list_append, big_int, float_math):
                print("%s=%d" % (fn.__name__, heap_probe(fn, 100)))
            """
        ),
        mounts=[],
    ).stdout
    values = {k: int(v) for k, v in _values(out).items()}
    assert values["nothing"] == 0
    assert values["small_int_math"] == 0
    assert values["list_append"] > 0
    assert values["big_int"] >= 100 * 16
    assert values["float_math"] >= 100 * 16


def test_measure_heap_bytes_helper(micropython_setup):
    assert mpy.measure_heap_bytes("x = 5", "x + 1", n=50) == 0
    assert mpy.measure_heap_bytes("buf = []", "buf.append(1)", n=50) > 0


def test_missing_npm_package_names_the_fix(monkeypatch):
    monkeypatch.setattr(mpy, "micropython_package_dir", lambda: None)
    monkeypatch.setattr(mpy, "node_executable", lambda: "/usr/bin/node")
    with pytest.raises(mpy.MicroPythonUnavailable, match="npm ci"):
        mpy.run_micropython("print(1)")


def test_default_mounts_are_the_package_folders():
    mounts = dict((dest, src) for src, dest in mpy.package_mounts())
    assert (mounts["/lib/invtable"] / "__init__.py").is_file()
    for sub in ("firmware", "hal_sim", "boards"):
        assert (mounts["/lib/invtable/" + sub] / "__init__.py").is_file()
