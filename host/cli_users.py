"""`invtable user`, `program`, `limits`, `progression` and `pin`: the people on
the board and what they may do.

Every range an option accepts is the firmware's (host/ranges.py); what only
the board knows (its caps, the user's limits) the board checks, and its
refusal names the allowed range.
"""

import click
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from invtable.firmware import settings as settings_rules
from invtable.firmware.settings import SettingsError
from invtable.host import cli_common as common
from invtable.host import client as client_mod
from invtable.host.cli_common import (
    EXIT_REFUSED,
    FIELDS,
    LIMIT_KEYS,
    PROGRAM_KEYS,
    PROGRESSION_KEYS,
    Failure,
    board_command,
    call,
    connect,
    emit_json,
    err,
    from_wire,
    human,
    kv_table,
    out,
    pin_option,
    plural,
    resolve_pin,
    to_wire,
    today_text,
)
from invtable.host.ranges import (
    CHECK_IN_ANSWER_MS,
    CHECK_IN_MIN_MS,
    max_hold_ms,
    setting_range,
)

# Contraindications shown when a user is created (docs/DESIGN.md and the
# manufacturers' and clinical sources it cites).
SCREENING = (
    "high blood pressure (hypertension)",
    "heart disease or circulatory problems, a history of stroke",
    "glaucoma, retinal detachment or other eye conditions",
    "pregnancy",
    "hernias (hiatal, abdominal or inguinal)",
    "severe osteoporosis or other bone weakness",
    "recent surgery, fractures or injuries of the spine, hips, knees or ankles",
    "use of anticoagulants (blood thinners)",
    "middle ear infection or inner-ear balance problems",
    "severe obesity",
)

def check_new_name(ctx, param, name):
    """Argument callback of `user create`: the board's rule for a new name
    (firmware.settings.check_new_name), before anything is sent."""
    try:
        settings_rules.check_new_name(name)
    except SettingsError as error:
        raise click.BadParameter(f"{name!r}: {error.message}", ctx=ctx, param=param) from None
    return name


# -- options with the firmware's ranges --------------------------------------
def setting_option(field, help_text, **kwargs):
    """An option for a settings field, checked here with the firmware's bounds
    (firmware.settings); a bound that is the board's cap or the user's limit,
    which this side cannot know, is left to the board, whose refusal names it."""
    option, unit, _label = FIELDS[field]
    low, high = (None if v is None else from_wire(field, v) for v in setting_range(field))
    kind = click.IntRange if unit is None else click.FloatRange
    return click.option(option, type=kind(low, high), metavar=(unit or "N").upper(),
                        help=help_text, **kwargs)


CHECK_IN_RULE = "0 (off) or {:g}..{:g} s".format(
    from_wire("check_in_ms", CHECK_IN_MIN_MS),
    from_wire("check_in_ms", setting_range("check_in_ms")[1]))


def _check_in(ctx, param, value):
    """--check-in: 0 (off), or at least CHECK_IN_MIN_MS (the board's rule)."""
    if value is None or value == 0 or to_wire("check_in_ms", value) >= CHECK_IN_MIN_MS:
        return value
    raise click.BadParameter(f"{value:g} s: a check-in is {CHECK_IN_RULE}", ctx=ctx, param=param)


def _collect(keys, values):
    """Protocol args from the options given (None = not given)."""
    args = {}
    for key, value in zip(keys, values, strict=True):
        if value is not None:
            args[key] = to_wire(key, value)
    if not args:
        options = ", ".join(FIELDS[k][0] for k in keys)
        raise click.UsageError(f"nothing to change: give at least one of {options}")
    return args


# -- rendering -------------------------------------------------------------
def settings_table(title, section, keys, before=None):
    rows = []
    for key in keys:
        if key not in section:
            continue
        value = human(key, section[key])
        if before and key in before and before[key] != section[key]:
            value += f"  [yellow](was {human(key, before[key])})[/]"
        rows.append((FIELDS[key][2], value))
    return kv_table(title, rows)


