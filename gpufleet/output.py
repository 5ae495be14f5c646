"""What the user sees: a live line per host, each step's result, and the recap."""
from __future__ import annotations

import threading
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gpufleet.plan import CHANGED, FAILED, OK, SKIPPED, HostReport, StepResult

STYLE = {OK: "green", CHANGED: "yellow", FAILED: "bold red", SKIPPED: "cyan"}


def make_console() -> Console:
    """The terminal's width on a terminal; wide enough for tables in logs and pipes."""
    plain = Console()
    return Console(highlight=False, soft_wrap=True, width=None if plain.is_terminal else 160)


class Display:
    """Thread-safe progress display; plain lines when the output is not a terminal."""

    def __init__(self, hosts: list[str], title: str, console: Console | None = None, show_diffs: bool = False):
        self.show_diffs = show_diffs
        self.console = console or make_console()
        self.title = title
        self.current = {h: "waiting" for h in hosts}
        self.lock = threading.Lock()
        self.closed = False  # after Ctrl-C: hosts still winding down print nothing more
        self.live = Live(self._render(), console=self.console, refresh_per_second=8, transient=True,
                         redirect_stdout=False, redirect_stderr=False) if self.console.is_terminal else None

    def __enter__(self):
        self.console.print(Text(self.title, style="bold"))
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.stop()

    def _render(self):
        table = Table.grid(padding=(0, 2))
        for host, step in self.current.items():
            table.add_row(Text(host, style="bold"), Text(step, style="dim"))
        return Group(table)

    def event(self, host: str, kind: str, value) -> None:
        with self.lock:
            if self.closed:
                return
            if kind == "step":
                self.current[host] = f"{value} …"
            elif kind == "action":
                self.current[host] = f"{value} …"
            elif kind == "result":
                self._print_result(host, value)
            elif kind == "done":
                self.current[host] = "failed" if value.failed else "done"
            if self.live:
                self.live.update(self._render())

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
