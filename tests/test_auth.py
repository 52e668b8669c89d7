"""Admin PIN: hashing, default-PIN policy, rate limit surviving reboots."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invtable.firmware import auth, storage
from invtable.firmware.auth import AUTH_FILE, DEFAULT_PIN, Auth, AuthError
from invtable.firmware.compat import ticks_add
from invtable.hal_sim.flash import PowerLoss, SimFlash


class Clock:
    def __init__(self, t=0):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, ms):
        self.t = ticks_add(self.t, ms)


def rand_bytes(n, _counter=[0]):  # noqa: B006 - deterministic but varying salts
    _counter[0] += 1
    return bytes((_counter[0] * 31 + i * 17) & 0xFF for i in range(n))


def make(fs=None, t=0):
    clock = Clock(t)
    return Auth(fs if fs is not None else SimFlash(), clock, rand_bytes), clock


def wrong(a, now=None, pin="9999"):
    with pytest.raises(AuthError) as info:
        a.check(pin, now)
    return info.value


def test_fresh_board_default_pin_flagged():
    a, _ = make()
    assert a.load_status == "missing"
    assert a.pin_is_default
    assert a.status()["pin_is_default"] is True
    assert a.check(DEFAULT_PIN) is True
    assert a.check(DEFAULT_PIN, 5) is True


def test_wrong_pin_counts_attempts_left_then_locks():
    a, clock = make()
    errs = [wrong(a) for _ in range(3)]
    assert [e.code for e in errs] == ["bad_pin"] * 3
    assert [e.attempts_left for e in errs] == [2, 1, 0]
    assert [e.retry_after_ms for e in errs] == [0, 0, 30000]
    e = wrong(a, pin=DEFAULT_PIN)  # even the right PIN is refused while locked
    assert e.code == "locked"
    assert e.retry_after_ms == 30000
    clock.advance(29999)
    assert wrong(a, pin=DEFAULT_PIN).retry_after_ms == 1
    clock.advance(1)
    assert a.check(DEFAULT_PIN) is True
    assert a.fails == 0
    assert [wrong(a).attempts_left for _ in range(3)] == [2, 1, 0]  # count was reset


def test_lockout_doubles_up_to_15_minutes():
    a, clock = make()
    seen = []
    for _ in range(12):
        e = wrong(a)
        seen.append(e.retry_after_ms)
        clock.advance(e.retry_after_ms)
    assert seen == [0, 0, 30000, 60000, 120000, 240000, 480000] + [900000] * 5
    assert [auth.lockout_ms(n) for n in range(0, 10)] == [
        0,
        0,
        0,
        30000,
        60000,
        120000,
        240000,
        480000,
        900000,
        900000,
    ]
    assert auth.lockout_ms(10**6) == 900000


def test_locked_attempts_do_not_extend_or_write():
    fs = SimFlash()
    a, clock = make(fs)
    for _ in range(3):
        wrong(a)
    writes = fs.writes
    for _ in range(20):
        clock.advance(1000)
        assert wrong(a).code == "locked"
    assert fs.writes == writes
    assert a.retry_after_ms() == 10000


def test_lockout_survives_reboot_and_counts_only_while_powered():
    fs = SimFlash()
    a, clock = make(fs, t=1000)
    for _ in range(3):
        wrong(a)
    clock.advance(10000)  # 20 s left, but only the 30 s at failure time is stored
    flash = fs.snapshot()

    board = SimFlash()
    board.restore(flash)  # reboot: RAM lost, flash kept, clock restarts
    b, clock2 = make(board, t=50)
    assert b.load_status == "ok"
    e = wrong(b, pin=DEFAULT_PIN)
    assert e.code == "locked"
    assert e.retry_after_ms == 30000  # a reboot never shortens a lockout
    clock2.advance(30000)
    e = wrong(b)
    assert e.code == "bad_pin"
    assert e.retry_after_ms == 60000  # the failure count survived too
    board2 = SimFlash()
    board2.restore(board.snapshot())
    c, _ = make(board2, t=123456)
    assert c.status()["retry_after_ms"] == 60000
    assert c.fails == 4


def test_attempts_left_survive_reboot():
    fs = SimFlash()
    a, _ = make(fs)
    wrong(a)
    wrong(a)
    b, _ = make(fs)
    e = wrong(b)
    assert e.attempts_left == 0
    assert e.retry_after_ms == 30000


def test_power_cut_during_check_counts_as_failure():
    """Cutting power mid-check (before the answer) must not give a free try."""
    fs = SimFlash()
    a, _ = make(fs)
    wrong(a)
    wrong(a)
    saved = fs.snapshot()
    for cut in (None, 10**6):  # torn .new, or whole .new but no rename
        fs.restore(saved)
        a, _ = make(fs)
        fs.tear_next_write(cut)
        with pytest.raises(PowerLoss):
            a.check(DEFAULT_PIN)
        b, _ = make(fs)
        assert b.fails == 2  # the interrupted attempt left the old record
    # The failure is recorded before the PIN is compared: a cut after the
    # first write (during the comparison) leaves the attempt counted.
    fs.restore(saved)
    a, _ = make(fs)
    real_matches = a._matches

    def cut_power(pin):
        raise PowerLoss("during compare")

    a._matches = cut_power
    with pytest.raises(PowerLoss):
        a.check(DEFAULT_PIN)
    a._matches = real_matches
    b, _ = make(fs)
    assert b.fails == 3
    assert wrong(b, pin=DEFAULT_PIN).code == "locked"


def test_change_pin():
    fs = SimFlash()
    a, _ = make(fs)
    e = pytest.raises(AuthError, a.change, "1111", "2468").value
    assert e.code == "bad_pin"
    assert a.change(DEFAULT_PIN, "2468") is True
    assert not a.pin_is_default
    assert a.fails == 0
    assert a.check("2468")
    assert wrong(a, pin=DEFAULT_PIN).code == "bad_pin"
    b, _ = make(fs)  # after reboot
    assert not b.pin_is_default
    assert b.check("2468")
    assert b.status()["pin_is_default"] is False


@pytest.mark.parametrize("new", ["123", "123456789", "12a4", "", 1234, None, "12 34", DEFAULT_PIN])
def test_change_rejects_bad_new_pin_without_using_an_attempt(new):
    a, _ = make()
    with pytest.raises(AuthError) as info:
        a.change(DEFAULT_PIN, new)
    assert info.value.code == "invalid_pin"
    assert a.fails == 0
    assert a.pin_is_default


def test_change_while_locked_is_refused():
    a, _ = make()
    for _ in range(3):
        wrong(a)
    with pytest.raises(AuthError) as info:
        a.change(DEFAULT_PIN, "2468")
    assert info.value.code == "locked"
    assert a.pin_is_default


@pytest.mark.parametrize("pin", [1234, None, "", "12345678901", "00 0"])
def test_malformed_pin_is_a_wrong_attempt(pin):
    a, _ = make()
    e = wrong(a, pin=pin)
    assert e.code == "bad_pin" and e.attempts_left == 2


def test_stored_record_is_salted_hash_not_pin():
    fs = SimFlash()
    a, _ = make(fs)
    a.change(DEFAULT_PIN, "86420")
    raw = fs.read_bytes(AUTH_FILE)
    assert b"86420" not in raw
    rec, status = storage.load(fs, AUTH_FILE)
    assert status == "ok"
    assert rec["iter"] == auth.PIN_ITERATIONS
    assert len(bytes.fromhex(rec["salt"])) == auth.SALT_BYTES
    salt = bytes.fromhex(rec["salt"])
    assert bytes.fromhex(rec["hash"]) == auth.hash_pin("86420", salt, rec["iter"])
    assert auth.hash_pin("86420", salt, 2) != auth.hash_pin("86420", salt, 1)
    assert auth.hash_pin("86420", b"x" * 16, 10) != auth.hash_pin("86420", b"y" * 16, 10)


def test_stored_iterations_are_honoured():
    fs = SimFlash()
    a = Auth(fs, Clock(), rand_bytes, iterations=7)
    a.change(DEFAULT_PIN, "5555")
    b, _ = make(fs)  # default iterations differ: the record's count is used
    assert b.check("5555")


def test_corrupt_auth_file_falls_back_to_default_pin_and_reports():
    fs = SimFlash()
    a, _ = make(fs)
    a.change(DEFAULT_PIN, "2468")
    fs.corrupt(AUTH_FILE, 90)
    b, _ = make(fs)
    assert b.load_status == "corrupt"
    assert b.status()["load_status"] == "corrupt"
    assert b.pin_is_default
    assert b.check(DEFAULT_PIN)


@pytest.mark.parametrize(
    "change",
    [{"fails": -1}, {"lock_ms": 10**9}, {"hash": "zz"}, {"iter": 0}, {"default": 1}, {"salt": 5}],
)
def test_malformed_record_is_corrupt(change):
    fs = SimFlash()
    a, _ = make(fs)
    wrong(a)
    rec, _ = storage.load(fs, AUTH_FILE)
    rec.update(change)
    storage.save(fs, AUTH_FILE, rec)
    assert make(fs)[0].load_status == "corrupt"


def test_lockout_across_tick_wrap():
    start = (1 << 30) - 5000  # the ESP32 ticks_ms period is 2**30
    a, clock = make(t=start)
    for _ in range(3):
        wrong(a)
    clock.advance(20000)  # past the wrap
    assert clock() < start
    assert a.retry_after_ms() == 10000
    clock.advance(10000)
    assert a.retry_after_ms() == 0
    assert a.check(DEFAULT_PIN)


def test_same_bytes():
    assert auth.same_bytes(b"abc", b"abc")
    assert not auth.same_bytes(b"abc", b"abd")
    assert not auth.same_bytes(b"abc", b"ab")
    assert auth.same_bytes(b"", b"")


@settings(max_examples=200, deadline=None)
@given(
    attempts=st.lists(
        st.tuples(
            st.booleans(),
            st.one_of(st.integers(0, 40000), st.integers(0, 1_000_000)),
            st.booleans(),
        ),
        max_size=25,
    )
)
def test_random_attempts_follow_the_lockout_rule(attempts):
    """Model check: right/wrong PINs at random times, with random reboots."""
    fs = SimFlash()
    a, clock = make(fs)
    fails = 0
    lock_left = 0
    for right, wait, reboot in attempts:
        if reboot:
            # RAM lost: the lockout stored with the last failure restarts in
            # full (stored at failure time, counted down only while powered).
            a, clock = make(fs, t=clock())
            lock_left = auth.lockout_ms(fails)
        clock.advance(wait)
        lock_left = max(0, lock_left - wait)
        pin = DEFAULT_PIN if right else "1357"
        if lock_left > 0:
            e = wrong(a, pin=pin)
            assert e.code == "locked" and e.retry_after_ms == lock_left
            continue
        if right:
            assert a.check(pin)
            fails = 0
        else:
            e = wrong(a, pin=pin)
            fails += 1
            assert e.code == "bad_pin"
            assert e.attempts_left == max(0, 3 - fails)
            lock_left = auth.lockout_ms(fails)
            assert e.retry_after_ms == lock_left
        assert a.fails == fails
