"""Terminal view of a simulated session: a timeline, a chart and a summary."""

from rich.console import Console
from rich.table import Table

# Trace row indexes (hal_sim.scenario.COLUMNS).
T_MS, TRUE, EST, TARGET, SPEED, STATE, DRIVE, FAULT, INVERTED, BEEP = range(10)
WARNING, EVENT = 12, 13

STATE_STYLE = {
    "HOME": "green",
    "WARN": "yellow",
    "RAMP": "cyan",
    "HOLD": "bold cyan",
    "RETURN": "magenta",
    "PAUSE": "magenta",
    "REST": "green",
    "FAULT": "bold red",
    "BOOT": "dim",
    "OFF": "red",
}
STATE_TEXT = {
    "BOOT": "settling the angle estimate",
    "HOME": "upright, drive off",
    "WARN": "GO pressed: warning beeps",
    "RAMP": "tilting to the target",
    "HOLD": "holding",
    "RETURN": "returning home",
    "PAUSE": "pause near horizontal",
    "REST": "rest between sets",
    "FAULT": "fault latched",
    "OFF": "no power",
}


def commissioning_text(calib):
    """What commissioning measured, in people's units, one short paragraph."""
    c = calib
    return (
        f"IMU along {c['imu_along']} normal {c['imu_normal']} gyro {c['imu_gyro']} "
        f"offset {c['imu_offset_mdeg'] / 1000:.2f} deg; home {c['home_angle_mdeg'] / 1000:.1f}"
        f" deg (switch opens {c['home_open_mdeg'] / 1000:.1f}); speed "
        f"{c['speed_down_mdeg_s'] / 1000:.2f} down / {c['speed_up_mdeg_s'] / 1000:.2f} up "
        f"deg/s, lag {c['lag_ms']} ms; travel to {c['travel_max_mdeg'] / 1000:.0f} deg"
    )


def csv_row(row):
    """Round floats for the CSV trace (0.001 deg is far below the sensor's noise)."""
    return [round(value, 3) if isinstance(value, float) else value for value in row]


class SessionView:
    """Prints state changes as they happen and a chart plus summary at the end."""

    def __init__(self, board_name, program, limits, events, console=None, world=None,
                 commissioned=True):
        """``world``: a line describing the simulated world when it is not the board
        file's; ``commissioned``: False when the table is not (GO will be refused)."""
        self.console = console or Console(highlight=False)
        self.samples = []  # (t_s, true angle) every 0.5 s for the chart
        self._last_state = None
        self._last_warning = ""
        c = self.console
        c.print(f"[bold]invtable[/] simulated table, board [bold]{board_name}[/]")
        c.print(
            f"program: {program['angle_mdeg'] / 1000:g} deg, hold {program['hold_ms'] / 1000:g} s"
            f" x {program['sets']} set(s), rest {program['rest_ms'] / 1000:g} s,"
            f" {program['speed_mdeg_s'] / 1000:g} deg/s,"
            f" exit pause {program['exit_pause_ms'] / 1000:g} s"
        )
        c.print(
            f"limits:  max {limits['max_angle_mdeg'] / 1000:g} deg,"
            f" max {limits['max_inverted_ms'] / 1000:g} s inverted per session"
        )
        if world:
            c.print("world:   " + world)
        if not commissioned:
            c.print("[yellow]not commissioned:[/] the firmware refuses GO "
                    "(go_refused_not_commissioned); add --commission")
        if events:
            c.print("events:  " + ", ".join(f"{t / 1000:g}s {a}" for t, a in events))
        c.print()

    def add(self, row):
        t_ms = row[T_MS]
        if t_ms % 500 == 0:
            self.samples.append((t_ms / 1000, row[TRUE]))
        state = row[STATE]
        if row[EVENT]:
            self.console.print(f"[dim]{t_ms / 1000:7.1f} s[/]  [bold]event:[/] {row[EVENT]}")
        if state != self._last_state:
            self._last_state = state
            style = STATE_STYLE.get(state, "")
            detail = STATE_TEXT.get(state, "")
            if state == "FAULT" and row[FAULT]:
                detail += f": {row[FAULT]}"
            self.console.print(
                f"[dim]{t_ms / 1000:7.1f} s[/]  [{style}]{state:<6}[/]"
                f" {row[TRUE]:6.1f} deg  inverted {row[INVERTED]:5.1f} s  {detail}"
            )
        if row[WARNING] and row[WARNING] != self._last_warning:
            self.console.print(f"[dim]{t_ms / 1000:7.1f} s[/]  [yellow]notice:[/] {row[WARNING]}")
        self._last_warning = row[WARNING]

    def chart(self, width=64, height=10):
        """A plain-text chart of the true angle over time."""
        if len(self.samples) < 2:
            return ""
        t_end = self.samples[-1][0]
        low = min(a for _, a in self.samples)
        high = max(max(a for _, a in self.samples), 0.0)
        span = (high - low) or 1.0
        columns = [None] * width
        for t, angle in self.samples:
            col = min(width - 1, int(t / t_end * (width - 1)))
            if columns[col] is None or angle > columns[col]:
                columns[col] = angle
        grid = [[" "] * width for _ in range(height)]
        zero_row = round((high - 0.0) / span * (height - 1))
        for col in range(width):
            grid[zero_row][col] = "-"
        for col, angle in enumerate(columns):
            if angle is not None:
                grid[round((high - angle) / span * (height - 1))][col] = "*"
        lines = []
        for i, cells in enumerate(grid):
            label = high - i * span / (height - 1)
            lines.append(f"{label:6.1f} |" + "".join(cells))
        lines.append("       +" + "-" * width)
        lines.append(f"        0 s{'':>{width - 14}}{t_end:.0f} s")
        return "\n".join(lines)

    def finish(self, summary):
        c = self.console
        c.print()
        c.print("[bold]true table angle, degrees[/] (- - - = horizontal)")
        c.print(self.chart(), markup=False)
        c.print()
        table = Table(title="summary", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("simulated time", f"{summary['duration_s']:.1f} s")
        table.add_row("final state", summary["final_state"])
        table.add_row("sessions ended", ", ".join(summary["session_ends"]) or "-")
        table.add_row("sets done", str(summary["sets_done"]))
        table.add_row("max angle (true)", f"{summary['max_angle_deg']:.2f} deg")
        table.add_row("time inverted (true)", f"{summary['inverted_s']:.1f} s")
        table.add_row("faults seen", ", ".join(summary["faults_seen"]) or "none")
        commissioning = summary.get("commissioning")
        if commissioning is not None:
            text = commissioning_text(commissioning["calibration"])
            table.add_row("commissioning measured", text)
        if summary.get("trace"):
            table.add_row("trace", summary["trace"])
        c.print(table)
