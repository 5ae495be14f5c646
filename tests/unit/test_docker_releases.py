"""Releases: which docker-ce each one gets and why (os-release fixtures and apt-cache policy captures),
and one line for a release the tool does not know."""
import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from gpufleet import apt_policy, apt_repo, facts, inventory
from gpufleet.errors import FleetError
from gpufleet.paths import DOCKER_KEYRING, DOCKER_SOURCES, probe_request
from gpufleet.plan import HostContext
from gpufleet.remote import LocalSession
from tasks import docker

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
POLICY = FIXTURES / "apt_policy"
KEY = FIXTURES / "openpgp" / "rsa3072-with-subkeys.asc"
KEY_FINGERPRINT = "0D816186420A7329C0C61E8C11797716AACD5550"
section = facts.frame

# capture → package, installed, candidate, (newest version, the URIs that serve it)
POLICIES = [
    ("focal-docker-ce-from-docker.txt", "docker-ce", "", "5:28.1.1-1~ubuntu.20.04~focal",
     ("5:28.1.1-1~ubuntu.20.04~focal", ["https://download.docker.com/linux/ubuntu"])),
    ("focal-docker-ce-installed.txt", "docker-ce", "5:28.1.1-1~ubuntu.20.04~focal", "5:28.1.1-1~ubuntu.20.04~focal",
     ("5:28.1.1-1~ubuntu.20.04~focal", ["https://mirrors.tuna.tsinghua.edu.cn/docker-ce/linux/ubuntu",
                                        "/var/lib/dpkg/status"])),
    ("bionic-docker-ce-from-docker.txt", "docker-ce", "", "5:24.0.7-1~ubuntu.18.04~bionic",
     ("5:24.0.7-1~ubuntu.18.04~bionic", ["https://download.docker.com/linux/ubuntu"])),
    ("resolute-docker-ce-from-docker.txt", "docker-ce", "", "5:29.1.3-1~ubuntu.26.04~resolute",
     ("5:29.1.3-1~ubuntu.26.04~resolute", ["https://download.docker.com/linux/ubuntu"])),
    ("no-repo-yet.txt", "", "", "", None),
]


@pytest.mark.parametrize("name,package,installed,candidate,newest", [p for p in POLICIES], ids=[p[0] for p in POLICIES])
def test_parse_policy(name, package, installed, candidate, newest):
    policy = apt_policy.parse_policy((POLICY / name).read_text())
    assert (policy.package, policy.installed, policy.candidate) == (package, installed, candidate)
    assert (policy.versions[0][0], policy.served_by(policy.versions[0][0])) == newest if newest else not policy.versions


def plan(os_release: str, policy: str | None, installed=("curl", "ca-certificates"),
         mirror="https://download.docker.com/linux", files=None):
    inv = inventory.loads(f'[defaults]\ndocker_source = "docker-ce"\ndocker_mirror = "{mirror}"\n'
                          f'docker_key_fingerprint = "{KEY_FINGERPRINT}"\n[hosts.gpu1]\naddress = "10.0.0.1"\n')
    ctx = HostContext(inv.host("gpu1"), inv, LocalSession(), dry_run=True)
    text = (section("os_release", (FIXTURES / "osinfo" / os_release).read_text())
            + section("arch", "amd64") + section("systemd", "")
            + section("packages", "".join(f"{p}\tii \t1.0\n" for p in installed)))
    if policy:
        text += section("docker_ce_policy", (POLICY / policy).read_text())
    request = probe_request(ctx)
    for i, path in enumerate(request.files):
        if path in (files or {}):
            text += section(f"file:{i}", f"644 root root\n{base64.b64encode(files[path]).decode()}")
    ctx._facts = facts.parse_probe(text, request)
    return docker.plan_install(ctx)


