"""`address = "local"` for real: the `fab` CLI runs inside a lab server (its own Python, this checkout's code,
this venv's run-time packages) against an inventory whose only host is that server itself.  bootstrap runs
twice as the sudo user `dev` (changed, then unchanged, no SSH connection) and the server's real state is
checked; then gen-ssh-config's entry reaches the container on 127.0.0.1 directly, and nvidia_toolkit
never/auto/always is seen on a machine without a GPU.  Its own one-server lab: the session lab is left alone."""
from __future__ import annotations

import ipaddress
import json
import shlex
import sys
import tomllib

import pytest

from tests.integration.conftest import REPO, TEST_PREFIX, TEST_SUBNET, docker_engine, start_lab
from tests.integration.helpers import install_fab, sh

SERVER = "gpu1"
WORK = "/home/dev/work"
NVIDIA_KEYRING = "/etc/apt/keyrings/nvidia-container-toolkit.asc"


def _own_subnet() -> str:
    net = ipaddress.ip_network(TEST_SUBNET)
    return str(ipaddress.ip_network((int(net.network_address) + 100 * 256, net.prefixlen)))


@pytest.fixture(scope="module")
def local_lab(tmp_path_factory, request):
    lab = start_lab(tmp_path_factory.mktemp("local-lab"), f"{TEST_PREFIX}-local", _own_subnet(), 1, request)
    code, version = sh(lab, SERVER, "python3 -c 'import sys; print(*sys.version_info[:2])'")
    if version.split() != [str(n) for n in sys.version_info[:2]]:
        pytest.skip(f"this venv's Python {sys.version_info[0]}.{sys.version_info[1]} is not the lab server's "
                    f"({version}): its compiled wheels would not load there")
    client, _ = docker_engine()
    pythonpath = install_fab(client.containers.get(lab.container_name(SERVER)), REPO)
    lab_inventory = tomllib.loads(lab.inventory_path.read_text())
    defaults, dev = lab_inventory["defaults"], lab_inventory["groups"]["servers"]["containers"]["dev"]
    inventory = f"""
[local]
ssh_config = "{WORK}/ssh_config"
known_hosts = "{WORK}/known_hosts"
identity = "{WORK}/id_ed25519"
public_keys = ["{WORK}/id_ed25519.pub"]

[hosts.ws]
address = "local"
user = "dev"
apt_proxy = {json.dumps(defaults["apt_proxy"])}
docker_source = "distro"
registry_mirrors = {json.dumps(defaults["registry_mirrors"])}
docker_users = ["dev"]
nvidia_toolkit = "never"

[hosts.ws.containers.dev]
image = {json.dumps(dev["image"])}
ssh_port = 2222
shm_size = "1g"
ulimit_nofile = {json.dumps(defaults["ulimit_nofile"])}
"""
    code, out = sh(lab, SERVER, f"mkdir -p {WORK} && chown dev:dev {WORK}")
    assert code == 0, out
    code, out = sh(lab, SERVER, f"cat > {WORK}/hosts.toml <<'EOF'\n{inventory}EOF\n"
                                f"ssh-keygen -q -t ed25519 -N '' -C local-test -f {WORK}/id_ed25519", user="dev")
    assert code == 0, out
    lab.pythonpath = pythonpath
    return lab


def fab(lab, *args, user="dev", inventory=f"{WORK}/hosts.toml", cwd=WORK):
    """The real fab CLI inside the server, as `user`, from `cwd`; (exit code, output, recap or None)."""
    recap = f"{cwd}/recap.json"
    task_args = shlex.join(args)
    json_arg = "" if args[0] == "gen-ssh-config" else f" --json {recap}"
    script = (f"mkdir -p {cwd} && cd {cwd} && rm -f {recap} && PYTHONPATH={lab.pythonpath} "
              f"FABRIC_INVENTORY={inventory} timeout 900 python3 -m fabric -r /opt/gpufleet {task_args}{json_arg}")
    code, out = lab.exec(SERVER, ["sh", "-c", script], user=user)
    _, text = sh(lab, SERVER, f"cat {recap} 2>/dev/null")
    return code, out, (json.loads(text) if text.startswith("{") else None)


def steps(recap) -> dict:
    return {s["step"]: s for s in recap["hosts"][0]["steps"]}


def state(lab) -> str:
    return sh(lab, SERVER, "docker inspect -f '{{.Id}} {{.State.StartedAt}}' dev; md5sum /etc/docker/daemon.json "
                           f"/home/dev/.ssh/authorized_keys {WORK}/known_hosts")[1]


@pytest.fixture(scope="module")
def first_run(local_lab):
    return fab(local_lab, "-H", "ws", "bootstrap")


