"""Settings: validation codes, board caps, clamping, progression, fallbacks."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invtable.firmware import storage
from invtable.firmware.settings import (
    LIMIT_FIELDS,
    PROGRAM_FIELDS,
    PROGRESSION_FIELDS,
    SETTINGS_FILE,
    Settings,
    SettingsError,
)
from invtable.hal_sim.flash import PowerLoss, SimFlash

BOARD = {"max_angle_mdeg": 90000, "max_speed_mdeg_s": 10000}  # exposure caps: defaults

DEFAULT_LIMITS = {"max_angle_mdeg": 30000, "max_inverted_ms": 120000, "max_speed_mdeg_s": 4000,
                  "max_daily_inverted_ms": 600000, "check_in_ms": 60000}
DEFAULT_PROGRAM = {
    "angle_mdeg": 20000,
    "hold_ms": 60000,
    "sets": 1,
    "rest_ms": 60000,
    "speed_mdeg_s": 3000,
    "exit_pause_ms": 10000,
}


def fresh(board=BOARD, fs=None):
    s = Settings(fs if fs is not None else SimFlash(), board)
    s.load()
    return s


def reloaded(s, board=BOARD):
    again = Settings(s._fs, board)
    status = again.load()
    return again, status


def code_of(fn, *args, **kw):
    with pytest.raises(SettingsError) as info:
        fn(*args, **kw)
    return info.value


# -- defaults and fallbacks ------------------------------------------------------


def test_fresh_board_has_conservative_guest():
    s = Settings(SimFlash(), BOARD)
    assert s.load() == "defaults_missing"
    assert s.list_users() == ["guest"]
    assert s.active_name() == "guest"
    limits, program = s.active()
    assert limits == DEFAULT_LIMITS
    assert program == DEFAULT_PROGRAM
    assert s.get_user("guest")["progression"] == {"angle_step_mdeg": 0, "hold_step_ms": 0}


def test_defaults_respect_a_small_board():
    s = fresh({"max_angle_mdeg": 15000, "max_speed_mdeg_s": 2000})
    limits, program = s.active()
    assert limits["max_angle_mdeg"] == 15000
    assert limits["max_speed_mdeg_s"] == 2000
    assert program["angle_mdeg"] == 15000
    assert program["speed_mdeg_s"] == 2000


def test_bad_board_file_refused():
    with pytest.raises(ValueError):
        Settings(SimFlash(), {"max_angle_mdeg": 90000})


def test_save_and_reload():
    s = fresh()
    s.create_user("Ann")
    s.set_limits("Ann", max_angle_mdeg=45000, max_inverted_ms=600000)
    s.set_program("Ann", angle_mdeg=40000, sets=3, hold_ms=180000)
    s.select_user("Ann")
    again, status = reloaded(s)
    assert status == "ok"
    assert again.list_users() == ["guest", "Ann"]
    assert again.active_name() == "Ann"
    assert again.get_user("Ann") == s.get_user("Ann")


def test_corrupt_file_falls_back_to_defaults_and_says_so():
    s = fresh()
    s.create_user("Ann")
    s.set_limits("Ann", max_angle_mdeg=60000)
    s.select_user("Ann")
    s._fs.corrupt(SETTINGS_FILE, 80)
    again, status = reloaded(s)
    assert status == "defaults_corrupt"
    assert again.status == "defaults_corrupt"
    assert again.list_users() == ["guest"]
    assert again.active() == (DEFAULT_LIMITS, DEFAULT_PROGRAM)


@pytest.mark.parametrize(
    "content",
    [
        {"users": [], "active": None},
        {"users": "x"},
        {"active": "guest"},
        {"users": [{"name": "a"}]},
        # A value of the wrong type / below its minimum inside a valid checksum.
        {
            "users": [
                {
                    "name": "a",
                    "limits": dict(DEFAULT_LIMITS, max_angle_mdeg="90"),
                    "program": DEFAULT_PROGRAM,
                    "progression": {"angle_step_mdeg": 0, "hold_step_ms": 0},
                }
            ]
        },
        {
            "users": [
                {
                    "name": "a",
                    "limits": DEFAULT_LIMITS,
                    "program": dict(DEFAULT_PROGRAM, hold_ms=0),
                    "progression": {"angle_step_mdeg": 0, "hold_step_ms": 0},
                }
            ]
        },
        {
            "users": [
                {
                    "name": "a",
                    "limits": DEFAULT_LIMITS,
                    "program": DEFAULT_PROGRAM,
                    "progression": {"angle_step_mdeg": 99000, "hold_step_ms": 0},
                }
            ]
        },
    ],
)
def test_malformed_content_is_treated_as_corrupt(content):
    fs = SimFlash()
    storage.save(fs, SETTINGS_FILE, content)
    s = Settings(fs, BOARD)
    assert s.load() == "defaults_corrupt"
    assert s.list_users() == ["guest"]


def test_duplicate_users_in_file_are_corrupt():
    s = fresh()
    s.create_user("Ann")
    data, _ = storage.load(s._fs, SETTINGS_FILE)
    data["users"].append(data["users"][1])
    storage.save(s._fs, SETTINGS_FILE, data)
    assert reloaded(s)[1] == "defaults_corrupt"


def test_lower_board_caps_clamp_stored_settings_on_load():
    s = fresh()
    s.create_user("Ann")
    s.set_limits("Ann", max_angle_mdeg=80000, max_speed_mdeg_s=9000)
    s.set_program("Ann", angle_mdeg=75000, speed_mdeg_s=8000)
    small = {"max_angle_mdeg": 40000, "max_speed_mdeg_s": 5000}
    again, status = reloaded(s, small)
    assert status == "ok"
    user = again.get_user("Ann")
    assert user["limits"]["max_angle_mdeg"] == 40000
    assert user["limits"]["max_speed_mdeg_s"] == 5000
    assert user["program"]["angle_mdeg"] == 40000
    assert user["program"]["speed_mdeg_s"] == 5000


def test_users_stored_before_check_ins_and_daily_limits_get_the_safe_defaults():
    """A settings file from the firmware before check-ins and the daily cap:
    its users keep their limits and get check-ins (every 60 s) and the new
    users' daily limit; a per-session limit above today's board cap is
    clamped to it (a new firmware can only tighten)."""
    s = fresh()
    s.create_user("Ann")
    s.set_limits("Ann", max_inverted_ms=300000)
    data, _ = storage.load(s._fs, SETTINGS_FILE)
    for user in data["users"]:
        del user["limits"]["check_in_ms"]
        del user["limits"]["max_daily_inverted_ms"]
    data["users"][1]["limits"]["max_inverted_ms"] = 900000  # the old 15 min ceiling
    storage.save(s._fs, SETTINGS_FILE, data)
    again, status = reloaded(s)
    assert status == "ok"
    limits = again.get_user("Ann")["limits"]
    assert limits["check_in_ms"] == 60000
    assert limits["max_daily_inverted_ms"] == 600000
    assert limits["max_inverted_ms"] == 600000


def test_unknown_active_user_falls_back_to_first():
    s = fresh()
    s.save()
    data, _ = storage.load(s._fs, SETTINGS_FILE)
    data["active"] = "nobody"
    storage.save(s._fs, SETTINGS_FILE, data)
    again, status = reloaded(s)
    assert status == "ok"
    assert again.active_name() == "guest"


def test_torn_settings_save_keeps_old_or_new():
    s = fresh()
    s.create_user("Ann")
    before = s.get_user("Ann")
    s._fs.tear_next_write()
    with pytest.raises(PowerLoss):
        s.set_limits("Ann", max_angle_mdeg=25000)
    again, status = reloaded(s)
    assert status == "ok"
    assert again.get_user("Ann") == before


def test_failed_save_changes_nothing_in_ram():
    s = fresh()
    s.create_user("Ann")
    before = s.get_user("Ann")
    s._fs.fail_next_write()
    with pytest.raises(OSError):
        s.set_program("Ann", angle_mdeg=25000)
    assert s.get_user("Ann") == before
    s._fs.fail_next_write()
    with pytest.raises(OSError):
        s.create_user("Bob")
    assert s.list_users() == ["guest", "Ann"]


# -- validation ------------------------------------------------------------------


@pytest.mark.parametrize("value", [20.5, "20000", None, True, [1]])
def test_non_integers_are_bad_type(value):
    s = fresh()
    err = code_of(s.set_program, "guest", angle_mdeg=value)
    assert err.code == "bad_type"
    assert "angle_mdeg" in err.message


@pytest.mark.parametrize(
    "setter, field, value, allowed",
    [
        ("set_program", "angle_mdeg", 999, "1000..30000"),
        ("set_program", "angle_mdeg", 30001, "1000..30000"),
        ("set_program", "hold_ms", 9999, "10000.."),
        ("set_program", "sets", 0, "1..5"),
        ("set_program", "sets", 6, "1..5"),
        ("set_program", "rest_ms", 600001, "10000..600000"),
        ("set_program", "speed_mdeg_s", 4001, "1000..4000"),
        ("set_program", "exit_pause_ms", -1, "0..60000"),
        ("set_program", "exit_pause_ms", 60001, "0..60000"),
        ("set_limits", "max_angle_mdeg", 90001, "1000..90000"),
        ("set_limits", "max_angle_mdeg", 0, "1000..90000"),
        ("set_limits", "max_inverted_ms", 600001, "10000..600000"),  # the board's cap
        ("set_limits", "max_inverted_ms", 9999, "10000..600000"),
        ("set_limits", "max_daily_inverted_ms", 1200001, "10000..1200000"),
        ("set_limits", "check_in_ms", 600001, "0..600000"),
        ("set_limits", "check_in_ms", 5000, "0 (off) or 10000..600000"),
        ("set_limits", "max_speed_mdeg_s", 10001, "1000..10000"),
        ("set_progression", "angle_step_mdeg", 5001, "0..5000"),
        ("set_progression", "hold_step_ms", 60001, "0..60000"),
        ("set_progression", "hold_step_ms", -1, "0..60000"),
    ],
)
def test_out_of_range_names_the_range_and_changes_nothing(setter, field, value, allowed):
    s = fresh()
    before_user = s.get_user("guest")
    before_flash = s._fs.snapshot()
    err = code_of(getattr(s, setter), "guest", **{field: value})
    assert err.code == "out_of_range"
    assert field in err.message and allowed in err.message
    assert s.get_user("guest") == before_user
    assert s._fs.snapshot() == before_flash


def test_unknown_field():
    s = fresh()
    assert code_of(s.set_program, "guest", angle=1).code == "unknown_field"
    assert code_of(s.set_limits, "guest", angle_mdeg=1000).code == "unknown_field"
    assert code_of(s.set_progression, "guest", sets=1).code == "unknown_field"


@pytest.mark.parametrize("name", ["", "x" * 17, "tab\there", " lead", "trail ", "émile", 5, None])
def test_bad_names(name):
    err = code_of(fresh().create_user, name)
    assert err.code in ("bad_name", "bad_type")


def test_good_names():
    s = fresh()
    for name in ["A", "x" * 16, "Ann Lee", "user_2.x", "Ana-Maria"]:
        s.create_user(name)
    assert len(s.list_users()) == 6


@pytest.mark.parametrize("name", ["user_2!", "ana;rm", "quote'd", "a/b"])
def test_a_new_name_has_only_letters_digits_space_and_dash_underscore_dot(name):
    err = code_of(fresh().create_user, name)
    assert err.code == "bad_name" and "letters a-z A-Z, digits" in err.message


def test_a_stored_name_an_older_firmware_accepted_still_loads():
    s = fresh()
    s.create_user("Jo")
    data, _ = storage.load(s._fs, SETTINGS_FILE)
    data["users"][1]["name"] = "Jo!"
    storage.save(s._fs, SETTINGS_FILE, data)
    again, status = reloaded(s)
    assert status == "ok" and "Jo!" in again.list_users()


def test_user_crud_codes():
    s = fresh()
    s.create_user("Ann")
    assert code_of(s.create_user, "ann").code == "exists"  # case-insensitive
    assert code_of(s.get_user, "Bob").code == "not_found"
    assert code_of(s.select_user, "Bob").code == "not_found"
    assert code_of(s.set_limits, "Bob", max_angle_mdeg=20000).code == "not_found"
    for i in range(6):
        s.create_user("u" + str(i))
    assert len(s.list_users()) == 8
    assert code_of(s.create_user, "ninth").code == "full"
    for name in s.list_users()[1:]:
        s.delete_user(name)
    assert code_of(s.delete_user, "guest").code == "last_user"
    assert code_of(s.delete_user, "nobody").code == "not_found"


def test_delete_active_user_selects_another():
    s = fresh()
    s.create_user("Ann")
    s.select_user("ann")
    assert s.active_name() == "Ann"
    s.delete_user("Ann")
    assert s.active_name() == "guest"
    assert reloaded(s)[0].active_name() == "guest"


def test_returned_dicts_are_copies():
    s = fresh()
    s.get_user("guest")["limits"]["max_angle_mdeg"] = 90000
    limits, program = s.active()
    limits["max_angle_mdeg"] = 90000
    program["angle_mdeg"] = 90000
    assert s.active() == (DEFAULT_LIMITS, DEFAULT_PROGRAM)


# -- limits and program ------------------------------------------------------------


def test_limits_can_reach_but_never_pass_board_caps():
    s = fresh()
    s.set_limits("guest", max_angle_mdeg=90000, max_speed_mdeg_s=10000)
    assert s.active()[0]["max_angle_mdeg"] == 90000
    assert code_of(s.set_limits, "guest", max_angle_mdeg=90001).code == "out_of_range"
    assert code_of(s.set_limits, "guest", max_speed_mdeg_s=10001).code == "out_of_range"


def test_program_limited_by_user_limits():
    s = fresh()
    s.set_limits("guest", max_angle_mdeg=25000, max_speed_mdeg_s=3500)
    err = code_of(s.set_program, "guest", angle_mdeg=25001)
    assert err.code == "out_of_range" and "1000..25000" in err.message
    assert code_of(s.set_program, "guest", speed_mdeg_s=3501).code == "out_of_range"
    s.set_program("guest", angle_mdeg=25000, speed_mdeg_s=3500)
    assert s.active()[1]["angle_mdeg"] == 25000


def test_program_time_must_fit_time_limit():
    s = fresh()  # max_inverted 120 s
    err = code_of(s.set_program, "guest", sets=3)  # 3 x 60 s > 120 s
    assert err.code == "out_of_range" and "hold_ms" in err.message and "40000" in err.message
    s.set_program("guest", sets=3, hold_ms=40000)
    s.set_limits("guest", max_inverted_ms=540000)
    s.set_program("guest", sets=3, hold_ms=180000)  # three 3-minute sets
    assert s.active()[1]["hold_ms"] == 180000


def test_lowering_limits_clamps_program():
    s = fresh()
    s.set_limits("guest", max_angle_mdeg=60000, max_inverted_ms=600000, max_speed_mdeg_s=5000)
    s.set_program("guest", angle_mdeg=60000, speed_mdeg_s=5000, sets=5, hold_ms=120000)
    s.set_limits("guest", max_angle_mdeg=20000, max_speed_mdeg_s=2000, max_inverted_ms=90000)
    _, program = s.active()
    assert program["angle_mdeg"] == 20000
    assert program["speed_mdeg_s"] == 2000
    assert program["hold_ms"] == 90000
    assert program["sets"] == 1
    s.set_limits("guest", max_inverted_ms=10000)
    assert s.active()[1]["hold_ms"] == 10000


# -- progression -------------------------------------------------------------------


def test_progression_steps_up_and_stops_at_limits():
    s = fresh()  # limits 30 deg, 120 s
    s.set_progression("guest", angle_step_mdeg=4000, hold_step_ms=25000)
    p = s.apply_progression("guest")
    assert (p["angle_mdeg"], p["hold_ms"]) == (24000, 85000)
    p = s.apply_progression("guest")
    assert (p["angle_mdeg"], p["hold_ms"]) == (28000, 110000)
    p = s.apply_progression("guest")
    assert (p["angle_mdeg"], p["hold_ms"]) == (30000, 120000)
    writes = s._fs.writes
    p = s.apply_progression("guest")
    assert (p["angle_mdeg"], p["hold_ms"]) == (30000, 120000)
    assert s._fs.writes == writes  # nothing changed, nothing written
    assert reloaded(s)[0].active()[1]["angle_mdeg"] == 30000


def test_progression_hold_respects_sets_times_hold():
    s = fresh()
    s.set_program("guest", sets=2)  # 2 x 60 s = 120 s limit exactly
    s.set_progression("guest", hold_step_ms=60000)
    assert s.apply_progression("guest")["hold_ms"] == 60000


def test_zero_progression_changes_nothing():
    s = fresh()
    assert s.apply_progression("guest") == DEFAULT_PROGRAM


def test_progression_never_lowers_program():
    s = fresh()
    s.set_program("guest", angle_mdeg=30000)
    s.set_progression("guest", angle_step_mdeg=5000)
    assert s.apply_progression("guest")["angle_mdeg"] == 30000


# -- random sequences ------------------------------------------------------------------

NAMES = ["guest", "Ann", "bob", "C", "dd", "e e", "F", "gg", "h", "i9"]


def _field_values(fields):
    return st.sampled_from([f[0] for f in fields]).flatmap(
        lambda name: st.tuples(
            st.just(name),
            st.one_of(
                st.integers(-1000, 1_000_000),
                st.sampled_from([0, 1000, 10000, 60000, 90000, 600000, 900000]),
                st.just(1.5),
                st.just(True),
            ),
        )
    )


_ops = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(NAMES)),
    st.tuples(st.just("delete"), st.sampled_from(NAMES)),
    st.tuples(st.just("select"), st.sampled_from(NAMES)),
    st.tuples(st.just("limits"), st.sampled_from(NAMES), _field_values(LIMIT_FIELDS)),
    st.tuples(st.just("program"), st.sampled_from(NAMES), _field_values(PROGRAM_FIELDS)),
    st.tuples(st.just("progression"), st.sampled_from(NAMES), _field_values(PROGRESSION_FIELDS)),
    st.tuples(st.just("progress"), st.sampled_from(NAMES)),
)


def _check_invariants(s, board):
    for name in s.list_users():
        u = s.get_user(name)
        lim, prog = u["limits"], u["program"]
        assert 1000 <= lim["max_angle_mdeg"] <= board["max_angle_mdeg"]
        assert 1000 <= lim["max_speed_mdeg_s"] <= board["max_speed_mdeg_s"]
        assert 10000 <= lim["max_inverted_ms"] <= 600000  # the default board cap
        assert 1000 <= prog["angle_mdeg"] <= lim["max_angle_mdeg"]
        assert 1000 <= prog["speed_mdeg_s"] <= lim["max_speed_mdeg_s"]
        assert 1 <= prog["sets"] <= 5
        assert 10000 <= prog["hold_ms"] <= 600000
        assert prog["sets"] * prog["hold_ms"] <= lim["max_inverted_ms"]
        assert 10000 <= prog["rest_ms"] <= 600000
        assert 0 <= prog["exit_pause_ms"] <= 60000
        for v in list(lim.values()) + list(prog.values()) + list(u["progression"].values()):
            assert type(v) is int
    assert 1 <= len(s.list_users()) <= 8
    assert s.active_name() in s.list_users()


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(_ops, max_size=30),
    board=st.fixed_dictionaries(
        {
            "max_angle_mdeg": st.integers(1000, 90000),
            "max_speed_mdeg_s": st.integers(1000, 10000),
        }
    ),
)
def test_random_setting_sequences_keep_invariants_and_persist(ops, board):
    s = fresh(board)
    for op in ops:
        kind, name = op[0], op[1]
        before = s.get_user(name) if name.lower() in [n.lower() for n in s.list_users()] else None
        try:
            if kind == "create":
                s.create_user(name)
            elif kind == "delete":
                s.delete_user(name)
            elif kind == "select":
                s.select_user(name)
            elif kind == "limits":
                s.set_limits(name, **dict([op[2]]))
            elif kind == "program":
                s.set_program(name, **dict([op[2]]))
            elif kind == "progression":
                s.set_progression(name, **dict([op[2]]))
            else:
                old = before["program"] if before else None
                new = s.apply_progression(name)
                assert new["angle_mdeg"] >= old["angle_mdeg"]
                assert new["hold_ms"] >= old["hold_ms"]
        except SettingsError as e:
            assert e.code in (
                "bad_type",
                "out_of_range",
                "not_found",
                "exists",
                "full",
                "last_user",
            )
            if before is not None and kind != "delete":
                assert s.get_user(name) == before  # a refused change changes nothing
        _check_invariants(s, board)
    again, status = reloaded(s, board)
    assert status == ("ok" if s._fs.names() else "defaults_missing")
    assert again.list_users() == s.list_users()
    assert again.active_name() == s.active_name()
    for name in s.list_users():
        assert again.get_user(name) == s.get_user(name)
