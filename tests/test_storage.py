"""Atomic checksummed storage, the simulated flash, and the session log."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invtable.firmware import sessionlog, storage
from invtable.hal_sim.flash import PowerLoss, SimFlash

OLD = {"users": [{"name": "guest", "limits": {"max_angle_mdeg": 30000}}], "active": "guest"}
NEW = {"users": [{"name": "Ann", "limits": {"max_angle_mdeg": 25000}}], "active": "Ann"}


def _reboot(fs):
    """Power back on: a fresh SimFlash holding only what was on flash."""
    fresh = SimFlash()
    fresh.restore(fs.snapshot())
    return fresh


# -- SimFlash -------------------------------------------------------------


def test_simflash_basic_contract():
    fs = SimFlash()
    assert fs.read_bytes("a") is None
    fs.write_bytes("a", bytearray(b"xy"))
    assert fs.read_bytes("a") == b"xy"
    assert isinstance(fs.read_bytes("a"), bytes)
    fs.write_bytes("b", b"old")
    fs.rename("a", "b")
    assert fs.read_bytes("b") == b"xy"
    assert fs.read_bytes("a") is None
    assert fs.names() == ["b"]
    fs.remove("b")
    fs.remove("b")  # no error if missing
    assert fs.names() == []
    with pytest.raises(OSError):
        fs.rename("nope", "b")


def test_simflash_tear_keeps_prefix_and_other_files():
    fs = SimFlash()
    fs.write_bytes("keep", b"keep")
    fs.write_bytes("f", b"old content")
    fs.tear_next_write(3)
    with pytest.raises(PowerLoss):
        fs.write_bytes("f", b"new content")
    assert fs.read_bytes("f") == b"new"
    assert fs.read_bytes("keep") == b"keep"
    fs.write_bytes("f", b"whole")  # the fault was one-shot
    assert fs.read_bytes("f") == b"whole"


def test_simflash_random_tear_lengths_vary_and_fit():
    fs = SimFlash(seed=7)
    lengths = set()
    for _ in range(50):
        fs.tear_next_write()
        with pytest.raises(PowerLoss):
            fs.write_bytes("f", b"0123456789")
        assert fs.read_bytes("f") == b"0123456789"[: fs.last_tear_len]
        lengths.add(fs.last_tear_len)
    assert len(lengths) > 5
    assert all(0 <= n <= 10 for n in lengths)


def test_simflash_snapshot_restore_models_reboot():
    fs = SimFlash()
    fs.write_bytes("a", b"1")
    snap = fs.snapshot()
    fs.write_bytes("a", b"2")
    fs.tear_next_write(0)
    fs.restore(snap)
    assert fs.read_bytes("a") == b"1"
    fs.write_bytes("a", b"3")  # restore disarmed the fault
    assert fs.read_bytes("a") == b"3"


def test_simflash_fail_next_write_changes_nothing():
    fs = SimFlash()
    fs.write_bytes("a", b"1")
    fs.fail_next_write()
    with pytest.raises(OSError):
        fs.write_bytes("a", b"2")
    assert fs.read_bytes("a") == b"1"


# -- storage ----------------------------------------------------------------


def test_roundtrip_and_missing():
    fs = SimFlash()
    assert storage.load(fs, "s.json") == (None, "missing")
    storage.save(fs, "s.json", OLD)
    assert storage.load(fs, "s.json") == (OLD, "ok")
    assert fs.names() == ["s.json"]  # the temporary file was renamed away


def test_file_format_is_checksum_line_then_versioned_json():
    fs = SimFlash()
    storage.save(fs, "s.json", [1, 2])
    raw = fs.read_bytes("s.json")
    head, body = raw.split(b"\n", 1)
    assert len(head) == 64
    assert json.loads(body) == {"v": storage.FORMAT_VERSION, "data": [1, 2]}


def test_every_flipped_byte_is_detected():
    fs = SimFlash()
    storage.save(fs, "s.json", OLD)
    good = fs.snapshot()
    size = len(fs.read_bytes("s.json"))
    for offset in range(size):
        fs.restore(good)
        fs.corrupt("s.json", offset, 0x04)
        assert storage.load(fs, "s.json") == (None, "corrupt"), offset


def _with_valid_checksum(body):
    return storage._digest(body) + b"\n" + body


@pytest.mark.parametrize(
    "body",
    [
        b'{"v": 1, "data": ',  # truncated JSON
        b"\xff\xfe not utf-8",
        b'{"v": 0, "data": 1}',
        b'{"data": 1}',
        b'{"v": 1}',
        b"[1, 2]",
    ],
)
def test_bad_content_with_good_checksum_is_corrupt(body):
    fs = SimFlash()
    fs.write_bytes("s.json", _with_valid_checksum(body))
    assert storage.load(fs, "s.json") == (None, "corrupt")


def test_a_newer_envelope_is_newer_not_corrupt():
    """A file from a firmware that changed the file format is never misread
    as damaged (and so never replaced by defaults)."""
    fs = SimFlash()
    fs.write_bytes("s.json", _with_valid_checksum(b'{"v": 2, "data": 1}'))
    assert storage.load(fs, "s.json") == (None, storage.NEWER)


@pytest.mark.parametrize(("data", "expected"), [
    ({"x": 1}, ({"x": 1}, 1, "ok")),  # written before schemas: version 1
    ([1, 2], ([1, 2], 1, "ok")),
    ({"schema": 3, "x": 1}, ({"schema": 3, "x": 1}, 3, "ok")),
    ({"schema": 4, "x": 1}, (None, 4, "newer_version")),
    ({"schema": "2"}, (None, 0, "corrupt")),
    ({"schema": 0}, (None, 0, "corrupt")),
])
def test_versioned_loads(data, expected):
    fs = SimFlash()
    storage.save(fs, "s.json", data)
    assert storage.load_versioned(fs, "s.json", 3) == expected


@pytest.mark.parametrize("raw", [b"", b"\n", b"garbage", b"x" * 64 + b"\n{}"])
def test_garbage_is_corrupt(raw):
    fs = SimFlash()
    fs.write_bytes("s.json", raw)
    assert storage.load(fs, "s.json") == (None, "corrupt")


def test_power_cut_at_every_byte_leaves_old_or_new():
    """Exhaustive: cut the .new write after 0..len bytes (len = whole file
    written, power lost before the rename). The old object must survive."""
    fs = SimFlash()
    storage.save(fs, "s.json", OLD)
    before = fs.snapshot()
    size = len(storage.encode(NEW))
    for cut in range(size + 1):
        fs.restore(before)
        fs.tear_next_write(cut)
        with pytest.raises(PowerLoss):
            storage.save(fs, "s.json", NEW)
        board = _reboot(fs)
        assert storage.load(board, "s.json") == (OLD, "ok"), cut
        assert board.names() == ["s.json"]  # the torn .new was cleaned up
        storage.save(board, "s.json", NEW)  # and the next save works
        assert storage.load(board, "s.json") == (NEW, "ok")


def test_power_cut_during_first_save_reads_as_missing():
    fs = SimFlash()
    size = len(storage.encode(NEW))
    for cut in range(size + 1):
        fs.restore({})
        fs.tear_next_write(cut)
        with pytest.raises(PowerLoss):
            storage.save(fs, "s.json", NEW)
        assert storage.load(_reboot(fs), "s.json") == (None, "missing"), cut


def test_failed_write_keeps_old():
    fs = SimFlash()
    storage.save(fs, "s.json", OLD)
    fs.fail_next_write()
    with pytest.raises(OSError):
        storage.save(fs, "s.json", NEW)
    assert storage.load(fs, "s.json") == (OLD, "ok")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(old=_json_values, new=_json_values, cut=st.integers(0, 10_000), seq=st.integers(1, 3))
def test_random_objects_and_cuts_never_load_garbage(old, new, cut, seq):
    fs = SimFlash()
    storage.save(fs, "f", old)
    for _ in range(seq - 1):  # a few good saves first: content need not matter
        storage.save(fs, "f", old)
    fs.tear_next_write(cut)
    with pytest.raises(PowerLoss):
        storage.save(fs, "f", new)
    assert storage.load(_reboot(fs), "f") == (old, "ok")



def _chunks_of(value):
    """Chunks whose concatenation is ``value``'s JSON: a list's items one by one."""
    def chunks():
        if isinstance(value, list):
            yield "["
            for i, item in enumerate(value):
                yield (", " if i else "") + json.dumps(item)
            yield "]"
        else:
            yield json.dumps(value)
    return chunks


@settings(max_examples=200, deadline=None)
@given(old=_json_values, new=_json_values, cut=st.integers(0, 10_000))
def test_a_chunked_save_reads_back_as_a_whole_save_and_a_torn_one_as_the_old(old, new, cut):
    fs = SimFlash()
    storage.save_chunks(fs, "f", _chunks_of(old)())
    assert storage.load(_reboot(fs), "f") == (old, "ok")
    whole = SimFlash()
    storage.save(whole, "f", old)
    assert storage.load(whole, "f") == storage.load(fs, "f")
    fs.tear_next_write(cut)
    with pytest.raises(PowerLoss):
        storage.save_chunks(fs, "f", _chunks_of(new)())
    assert storage.load(_reboot(fs), "f") == (old, "ok")


@pytest.mark.parametrize("cut", [0, 1, 32, 63, 64])
def test_a_power_cut_while_the_checksum_is_filled_in_keeps_the_old_file(cut):
    class CutAtPatch(SimFlash):
        def write_bytes(self, name, data):
            super().write_bytes(name, data)
            self.tear_next_write(cut)  # the body is on flash: cut the patch

    fs = CutAtPatch()
    storage.save(fs, "f", OLD)
    with pytest.raises(PowerLoss):
        storage.save_chunks(fs, "f", _chunks_of(NEW)())
    assert storage.load(_reboot(fs), "f") == (OLD, "ok")


def test_a_chunked_save_reaches_the_flash_one_chunk_at_a_time():
    written = []

    class ChunkFs(SimFlash):
        def write_bytes(self, name, data):
            assert not isinstance(data, (bytes, bytearray)), "built whole in RAM"
            parts = list(data)
            written.append([len(p) for p in parts])
            super().write_bytes(name, parts)

    fs = ChunkFs()
    items = list(range(100))
    storage.save_chunks(fs, "f", _chunks_of(items)())
    assert storage.load(fs, "f") == (items, "ok")
    assert max(written[0]) < 100  # the largest piece: the checksum line and envelope


# -- session log --------------------------------------------------------------


def _entry(i, end="completed", fault=None):
    return {
        "user": "Ann",
        "start_s": 1700000000 + i,
        "uptime_ms": 1000 * i,
        "max_angle_mdeg": 20000,
        "inverted_ms": 60000,
        "end": end,
        "fault": fault,
    }


def test_log_bounded_to_50_keeps_newest():
    fs = SimFlash()
    log = sessionlog.SessionLog(fs)
    assert log.status == "missing"
    for i in range(60):
        log.append(_entry(i))
    got = log.entries()
    assert len(got) == 50
    assert [e["uptime_ms"] for e in got] == [1000 * i for i in range(10, 60)]
    again = sessionlog.SessionLog(_reboot(fs))
    assert again.status == "ok"
    assert again.entries() == got


def test_log_entries_slices_and_the_saved_file_is_the_whole_log():
    fs = SimFlash()
    log = sessionlog.SessionLog(fs)
    for i in range(7):
        log.append(_entry(i, fault=None if i % 2 else "stall"))
    assert len(log) == 7
    assert [e["uptime_ms"] for e in log.entries(2, 3)] == [2000, 3000, 4000]
    assert [e["uptime_ms"] for e in log.entries(5)] == [5000, 6000]
    assert log.entries(9, 3) == []
    data, status = storage.load(fs, sessionlog.LOG_FILE)
    assert status == "ok" and data["schema"] == sessionlog.SCHEMA
    assert data["entries"] == log.entries()
    assert data["entries"][0] == dict(_entry(0, fault="stall"), daily_ms=None)


@settings(max_examples=300, deadline=None)
@given(user=st.text(min_size=1, max_size=32), start_s=st.none() | st.integers(0, 2**40),
       uptime_ms=st.integers(0, 2**45), max_angle_mdeg=st.integers(-(2**31), 2**31),
       inverted_ms=st.integers(0, 2**40), end=st.sampled_from(sessionlog.ENDS),
       fault=st.none() | st.text(max_size=32), daily_ms=st.none() | st.integers(0, 2**40))
def test_an_entry_is_saved_as_json_dumps_would_write_it(user, start_s, uptime_ms,
                                                        max_angle_mdeg, inverted_ms, end,
                                                        fault, daily_ms):
    entry = {"user": user, "start_s": start_s, "uptime_ms": uptime_ms,
             "max_angle_mdeg": max_angle_mdeg, "inverted_ms": inverted_ms, "end": end,
             "fault": fault, "daily_ms": daily_ms}
    fs = SimFlash()
    sessionlog.SessionLog(fs).append(entry)
    body = fs.read_bytes(sessionlog.LOG_FILE).split(b"\n", 1)[1]
    assert body == json.dumps({"v": 1, "data": {"schema": sessionlog.SCHEMA,
                                                "entries": [entry]}}).encode()
    assert sessionlog.SessionLog(_reboot(fs)).entries() == [entry]


def test_log_accepts_each_end_and_null_start():
    log = sessionlog.SessionLog(SimFlash())
    for end in sessionlog.ENDS:
        e = _entry(1, end=end, fault="imu_lost" if end == "fault" else None)
        e["start_s"] = None
        log.append(e)
    assert [e["end"] for e in log.entries()] == list(sessionlog.ENDS)


@pytest.mark.parametrize(
    "change",
    [
        {"end": "exploded"},
        {"user": 3},
        {"start_s": "yesterday"},
        {"uptime_ms": -1},
        {"inverted_ms": 1.5},
        {"max_angle_mdeg": True},
        {"fault": 7},
    ],
)
def test_log_rejects_bad_entries_and_changes_nothing(change):
    fs = SimFlash()
    log = sessionlog.SessionLog(fs)
    log.append(_entry(0))
    before = fs.snapshot()
    bad = _entry(1)
    bad.update(change)
    with pytest.raises(ValueError):
        log.append(bad)
    assert len(log.entries()) == 1
    assert fs.snapshot() == before


def test_log_missing_field_rejected():
    e = _entry(0)
    del e["fault"]
    with pytest.raises((KeyError, ValueError)):
        sessionlog.SessionLog(SimFlash()).append(e)


def test_log_clear_and_entries_are_copies():
    fs = SimFlash()
    log = sessionlog.SessionLog(fs)
    log.append(_entry(0))
    log.entries()[0]["user"] = "mallory"
    assert log.entries()[0]["user"] == "Ann"
    log.clear()
    assert log.entries() == []
    assert sessionlog.SessionLog(_reboot(fs)).entries() == []


def test_log_torn_append_keeps_previous_log():
    fs = SimFlash()
    log = sessionlog.SessionLog(fs)
    for i in range(3):
        log.append(_entry(i))
    fs.tear_next_write()
    with pytest.raises(PowerLoss):
        log.append(_entry(3))
    assert len(sessionlog.SessionLog(_reboot(fs)).entries()) == 3


def test_log_corrupt_file_starts_empty_and_is_reported():
    fs = SimFlash()
    log = sessionlog.SessionLog(fs)
    log.append(_entry(0))
    fs.corrupt(sessionlog.LOG_FILE, 70)
    log = sessionlog.SessionLog(fs)
    assert log.status == "corrupt"
    assert log.entries() == []
    log.append(_entry(1))
    assert sessionlog.SessionLog(fs).status == "ok"


def test_log_bad_entry_inside_good_checksum_is_corrupt():
    fs = SimFlash()
    storage.save(fs, sessionlog.LOG_FILE, [{"end": "completed"}])
    log = sessionlog.SessionLog(fs)
    assert log.status == "corrupt"
    assert log.entries() == []