def print_user(user, before=None):
    name = escape(str(user.get("name", "?")))
    active = " [green](active)[/]" if user.get("active") else ""
    out.print(f"[bold]user {name}[/]{active}")
    before = before or {}
    if "limits" in user:
        out.print(settings_table("limits (admin)", user["limits"], LIMIT_KEYS,
                                 before.get("limits")))
    if user.get("daily_limit_ms") is not None:
        out.print(f"today: {today_text(user.get('daily_used_ms'), user['daily_limit_ms'])}")
    if "program" in user:
        out.print(settings_table("program", user["program"], PROGRAM_KEYS,
                                 before.get("program")))
    if "progression" in user:
        out.print(settings_table("progression (admin)", user["progression"], PROGRESSION_KEYS,
                                 before.get("progression")))


def print_screening(console):
    console.print(Panel(
        "\n".join(f"  - {item}" for item in SCREENING)
        + "\n\nAnyone with one of these (or unsure) must [bold]consult a doctor[/] before "
        "using an inversion table. Inversion raises blood pressure and eye pressure; "
        "start low (15-30 deg) and short (30 s - 2 min). Dizziness, headache or pain: "
        "press STOP at once.",
        title="[bold yellow]Before inverting: health screening[/]", title_align="left",
        border_style="yellow"))


# -- users -----------------------------------------------------------------
@click.group()
def user():
    """Users: list, show, create, delete, select."""


@user.command("list")
@board_command
def user_list(opts):
    """The users on the board; the active one is marked."""
    data = call(opts, "user.list")
    if opts["as_json"]:
        return emit_json(data)
    table = Table(title=f"users ({len(data.get('users', []))} of {data.get('max_users', '?')})",
                  title_justify="left", title_style="bold")
    table.add_column("name")
    table.add_column("active")
    for entry in data.get("users", []):
        mark = "[green]*[/]" if entry.get("active") else ""
        table.add_row(escape(str(entry.get("name", "?"))), mark)
    out.print(table)


@user.command("show")
@click.argument("name")
@board_command
def user_show(name, opts):
    """A user's limits, program and progression."""
    data = call(opts, "user.get", name=name)
    if opts["as_json"]:
        return emit_json(data)
    print_user(data)


@user.command("create")
@click.argument("name", callback=check_new_name)
@pin_option
@click.option("--yes", "-y", is_flag=True,
              help="Confirm the health screening was done (for scripts; needed without a "
              "terminal).")
@board_command
def user_create(name, pin, yes, opts):
    """Create user NAME with conservative defaults (admin).

    NAME: 1 to 16 letters, digits, spaces, - _ or . Shows the health-screening
    list of contraindications first and asks for confirmation (--yes skips the
    question)."""
    common.can_confirm(yes, "creating a user", opts["as_json"])
    pin = common.given_pin(pin, opts["as_json"])
    print_screening(err if opts["as_json"] else out)
    common.confirm(f"Has {name} read this and, where it applies, consulted a doctor?", yes,
                   opts["as_json"], f"user {name} not created: the screening was not confirmed")
    pin = resolve_pin(pin, as_json=opts["as_json"])
    data = call(opts, "user.create", name=name, pin=pin)
    if opts["as_json"]:
        return emit_json(data)
    out.print(f"[green]created user {escape(str(data.get('name', name)))}[/]")
    print_user(data)
    out.print(f"Select it with `invtable user select {data.get('name', name)}`.")


@user.command("delete")
@click.argument("name")
@pin_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@board_command
def user_delete(name, pin, yes, opts):
    """Delete user NAME (admin)."""
    common.can_confirm(yes, "deleting a user", opts["as_json"])
    pin = common.given_pin(pin, opts["as_json"])
    common.confirm(f"Delete user {name} and their settings?", yes, opts["as_json"],
                   f"user {name} not deleted")
    pin = resolve_pin(pin, as_json=opts["as_json"])
    data = call(opts, "user.delete", name=name, pin=pin)
    if opts["as_json"]:
        return emit_json(data or {"deleted": name})
    out.print(f"deleted user {name}")