CE = "install docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin from "
# os-release, apt-cache policy (None: apt has not read Docker's repository yet), mirror → the install action
INSTALLS = [
    ("ubuntu-20.04-crlf-quotes.os-release", None, "https://download.docker.com/linux",
     CE + "https://download.docker.com/linux (the newest docker-ce its repository has for this release: "
          "Docker builds no docker-ce after 28.1 for Ubuntu 20.04 (focal))"),
    ("ubuntu-20.04-crlf-quotes.os-release", "focal-docker-ce-from-docker.txt", "https://download.docker.com/linux",
     CE + "https://download.docker.com/linux (docker-ce 5:28.1.1-1~ubuntu.20.04~focal, the newest its repository has "
          "for this release: Docker builds no docker-ce after 28.1 for Ubuntu 20.04 (focal))"),
    # apt's candidate comes from a mirror's upstream (a hand-written docker.list): the same repository
    ("ubuntu-20.04-crlf-quotes.os-release", "focal-docker-ce-from-docker.txt", "https://mirrors.example.invalid/docker-ce/linux",
     CE + "https://mirrors.example.invalid/docker-ce/linux (docker-ce 5:28.1.1-1~ubuntu.20.04~focal, the newest its "
          "repository has for this release: Docker builds no docker-ce after 28.1 for Ubuntu 20.04 (focal))"),
    # ... from another repository: no version is claimed
    ("ubuntu-20.04-crlf-quotes.os-release", "focal-docker-ce-installed.txt", "https://mirrors.example.invalid/docker-ce/linux",
     CE + "https://mirrors.example.invalid/docker-ce/linux (the newest docker-ce its repository has for this "
          "release: Docker builds no docker-ce after 28.1 for Ubuntu 20.04 (focal))"),
    ("ubuntu-18.04.os-release", "bionic-docker-ce-from-docker.txt", "https://download.docker.com/linux",
     CE + "https://download.docker.com/linux (docker-ce 5:24.0.7-1~ubuntu.18.04~bionic, the newest its repository "
          "has for this release: Docker builds no docker-ce after 24.0 for Ubuntu 18.04 (bionic))"),
    ("ubuntu-26.04.os-release", "resolute-docker-ce-from-docker.txt", "https://download.docker.com/linux",
     CE + "https://download.docker.com/linux"),
    ("ubuntu-24.04.os-release", "no-repo-yet.txt", "https://download.docker.com/linux", CE + "https://download.docker.com/linux"),
]


@pytest.mark.parametrize("os_release,policy,mirror,expected", INSTALLS, ids=[f"{i[0]}-{i[1]}-{i[2]}" for i in INSTALLS])
def test_which_docker_ce_a_release_gets_and_why(os_release, policy, mirror, expected):
    actions = plan(os_release, policy, mirror=mirror).actions
    assert actions[-1].summary == expected
    if "26.04" in os_release:  # Docker's own Suites line for the release
        assert "+Suites: resolute\n" in actions[-2].diff


def test_docker_ce_in_place_on_focal_says_why_it_is_not_29():
    """Key, docker.sources and packages in place: ok, and the line says why the engine is 28.1."""
    mirror = "https://mirrors.tuna.tsinghua.edu.cn/docker-ce/linux"
    repo = apt_repo.docker_ce_repo(mirror, KEY_FINGERPRINT, "ubuntu", "focal", "amd64")
    result = plan("ubuntu-20.04-crlf-quotes.os-release", "focal-docker-ce-installed.txt", mirror=mirror,
                  installed=("curl", "ca-certificates", *docker.CE_PACKAGES, *docker.CE_PLUGINS),
                  files={DOCKER_KEYRING: KEY.read_bytes(), DOCKER_SOURCES: repo.sources})
    assert not result.actions
    assert result.reason == (f"docker-ce 1.0 is installed from {mirror} "
                             "(Docker builds no docker-ce after 28.1 for Ubuntu 20.04 (focal))")


@pytest.mark.parametrize("os_release,line", [
    ("ubuntu-26.10.os-release", r"^unsupported system: Ubuntu 26\.10 is not supported; gpufleet knows Ubuntu 18\.04 "
                                r"\(bionic\), .*, 26\.04 \(resolute\), Debian 11 \(bullseye\), .* and derivatives built on them$"),
    ("ubuntu-16.04.os-release", r"^unsupported system: Ubuntu 16\.04\.7 LTS is not supported; gpufleet knows "),
    ("rocky-9.os-release", r"^unsupported system: Rocky Linux 9\.4 \(Blue Onyx\) \(ID=rocky\) is not Ubuntu, Debian "
                           r"or a derivative of them \(ID_LIKE\); gpufleet knows Ubuntu 18\.04"),
])
def test_a_release_the_tool_does_not_know_gets_one_line_naming_what_it_knows(os_release, line):
    with pytest.raises(FleetError, match=line) as raised:
        plan(os_release, None)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("os_release,read", [
    ("ubuntu-20.04-crlf-quotes.os-release", True), ("ubuntu-18.04.os-release", True),
    ("mint-21.3.os-release", False), ("ubuntu-24.04.os-release", False), ("ubuntu-26.04.os-release", False),
    ("debian-12.os-release", False)])
def test_the_probe_asks_apt_only_on_the_releases_docker_stopped_building_for(os_release, read, tmp_path):
    """apt-cache policy can take a second where apt keeps no pkgcache.bin: not on every probe of every host."""
    fact = next(f for f in facts.all_facts(facts.ProbeRequest()) if f.name == "docker_ce_policy")
    os_file = tmp_path / "os-release"
    os_file.write_bytes((FIXTURES / "osinfo" / os_release).read_bytes().replace(b"\r\n", b"\n"))
    done = subprocess.run(["sh", "-c", fact.command.replace("/etc/os-release", str(os_file))],
                          capture_output=True, text=True)
    assert (done.returncode == 0) == read, done
    assert bool(fact.parse(done.returncode, done.stdout)) == (read and bool(shutil.which("apt-cache")))
