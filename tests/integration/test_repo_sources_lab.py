"""Sources as the releases write them, on a lab server (gpu3, Debian 13): a docker.list (and NVIDIA's
nvidia-container-toolkit.list) written by hand the way the install guides say is replaced by the tool's
deb822 .sources file, kept as *.gpufleet.bak; apt then reads each repository once, and a second run
changes nothing."""
from __future__ import annotations

import shlex
import tomllib

import pytest

from tests.integration.helpers import sh

SOURCES_D = "/etc/apt/sources.list.d"


def defaults(lab) -> dict:
    return tomllib.loads(lab.inventory_path.read_text())["defaults"]


def apt_update(lab, host: str) -> str:
    proxy = shlex.quote(f"Acquire::http::Proxy={defaults(lab)['apt_proxy']}")
    code, out = sh(lab, host, f"LC_ALL=C apt-get -q -o {proxy} update 2>&1")
    assert code == 0, out
    return out


@pytest.fixture(scope="module")
def replaced(lab, fab):
    """gpu3 made bare, the repos added by hand as the guides do, then the tool's stages: a dry run, then
    each stage twice."""
    lab.recreate_server("gpu3")
    docker, nvidia = defaults(lab)["docker_mirror"], defaults(lab).get("nvidia_mirror", "")
    hand = {"docker.list": f"deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] {docker}/debian trixie stable\n"}
    script = ["set -e", "install -m 0755 -d /etc/apt/keyrings",
              f"curl -fsS {docker}/debian/gpg -o /etc/apt/keyrings/docker.asc"]
    if nvidia:
        hand["nvidia-container-toolkit.list"] = (
            f"deb [signed-by=/etc/apt/keyrings/nvidia-container-toolkit.asc] {nvidia}/stable/deb/$(ARCH) /\n")
        script.append(f"curl -fsS {nvidia}/gpgkey -o /etc/apt/keyrings/nvidia-container-toolkit.asc")
    for name, line in hand.items():
        script.append(f"printf %s {shlex.quote(line)} > {SOURCES_D}/{name}")
    code, out = sh(lab, "gpu3", "\n".join(script))
    assert code == 0, out
    before = sh(lab, "gpu3", f"ls {SOURCES_D}")[1]
    dry = fab("-H", "gpu3", "docker.install", "--dry-run")
    after_dry = sh(lab, "gpu3", f"ls {SOURCES_D}")[1]
    tasks = ["docker.install"] + (["nvidia.install"] if nvidia else [])
    runs = {task: (fab("-H", "gpu3", task), fab("-H", "gpu3", task)) for task in tasks}
    return hand, before, dry, after_dry, runs


def test_the_dry_run_shows_the_removal_and_the_new_file_as_diffs_and_changes_nothing(lab, replaced):
    hand, before, dry, after_dry, _ = replaced
    assert dry.returncode == 0, dry.stdout[-3000:]
    step = next(s for s in dry.hosts["gpu3"]["steps"] if s["step"] == "docker.install")
    assert (f"remove {SOURCES_D}/docker.list (Docker's repository goes into {SOURCES_D}/docker.sources; "
            "kept as docker.list.gpufleet.bak)") in step["message"], step
    assert f"-{hand['docker.list']}" in step["diff"] and "+Types: deb\n" in step["diff"], step["diff"]
    assert before == after_dry and "docker.list" in before.split()


def test_the_one_line_lists_are_replaced_then_nothing_changes(lab, replaced):
    hand, _, _, _, runs = replaced
    for task, (first, second) in runs.items():
        assert first.returncode == 0 and first.hosts["gpu3"]["changed"] >= 1, first.stdout[-3000:]
        assert second.returncode == 0 and second.hosts["gpu3"]["changed"] == 0, second.stdout[-3000:]
    listed = sorted(set(sh(lab, "gpu3", f"ls {SOURCES_D}")[1].split()) - {"debian.sources"})  # the server's own
    expected = sorted([f"{name}.gpufleet.bak" for name in hand] + [name.replace(".list", ".sources") for name in hand])
    assert listed == expected, listed
    for name, line in hand.items():  # the user's file, kept as it was
        assert sh(lab, "gpu3", f"cat {SOURCES_D}/{name}.gpufleet.bak")[1] + "\n" == line
    code, out = sh(lab, "gpu3", f"cat {SOURCES_D}/docker.sources")
    assert f"URIs: {defaults(lab)['docker_mirror']}/debian\nSuites: trixie\n" in out, out


def test_apt_reads_each_repository_once_and_cleanly(lab, replaced):
    out = apt_update(lab, "gpu3")
    problems = [line for line in out.splitlines() if line.startswith(("W:", "E:", "Err:", "N:"))]
    assert problems == [], out
    assert "configured multiple times" not in out
    code, policy = sh(lab, "gpu3", "LC_ALL=C apt-cache policy docker-ce")
    assert policy.count(f"500 {defaults(lab)['docker_mirror']}/debian trixie/stable amd64 Packages") >= 1, policy
    assert "Installed: (none)" not in policy, policy


def test_with_the_one_line_list_beside_it_apt_would_warn(lab, replaced):
    """What the replacement spares: the hand-written docker.list put back beside docker.sources makes apt
    warn that the repository is configured twice (then it is set aside again)."""
    sh(lab, "gpu3", f"cp {SOURCES_D}/docker.list.gpufleet.bak {SOURCES_D}/docker.list")
    try:
        out = apt_update(lab, "gpu3")
    finally:
        sh(lab, "gpu3", f"rm -f {SOURCES_D}/docker.list")
    assert "configured multiple times" in out, out