def test_first_local_bootstrap_changes_the_machine_without_ssh(local_lab, first_run):
    code, out, recap = first_run
    assert code == 0, out[-4000:]
    host = recap["hosts"][0]
    assert host["host"] == "ws" and host["error"] == "" and host["changed"] >= 8, host
    assert host["ssh_connections"] == 0 and host["remote_commands"] > 10
    assert steps(recap)["nvidia.toolkit"] == {"step": "nvidia.toolkit", "status": "skipped",
                                              "message": "nvidia_toolkit = never"}
    code, log = sh(local_lab, SERVER, f"cat {WORK}/.gpufleet/logs/*/ws.log")
    assert code == 0 and "# local session on " in log and " as dev\n" in log
    assert "$ sh -c <script: dpkg --configure -a 2>/dev/null || configure_when_free…>   [sudo]" in log  # apt, sudo


def test_the_machine_itself_is_in_the_state_asked_for(local_lab, first_run):
    lab = local_lab
    code, out = sh(lab, SERVER, "dpkg-query -W -f '${db:Status-Abbrev}' docker.io")
    assert code == 0 and out.startswith("ii"), out
    info = json.loads(sh(lab, SERVER, "docker info --format '{{json .}}'")[1])
    mirror = tomllib.loads(lab.inventory_path.read_text())["defaults"]["registry_mirrors"][0]
    assert [m.rstrip("/") for m in info["RegistryConfig"]["Mirrors"]] == [mirror]
    assert "nvidia" not in info["Runtimes"]  # never: no toolkit, no runtime
    assert "docker" in sh(lab, SERVER, "id -nG dev")[1].split()
    container = json.loads(sh(lab, SERVER, "docker inspect dev --format '{{json .}}'")[1])
    assert container["State"]["Running"] and container["Config"]["Hostname"] == "ws-dev"
    assert container["HostConfig"]["PortBindings"]["22/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": "2222"}]
    assert not container["HostConfig"].get("DeviceRequests") and container["HostConfig"]["Runtime"] == "runc"
    keys = sh(lab, SERVER, "cat /home/dev/.ssh/authorized_keys")[1]
    assert "local-test" in keys and "gpufleet-lab" in keys  # ours added, the lab's own kept
    code, out = sh(lab, SERVER, "stat -c '%a %U' /home/dev/.ssh/authorized_keys")
    assert out == "600 dev"


def test_second_local_bootstrap_changes_nothing(local_lab, first_run):
    before = state(local_lab)
    code, out, recap = fab(local_lab, "-H", "ws", "bootstrap")
    assert code == 0, out[-3000:]
    host = recap["hosts"][0]
    assert host["changed"] == 0, [s for s in host["steps"] if s["status"] == "changed"]
    assert host["ssh_connections"] == 0 and host["remote_commands"] <= 3, host
    assert state(local_lab) == before


def test_generated_ssh_config_reaches_the_container_on_loopback_without_a_jump(local_lab, first_run):
    code, out, _ = fab(local_lab, "gen-ssh-config")
    assert code == 0, out
    config = sh(local_lab, SERVER, f"cat {WORK}/ssh_config")[1]
    assert "Host ws\n" not in config and "Host ws-dev\n" in config
    entry = config.split("Host ws-dev\n")[1].split("\n\n")[0]
    assert "    HostName 127.0.0.1\n    Port 2222\n" in entry and "ProxyCommand none" in entry
    assert "ProxyJump" not in entry
    code, out = sh(local_lab, SERVER, f"ssh -F {WORK}/ssh_config -o BatchMode=yes -o ConnectTimeout=10 ws-dev "
                                      "'hostname; id -un'", user="dev")
    assert code == 0 and out.splitlines()[-2:] == ["ws-dev", "root"], out


def test_doctor_checks_the_local_host_and_its_container_without_ssh(local_lab, first_run):
    code, out, recap = fab(local_lab, "doctor")
    assert code == 0, out[-3000:]  # no check failed
    assert "this machine, as dev, through a local session (no SSH)" in out
    assert "running, config valid, key-only, port 2222" in out
    assert recap["hosts"][0]["ssh_connections"] == 0


def test_nvidia_toolkit_auto_and_always_on_a_machine_without_a_gpu(local_lab, first_run):
    for setting, expected in (("auto", ("skipped", "no NVIDIA GPU (nvidia_toolkit = auto)")),
                              ("always", ("changed", "would fetch NVIDIA's signing key from "
                                                     "https://nvidia.github.io/libnvidia-container/gpgkey, check it is "
                                                     "C95B321B61E88C1809C4F759DDCAE044F796ECB0"))):
        variant = f"{WORK}/{setting}.toml"
        sh(local_lab, SERVER, f"sed 's/^nvidia_toolkit = .*/nvidia_toolkit = \"{setting}\"/' {WORK}/hosts.toml "
                              f"> {variant}", user="dev")
        # a dry run only: the real NVIDIA repository is outside the lab
        code, out, recap = fab(local_lab, "-H", "ws", "nvidia.install", "--dry-run", inventory=variant)
        assert code == 0, out[-2000:]
        toolkit = steps(recap)["nvidia.toolkit"]
        assert toolkit["status"] == expected[0] and expected[1] in toolkit["message"], toolkit
    assert sh(local_lab, SERVER, f"test -e {NVIDIA_KEYRING} || echo absent")[1] == "absent"