@user.command("select")
@click.argument("name")
@board_command
def user_select(name, opts):
    """Make NAME the active user (the next GO runs their program)."""
    data = call(opts, "user.select", name=name)
    if opts["as_json"]:
        return emit_json(data)
    out.print(f"active user: [bold]{escape(str(data.get('active', name)))}[/]")


# -- program, limits, progression --------------------------------------------
@click.group()
def program():
    """A user's session program."""


def _hold_failure(error, name, before, args, as_json):
    """The board's refusal of a hold as what it is when the bound is the user's
    time limit shared by the sets: 'hold x sets must fit the user's inverted-time
    limit of N s'; None when it is not that."""
    limits = before.get("limits") or {}
    limit_ms = limits.get("max_inverted_ms")
    prog = dict(before.get("program") or {}, **args)
    hold, sets = prog.get("hold_ms"), prog.get("sets")
    if common.range_field(error) != "hold_ms" or None in (limit_ms, hold, sets):
        return None
    low, high = setting_range("hold_ms")
    top = max_hold_ms(limits, sets)
    if top >= high or hold * sets <= limit_ms:
        return None  # the hold's own range, not the shared limit
    def secs(ms):
        return f"{ms / 1000:g} s"

    text = (f"hold {secs(hold)} x {plural(sets, 'set')} must fit the user's inverted-time "
            f"limit of {secs(limit_ms)}: ")
    if top >= low:
        text += f"with {plural(sets, 'set')} a hold is at most {secs(top)}"
    else:
        text += (f"at most {plural(max(1, limit_ms // low), 'set')} of the shortest hold "
                 f"({secs(low)}) fit")
    text += (f". Shorten --hold, give fewer --sets, or an admin raises the limit: "
             f"`invtable limits set {name} --max-inverted S`")
    details = dict(error.details, field="hold_ms", allowed=[low, top])
    return Failure(text, EXIT_REFUSED, error.code, details, as_json)


@program.command("set")
@click.argument("name")
@setting_option("angle_mdeg", "Target angle, degrees (0 = horizontal, 90 = vertical); at "
                "most the user's --max-angle.")
@setting_option("hold_ms", "Hold per set, seconds; the sets' holds together fit the user's "
                "--max-inverted.")
@setting_option("sets", "Number of sets.")
@setting_option("rest_ms", "Rest at home between sets, seconds.")
@setting_option("speed_mdeg_s", "Tilt speed, degrees per second; at most the user's "
                "--max-speed.")
@setting_option("exit_pause_ms", "Pause near horizontal on the way up, seconds.")
@board_command
def program_set(name, angle, hold, sets, rest, speed, exit_pause, opts):
    """Change NAME's program; values must fit inside the user's limits."""
    args = _collect(PROGRAM_KEYS, (angle, hold, sets, rest, speed, exit_pause))
    with connect(opts) as board:
        before = board.request("user.get", name=name)
        try:
            data = board.request("program.set", name=name, **args)
        except client_mod.OutOfRangeError as error:
            raise _hold_failure(error, name, before, args, opts["as_json"]) or \
                common.failure_for(error, opts["as_json"]) from None
    if opts["as_json"]:
        return emit_json(data)
    program_data = data.get("program", data)
    out.print(settings_table(f"program of {name}", program_data, PROGRAM_KEYS,
                             before.get("program")))


@click.group()
def limits():
    """A user's limits (admin)."""


@limits.command("set")
@click.argument("name")
@setting_option("max_angle_mdeg", "Highest angle, degrees (never above the board's cap).")
@setting_option("max_inverted_ms", "Most time above horizontal per session, seconds (never "
                "above the board's cap).")
@setting_option("max_speed_mdeg_s", "Fastest tilt, degrees per second (never above the "
                "board's cap).")
@setting_option("max_daily_inverted_ms", "Most time above horizontal per day, all sessions "
                "together, seconds (never above the board's cap).")
