"""What a long command is doing, read from its output so far.

The parsers are pure, `parse(output) -> text`: apt-get's own lines (`Get:N ...`,
`Unpacking X`, `Setting up X`), `docker pull` without a terminal (one status line per
layer change: no byte counts), and the data-root copy's lines (`COPY_*` below).
`describe` picks the parser by the last line it recognises.  `OutputWatcher` feeds a
running command's output to `describe`, at most every half second.
"""
from __future__ import annotations

import re
import threading
import time
from typing import Callable

_APT_GET = re.compile(r"^Get:(\d+) (\S+) (.*?)(?: \[([^\]]+)\])?$")
_APT_SUMMARY = re.compile(r"^(\d+) upgraded, (\d+) newly installed, ")
_APT_UNPACK = re.compile(r"^Unpacking (\S+) ")
_APT_SETUP = re.compile(r"^Setting up (\S+) ")
_APT_TRIGGERS = re.compile(r"^Processing triggers for (\S+) ")
_APT_READING = re.compile(r"^Reading package lists")

_PULL_FROM = re.compile(r"^(\S+): Pulling from (\S+)$")
_PULL_LAYER = re.compile(r"^([0-9a-f]{12}): (.+)$")
_PULL_STATUS = re.compile(r"^Status: (.+)$")
_LAYER_DONE = ("Pull complete", "Already exists")

# printed by the data-root copy in tasks/docker.py (sizes from `du -sm`)
COPY_START = "copying {source} to {target}: {megabytes} MB"
COPY_DONE_SO_FAR = "copied {megabytes} MB"
_COPY_START = re.compile(r"^copying (\S.*) to (\S.*): (\d+) MB$")
_COPY_SO_FAR = re.compile(r"^copied (\d+) MB$")


def lines(output: str) -> list[str]:
    """Output lines; a carriage return (a progress counter redrawn in place) ends a line too."""
    return [l.strip() for l in re.split(r"[\r\n]+", output) if l.strip()]


def _package(name: str) -> str:
    return name.split(":", 1)[0]  # libc6:amd64 -> libc6


def apt(output: str) -> str:
    """apt-get update/install: the package fetched, unpacked or set up, and how far along ("12 of 59")."""
    total, after_summary, unpacked, set_up, last = None, False, 0, 0, ""
    for line in lines(output):
        m = _APT_SUMMARY.match(line)
        if m:
            total, after_summary, unpacked, set_up = int(m.group(1)) + int(m.group(2)), True, 0, 0
            last = f"{total} package(s) to install or upgrade" if total else "nothing to install"
            continue
        m = _APT_GET.match(line)
        if m:
            number, what, size = m.group(1), m.group(3).split(), m.group(4)
            if after_summary and len(what) >= 4:  # SUITE/COMPONENT ARCH PACKAGE ARCH VERSION
                of = f" of {total}" if total else ""
                last = f"downloading {_package(what[2])}" + (f" [{size}]" if size else "") + f" ({number}{of})"
            else:  # apt-get update: an index
                last = f"apt-get update: {' '.join(what)}" + (f" [{size}]" if size else "")
            continue
        m = _APT_UNPACK.match(line)
        if m:
            unpacked += 1
            last = f"unpacking {_package(m.group(1))} ({unpacked}{f' of {total}' if total else ''})"
            continue
        m = _APT_SETUP.match(line)
        if m:
            set_up += 1
            last = f"setting up {_package(m.group(1))} ({set_up}{f' of {total}' if total else ''})"
            continue
        m = _APT_TRIGGERS.match(line)
        if m:
            last = f"processing triggers for {_package(m.group(1))}"
            continue
        if _APT_READING.match(line) and not after_summary:
            last = "reading package lists"
    return f"apt: {last}" if last else ""


def docker_pull(output: str) -> str:
    """`docker pull` without a terminal: layers complete of layers seen, then the final status."""
    image, layers, status = "", {}, ""
    for line in lines(output):
        m = _PULL_FROM.match(line)
        if m:
            image = f"{m.group(2)}:{m.group(1)}"
            continue
        m = _PULL_LAYER.match(line)
        if m:
            layers[m.group(1)] = m.group(2)
            continue
        m = _PULL_STATUS.match(line)
        if m:
            status = m.group(1)
    if status:
        return f"docker pull: {status[0].lower()}{status[1:]}"
    if not image and not layers:
        return ""
    text = f"docker pull{' ' + image if image else ''}"
    if not layers:
        return text
    done = sum(1 for s in layers.values() if s in _LAYER_DONE)
    fresh = sum(1 for s in layers.values() if s != "Already exists")
    downloaded = sum(1 for s in layers.values() if s in ("Download complete", "Pull complete"))
    text += f": {done} of {len(layers)} layers complete"
    if downloaded < fresh:
        return text + f", {downloaded} of {fresh} downloaded"
    return text + (", extracting" if done < len(layers) else "")


def data_root_copy(output: str) -> str:
    """The data-root copy: megabytes copied so far of the source's size (both from `du -sm`)."""
    source = target = total = None
    so_far = None
    for line in lines(output):
        m = _COPY_START.match(line)
        if m:
            source, target, total, so_far = m.group(1), m.group(2), int(m.group(3)), None
            continue
        m = _COPY_SO_FAR.match(line)
        if m:
            so_far = int(m.group(1))
    if source is None:
        return ""
    if so_far is None:
        return f"copying {source} to {target} ({total} MB)"
    return f"copying {source} to {target}: {so_far} of {total} MB"


_KINDS: list[tuple[tuple[re.Pattern, ...], Callable[[str], str]]] = [
    ((_APT_GET, _APT_SUMMARY, _APT_UNPACK, _APT_SETUP, _APT_TRIGGERS, _APT_READING), apt),
    ((_PULL_FROM, _PULL_LAYER, _PULL_STATUS), docker_pull),
    ((_COPY_START, _COPY_SO_FAR), data_root_copy),
]


def describe(output: str) -> str:
    """One short line: what the command whose output this is was doing last; '' when unknown."""
    for line in reversed(lines(output)):
        for patterns, parse in _KINDS:
            if any(p.match(line) for p in patterns):
                return parse(output)
    return ""


class OutputWatcher:
    """Collects a running command's output and reports `describe(output)` when it changes.

    apt writes hundreds of lines a second, so the output is parsed at most every `interval`
    seconds; what arrived in between is parsed once the interval is over (a timer), so that
    the last lines before a quiet spell (a long layer download) are the ones shown."""

    def __init__(self, report: Callable[[str], None], interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic):
        self.report, self.interval, self.clock = report, interval, clock
        self.chunks: list[str] = []
        self.last_parse: float | None = None
        self.shown = ""
        self.timer: threading.Timer | None = None
        self.lock = threading.Lock()
        self.closed = False

    def __call__(self, text: str) -> None:
        with self.lock:
            self.chunks.append(text)
            now = self.clock()
            if self.last_parse is None or now - self.last_parse >= self.interval:
                self._parse(now)
            elif self.timer is None:
                self.timer = threading.Timer(self.interval - (now - self.last_parse), self._later)
                self.timer.daemon = True
                self.timer.start()

    def _later(self) -> None:
        with self.lock:
            self.timer = None
            if not self.closed:
                self._parse(self.clock())

    def _parse(self, now: float) -> None:
        self.last_parse = now
        what = describe("".join(self.chunks))
        if what and what != self.shown:
            self.shown = what
            self.report(what)

    def close(self) -> None:
        """The command ended: no late report."""
        with self.lock:
            self.closed = True
            if self.timer:
                self.timer.cancel()
                self.timer = None