def test_ctrl_c_stops_the_local_commands_and_prints_a_recap(local_lab, first_run):
    """SIGINT to fab while a command runs: that command's whole process group is stopped, a recap is
    printed and fab exits 130."""
    marker = "/tmp/gpufleet-ctrl-c-started"
    # a driver in Python: a shell's background job would start fab with SIGINT ignored
    driver = f"""
import os, signal, subprocess, sys, time
env = dict(os.environ, PYTHONPATH="{local_lab.pythonpath}", FABRIC_INVENTORY="{WORK}/hosts.toml")
fab = subprocess.Popen(["python3", "-m", "fabric", "-r", "/opt/gpufleet", "-H", "ws", "ops.exec", "--container", "dev",
                        "--command", "touch {marker}; sleep 120"], cwd="{WORK}", env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
for _ in range(600):
    if subprocess.run(["sudo", "-n", "docker", "exec", "dev", "test", "-e", "{marker}"]).returncode == 0:
        break
    time.sleep(0.1)
fab.send_signal(signal.SIGINT)
out, _ = fab.communicate(timeout=60)
print(f"rc={{fab.returncode}}")
print(out)
"""
    code, out = local_lab.exec(SERVER, ["python3", "-c", driver], user="dev")
    assert code == 0 and out.startswith("rc=130\n"), out
    assert "interrupted" in out and "Recap" in out, out
    # sudo, its shell and the docker exec client are gone (the process inside the container is Docker's)
    code, left = sh(local_lab, SERVER, "pgrep -af 'docker exec -i -u root dev sh -c' | grep -v pgrep || true")
    assert left == "", left
    sh(local_lab, SERVER, f"docker exec dev sh -c 'pkill sleep; rm -f {marker}'")


def test_a_local_host_whose_user_is_not_the_one_running_fab_fails_in_one_line(local_lab, first_run):
    code, out, recap = fab(local_lab, "-H", "ws", "apt.proxy", user="root", cwd="/root/work")
    assert code == 1
    assert recap["hosts"][0]["error"] == ("ws (this machine): the inventory says user = 'dev' but fab runs as 'root'; "
                                          "a local host runs as the user who runs fab (leave user out, or run fab as dev)")


def test_a_sudo_password_is_used_for_commands_and_file_writes(local_lab, first_run):
    """A user whose sudo asks for a password: fab gets it as the config's sudo.password (what
    --prompt-for-sudo-password sets; here from a config file, -f) and sync-keys writes that user's
    authorized_keys: the password goes to sudo on stdin ahead of the file's content."""
    lab, home = local_lab, "/home/pw"
    code, out = sh(lab, SERVER, f"id pw >/dev/null 2>&1 || useradd --create-home pw; echo 'pw:s3cret-pw' | chpasswd; "
                                "echo 'pw ALL=(ALL) ALL' > /etc/sudoers.d/pw; chmod 440 /etc/sudoers.d/pw; "
                                f"install -d -o pw -m 700 {home}/.ssh; install -d -o pw {home}/work; "
                                f"install -o pw {WORK}/id_ed25519 {WORK}/id_ed25519.pub {home}/work/; "
                                f"sed 's#{WORK}#{home}/work#g; s/^user = \"dev\"/user = \"pw\"/' {WORK}/hosts.toml "
                                f"> {home}/work/hosts.toml; printf 'sudo:\\n  password: s3cret-pw\\n' > {home}/work/sudo.yaml; "
                                f"chown pw {home}/work/sudo.yaml; chmod 600 {home}/work/sudo.yaml")
    assert code == 0, out
    sudo = ("-f", f"{home}/work/sudo.yaml")
    code, out, recap = fab(lab, *sudo, "-H", "ws", "sync-keys", user="pw", inventory=f"{home}/work/hosts.toml",
                           cwd=f"{home}/work")
    assert code == 0 and recap["hosts"][0]["changed"] == 1, out[-3000:]
    code, keys = sh(lab, SERVER, f"stat -c '%a %U' {home}/.ssh/authorized_keys && cat {home}/.ssh/authorized_keys")
    public_key = sh(lab, SERVER, f"cat {WORK}/id_ed25519.pub")[1]
    assert code == 0 and keys == f"600 pw\n{public_key}", keys  # not a byte of the payload went to sudo
    code, log = sh(lab, SERVER, f"cat {home}/work/.gpufleet/logs/*/ws.log")
    assert "s3cret-pw" not in log and "[sudo]" in log
    code, out, recap = fab(lab, *sudo, "-H", "ws", "sync-keys", user="pw", inventory=f"{home}/work/hosts.toml",
                           cwd=f"{home}/work")
    assert code == 0 and recap["hosts"][0]["changed"] == 0, out[-2000:]
    code, out, recap = fab(lab, "-H", "ws", "sync-keys", user="pw", inventory=f"{home}/work/hosts.toml",
                           cwd=f"{home}/work")
    assert code == 1 and "sudo: a password is required" in recap["hosts"][0]["error"], out[-2000:]
