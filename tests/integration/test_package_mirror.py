"""The lab's package mirror, checked by apt itself on lab servers: signatures, indexes, installs.

gpu3 (Debian 13) is first set up by hand, the way Docker's and NVIDIA's install guides say (key to
/etc/apt/keyrings, `signed-by`), then made bare again and set up by the tool's own docker.install and
nvidia.install, twice; gpu1 (Debian 12) is checked after the session's `bootstrap`, which took the
docker-ce path from the same mirror.
"""
from __future__ import annotations

import json
import shlex
import tomllib

import pytest

from lab.common import tar_bytes
from lab.mirror import SigningKey
from lab.topology import PKGMIRROR_ROOT
from tests.integration.helpers import sh

DOCKER_KEYRING = "/etc/apt/keyrings/docker.asc"
NVIDIA_KEYRING = "/etc/apt/keyrings/nvidia-container-toolkit.asc"
DOCKER_PACKAGES = "docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin"


def defaults(lab) -> dict:
    return tomllib.loads(lab.inventory_path.read_text())["defaults"]


def apt(lab, host: str, args: str) -> tuple[int, str]:
    """apt-get on a lab server, through the lab's apt proxy (its only way to Debian)."""
    proxy = shlex.quote(f"Acquire::http::Proxy={defaults(lab)['apt_proxy']}")
    return sh(lab, host, f"DEBIAN_FRONTEND=noninteractive apt-get -q -o {proxy} {args} 2>&1")


