"""Request ticks allocate at most a measured bound (issue 14), per request
kind, under both real interpreters; a plain STOP and an over-long line
allocate nothing.

The figures come from ``bench/heap_tick.request_bytes`` (``gc.mem_alloc()``
deltas around ``App.tick`` with gc disabled, the App at HOME); the bounds
(``REQUEST_BYTES_BOUND``: the measured figures plus about a quarter, by word
size) are a regression check, not a timing. bench/results.json carries the
32-bit figures (``heap_per_request_*``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(
    "_bench_heap_tick", Path(__file__).resolve().parents[1] / "bench" / "heap_tick.py")
heap_tick = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(heap_tick)


def _measure(micropython) -> dict:
    proc = micropython(heap_tick.requests_code(), timeout_s=300, heap_bytes=1 << 20,
                       args=list(heap_tick.RUNNER_ARGS))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("REQUEST_BYTES ")),
                None)
    assert line is not None, proc.stdout + proc.stderr
    return json.loads(line[len("REQUEST_BYTES "):])


def test_each_request_kind_allocates_at_most_its_bound(micropython):
    figures = _measure(micropython)
    bound = heap_tick.REQUEST_BYTES_BOUND[micropython.word_bits]
    assert figures["idle_bytes"] == 0  # the ticks between requests
    for kind, _line, code in heap_tick.REQUESTS:
        assert figures["replies"][kind] == code, (kind, figures["replies"])
        assert figures[kind] <= bound[kind], (kind, figures[kind], bound[kind])
    # Allocation-free: STOP as the host sends it, and line_too_long.
    assert figures["stop"] == 0
    assert figures["line_too_long"] == 0
    # The bounds are not slack: each is within about a third of the figure.
    for kind in bound:
        assert bound[kind] <= figures[kind] * 4 // 3 + 64, (kind, figures[kind], bound[kind])
