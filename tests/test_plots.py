"""`invtable plot` (host/plots.py): what each figure draws, read off the
matplotlib objects (Agg backend), not pixels."""

import csv

import matplotlib
import pytest
from click.testing import CliRunner
from matplotlib.ticker import MaxNLocator

from invtable.host import plots
from invtable.host.cli import main as CLI
from invtable.host.cli_status import RECORD_COLUMNS
from invtable.host.simview import STATE_TEXT

matplotlib.use("Agg")
pytestmark = pytest.mark.timeout(120)

LIMITS = {"max_angle_mdeg": 40000, "max_inverted_ms": 150000}
PROGRAM = {"angle_mdeg": 30000, "hold_ms": 60000, "sets": 2}


def entry(i, end="completed"):
    return {"user": "ana", "start_s": 1700000000 + i, "uptime_ms": i,
            "max_angle_mdeg": 20000 + 1000 * i, "inverted_ms": 60000 + 1000 * i, "end": end,
            "fault": None, "daily_ms": None}


def labels(ax):
    return [line.get_label() for line in ax.get_lines()]


def integer_ticks(ax):
    ax.figure.canvas.draw()
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    return ticks and all(float(t).is_integer() for t in ticks)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plots.pyplot().close("all")


def test_one_session_has_whole_session_numbers_and_a_singular_title():
    fig = plots.progress_figure([entry(1)], "ana", LIMITS, PROGRAM)
    ax1, ax2 = fig.axes
    locator = ax2.xaxis.get_major_locator()
    assert isinstance(locator, MaxNLocator) and locator._integer
    assert integer_ticks(ax2) and list(ax2.get_xticks()).count(1) == 1
    assert ax1.get_title() == "invtable progress of ana: 1 session"


def test_several_sessions_are_counted_in_the_plural():
    fig = plots.progress_figure([entry(i) for i in range(7)])
    assert fig.axes[0].get_title() == "invtable progress: 7 sessions"
    assert integer_ticks(fig.axes[1])
    assert fig.axes[1].get_xlim() == (0.5, 7.5)


def test_the_limit_and_the_program_target_are_drawn_where_known():
    fig = plots.progress_figure([entry(1), entry(2, "stopped")], "ana", LIMITS, PROGRAM)
    angle, time_ax = fig.axes
    assert "limit 40 deg" in labels(angle) and "program 30 deg" in labels(angle)
    assert "limit 150 s per session" in labels(time_ax)
    assert "program 2 x 60 s held" in labels(time_ax)
    lines = {line.get_label(): line for line in angle.get_lines() + time_ax.get_lines()}
    assert list(lines["limit 40 deg"].get_ydata()) == [40, 40]
    assert list(lines["program 2 x 60 s held"].get_ydata()) == [120, 120]
    assert angle.get_legend() is not None and time_ax.get_legend() is not None


def test_without_a_user_no_lines_are_made_up():
    fig = plots.progress_figure([entry(1), entry(2)])
    assert labels(fig.axes[0]) == ["max angle"]
    assert labels(fig.axes[1]) == []


def test_a_trace_is_shaded_by_state(tmp_path):
    trace = tmp_path / "rec.csv"
    states = ["HOME"] * 5 + ["WARN"] * 5 + ["RAMP"] * 10 + ["FAULT"] * 5
    with trace.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RECORD_COLUMNS)
        for i, state in enumerate(states):
            writer.writerow([i * 0.2, 1000 + i * 200, state, -60 + i, 0, 0, "", 0,
                             "stall" if state == "FAULT" else ""])
    data = plots.read_trace(str(trace))
    assert data["t"][0] == 0 and data["t"][-1] == pytest.approx(24 * 0.2)
    spans = plots.state_spans(data["t"], data["state"], data["fault"])
    assert [(s[2], s[0], s[1]) for s in spans] == [
        ("HOME", 0, pytest.approx(1.0)), ("WARN", pytest.approx(1.0), pytest.approx(2.0)),
        ("RAMP", pytest.approx(2.0), pytest.approx(4.0)),
        ("FAULT", pytest.approx(4.0), pytest.approx(4.8))]
    fig = plots.trace_figure(data, "t")
    (ax,) = fig.axes
    shaded = [p.get_label() for p in ax.patches]
    assert shaded == ["HOME", "WARN", "RAMP", "FAULT: stall"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"HOME", "WARN", "RAMP", "FAULT: stall", "angle", "target"} <= set(legend)
    fig.savefig(tmp_path / "rec.png")
    assert (tmp_path / "rec.png").stat().st_size > 1000


def test_every_state_has_a_colour():
    assert set(STATE_TEXT) <= set(plots.STATE_COLOURS)


@pytest.fixture
def figures(monkeypatch):
    """The figures the command draws (it saves and closes them; they stay readable)."""
    drawn = []
    for name in ("progress_figure", "trace_figure"):
        real = getattr(plots, name)

        def spy(*args, _real=real, **kwargs):
            drawn.append(_real(*args, **kwargs))
            return drawn[-1]

        monkeypatch.setattr(plots, name, spy)
    return drawn


def test_the_command_draws_the_users_limit_and_target(fake_board, figures, tmp_path):
    png = tmp_path / "p.png"
    result = CliRunner().invoke(CLI, ["plot", "--out", str(png), "--port", fake_board.path])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    (fig,) = figures
    # The fake board's log is all guest's; guest's limits are 30 deg and 120 s.
    assert "limit 30 deg" in labels(fig.axes[0]) and "program 20 deg" in labels(fig.axes[0])
    assert "limit 120 s per session" in labels(fig.axes[1])
    assert fig.axes[0].get_title() == "invtable progress: 12 sessions"
    # Sessions of a user deleted since: no lines, no error.
    for e in fake_board.log:
        e["user"] = "gone"
    result = CliRunner().invoke(CLI, ["plot", "--out", str(png), "--user", "gone",
                                      "--port", fake_board.path])
    assert result.exit_code == 0, result.output
    assert labels(figures[-1].axes[0]) == ["max angle"]
    assert figures[-1].axes[0].get_title() == "invtable progress of gone: 12 sessions"


def test_a_sim_run_trace_is_plotted_with_its_states(figures, tmp_path):
    trace = tmp_path / "sim.csv"
    result = CliRunner().invoke(CLI, ["sim", "run", "--hold", "10", "--sets", "2", "--json",
                                      "--trace", str(trace)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(CLI, ["plot", "--trace", str(trace)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sim.png").exists()
    (fig,) = figures
    shaded = {p.get_label() for p in fig.axes[0].patches}
    assert {"HOME", "WARN", "RAMP", "HOLD", "RETURN", "REST"} <= shaded
    assert "true angle" in labels(fig.axes[0])
