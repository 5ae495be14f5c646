"""Live progress: the parsers on real captured outputs, the watcher, the display's plain-line
throttling (a hand-driven clock, no waiting), and output that streams while a command runs."""
import io
import re
import threading
from pathlib import Path

import pytest
from rich.console import Console

from gpufleet import progress
from gpufleet.output import Display, elapsed
from gpufleet.plan import OK, HostReport, StepResult
from gpufleet.remote import LocalSession, Script
from tests import loopback

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "progress"  # see CAPTURED.md there


def output(name: str, through: str | None = None) -> str:
    """A captured output, cut after the first line that contains `through` (what had arrived then)."""
    text = (FIXTURES / name).read_text()
    if through is None:
        return text
    lines = text.splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if through in line)
    return "".join(lines[:cut + 1])


APT = "apt-update-install-docker-io.txt"
INSIDE = "apt-update-install-in-container.txt"
PULL = "docker-pull-layers.txt"


@pytest.mark.parametrize("name, through, expected", [
    # apt-get update, then apt-get install docker.io on a bare lab server (Debian 12, through apt-cacher-ng)
    (APT, "Get:1 http://deb.debian.org/debian bookworm InRelease", "apt: apt-get update: bookworm InRelease [151 kB]"),
    (APT, "Get:4 ", "apt: apt-get update: bookworm/main amd64 Packages [8790 kB]"),
    (APT, "Fetched 15.8 MB", "apt: apt-get update: bookworm-security/main Translation-en [241 kB]"),
    (APT, "Reading package lists...", "apt: reading package lists"),
    (APT, "The following NEW packages", "apt: reading package lists"),
    (APT, "57 newly installed", "apt: 59 package(s) to install or upgrade"),
    (APT, "Get:1 http://deb.debian.org/debian-security bookworm-security/main amd64 perl-base",
     "apt: downloading perl-base [1610 kB] (1 of 59)"),
    (APT, "docker.io amd64 20.10.24", "apt: downloading docker.io [36.3 MB] (22 of 59)"),
    (APT, "Unpacking perl-base", "apt: unpacking perl-base (1 of 59)"),
    (APT, "Setting up perl-base", "apt: setting up perl-base (1 of 59)"),
    (APT, "Unpacking libdbus-1-3:amd64", "apt: unpacking libdbus-1-3 (2 of 59)"),
    (APT, "Unpacking docker.io", "apt: unpacking docker.io (22 of 59)"),
    (APT, "(Reading database ... 12090 files", "apt: setting up liblzma5 (2 of 59)"),
    (APT, "Setting up docker.io", "apt: setting up docker.io (47 of 59)"),
    (APT, "Created symlink /etc/systemd/system/sockets.target.wants", "apt: setting up docker.io (47 of 59)"),
    (APT, None, "apt: processing triggers for libc-bin"),
    # inside a container (docker exec), --no-install-recommends
    (INSIDE, "0 upgraded, 4 newly installed", "apt: 4 package(s) to install or upgrade"),
    (INSIDE, "Get:3 http://deb.debian.org/debian bookworm/main amd64 htop", "apt: downloading htop [152 kB] (3 of 4)"),
    (INSIDE, "Unpacking tree", "apt: unpacking tree (4 of 4)"),
    (INSIDE, "Setting up libnl-3-200", "apt: setting up libnl-3-200 (2 of 4)"),
    ("apt-install-nothing-to-do.txt", None, "apt: nothing to install"),
    ("apt-update-unchanged.txt", None, "apt: reading package lists"),
    # docker pull without a terminal (Docker 20.10's CLI on a lab server, through the lab's Hub mirror)
    (PULL, "Pulling from", "docker pull pytorch/pytorch:t6-layers"),
    (PULL, "Already exists", "docker pull pytorch/pytorch:t6-layers: 1 of 1 layers complete"),
    (PULL, "dae7c7e65ebb: Waiting", "docker pull pytorch/pytorch:t6-layers: 1 of 5 layers complete, 0 of 4 downloaded"),
    (PULL, "c53a894521c3: Download complete",
     "docker pull pytorch/pytorch:t6-layers: 1 of 5 layers complete, 2 of 4 downloaded"),
    (PULL, "dae7c7e65ebb: Download complete", "docker pull pytorch/pytorch:t6-layers: 1 of 5 layers complete, extracting"),
    (PULL, "f696e7cb1a36: Pull complete", "docker pull pytorch/pytorch:t6-layers: 3 of 5 layers complete, extracting"),
    (PULL, "dae7c7e65ebb: Pull complete", "docker pull pytorch/pytorch:t6-layers: 5 of 5 layers complete"),
    (PULL, None, "docker pull: downloaded newer image for pytorch/pytorch:t6-layers"),
    ("docker-pull-one-layer.txt", "Pulling fs layer",
     "docker pull pytorch/pytorch:lab-bookworm: 0 of 1 layers complete, 0 of 1 downloaded"),
    ("docker-pull-up-to-date.txt", None, "docker pull: image is up to date for pytorch/pytorch:t6-layers"),
    # Docker 28.2's CLI prints the same lines (no byte counts either)
    ("docker28-cli-pull-layers.txt", "c53a894521c3: Pull complete",
     "docker pull pytorch/pytorch:t6-layers: 2 of 5 layers complete, 3 of 4 downloaded"),
    # the data-root copy (tasks/docker.py copy_script) on a lab server
    ("data-root-copy.txt", "copying", "copying /data/docker to /data/docker2 (739 MB)"),
    ("data-root-copy.txt", None, "copying /data/docker to /data/docker2: 344 of 739 MB"),
])
def test_what_a_command_is_doing_from_its_output_so_far(name, through, expected):
    assert progress.describe(output(name, through)) == expected


