"""bootstrap on the lab: first run changes, second run changes nothing, and the hosts'
real state (not our report) is what the user asked for; then the generated ssh config
is proven with the real OpenSSH client."""
import json
import shlex
import subprocess

import pytest

from tests.integration.helpers import inventory_variant, sh, ssh

SERVERS = ("gpu1", "gpu2")
# sync-keys on the hosts the session bootstrapped (gpu3, Debian 13, is the package mirror tests' own)
BOOTSTRAPPED = "bastion,gpu1,gpu2"


@pytest.fixture(scope="module")
def first_run(bootstrapped):
    return bootstrapped


def test_first_bootstrap_changes_both_hosts(first_run):
    assert first_run.returncode == 0, first_run.stdout[-3000:] + first_run.stderr[-2000:]
    for host in SERVERS:
        report = first_run.hosts[host]
        assert report["error"] == "" and report["changed"] >= 8, report
        steps = {s["step"]: s for s in report["steps"]}
        assert steps["nvidia.toolkit"]["status"] == "skipped" and steps["nvidia.toolkit"]["message"] == "no NVIDIA GPU (nvidia_toolkit = auto)"
    gpu1 = {s["step"]: s["message"] for s in first_run.hosts["gpu1"]["steps"]}
    gpu2 = {s["step"]: s["message"] for s in first_run.hosts["gpu2"]["steps"]}
    assert "systemd" in gpu1["docker.service"] and "no systemd" not in gpu1["docker.service"]
    assert "no systemd" in gpu2["docker.service"]


def test_the_dry_run_on_fresh_servers_announced_every_step_the_run_changed(first_run):
    dry = first_run.dry_run
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-2000:]
    for host in SERVERS:
        announced = {s["step"] for s in dry.hosts[host]["steps"] if s["status"] == "changed"}
        made = {s["step"] for s in first_run.hosts[host]["steps"] if s["status"] == "changed"}
        assert made <= announced, (host, sorted(made - announced), dry.hosts[host]["steps"])
        assert {"inside.apt-mirror", "inside.tools", "containers.sshd", "keys.authorized", "inside.git"} <= announced
        print(f"{host}: the dry run announced {len(announced)} changed steps, the run changed {len(made)}")


def test_hosts_real_state_after_bootstrap(lab, first_run):
    for host in SERVERS:
        code, info = sh(lab, host, "docker info --format '{{json .}}'")
        assert code == 0, info
        info = json.loads(info)
        assert info["DockerRootDir"] == "/data/docker"
        assert [m.rstrip("/") for m in info["RegistryConfig"]["Mirrors"]] == _inventory_value(lab, "registry_mirrors")
        # the image came through the mirror: the server has no other way to Docker Hub
        code, out = sh(lab, host, "docker image inspect --format '{{.Id}}' pytorch/pytorch:lab-bookworm")
        assert code == 0, out
        code, out = sh(lab, host, "docker ps --format '{{.Names}}'", user="dev")
        assert code == 0 and "dev" in out.split(), out  # docker users need no sudo
        code, out = sh(lab, host, "stat -c '%a %U' /var/run/docker.sock")
        assert out == "660 root", out  # never chmod 666
        code, state = sh(lab, host, "docker inspect dev --format '{{json .}}'")
        state = json.loads(state)
        assert state["State"]["Running"] and state["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert state["HostConfig"]["ShmSize"] == 1024 ** 3
        assert state["HostConfig"]["PortBindings"]["22/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": "2222"}]
        assert "/data/workspace:/workspace" in state["HostConfig"]["Binds"]
        assert not state["HostConfig"].get("DeviceRequests")  # no GPU here, so no --gpus
        code, out = sh(lab, host, "docker exec dev sh -c 'kill -0 $(cat /run/sshd.pid) && stat -c %a /root/.ssh "
                                  "/root/.ssh/authorized_keys && grep -c . /etc/apt/sources.list.d/debian.sources "
                                  "&& command -v git wget vim'")
        assert code == 0 and "700\n600" in out, out
        code, out = sh(lab, host, "docker exec dev cat /etc/apt/apt.conf.d/90gpufleet-proxy")
        assert _inventory_value(lab, "apt_proxy") in out


