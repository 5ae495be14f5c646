"""Live progress on a real long step: a first bootstrap of a bare server, its output a pipe."""
import re

import pytest

from tests.integration.helpers import sh

# `gpu1  running  docker.install: apt: unpacking containerd (14 of 59) … (12s)`
PROGRESS = re.compile(r"^(\S+)\s+running\s+(\S+?)(?:: (.*))? … \((?:(\d+)m)?(\d+)s\)$", re.M)


@pytest.fixture(scope="module")
def converged(bootstrapped):
    assert bootstrapped.returncode == 0, bootstrapped.stdout[-2000:]


def progress_lines(stdout: str, host: str) -> list[tuple[str, str, int]]:
    """(step, what, elapsed seconds) of each plain progress line of the host."""
    return [(step, what or "", int(minutes or 0) * 60 + int(seconds))
            for name, step, what, minutes, seconds in PROGRESS.findall(stdout) if name == host]


def command_output(log: str, shown_prefix: str) -> list[tuple[float, str]]:
    """(seconds, output) of each command in a host log whose shown form starts with `shown_prefix`."""
    found = []
    for block in re.split(r"(?m)^(?=\$ )", log):
        if block.startswith(f"$ {shown_prefix}"):
            m = re.search(r"(?m)^# exit -?\d+ in ([0-9.]+)s$", block)
            found.append((float(m.group(1)), block[m.end():]))
    return found


def test_a_first_bootstrap_prints_what_apt_and_docker_do_and_the_log_keeps_all_output(lab, fab, converged,
                                                                                      monkeypatch):
    lab.recreate_server("gpu1")  # bare again: docker.install runs apt for real (and the test leaves it converged)
    monkeypatch.setenv("GPUFLEET_PROGRESS_EVERY", "1")  # the default 10 s, but the machine may be fast
    result = fab("-H", "gpu1", "bootstrap")  # stdout is a pipe: plain lines
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.hosts["gpu1"]["changed"] >= 5
    lines = progress_lines(result.stdout, "gpu1")
    assert lines, result.stdout[-3000:]
    assert all(seconds >= 1 for _, _, seconds in lines)
    for (step, _, before), (next_step, _, after) in zip(lines, lines[1:]):
        if step == next_step:
            assert after >= before + 1  # at most one line a second per host (GPUFLEET_PROGRESS_EVERY=1)

    apt = [what for step, what, _ in lines if step == "docker.install" and what.startswith("apt: ")]
    assert apt, lines
    named = [m.groups() for m in map(re.compile(r"^apt: (downloading|unpacking|setting up) (\S+) ").match, apt) if m]
    assert named, apt

    # the log has the whole apt output, every package named in a progress line among it
    log_dir = re.search(r"^logs: (\S+)/$", result.stdout, re.M).group(1)
    log = (fab.cwd / log_dir / "gpu1.log").read_text()
    (_, install), = command_output(log, "sh -c <script: dpkg --configure -a")
    summary = re.search(r"^(\d+) upgraded, (\d+) newly installed", install, re.M)
    packages = int(summary.group(1)) + int(summary.group(2))
    assert packages > 10
    assert len(re.findall(r"^Unpacking \S+ ", install, re.M)) == packages
    assert len(re.findall(r"^Setting up \S+ ", install, re.M)) == packages
    assert "Setting up docker-ce " in install  # gpu1 takes the docker-ce path (the lab's mirror)
    for verb, package in named:
        if verb == "downloading":
            assert re.search(rf"^Get:\d+ \S+ \S+ \S+ {re.escape(package)}[: ]", install, re.M), package
        else:
            assert re.search(rf"^{verb.capitalize()} {re.escape(package)}[: ]", install, re.M), package
    assert sh(lab, "gpu1", "dpkg-query -W -f '${Status}' docker-ce")[1] == "install ok installed"

    # docker pull: a pull that took 3 s or more had ticks while its output was there to show
    (pull_seconds, pull), = command_output(log, "docker pull")
    assert "Status: Downloaded newer image for pytorch/pytorch:" in pull
    if pull_seconds >= 3:
        assert any(step == "containers.run" and what.startswith("docker pull pytorch/pytorch:")
                   for step, what, _ in lines), lines

    again = fab("-H", "gpu1", "bootstrap")
    assert again.returncode == 0 and again.hosts["gpu1"]["changed"] == 0
    assert not [line for line in progress_lines(again.stdout, "gpu1") if line[1]], again.stdout[-3000:]