def test_output_nothing_recognises_says_nothing():
    assert progress.describe("") == ""
    assert progress.describe("hello\nworld\n") == ""
    assert progress.describe(output(APT).replace("Get:", "Got:").replace("Unpacking", "Unpack").replace(
        "Setting up", "Set").replace("Processing triggers", "P").replace("newly installed", "new").replace(
        "Reading package lists", "R")) == ""


def test_no_byte_counts_in_docker_pull_output_without_a_terminal():
    for name in ("docker-pull-layers.txt", "docker28-cli-pull-layers.txt", "docker-pull-one-layer.txt"):
        assert not any(unit in output(name) for unit in ("MB", "kB", "GB")), name


def test_the_copy_lines_the_data_root_copy_prints_are_the_ones_parsed():
    start = progress.COPY_START.format(source="/var/lib/docker", target="/data/d", megabytes=12)
    assert progress.data_root_copy(start + "\n" + progress.COPY_DONE_SO_FAR.format(megabytes=5) + "\n") == \
        "copying /var/lib/docker to /data/d: 5 of 12 MB"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_watcher_parses_at_most_once_per_interval_and_reports_changes_only():
    clock, reports = Clock(), []
    # an interval no real timer reaches during the test: only what arrives after it is parsed
    watcher = progress.OutputWatcher(reports.append, interval=3600, clock=clock)
    lines = output(INSIDE).splitlines(keepends=True)
    watcher(lines[0])
    assert reports == ["apt: apt-get update: bookworm InRelease [151 kB]"]
    for line in lines[1:20]:
        watcher(line)
    assert len(reports) == 1 and watcher.timer is not None  # parsed later, once
    clock.now += 3600
    watcher(lines[20])
    assert reports[-1] == "apt: downloading tree [52.5 kB] (4 of 4)"
    clock.now += 3600
    watcher("")
    assert len(reports) == 2  # the same text again is not reported
    watcher.close()
    assert watcher.timer is None


def test_the_watcher_reports_what_arrived_in_the_interval_once_it_is_over():
    reports, done = [], threading.Event()
    watcher = progress.OutputWatcher(lambda text: (reports.append(text), done.set()), interval=0.05)
    watcher("Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]\n")
    done.clear()
    watcher("Reading package lists...\n")
    assert done.wait(30)  # the timer's parse, not a new chunk, reports it
    assert reports == ["apt: apt-get update: bookworm InRelease [151 kB]", "apt: reading package lists"]
    watcher.close()


@pytest.mark.parametrize("seconds, shown", [(0, "0s"), (9.9, "9s"), (59, "59s"), (60, "1m00s"), (125, "2m05s"),
                                            (3599, "59m59s"), (3720, "1h02m")])
def test_elapsed(seconds, shown):
    assert elapsed(seconds) == shown


def plain_display(hosts, clock):
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200, highlight=False)
    return Display(hosts, "bootstrap", console=console, clock=clock), out


def printed(out: io.StringIO) -> list[str]:
    lines = out.getvalue().splitlines()
    out.seek(0)
    out.truncate()
    return lines


