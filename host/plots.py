"""The charts of `invtable plot` (matplotlib, Agg backend).

``progress_figure`` and ``trace_figure`` return the matplotlib Figure, so
that tests inspect what is drawn (axes, locators, line labels) rather than
pixels; the command saves it.
"""

import csv

from invtable.host.cli_common import END_STYLE, Failure, from_wire, plural

# The session log's end colours (cli_common.END_STYLE) in matplotlib's colours.
END_COLOURS = {"green": "tab:green", "yellow": "tab:orange", "red": "tab:red"}
# The background of each state in a trace plot: home and rest green, moving
# away blue, holding cyan, on the way home purple, a fault red.
STATE_COLOURS = {
    "BOOT": "lightgrey",
    "SETUP": "lightgrey",
    "HOME": "tab:green",
    "WARN": "gold",
    "RAMP": "tab:blue",
    "HOLD": "tab:cyan",
    "RETURN": "tab:purple",
    "PAUSE": "tab:pink",
    "REST": "yellowgreen",
    "FAULT": "tab:red",
    "OFF": "black",
}
STATE_ALPHA = 0.15
LIMIT_STYLE = {"color": "tab:red", "linestyle": "--", "linewidth": 1.2}
TARGET_STYLE = {"color": "tab:green", "linestyle": ":", "linewidth": 1.5}


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise Failure("plotting needs matplotlib: pip install 'invtable[plot]'") from None
    return plt


def read_trace(path):
    """A `sim run --trace` CSV or a `monitor --record` CSV: a dict of lists
    ``t`` (s from the first row, on the board's clock), ``angle``, ``target`` (deg),
    ``state``, ``fault`` (text, "" where none), and ``label`` (what the angle is)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise Failure(f"{path}: no rows")
    columns = rows[0].keys()
    if "angle_true_deg" in columns:  # sim run --trace
        angle_key, label = "angle_true_deg", "true angle"
    elif "angle_deg" in columns:  # monitor --record
        # The board's own clock (t_ms), not the host's: it is the table's time
        # even when a simulated board runs faster than real time.
        angle_key, label = "angle_deg", "angle"
    else:
        raise Failure(f"{path}: not a trace (expected the columns of `invtable sim run --trace` "
                      "or `invtable monitor --record`)")

    def num(text):
        try:
            return float(text)
        except (TypeError, ValueError):
            return float("nan")

    t = [num(r["t_ms"]) / 1000 for r in rows]
    return {"t": [value - t[0] for value in t], "angle": [num(r[angle_key]) for r in rows],
            "target": [num(r.get("target_deg")) for r in rows],
            "state": [r.get("state") or "" for r in rows],
            "fault": [r.get("fault") or "" for r in rows], "label": label}


def state_spans(t, states, faults):
    """(start_s, end_s, state, fault) for each run of one state: a run lasts until
    the next one begins, the last until the trace ends."""
    spans = []
    for time_s, state, fault in zip(t, states, faults, strict=True):
        if spans and spans[-1][2] == state:
            continue
        if spans:
            spans[-1][1] = time_s
        spans.append([time_s, time_s, state, fault])
    if spans:
        spans[-1][1] = t[-1]
    return [tuple(span) for span in spans if span[2]]


def trace_figure(trace, title):
    """Angle and target over time, the background shaded by state."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    labelled = set()
    for start, end, state, fault in state_spans(trace["t"], trace["state"], trace["fault"]):
        label = None
        if state not in labelled:
            labelled.add(state)
            label = f"{state}: {fault}" if state == "FAULT" and fault else state
        ax.axvspan(start, end, color=STATE_COLOURS.get(state, "lightgrey"), alpha=STATE_ALPHA,
                   linewidth=0, label=label)
    ax.plot(trace["t"], trace["angle"], label=trace["label"], color="tab:blue")
    ax.plot(trace["t"], trace["target"], label="target", color="tab:orange", linestyle="--")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("time, s (background: the state)")
    ax.set_ylabel("angle, degrees (0 = horizontal)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def progress_figure(entries, who=None, limits=None, program=None):
    """Max angle and time inverted per session of the log ``entries``; with the
    user's ``limits`` and ``program`` (protocol units, from user.get), their
    limit and the program's target drawn as lines."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    n = list(range(1, len(entries) + 1))
    colours = [END_COLOURS.get(END_STYLE.get(e.get("end")), "tab:gray") for e in entries]
    angles = [(e.get("max_angle_mdeg") or 0) / 1000 for e in entries]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    ax1.plot(n, angles, color="tab:blue", zorder=1, label="max angle")
    ax1.scatter(n, angles, c=colours, zorder=2)
    ax1.set_ylabel("max angle, deg")
    ax2.bar(n, [(e.get("inverted_ms") or 0) / 1000 for e in entries], color=colours,
            label="time inverted")
    ax2.set_ylabel("time inverted, s")
    limits, program = limits or {}, program or {}
    if limits.get("max_angle_mdeg") is not None:
        value = from_wire("max_angle_mdeg", limits["max_angle_mdeg"])
        ax1.axhline(value, label=f"limit {value:g} deg", **LIMIT_STYLE)
    if program.get("angle_mdeg") is not None:
        value = from_wire("angle_mdeg", program["angle_mdeg"])
        ax1.axhline(value, label=f"program {value:g} deg", **TARGET_STYLE)
    if limits.get("max_inverted_ms") is not None:
        value = from_wire("max_inverted_ms", limits["max_inverted_ms"])
        ax2.axhline(value, label=f"limit {value:g} s per session", **LIMIT_STYLE)
    if program.get("hold_ms") is not None and program.get("sets") is not None:
        hold = from_wire("hold_ms", program["hold_ms"])
        ax2.axhline(hold * program["sets"], label=f"program {program['sets']} x {hold:g} s held",
                    **TARGET_STYLE)
    ax2.set_xlabel("session (green completed, orange stopped/limit, red fault or the "
                   "rider not answering)")
    # Whole sessions only, also for one (at least one integer in view is enough).
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax2.set_xlim(0.5, len(entries) + 0.5)
    ax1.set_title(f"invtable progress{f' of {who}' if who else ''}: "
                  f"{plural(len(entries), 'session')}")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if len(ax.get_legend_handles_labels()[1]) > 1:
            ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig

