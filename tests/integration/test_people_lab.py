"""People on the lab: each person's container holds their key, the server's forwarding-only account lets
them open their own container and nothing else, and their own ssh config block gets them there through the
real OpenSSH client.  The bastion is the lab's (the tool does not manage it): the test gives alice and bob a
login there, as a user's own bastion would have."""
import re
import shlex
import subprocess

from gpufleet import forwarding
from tests.integration.helpers import inventory_variant, sh, ssh

ALLOW_ON_BASTION = "/etc/ssh/sshd_config.d/60-people.conf"


def keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


def bastion_logins(lab, keys: dict[str, str]) -> None:
    script = "".join(f"id {n} >/dev/null 2>&1 || useradd -m -s /bin/sh {n}; mkdir -p /home/{n}/.ssh; "
                     f"echo '{k}' > /home/{n}/.ssh/authorized_keys; chown -R {n}: /home/{n}/.ssh; " for n, k in keys.items())
    script += (f"echo 'AllowUsers {' '.join(keys)}' > {ALLOW_ON_BASTION}; kill -HUP $(cat /run/sshd.pid); "
               "bash -c " + shlex.quote(forwarding.sshd_answers_script("127.0.0.1", 22)))
    code, out = sh(lab, "bastion", script)
    assert code == 0, out


def people_inventory(lab, tmp_path, name, alice_in_dev=True):
    image = re.search(r'^image = (".*")$', lab.inventory_path.read_text(), re.M).group(1)
    users = '["alice"]' if alice_in_dev else "[]"
    return inventory_variant(lab, tmp_path, name, replace={'ssh_port = 2222\n': f'ssh_port = 2222\nusers = {users}\n'},
                             append=f"""
[people.alice]
keys = ["{tmp_path / 'alice.pub'}"]
identity = "{tmp_path / 'alice'}"
known_hosts = "{tmp_path / 'alice.conf.known_hosts'}"

[people.bob]
keys = ["{tmp_path / 'bob.pub'}"]
identity = "{tmp_path / 'bob'}"
known_hosts = "{tmp_path / 'bob.conf.known_hosts'}"

[hosts.gpu1.containers.bobbox]
image = {image}
ssh_port = 2223
users = ["bob"]
ulimit_nofile = "20000:20000"     # the lab's nested engines cannot raise it further (see lab/README.md)
""")