def test_plain_progress_lines_come_after_10s_of_a_step_then_at_most_every_10s_per_host():
    clock = Clock()
    display, out = plain_display(["gpu1", "gpu2"], clock)
    display.event("gpu1", "step", "docker.install")
    display.event("gpu2", "step", "apt.proxy")
    display.tick()
    clock.now += 9
    display.event("gpu1", "action", "install docker.io from the OS archive")
    display.tick()
    assert printed(out) == []  # nothing runs long yet
    clock.now += 1
    display.event("gpu2", "result", StepResult("apt.proxy", OK, "apt proxy already http://x:3142"))
    display.event("gpu2", "step", "docker.install")
    display.tick()
    assert printed(out) == ["gpu2         ok       apt.proxy: apt proxy already http://x:3142",
                            "gpu1         running  docker.install: install docker.io from the OS archive … (10s)"]
    for _ in range(9):  # many ticks and progress events in the next 10 s: no line
        clock.now += 1
        display.event("gpu1", "progress", "apt: unpacking docker.io (21 of 59)")
        display.tick()
    assert printed(out) == []
    clock.now += 1  # gpu1 at 20 s, gpu2's step at 10 s
    display.event("gpu1", "progress", "apt: setting up docker.io (47 of 59)")
    display.tick()
    display.tick()
    assert printed(out) == ["gpu1         running  docker.install: apt: setting up docker.io (47 of 59) … (20s)",
                            "gpu2         running  docker.install … (10s)"]
    display.event("gpu1", "result", StepResult("docker.install", OK, "done"))
    assert printed(out) == ["gpu1         ok       docker.install: done"]
    clock.now += 60
    display.event("gpu2", "done", HostReport("gpu2"))
    display.tick()
    assert printed(out) == []  # no step runs: nothing more


def test_a_step_shorter_than_10s_prints_no_progress_line():
    clock = Clock()
    display, out = plain_display(["gpu1"], clock)
    for step in ("apt.proxy", "docker.install", "docker.service"):
        display.event("gpu1", "step", step)
        for _ in range(9):
            clock.now += 1
            display.event("gpu1", "progress", "apt: unpacking x (1 of 2)")
            display.tick()
        display.event("gpu1", "result", StepResult(step, OK, "fine"))
    assert [l for l in printed(out) if "running" in l] == []


def test_on_a_terminal_the_live_line_shows_step_what_and_elapsed_and_no_plain_lines():
    clock, out = Clock(), io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, highlight=False, color_system=None)
    display = Display(["gpu1", "gpu2"], "bootstrap", console=console, clock=clock)
    display.event("gpu1", "step", "containers.run")
    display.event("gpu1", "progress", "docker pull pytorch/pytorch:t6-layers: 1 of 5 layers complete")
    clock.now += 75
    display.tick()
    assert out.getvalue() == ""
    rendered = Console(file=io.StringIO(), width=200, color_system=None)
    rendered.print(display._render())
    assert [line.rstrip() for line in rendered.file.getvalue().splitlines()] == [
        "gpu1  containers.run: docker pull pytorch/pytorch:t6-layers: 1 of 5 layers complete … (1m15s)",
        "gpu2  waiting"]


STREAMING = ("echo first; i=0; while [ ! -e {flag} ]; do i=$((i+1)); [ $i -gt 600 ] && exit 9; sleep 0.05; done; "
             "echo second")


def streamed(session, flag: Path):
    """Run a command that prints `second` only once the callback saw `first` (it makes the flag file):
    it ends (exit 0) only if output arrives while it runs."""
    seen = []

    def on_output(text):
        seen.append(text)
        if "first" in "".join(seen):
            flag.touch()
    result = session.run(Script(STREAMING.format(flag=flag)), on_output=on_output, check=False)
    return result, "".join(seen)


def test_a_local_command_streams_its_stdout_to_the_callback_while_it_runs(tmp_path):
    session = LocalSession("ws", tmp_path / "ws.log")
    result, seen = streamed(session, tmp_path / "flag")
    session.close()
    assert result.exit_code == 0 and result.stdout == "first\nsecond\n" and seen == "first\nsecond\n"
    assert "first\nsecond\n" in (tmp_path / "ws.log").read_text()  # and the log still has all of it


