"""Runs first (file name): these tests need the servers bare, before the session's `bootstrap`.

The lab is the topology it claims to be, checked on the real containers.

The bastion is the only way in, servers have no route out, Debian packages come
through the apt proxy, the mirror serves the lab image under its Docker Hub name,
the package mirror answers on the lab network, and `down()` leaves the engine as it found it.
"""
from __future__ import annotations

import json
import subprocess
import tomllib
import urllib.request
from pathlib import Path

import pytest

from lab.common import LABEL
from lab.topology import HUB_REPOSITORY, HUB_TAG, Lab

SMALL_PACKAGE = "hello"


def inventory(lab: Lab) -> dict:
    return tomllib.loads(lab.inventory_path.read_text())


def bastion_port(lab: Lab) -> int:
    return inventory(lab)["hosts"]["bastion"]["port"]


def server_address(lab: Lab, name: str) -> str:
    return inventory(lab)["hosts"][name]["address"]


def ssh(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", *argv], capture_output=True, text=True, timeout=timeout)


def pinned_known_hosts(lab: Lab, path: Path) -> Path:
    """known_hosts holding the host keys the lab gave its bastion and servers."""
    lines = [f"[127.0.0.1]:{bastion_port(lab)} {lab.host_public_key('bastion')}"]
    lines += [f"{server_address(lab, name)} {lab.host_public_key(name)}" for name in lab.server_names]
    path.write_text("\n".join(lines) + "\n")
    return path


def jump_config(lab: Lab, tmp_path: Path) -> Path:
    """An ssh config for `-J`: the jump ssh gets `-F` (not `-i` or `-o`), so options go here."""
    config = tmp_path / "ssh_config"
    config.write_text("\n".join([
        "Host *",
        f"  IdentityFile {lab.identity}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {pinned_known_hosts(lab, tmp_path / 'known_hosts')}",
        "  StrictHostKeyChecking yes",
        "  BatchMode yes",
        "  ConnectTimeout 10",
        "  LogLevel ERROR",
        "",
    ]))
    return config


def test_bastion_answers_on_loopback_with_the_lab_key(lab, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    result = ssh("-F", "/dev/null", "-i", str(lab.identity), "-o", f"UserKnownHostsFile={known_hosts}",
                 "-o", "StrictHostKeyChecking=accept-new", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                 "-p", str(bastion_port(lab)), "root@127.0.0.1", "hostname")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "bastion"
    learned = known_hosts.read_text().split(None, 1)[1].strip()
    assert learned == lab.host_public_key("bastion")


@pytest.mark.parametrize("server", ["gpu1", "gpu2", "gpu3"])
@pytest.mark.parametrize("user", ["root", "dev"])
def test_servers_answer_through_the_bastion(lab, tmp_path, server, user):
    config = jump_config(lab, tmp_path)
    script = "cat /proc/1/comm; hostname; id -un; sudo -n true && echo sudo-ok"
    result = ssh("-F", str(config), "-J", f"root@127.0.0.1:{bastion_port(lab)}",
                 f"{user}@{server_address(lab, server)}", script)
    assert result.returncode == 0, result.stderr
    pid1, hostname, whoami, sudo = result.stdout.split()
    assert (hostname, whoami, sudo) == (server, user, "sudo-ok")
    assert (pid1 == "systemd") == (server != "gpu2"), pid1


def test_server_refuses_ssh_that_skips_the_bastion(lab, tmp_path):
    address = server_address(lab, "gpu1")
    for user in ("root", "dev"):
        result = ssh("-F", "/dev/null", "-i", str(lab.identity), "-o", f"UserKnownHostsFile={tmp_path / 'kh'}",
                     "-o", "StrictHostKeyChecking=accept-new", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                     f"{user}@{address}", "true")
        assert result.returncode == 255
        # sshd itself answered (the address is reachable from here) and turned the key down
        assert "Permission denied" in result.stderr, result.stderr


def test_servers_have_no_route_out(lab):
    for name in lab.server_names:
        code, routes = lab.exec(name, ["ip", "-4", "route"])
        assert code == 0, routes
        assert f"{lab.subnet} dev" in routes           # the listing is real...
        assert not any(line.startswith("default") for line in routes.splitlines()), routes   # ...and has no way out


def test_init_systems_and_releases_are_as_named(lab):
    for server, release in (("gpu1", "bookworm"), ("gpu2", "bookworm"), ("gpu3", "trixie")):
        code, out = lab.exec(server, ["sh", "-c", ". /etc/os-release && echo $VERSION_CODENAME"])
        assert out.strip() == release, (server, out)
    for server in ("gpu1", "gpu3"):
        code, out = lab.exec(server, ["systemctl", "is-system-running", "--wait"])
        assert out.strip() == "running", (server, out)
    code, out = lab.exec("gpu2", ["sh", "-c", "cat /proc/1/comm; test -d /run/systemd/system || echo no-systemd; "
                                              "service ssh status >/dev/null && echo service-ok"])
    assert out.split() == ["docker-init", "no-systemd", "service-ok"], out


def test_packages_install_through_the_apt_proxy_only(lab):
    proxy = inventory(lab)["defaults"]["apt_proxy"]
    update = ["apt-get", "-q", "-o", "Acquire::Retries=0", "--error-on=any", "update"]
    code, out = lab.exec("gpu2", update)
    assert code != 0 and "Failed to fetch" in out, out

    via_proxy = ["-o", f"Acquire::http::Proxy={proxy}"]
    code, out = lab.exec("gpu2", [*update[:1], *via_proxy, *update[1:]])
    assert code == 0, out
    code, out = lab.exec("gpu2", ["apt-get", "-q", *via_proxy, "install", "-y", "--no-install-recommends",
                                  SMALL_PACKAGE], environment={"DEBIAN_FRONTEND": "noninteractive"})
    assert code == 0, out
    code, out = lab.exec("gpu2", ["dpkg-query", "-W", "-f=${Status}", SMALL_PACKAGE])
    assert out == "install ok installed"


def test_mirror_serves_the_lab_image_by_its_docker_hub_name(lab):
    image = inventory(lab)["groups"]["servers"]["containers"]["dev"]["image"]
    assert image == f"{HUB_REPOSITORY}:{HUB_TAG}"
    registry = f"http://127.0.0.1:{lab.published_port('mirror', '5000/tcp')}/v2/{HUB_REPOSITORY}"

    def get(path, accept="application/json"):
        request = urllib.request.Request(f"{registry}/{path}", headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    assert get("tags/list") == {"name": HUB_REPOSITORY, "tags": [HUB_TAG]}
    manifest = get(f"manifests/{HUB_TAG}", "application/vnd.docker.distribution.manifest.v2+json")
    env = get(f"blobs/{manifest['config']['digest']}")["config"]["Env"]
    assert {"LAB_IMAGE=1", "CUDA_VERSION=11.6.2", "NVIDIA_REQUIRE_CUDA=cuda>=11.6"} <= set(env)
    assert "PATH=/opt/lab/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in env

    # and the servers reach it at the address the inventory gives
    mirror = inventory(lab)["defaults"]["registry_mirrors"][0]
    code, out = lab.exec("gpu1", ["curl", "-fsS", f"{mirror}/v2/{HUB_REPOSITORY}/tags/list"])
    assert code == 0 and HUB_TAG in out, out


def test_fresh_servers_are_bare_with_the_same_address_and_host_key(lab, request, tmp_path):
    for name in lab.server_names:
        code, out = lab.exec(name, ["sh", "-c", "touch /etc/used /data/used /var/lib/docker/used"])
        assert code == 0, out
    fresh = request.getfixturevalue("fresh_servers")
    assert fresh == ["gpu1", "gpu2", "gpu3"]
    for name in fresh:
        code, out = lab.exec(name, ["sh", "-c", "ls /etc/used /data/used /var/lib/docker/used 2>/dev/null; "
                                               "command -v docker; hostname -I"])
        assert out.split() == [server_address(lab, name)], out
    # the host keys pinned before the servers were replaced still match
    for name in fresh:
        result = ssh("-F", str(jump_config(lab, tmp_path)), "-J", f"root@127.0.0.1:{bastion_port(lab)}",
                     f"root@{server_address(lab, name)}", "true")
        assert result.returncode == 0, result.stderr


def test_up_again_reuses_the_running_lab(lab):
    before = {c.name: c.id for c in lab.client.containers.list(filters={"label": f"{LABEL}={lab.prefix}"})}
    inventory_before = lab.inventory_path.read_text()
    info = lab.up(hosts=len(lab.server_names))
    after = {c.name: c.id for c in lab.client.containers.list(filters={"label": f"{LABEL}={lab.prefix}"})}
    assert after == before
    assert lab.inventory_path.read_text() == inventory_before
    assert info.built_images == []


def _engine_objects(client, prefix: str) -> dict[str, set[str]]:
    """`docker ps -a`, `docker network ls`, `docker volume ls`, leaving out what other labs
    (and their image builds) may create or remove meanwhile."""
    def ours(labels, name):
        other_lab = (labels or {}).get(LABEL, prefix) != prefix
        return not other_lab and not name.startswith("gpufleet-lab-build-")
    return {
        "containers": {c.name for c in client.containers.list(all=True) if ours(c.labels, c.name)},
        "networks": {n.name for n in client.networks.list() if ours(n.attrs.get("Labels"), n.name)},
        "volumes": {v.name for v in client.volumes.list() if ours(v.attrs.get("Labels"), v.name)},
    }


def test_down_leaves_the_engine_as_it_was(tmp_path, docker_client, make_lab):
    """Its own one-server lab, so the session lab is not disturbed."""
    client, prefix = docker_client, "gpufleet-test-down"
    Lab(tmp_path, prefix=prefix, subnet="10.77.30.0/24", client=client).down(purge=True)
    before = _engine_objects(client, prefix)

    small = make_lab(tmp_path, prefix, "10.77.30.0/24", hosts=1)
    during = _engine_objects(client, prefix)
    assert {f"{prefix}-{n}" for n in ("bastion", "aptproxy", "mirror", "pkgmirror", "gpu1")} <= during["containers"]
    assert f"{prefix}-net" in during["networks"]
    assert [m.state for m in small.status()] == ["running"] * 5

    small.down()
    after = _engine_objects(client, prefix)
    assert after["containers"] == before["containers"]
    assert after["networks"] == before["networks"]
    assert after["volumes"] == before["volumes"] | {small.apt_cache_volume}   # the documented survivor

    small.down(purge=True)
    assert _engine_objects(client, prefix) == before
    assert not small.inventory_path.exists() and not small.identity.exists()