def forward(config, target, alias="gpu1"):
    """`ssh -W target alias`: a forward through the account, as ProxyJump asks for one."""
    return subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-W", target,
                           alias], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_a_person_reaches_their_container_and_nothing_else_on_the_server(lab, fab, bootstrapped, tmp_path):
    assert bootstrapped.returncode == 0, bootstrapped.stdout[-2000:]
    alice_key, bob_key = keygen(tmp_path / "alice"), keygen(tmp_path / "bob")
    inventory = people_inventory(lab, tmp_path, "people.toml")
    first = fab("-H", "gpu1", "bootstrap", inventory=inventory)
    assert first.returncode == 0, first.stdout[-3000:]
    steps = {s["step"]: s for s in first.hosts["gpu1"]["steps"]}
    assert steps["keys.forward"]["status"] == "changed" and steps["keys.authorized"]["status"] == "changed"
    again = fab("-H", "gpu1", "sync-keys", inventory=inventory)
    assert again.returncode == 0, again.stdout[-3000:]
    assert {s["step"]: s["status"] for s in again.hosts["gpu1"]["steps"]} == {"keys.authorized": "ok",
                                                                             "keys.forward": "ok"}
    # the server's real state: the account, its root-owned file, each container's keys
    code, passwd = sh(lab, "gpu1", "getent passwd gpufleet-fwd; getent shadow gpufleet-fwd | cut -d: -f2; "
                                   "stat -c '%U %a' /var/lib/gpufleet/forward /var/lib/gpufleet/forward/.ssh "
                                   "/var/lib/gpufleet/forward/.ssh/authorized_keys")
    assert code == 0 and passwd.splitlines()[0].endswith(":/var/lib/gpufleet/forward:/usr/sbin/nologin"), passwd
    assert passwd.splitlines()[1:] == ["*", "root 755", "root 755", "root 644"], passwd
    code, out = sh(lab, "gpu1", "runuser -u gpufleet-fwd -- sh -c 'echo x >> /var/lib/gpufleet/forward/.ssh/"
                                "authorized_keys'")
    assert code != 0 and "Permission denied" in out
    for container, holds, lacks in (("dev", alice_key, bob_key), ("bobbox", bob_key, alice_key)):
        code, keys = sh(lab, "gpu1", f"docker exec {container} cat /root/.ssh/authorized_keys")
        assert code == 0 and holds.split()[1] in keys and lacks.split()[1] not in keys, keys

    bastion_logins(lab, {"alice": alice_key, "bob": bob_key})
    try:
        for person in ("alice", "bob"):
            done = fab("gen-ssh-config", "--person", person, "--output", str(tmp_path / f"{person}.conf"),
                       inventory=inventory)
            assert done.returncode == 0, done.stderr
        alice = tmp_path / "alice.conf"
        assert "bobbox" not in alice.read_text() and "bobbox" not in (tmp_path / "alice.conf.known_hosts").read_text()
        reached = ssh(lab, "gpu1-dev", "hostname", config=alice)
        assert (reached.returncode, reached.stdout.strip()) == (0, "gpu1-dev"), reached.stderr
        reached = ssh(lab, "gpu1-bobbox", "hostname", config=tmp_path / "bob.conf")
        assert reached.returncode == 0, reached.stderr

        # refused: a shell on the server, a forward to bob's container, a forward to the server's own sshd
        shell = ssh(lab, "gpu1", "id", config=alice)
        assert shell.returncode != 0 and "This account is currently not available." in shell.stdout + shell.stderr
        assert "uid=" not in shell.stdout
        for target in ("127.0.0.1:2223", "127.0.0.1:22", "localhost:2222"):
            refused = forward(alice, target)
            assert refused.returncode != 0 and "administratively prohibited" in refused.stderr, (target, refused.stderr)
            print(f"refused: forward to {target}: exit {refused.returncode}: " + refused.stderr.strip().replace("\n", " | "))
        print(f"refused: shell on gpu1: exit {shell.returncode}: " + (shell.stdout + shell.stderr).strip().replace("\n", " | "))
        listen = subprocess.run(["ssh", "-F", str(alice), "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-N",
                                 "-R", "127.0.0.1:0:127.0.0.1:22", "gpu1"], capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL)
        assert listen.returncode != 0 and "remote port forwarding failed" in listen.stderr, listen.stderr
        print(f"refused: remote forward on gpu1: exit {listen.returncode}: " + listen.stderr.strip().replace("\n", " | "))

        # alice leaves dev: her key goes from the container and from the account, her alias stops working
        without = people_inventory(lab, tmp_path, "people-without-alice.toml", alice_in_dev=False)
        left = fab("-H", "gpu1", "sync-keys", inventory=without)
        assert left.returncode == 0, left.stdout[-3000:]
        code, keys = sh(lab, "gpu1", "docker exec dev cat /root/.ssh/authorized_keys; "
                                     "cat /var/lib/gpufleet/forward/.ssh/authorized_keys")
        assert alice_key.split()[1] not in keys and bob_key.split()[1] in keys, keys
        assert ssh(lab, "gpu1-dev", "hostname", config=alice).returncode != 0
    finally:
        sh(lab, "bastion", f"rm -f {ALLOW_ON_BASTION}; kill -HUP $(cat /run/sshd.pid)")
        # the next test goes through the bastion at once: not between sshd's old sockets and its new ones
        sh(lab, "bastion", "bash -c " + shlex.quote(forwarding.sshd_answers_script("127.0.0.1", 22)))
