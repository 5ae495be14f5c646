"""What the user sees: a live line per host, each step's result, and the recap."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gpufleet.errors import InputError
from gpufleet.plan import CHANGED, FAILED, OK, SKIPPED, HostReport, StepResult

STYLE = {OK: "green", CHANGED: "yellow", FAILED: "bold red", SKIPPED: "cyan"}


def make_console() -> Console:
    """The terminal's width on a terminal; wide enough for tables in logs and pipes."""
    plain = Console()
    return Console(highlight=False, soft_wrap=True, width=None if plain.is_terminal else 160)


def elapsed(seconds: float) -> str:
    """34s, 2m05s, 1h02m."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


PROGRESS_EVERY_ENV = "GPUFLEET_PROGRESS_EVERY"


def plain_progress_every() -> float:
    """Seconds between plain progress lines: 10, or GPUFLEET_PROGRESS_EVERY."""
    value = os.environ.get(PROGRESS_EVERY_ENV, "").strip()
    if not value:
        return 10.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 1e6:
        raise InputError(f"{PROGRESS_EVERY_ENV}: expected seconds between progress lines (a number > 0), "
                         f"got {value!r}")
    return seconds


class Display:
    """Thread-safe progress display; plain lines when the output is not a terminal.

    On a terminal a live line per host shows `step: what … (elapsed)`, `what` being what
    the running command's output says (gpufleet.progress) or else the action's summary.
    Elsewhere (CI logs, pipes) a step that has run `plain_every` seconds gets such a line at
    most every `plain_every` seconds per host, printed by `tick()` (a thread calls it every second).
    """

    def __init__(self, hosts: list[str], title: str, console: Console | None = None, show_diffs: bool = False,
                 clock=time.monotonic, plain_every: float = 10.0):
        self.plain_every = plain_every
        self.show_diffs = show_diffs
        self.console = console or make_console()
        self.title = title
        self.clock = clock
        self.current = {h: "waiting" for h in hosts}
        self.running: dict[str, tuple[str, str, float]] = {}  # host -> (step, what, started)
        self.last_plain: dict[str, float] = {}
        self.lock = threading.Lock()
        self.closed = False  # after Ctrl-C: hosts still winding down print nothing more
        self._stop_ticks = threading.Event()
        self.live = Live(console=self.console, refresh_per_second=4, transient=True, get_renderable=self._render,
                         redirect_stdout=False, redirect_stderr=False) if self.console.is_terminal else None

    def __enter__(self):
        self.console.print(Text(self.title, style="bold"))
        if self.live:
            self.live.start()
        else:
            threading.Thread(target=self._ticks, name="display-ticks", daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop_ticks.set()
        if self.live:
            self.live.stop()

    def _ticks(self) -> None:
        while not self._stop_ticks.wait(1.0):
            self.tick()

    @staticmethod
    def _doing(running: tuple[str, str, float], now: float, room: int = 0) -> str:
        """`step: what … (elapsed)`; with `room`, `what` is cut so that the line fits."""
        step, what, started = running
        tail = f" … ({elapsed(now - started)})"
        if room and what and len(step) + 2 + len(what) + len(tail) > room:
            keep = room - len(step) - 2 - len(tail) - 1
            what = what[:keep] + "…" if keep > 0 else ""
        return f"{step}: {what}{tail}" if what else f"{step}{tail}"

    def _render(self):
        # no self.lock here: Live calls this holding its own lock, which printing under self.lock
        # also takes; copies of the dicts are taken whole under the GIL
        now = self.clock()
        running, current = self.running.copy(), self.current.copy()
        room = self.console.width - max(map(len, current), default=0) - 2
        table = Table.grid(padding=(0, 2))
        for host, state in current.items():
            table.add_row(Text(host, style="bold"),
                          Text(self._doing(running[host], now, room) if host in running else state, style="dim",
                               no_wrap=True, overflow="ellipsis"))
        return Group(table)

    def tick(self) -> None:
        """Plain output: a line for each host whose step has run `plain_every` seconds, at most
        one per host every `plain_every` seconds."""
        now = self.clock()
        with self.lock:
            if self.closed or self.live:
                return
            for host in list(self.running):
                started = self.running[host][2]
                if now - started >= self.plain_every and now - self.last_plain.get(host, -1e9) >= self.plain_every:
                    self.last_plain[host] = now
                    line = Text()
                    line.append(f"{host:<12} ", style="bold")
                    line.append(f"{'running':<8}", style="dim")
                    line.append(f" {self._doing(self.running[host], now)}")
                    self.console.print(line)
            self.console.file.flush()

    def event(self, host: str, kind: str, value) -> None:
        with self.lock:
            if self.closed:
                return
            if kind == "step":
                self.running[host] = (value, "", self.clock())
            elif kind in ("action", "progress") and host in self.running:
                step, _, started = self.running[host]
                self.running[host] = (step, value, started)
            elif kind == "result":
                self.running.pop(host, None)
                self._print_result(host, value)
            elif kind == "done":
                self.running.pop(host, None)
                self.current[host] = "failed" if value.failed else "done"

    def _print_result(self, host: str, result: StepResult) -> None:
        line = Text()
        line.append(f"{host:<12} ", style="bold")
        line.append(f"{result.status:<8}", style=STYLE[result.status])
        line.append(f" {result.step}: {result.message}")
        self.console.print(line)
        if result.warning:
            self.console.print(Text(f"{'':<12} warning: {result.warning}", style="magenta"))
        for diff_line in result.diff.splitlines() if self.show_diffs else []:
            style = "green" if diff_line.startswith("+") else "red" if diff_line.startswith("-") else "dim"
            self.console.print(Text(f"{'':<14}{diff_line}", style=style))
        self.console.file.flush()

    def recap(self, reports: list[HostReport], seconds: float, log_dir: Path) -> None:
        table = Table(title=f"Recap ({seconds:.1f}s)", title_justify="left")
        for column in ("host", OK, CHANGED, FAILED, SKIPPED, "seconds", "failed step / reason"):
            table.add_column(column, justify="right" if column not in ("host", "failed step / reason") else "left")
        for r in reports:
            reason = f"{r.failed_step}: {r.error}" if r.failed else ""
            table.add_row(Text(r.host, style="bold red" if r.failed else "bold"),
                          str(r.count(OK)), str(r.count(CHANGED)),
                          str(r.count(FAILED) or (1 if r.failed else 0)), str(r.count(SKIPPED)),
                          f"{r.seconds:.1f}", Text(reason, style="red"))
        self.console.print(table, soft_wrap=False)
        failed = [r.host for r in reports if r.failed]
        for r in reports:
            if r.failed:
                self.console.print(Text(f"{r.host} failed at {r.failed_step}: {r.error}", style="red"), soft_wrap=True)
        self.console.print(f"logs: {log_dir}/")
        if failed:
            self.console.print(Text(f"{len(failed)} of {len(reports)} host(s) failed: {', '.join(failed)}. "
                                    f"Re-run only those with: fab -H @failed <task>", style="bold red"))