def test_apt_in_each_container_ran_once_after_its_mirror_and_proxy_were_in_place(lab, first_run):
    """One apt transaction for openssh-server and the tools, and nothing from the image's own sources first."""
    for host in SERVERS:
        code, history = sh(lab, host, "docker exec dev cat /var/log/apt/history.log")
        assert code == 0, history
        starts = [line.split(": ", 1)[1] for line in history.splitlines() if line.startswith("Start-Date: ")]
        installs = [line for line in history.splitlines() if line.startswith("Commandline: ")]
        assert len(starts) == 1 and len(installs) == 1, history
        assert all(p in installs[0] for p in ("openssh-server", "git", "wget", "vim")), installs
        # both files are older than that transaction (mtimes and apt's Start-Date are in the container's UTC)
        script = (f"date -u -d {shlex.quote(starts[0].replace('  ', ' '))} +%s; "
                  "stat -c %Y /etc/apt/sources.list.d/debian.sources /etc/apt/apt.conf.d/90gpufleet-proxy")
        code, out = sh(lab, host, f"docker exec dev sh -c {shlex.quote(script)}")
        assert code == 0, out
        started, *written = (int(x) for x in out.split())
        assert all(w <= started for w in written), (started, written)


def _inventory_value(lab, key):
    import tomllib
    return tomllib.loads(lab.inventory_path.read_text())["defaults"][key]


def test_second_bootstrap_changes_nothing(lab, fab, first_run):
    before = {h: sh(lab, h, "docker inspect -f '{{.Id}} {{.State.StartedAt}}' dev; md5sum /etc/docker/daemon.json")[1]
              for h in SERVERS}
    again = fab("-H", "gpu1,gpu2", "bootstrap")
    assert again.returncode == 0, again.stdout[-3000:]
    for host in SERVERS:
        report = again.hosts[host]
        assert report["changed"] == 0, [s for s in report["steps"] if s["status"] == "changed"]
        # one SSH connection, and the facts probe alone, on a converged host
        assert report["ssh_connections"] == 1 and report["remote_commands"] <= 3, report
        assert sh(lab, host, "docker inspect -f '{{.Id}} {{.State.StartedAt}}' dev; md5sum /etc/docker/daemon.json")[1] \
            == before[host]


def test_packages_held_with_apt_mark_stay_converged(lab, fab, first_run):
    """A held package is installed (dpkg's `hi`): teams hold Docker and the toolkit against upgrades."""
    holds = {"gpu2": "apt-mark hold docker.io", "gpu1": "docker exec dev apt-mark hold git"}
    try:
        for host, hold in holds.items():
            assert sh(lab, host, hold)[0] == 0
        again = fab("-H", "gpu1,gpu2", "bootstrap")
        assert again.returncode == 0, again.stdout[-3000:]
        for host in SERVERS:
            assert again.hosts[host]["changed"] == 0, [s for s in again.hosts[host]["steps"] if s["status"] == "changed"]
        assert sh(lab, "gpu2", "apt-mark showhold")[1] == "docker.io"
        assert sh(lab, "gpu1", "docker exec dev apt-mark showhold")[1] == "git"
    finally:
        for host, hold in holds.items():
            sh(lab, host, hold.replace("apt-mark hold", "apt-mark unhold"))


def test_generated_ssh_config_reaches_bastion_servers_and_containers(lab, fab, first_run):
    result = fab("gen-ssh-config")
    assert result.returncode == 0, result.stderr
    config = (lab.directory / "ssh_config").read_text()
    assert "StrictHostKeyChecking no" not in config and "HostKeyAlias gpu1-dev" in config
    for alias, expected in (("bastion", None), ("gpu1", None), ("gpu2", None), ("gpu1-dev", "gpu1-dev"),
                            ("gpu2-dev", "gpu2-dev")):
        done = ssh(lab, alias)
        assert done.returncode == 0, (alias, done.returncode, done.stdout, done.stderr)
        if expected:
            assert done.stdout.strip() == expected
    env = ssh(lab, "gpu1-dev", "echo $LAB_IMAGE:$PATH")
    assert env.stdout.strip().startswith("1:/opt/lab/bin:"), env.stdout  # the image's ENV reaches SSH sessions
    again = fab("gen-ssh-config")
    assert "no changes" in again.stdout