@setting_option("check_in_ms", "Rider check-ins: every S seconds of tilting and holding, the "
                f"beeper chirps and the rider must tap GO within {CHECK_IN_ANSWER_MS / 1000:g} "
                f"s, or the table returns home. {CHECK_IN_RULE}.", callback=_check_in)
@pin_option
@board_command
def limits_set(name, max_angle, max_inverted, max_speed, max_daily, check_in, pin, opts):
    """Change NAME's limits (admin); the program is lowered to fit."""
    args = _collect(LIMIT_KEYS, (max_angle, max_inverted, max_speed, max_daily, check_in))
    pin = resolve_pin(pin, as_json=opts["as_json"])
    with connect(opts) as board:
        before = board.request("user.get", name=name)
        data = board.request("limits.set", name=name, pin=pin, **args)
    if opts["as_json"]:
        return emit_json(data)
    out.print(settings_table(f"limits of {name}", data.get("limits", {}), LIMIT_KEYS,
                             before.get("limits")))
    if "program" in data:
        out.print(settings_table(f"program of {name}", data["program"], PROGRAM_KEYS,
                                 before.get("program")))


@click.group()
def progression():
    """How a user's program grows per completed session (admin)."""


@progression.command("set")
@click.argument("name")
@setting_option("angle_step_mdeg", "Degrees added to the angle after each completed session.")
@setting_option("hold_step_ms", "Seconds added to the hold after each completed session.")
@pin_option
@board_command
def progression_set(name, angle_step, hold_step, pin, opts):
    """Change NAME's progression (admin); 0 = no growth (the default)."""
    args = _collect(PROGRESSION_KEYS, (angle_step, hold_step))
    pin = resolve_pin(pin, as_json=opts["as_json"])
    data = call(opts, "progression.set", name=name, pin=pin, **args)
    if opts["as_json"]:
        return emit_json(data)
    out.print(settings_table(f"progression of {name}", data.get("progression", data),
                             PROGRESSION_KEYS))


# -- the admin PIN -----------------------------------------------------------
@click.group()
def pin():
    """The admin PIN."""


def _ask_new_pin():
    """The new PIN, typed twice, its rule in the prompt and checked at once."""
    rule = common.NEW_PIN_RULE.replace("a new PIN is ", "")
    while True:
        new_pin = click.prompt(f"New admin PIN ({rule})", hide_input=True).strip()
        if not common.new_pin_ok(new_pin):
            err.print(f"[yellow]{common.NEW_PIN_RULE}: try again[/]")
            continue
        if click.prompt("The new PIN again", hide_input=True).strip() == new_pin:
            return new_pin
        err.print("[yellow]the two PINs differ: try again[/]")


@pin.command("change")
@pin_option
@click.option("--new-pin", envvar="INVTABLE_NEW_PIN", metavar="PIN",
              help=f"The new PIN: {common.NEW_PIN_RULE.replace('a new PIN is ', '')} "
              "[env INVTABLE_NEW_PIN; asked when omitted].")
@board_command
def pin_change(pin, new_pin, opts):
    """Change the admin PIN (4 to 8 digits, not the factory default)."""
    if new_pin is not None:
        new_pin = new_pin.strip()
        if not common.new_pin_ok(new_pin):
            raise click.BadParameter(common.NEW_PIN_RULE, param_hint="--new-pin")
    elif not common._stdin_is_tty():
        raise common.needs_terminal("give the new PIN with --new-pin or INVTABLE_NEW_PIN, or "
                                    "run in a terminal to be asked", opts["as_json"])
    pin = resolve_pin(pin, "Current admin PIN", opts["as_json"])
    if new_pin is None:
        new_pin = _ask_new_pin()
    data = call(opts, "pin.change", pin=pin, new_pin=new_pin)
    if opts["as_json"]:
        return emit_json(data or {"changed": True})
    out.print("[green]admin PIN changed[/]")


COMMANDS = (user, program, limits, progression, pin)


def register(group):
    common.register(group, COMMANDS)