@pytest.mark.skipif(not loopback.available(), reason="needs root and OpenSSH's sshd")
def test_an_ssh_command_streams_its_stdout_to_the_callback_while_it_runs(tmp_path):
    from fabric import Connection
    from gpufleet.remote import SshSession
    key = loopback.keygen(tmp_path / "id_ed25519")
    sshd = loopback.LoopbackSshd(tmp_path / "sshd", Path(f"{key}.pub"))
    try:
        session = SshSession("a", Connection("127.0.0.1", user="root", port=sshd.port,
                                             connect_kwargs={"key_filename": str(key)}), tmp_path / "a.log")
        result, seen = streamed(session, tmp_path / "flag")
        session.close()
    finally:
        sshd.stop()
    assert result.exit_code == 0 and result.stdout == "first\nsecond\n" and seen == "first\nsecond\n"
    assert "first\nsecond\n" in (tmp_path / "a.log").read_text()


def test_on_a_narrow_terminal_the_live_line_cuts_what_and_keeps_the_elapsed_time():
    clock = Clock()
    console = Console(file=io.StringIO(), force_terminal=True, width=60, color_system=None)
    display = Display(["gpu1"], "bootstrap", console=console, clock=clock)
    display.event("gpu1", "step", "docker.install")
    display.event("gpu1", "progress", "apt: downloading dbus-session-bus-common [78.2 kB] (4 of 59)")
    clock.now += 12
    rendered = Console(file=io.StringIO(), width=60, color_system=None)
    rendered.print(display._render())
    assert [line.rstrip() for line in rendered.file.getvalue().splitlines()] == [
        "gpu1  docker.install: apt: downloading dbus-session… … (12s)"]  # 60 columns


@pytest.mark.parametrize("value, seconds", [(None, 10.0), ("", 10.0), ("2", 2.0), (" 0.5 ", 0.5), ("30", 30.0)])
def test_the_plain_progress_interval_is_10s_or_the_environments(monkeypatch, value, seconds):
    from gpufleet.output import plain_progress_every
    if value is None:
        monkeypatch.delenv("GPUFLEET_PROGRESS_EVERY", raising=False)
    else:
        monkeypatch.setenv("GPUFLEET_PROGRESS_EVERY", value)
    assert plain_progress_every() == seconds


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "inf", "1e9"])
def test_a_bad_plain_progress_interval_is_one_line_naming_the_variable(monkeypatch, value):
    from gpufleet.errors import InputError
    from gpufleet.output import plain_progress_every
    monkeypatch.setenv("GPUFLEET_PROGRESS_EVERY", value)
    with pytest.raises(InputError, match=r"^GPUFLEET_PROGRESS_EVERY: expected seconds between progress lines "
                                         r"\(a number > 0\), got '.*'$"):
        plain_progress_every()


def test_plain_progress_lines_follow_the_interval_given():
    clock = Clock()
    out = io.StringIO()
    display = Display(["gpu1"], "bootstrap", console=Console(file=out, force_terminal=False, width=200),
                      clock=clock, plain_every=2)
    display.event("gpu1", "step", "docker.install")
    shown = []
    for _ in range(7):
        clock.now += 1
        display.tick()
        shown += printed(out)
    assert shown == [f"gpu1         running  docker.install … ({s}s)" for s in (2, 4, 6)]


def test_the_data_root_copy_says_its_size_copies_hard_links_and_ends_its_poller(tmp_path):
    import os
    from tasks.docker import copy_script
    old, new = tmp_path / "old root", tmp_path / "new root"
    (old / "overlay2" / "l1").mkdir(parents=True)
    (old / "overlay2" / "l1" / "blob").write_bytes(b"x" * 3_000_000)
    os.link(old / "overlay2" / "l1" / "blob", old / "overlay2" / "hard")
    session = LocalSession("ws")
    # `true` instead of stopping Docker; a poller left behind would hold stdout: the run would time out (124)
    result = session.run(copy_script(str(old), str(new), stop="true"), timeout=60, check=False)
    assert result.exit_code == 0, result.stderr
    assert re.fullmatch(rf"copying {re.escape(str(old))} to {re.escape(str(new))}: [34] MB\n", result.stdout)
    assert progress.describe(result.stdout).startswith(f"copying {old} to {new} (")
    assert (new / "overlay2" / "l1" / "blob").stat().st_ino == (new / "overlay2" / "hard").stat().st_ino
    missing = session.run(copy_script(str(tmp_path / "absent"), str(tmp_path / "n2"), stop="true"), timeout=60,
                          check=False)
    assert missing.exit_code != 0 and not (tmp_path / "n2" / "overlay2").exists()