def key_fingerprints(lab, host: str, keyring: str) -> list[str]:
    code, out = sh(lab, host, f"gpg --batch --with-colons --show-keys {keyring}")
    assert code == 0, out
    return [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")][:1]


@pytest.fixture(scope="module")
def gpu3(lab) -> str:
    """A fresh Debian 13 server with the lab's Docker and NVIDIA repos added by hand, and `apt-get update` run."""
    lab.recreate_server("gpu3")
    docker, nvidia = defaults(lab)["docker_mirror"], defaults(lab).get("nvidia_mirror", "")
    code, out = sh(lab, "gpu3", "set -e; install -m 0755 -d /etc/apt/keyrings; "
                                f"curl -fsS {docker}/debian/gpg -o {DOCKER_KEYRING}; "
                                f"echo 'deb [arch=amd64 signed-by={DOCKER_KEYRING}] {docker}/debian trixie stable' "
                                "> /etc/apt/sources.list.d/docker.list")
    assert code == 0, out
    if nvidia:
        # NVIDIA's guide: the key, then their .list with signed-by put in
        code, out = sh(lab, "gpu3", f"set -e; curl -fsS {nvidia}/gpgkey -o {NVIDIA_KEYRING}; "
                                    f"curl -fsS {nvidia}/stable/deb/nvidia-container-toolkit.list | "
                                    f"sed 's#deb http://#deb [signed-by={NVIDIA_KEYRING}] http://#' "
                                    "> /etc/apt/sources.list.d/nvidia-container-toolkit.list")
        assert code == 0, out
    return "gpu3"


@pytest.fixture(scope="module")
def gpu3_updated(lab, gpu3) -> str:
    code, out = apt(lab, gpu3, "--error-on=any update")
    assert code == 0, out
    return out


def test_the_served_keys_are_the_ones_the_inventory_pins(lab, gpu3):
    assert key_fingerprints(lab, gpu3, DOCKER_KEYRING) == [defaults(lab)["docker_key_fingerprint"]]
    if lab.package_mirror.nvidia:
        assert key_fingerprints(lab, gpu3, NVIDIA_KEYRING) == [defaults(lab)["nvidia_key_fingerprint"]]
        assert defaults(lab)["nvidia_key_fingerprint"] != defaults(lab)["docker_key_fingerprint"]


def test_the_repos_have_the_upstream_layout(lab, gpu3):
    docker = defaults(lab)["docker_mirror"]
    paths = [f"{docker}/debian/gpg"] + [f"{docker}/debian/dists/{codename}/{name}"
                                        for codename in ("bookworm", "trixie")
                                        for name in ("InRelease", "Release", "Release.gpg",
                                                     "stable/binary-amd64/Packages",
                                                     "stable/binary-amd64/Packages.gz")]
    if lab.package_mirror.nvidia:
        nvidia = defaults(lab)["nvidia_mirror"]
        paths += [f"{nvidia}/gpgkey", f"{nvidia}/stable/deb/nvidia-container-toolkit.list"]
        paths += [f"{nvidia}/stable/deb/amd64/{name}" for name in ("InRelease", "Release", "Release.gpg", "Packages")]
    code, out = sh(lab, gpu3, "for url in " + " ".join(paths) + "; do curl -fsS -o /dev/null -w '%{http_code} ' "
                                                                 "$url || echo \"missing $url\"; done")
    assert out.split() == ["200"] * len(paths), out
    code, out = sh(lab, gpu3, f"curl -fsS {docker}/debian/dists/trixie/InRelease | head -1; "
                              f"curl -fsS {docker}/debian/dists/trixie/stable/binary-amd64/Packages | grep '^Filename:'")
    assert out.splitlines()[0] == "-----BEGIN PGP SIGNED MESSAGE-----"
    assert "Filename: dists/trixie/pool/stable/amd64/docker-ce_26.1.5-1~debian.13~trixie_amd64.deb" in out, out


def test_apt_update_is_clean_and_names_the_mirror(lab, gpu3_updated):
    problems = [line for line in gpu3_updated.splitlines() if line.startswith(("W:", "E:", "Err:"))]
    assert problems == [], gpu3_updated
    code, policy = sh(lab, "gpu3", "apt-cache policy docker-ce")
    assert f"500 {defaults(lab)['docker_mirror']}/debian trixie/stable amd64 Packages" in policy, policy
    assert "Candidate: 5:26.1.5-1~debian.13~trixie" in policy, policy


def test_docker_ce_26_installs_from_the_mirror_and_runs(lab, gpu3_updated):
    code, out = apt(lab, "gpu3", f"install -y {DOCKER_PACKAGES}")
    assert code == 0, out[-3000:]
    code, out = sh(lab, "gpu3", "dpkg-query -W -f '${Package} ${Version} ${Status}\\n' " + DOCKER_PACKAGES)
    assert sorted(out.splitlines()) == [
        "containerd.io 1.7.24-1 install ok installed",
        "docker-buildx-plugin 0.13.1-1~debian.13~trixie install ok installed",
        "docker-ce 5:26.1.5-1~debian.13~trixie install ok installed",
        "docker-ce-cli 5:26.1.5-1~debian.13~trixie install ok installed",
        "docker-compose-plugin 2.26.1-1~debian.13~trixie install ok installed"], out
    code, out = sh(lab, "gpu3", "dpkg-query -W -f '${Status}' docker.io containerd runc 2>&1")
    assert "install ok installed" not in out      # Debian's own packages stay out
    code, out = sh(lab, "gpu3", "docker version --format '{{.Server.Version}}'; systemctl is-active docker "
                                "containerd; getent group docker | cut -d: -f1; stat -c '%a %U %G' /run/docker.sock; "
                                "docker buildx version | cut -d' ' -f2; docker compose version --short")
    server, docker_state, containerd_state, group, socket, buildx, compose = out.splitlines()
    assert server.startswith("26.1.5"), out
    assert (docker_state, containerd_state, group, socket) == ("active", "active", "docker", "660 root docker")
    assert (buildx, compose) == ("0.13.1+ds1", "2.26.1-4"), out
    code, out = apt(lab, "gpu3", f"install -y {DOCKER_PACKAGES}")      # again: nothing to do
    assert code == 0 and "0 upgraded, 0 newly installed" in out, out[-2000:]


@pytest.fixture(scope="module")
def forged_repo(lab, tmp_path_factory) -> tuple[str, str]:
    """The mirror's trixie Release and Packages, signed by a key apt was never told to trust, served beside
    the real repo. Returns (base URL, the other key's fingerprint)."""
    tmp = tmp_path_factory.mktemp("forged")
    forged = tmp / "dists"
    dist = lab.package_mirror.root / "docker-ce/linux/debian/dists/trixie"
    (forged / "stable/binary-amd64").mkdir(parents=True)
    for name in ("Release", "stable/binary-amd64/Packages", "stable/binary-amd64/Packages.gz"):
        (forged / name).write_bytes((dist / name).read_bytes())
    other = SigningKey(tmp / "gnupg", "someone else <other@gpufleet-lab.invalid>")
    other.sign_release(forged / "Release")
    other.stop_agent()
    files = {f"forged/debian/dists/trixie/{p.relative_to(forged)}": (p.read_bytes(), 0o644, 0)
             for p in forged.rglob("*") if p.is_file()}
    container = lab.client.containers.get(lab.container_name("pkgmirror"))
    assert container.put_archive(PKGMIRROR_ROOT, tar_bytes(files))
    return defaults(lab)["docker_mirror"].rsplit("/docker-ce/", 1)[0] + "/forged/debian", other.fingerprint()


@pytest.mark.parametrize("host", ["gpu1", "gpu3"])      # apt with gpgv (Debian 12) and with sqv (Debian 13)
def test_a_repo_signed_by_another_key_is_refused(lab, host, forged_repo):
    base, other = forged_repo
    docker = defaults(lab)["docker_mirror"]
    code, out = sh(lab, host, f"set -e; mkdir -p /tmp/forged/parts /tmp/forged/lists/partial; curl -fsS {docker}/debian/gpg -o /tmp/forged/lab.asc; "
                              f"echo 'deb [arch=amd64 signed-by=/tmp/forged/lab.asc] {base} trixie stable' "
                              "> /tmp/forged/sources.list")
    assert code == 0, out
    # its own sources and lists: the server's own apt state is left as it was
    only_forged = ("-o Dir::Etc::SourceList=/tmp/forged/sources.list -o Dir::Etc::SourceParts=/tmp/forged/parts "
                   "-o Dir::State::Lists=/tmp/forged/lists")
    code, out = sh(lab, host, f"apt-get -q {only_forged} --error-on=any update 2>&1")
    assert code != 0, out
    assert f"The repository '{base} trixie InRelease' is not signed." in out, out
    assert other[-16:] in out, out                      # apt names the key it does not know
    code, policy = sh(lab, host, f"apt-cache {only_forged} policy docker-ce")
    assert "/forged/" not in policy, policy
    # the same Release with the lab's own signature is accepted by the same apt
    sh(lab, host, f"sed -i 's#{base}#{docker}/debian#' /tmp/forged/sources.list")
    code, out = sh(lab, host, f"apt-get -q {only_forged} --error-on=any update 2>&1")
    assert code == 0, out


def test_the_toolkit_installs_without_a_gpu_and_runs(lab, gpu3_updated):
    if not lab.package_mirror.nvidia:
        pytest.skip("no NVIDIA repo in the lab mirror: ../shared/gpu-stack is absent")
    code, policy = sh(lab, "gpu3", "apt-cache policy nvidia-container-toolkit")
    assert f"500 {defaults(lab)['nvidia_mirror']}/stable/deb/amd64  Packages" in policy, policy
    code, out = apt(lab, "gpu3", "install -y nvidia-container-toolkit")
    assert code == 0, out[-3000:]
    code, out = sh(lab, "gpu3", "dpkg-query -W -f '${Package} ${Version} ${Status}\\n' nvidia-container-toolkit "
                                "nvidia-container-toolkit-base")
    assert sorted(out.splitlines()) == ["nvidia-container-toolkit 1.18.0-1 install ok installed",
                                "nvidia-container-toolkit-base 1.18.0-1 install ok installed"], out
    code, out = sh(lab, "gpu3", "nvidia-ctk --version | head -1; nvidia-container-runtime --version | head -1; "
                                "nvidia-container-runtime-hook -version 2>&1 | head -1; "
                                "grep -c '^\\[nvidia-container-runtime\\]' /etc/nvidia-container-runtime/config.toml; "
                                "command -v nvidia-container-cli || echo no-nvidia-container-cli")
    assert code == 0, out
    ctk, runtime, hook, config, cli = out.splitlines()
    assert ctk == "NVIDIA Container Toolkit CLI version 1.18.0", out
    assert "1.18.0" in runtime and "1.18.0" in hook, out
    assert config == "1" and cli == "no-nvidia-container-cli", out    # the postinst wrote config.toml


def test_bootstrap_took_the_docker_ce_path_on_gpu1(lab, bootstrapped):
    """The session's bootstrap installed docker-ce 20.10 on gpu1 from the lab mirror, with the pinned key."""
    assert bootstrapped.returncode == 0, bootstrapped.stdout[-3000:]
    assert key_fingerprints(lab, "gpu1", DOCKER_KEYRING) == [defaults(lab)["docker_key_fingerprint"]]
    code, policy = sh(lab, "gpu1", "apt-cache policy docker-ce")
    assert f"{defaults(lab)['docker_mirror']}/debian bookworm/stable amd64 Packages" in policy, policy
    assert "Installed: 5:20.10.24-1~debian.12~bookworm" in policy, policy
    code, out = sh(lab, "gpu1", "docker version --format '{{.Server.Version}}'; "
                                "dpkg-query -W -f '${Status}' docker.io 2>&1")
    assert out.splitlines()[0].startswith("20.10.24"), out
    assert "install ok installed" not in out
    code, out = sh(lab, "gpu2", "dpkg-query -W -f '${Package} ${Status}\\n' docker.io; "
                                "dpkg-query -W -f '${Status}' docker-ce 2>&1")
    assert out.splitlines()[0] == "docker.io install ok installed" and "ok installed" not in out.splitlines()[1:], out


@pytest.fixture(scope="module")
def tool_on_gpu3(lab, fab, tmp_path_factory):
    """gpu3 made bare again, then the tool's own Docker and toolkit stages, twice, through the real CLI;
    first with a forged pin for Docker's key (refused, nothing written), then as the inventory says."""
    lab.recreate_server("gpu3")
    forged = tmp_path_factory.mktemp("forged") / "hosts.toml"
    pinned = defaults(lab)["docker_key_fingerprint"]
    forged.write_text(lab.inventory_path.read_text().replace(pinned, "0" * 40, 1))
    refused = fab("-H", "gpu3", "docker.install", inventory=forged)
    after_refusal = sh(lab, "gpu3", "ls -A /etc/apt/keyrings /etc/apt/sources.list.d 2>&1; "
                                    "dpkg-query -W -f '${Package} ${Status}\\n' docker-ce docker.io 2>&1")[1]
    runs = [fab("-H", "gpu3", task) for task in ("docker.install", "nvidia.install")]
    again = [fab("-H", "gpu3", task) for task in ("docker.install", "nvidia.install")]
    return refused, after_refusal, runs, again


def test_a_mirror_whose_key_is_not_the_pinned_one_is_refused_and_nothing_is_installed(lab, tool_on_gpu3):
    refused, after_refusal, _, _ = tool_on_gpu3
    assert refused.returncode == 1, refused.stdout[-2000:]
    message = refused.hosts["gpu3"]["error"]
    pinned = defaults(lab)["docker_key_fingerprint"]
    assert "docker_key_fingerprint" in message and "0" * 40 in message and pinned in message, message
    # nothing was written or installed: no keyring, no sources list, no docker package
    assert "docker.asc" not in after_refusal and "docker.sources" not in after_refusal, after_refusal
    assert "ok installed" not in after_refusal, after_refusal


def test_the_tool_installs_docker_ce_26_on_debian_13_from_the_mirror(lab, tool_on_gpu3):
    _, _, (docker_run, _), (docker_again, _) = tool_on_gpu3
    assert docker_run.returncode == 0 and docker_run.hosts["gpu3"]["changed"] >= 1, docker_run.stdout[-3000:]
    # the second run changes nothing
    assert docker_again.returncode == 0 and docker_again.hosts["gpu3"]["changed"] == 0, docker_again.stdout[-3000:]
    code, out = sh(lab, "gpu3", "dpkg-query -W -f '${Package} ${Version} ${Status}\\n' docker-ce containerd.io")
    assert code == 0 and "docker-ce 5:26.1.5-1~debian.13~trixie install ok installed" in out, out
    code, out = sh(lab, "gpu3", "apt-cache policy docker-ce")
    assert f"{defaults(lab)['docker_mirror']}/debian trixie/stable amd64 Packages" in out, out
    assert sh(lab, "gpu3", f"stat -c '%a %U' {DOCKER_KEYRING}")[1] == "644 root"
    assert key_fingerprints(lab, "gpu3", DOCKER_KEYRING) == [defaults(lab)["docker_key_fingerprint"]]
    code, out = sh(lab, "gpu3", "docker version --format '{{.Server.Version}}'")
    assert out.startswith("26.1.5"), out  # Debian's build: 26.1.5+dfsg1


def test_the_tool_installs_the_toolkit_on_debian_13_from_the_mirror(lab, tool_on_gpu3):
    if not lab.package_mirror.nvidia:
        pytest.skip("no NVIDIA repo in the lab mirror: ../shared/gpu-stack is absent")
    _, _, (_, nvidia_run), (_, nvidia_again) = tool_on_gpu3
    assert nvidia_run.returncode == 0 and nvidia_run.hosts["gpu3"]["changed"] >= 1, nvidia_run.stdout[-3000:]
    assert nvidia_again.returncode == 0 and nvidia_again.hosts["gpu3"]["changed"] == 0, nvidia_again.stdout[-3000:]
    code, out = sh(lab, "gpu3", "dpkg-query -W -f '${Package} ${Version} ${Status}\\n' "
                                "nvidia-container-toolkit nvidia-container-toolkit-base")
    assert code == 0 and "nvidia-container-toolkit 1.18.0-1 install ok installed" in out, out
    code, out = sh(lab, "gpu3", "apt-cache policy nvidia-container-toolkit")
    assert f"{defaults(lab)['nvidia_mirror']}/stable/deb/amd64" in out, out
    assert sh(lab, "gpu3", f"stat -c '%a %U' {NVIDIA_KEYRING}")[1] == "644 root"
    assert key_fingerprints(lab, "gpu3", NVIDIA_KEYRING) == [defaults(lab)["nvidia_key_fingerprint"]]
    code, out = sh(lab, "gpu3", "docker info --format '{{json .Runtimes}}'; cat /etc/docker/daemon.json")
    runtimes, *daemon = out.splitlines()
    assert "nvidia" in json.loads(runtimes), runtimes  # registered by the daemon.json merge, no GPU needed
    assert json.loads("\n".join(daemon))["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"


def test_docker_26_validates_daemon_json_with_dockerd_before_it_is_installed(lab, fab, tool_on_gpu3, tmp_path):
    """On Docker 26 (gpu3) a key dockerd does not know is caught by `dockerd --validate` on the temp file: the
    file is never installed and Docker keeps running. (Docker 20.10 has no --validate: gpu1 gets the tool's JSON
    and schema check, and a key only dockerd rejects is rolled back after the restart: test_daemon_json_lab.)"""
    before = sh(lab, "gpu3", "md5sum /etc/docker/daemon.json")[1]
    assert sh(lab, "gpu3", "dockerd --validate --config-file /etc/docker/daemon.json")[0] == 0
    assert sh(lab, "gpu1", "dockerd --validate --config-file /etc/docker/daemon.json")[0] != 0  # 20.10: no such flag
    bad = tmp_path / "bad.toml"
    bad.write_text(lab.inventory_path.read_text() + '\n[hosts.gpu3.daemon_json]\n"no-such-option" = true\n')
    result = fab("-H", "gpu3", "docker.configure", inventory=bad)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "failed validation (dockerd --validate --config-file" in result.hosts["gpu3"]["error"], result.hosts["gpu3"]
    assert "no-such-option" in result.hosts["gpu3"]["error"]
    assert sh(lab, "gpu3", "md5sum /etc/docker/daemon.json")[1] == before
    assert sh(lab, "gpu3", "docker info --format '{{.ServerVersion}}'")[0] == 0


def test_the_whole_bootstrap_on_debian_13_runs_its_container_on_docker_26(lab, fab, tool_on_gpu3):
    """After the stages above, the rest of `bootstrap` on gpu3: daemon.json, the container with sshd,
    keys and tools; then again, changing nothing; then OpenSSH through the generated config."""
    from tests.integration.helpers import ssh
    first, second = fab("-H", "gpu3", "bootstrap"), fab("-H", "gpu3", "bootstrap")
    assert first.returncode == 0 and first.hosts["gpu3"]["changed"] >= 1, first.stdout[-3000:]
    assert second.returncode == 0 and second.hosts["gpu3"]["changed"] == 0, second.stdout[-3000:]
    code, out = sh(lab, "gpu3", "docker version --format '{{.Server.Version}}'; "
                                "docker inspect --format '{{.State.Running}} {{.Config.Hostname}}' dev")
    assert code == 0 and out.splitlines()[0].startswith("26.") and out.splitlines()[1] == "true gpu3-dev", out
    assert fab("gen-ssh-config").returncode == 0
    result = ssh(lab, "gpu3-dev", "hostname; test -x /usr/sbin/sshd && echo sshd")
    assert result.returncode == 0 and result.stdout.split() == ["gpu3-dev", "sshd"], result.stderr