def test_container_survives_restart_and_recreation_with_pinned_key(lab, fab, first_run, tmp_path):
    fab("gen-ssh-config")
    assert ssh(lab, "gpu1-dev", "echo kept > /workspace/note.txt && echo scratch > /root/scratch.txt").returncode == 0
    sh(lab, "gpu1", "docker restart dev")
    done = ssh(lab, "gpu1-dev", "cat /workspace/note.txt")
    assert done.returncode == 0 and done.stdout.strip() == "kept", done.stderr
    bigger = inventory_variant(lab, tmp_path, "shm.toml", {'shm_size = "1g"': 'shm_size = "2g"'})
    plan = fab("-H", "gpu1", "bootstrap", "--dry-run", inventory=bigger)
    assert "would re-create container dev (shm_size: '1g' -> '2g')" in plan.stdout, plan.stdout[-2000:]
    assert sh(lab, "gpu1", "docker inspect -f '{{.HostConfig.ShmSize}}' dev")[1] == str(1024 ** 3)
    result = fab("-H", "gpu1", "bootstrap", inventory=bigger)
    assert result.returncode == 0, result.stdout[-3000:]
    assert sh(lab, "gpu1", "docker inspect -f '{{.HostConfig.ShmSize}}' dev")[1] == str(2 * 1024 ** 3)
    done = ssh(lab, "gpu1-dev", "cat /workspace/note.txt")  # StrictHostKeyChecking yes: the key did not change
    assert done.returncode == 0 and done.stdout.strip() == "kept", done.stderr
    code, snaps = sh(lab, "gpu1", "docker image ls --format '{{.Repository}}' --filter label=gpufleet.snapshot-of=dev")
    assert "dev-snapshot" in snaps.split()  # the old container had changes: snapshot before re-creation
    assert fab("-H", "gpu1", "bootstrap").returncode == 0  # back to the lab's spec


def test_sync_keys_adds_revokes_and_keeps_hand_added_keys(lab, fab, first_run, tmp_path):
    new_key = tmp_path / "alice"
    hand_key = tmp_path / "hand"
    for key in (new_key, hand_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    hand_line = (hand_key.with_suffix(".pub")).read_text().strip()
    sh(lab, "gpu1", f"docker exec dev sh -c 'echo \"from=\\\"10.0.0.0/8,127.0.0.1\\\" {hand_line}\" >> /root/.ssh/authorized_keys'")
    identity = str(lab.directory / "id_ed25519.pub")
    added = inventory_variant(lab, tmp_path, "add.toml", {f'public_keys = ["{identity}"]':
                                                          f'public_keys = ["{identity}", "{new_key}.pub"]'})
    result = fab("-H", BOOTSTRAPPED, "sync-keys", inventory=added)
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.hosts["gpu1"]["changed"] == 1 and result.hosts["bastion"]["changed"] == 1
    fab("gen-ssh-config", inventory=added)
    config = lab.directory / "ssh_config"
    alice_config = tmp_path / "alice_config"
    alice_config.write_text(config.read_text().replace(str(lab.directory / "id_ed25519"), str(new_key)))
    assert ssh(lab, "gpu1-dev", "true", config=alice_config).returncode == 0
    assert fab("-H", BOOTSTRAPPED, "sync-keys", inventory=added).hosts["gpu1"]["changed"] == 0
    revoked = inventory_variant(lab, tmp_path, "revoke.toml", {'revoked_keys = []': f'revoked_keys = ["{new_key}.pub"]'}) \
        if "revoked_keys = []" in lab.inventory_path.read_text() else inventory_variant(
            lab, tmp_path, "revoke.toml", {f'public_keys = ["{identity}"]':
                                           f'public_keys = ["{identity}"]\nrevoked_keys = ["{new_key}.pub"]'})
    result = fab("-H", BOOTSTRAPPED, "sync-keys", inventory=revoked)
    assert result.returncode == 0, result.stdout[-3000:]
    assert ssh(lab, "gpu1-dev", "true", config=alice_config).returncode != 0
    code, keys = sh(lab, "gpu1", "docker exec dev cat /root/.ssh/authorized_keys")
    assert hand_line in keys and 'from="10.0.0.0/8,127.0.0.1"' in keys  # hand-added key and its options kept
    assert new_key.with_suffix(".pub").read_text().split()[1] not in keys
    assert ssh(lab, "gpu1-dev", "true").returncode == 0  # the tool's own key still works


def test_revoking_the_login_key_is_refused(lab, fab, first_run, tmp_path):
    identity = str(lab.directory / "id_ed25519.pub")
    bad = inventory_variant(lab, tmp_path, "lockout.toml", {f'public_keys = ["{identity}"]':
                                                            f'public_keys = ["{identity}"]\nrevoked_keys = ["{identity}"]'})
    result = fab("-H", BOOTSTRAPPED, "sync-keys", inventory=bad)
    assert result.returncode == 2 and "would lock you out" in result.stderr
    assert "Traceback" not in result.stderr
