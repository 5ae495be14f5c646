"""`gen-ssh-config --person NAME --output FILE`: the block one person needs and no other person's hosts
(golden), read back by the real `ssh -G`; the forwarding-only account's authorized_keys and sshd drop-in."""
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet import forwarding, inventory, ssh_config
from gpufleet.authorized_keys import PublicKey
from tasks import sshconfig
from tasks.keys import forwarded_ports
from tests.conftest import REPO
from tests.goldens import check_golden
from tests.openssh import ssh_resolve

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "people"
ALICE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIErFchO6l9nNIf6OWsloPgN4cDpFFxT4QhIleilxaNGz alice@laptop"
BOB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGaxbDDXNy4cAu6BkOHvjFbdo7f3smQ0h9hTQShxSMBd bob@desk"
INVENTORY = f"""
[local]
known_hosts = "/srv/admin/known_hosts"
identity = "/srv/admin/id_ed25519"

[people.alice]
keys = ["{ALICE}"]
identity = "~/.ssh/id_alice"
known_hosts = "~/.ssh/gpufleet_known_hosts"

[people.bob]
keys = ["{BOB}"]
jump_user = "robert"

[groups.servers]
jump = "bastion"

[groups.servers.containers.dev]
image = "ubuntu:24.04"
ssh_port = 2222
users = ["alice"]

[hosts.bastion]
address = "bastion.example.com"
port = 2200

[hosts.gpu1]
address = "10.0.0.11"
groups = ["servers"]

[hosts.gpu1.containers.bobbox]
image = "ubuntu:24.04"
ssh_port = 2223
users = ["bob"]

[hosts.gpu1.containers.shared]
image = "ubuntu:24.04"
ssh_port = 2224
users = ["alice", "bob"]

[hosts.gpu2]
address = "10.0.0.12"
groups = ["servers"]
forward_user = "tunnels"

[hosts.gpu3]
address = "10.0.0.13"
[hosts.gpu3.containers.admin]
image = "ubuntu:24.04"
ssh_port = 2222
"""


def blocks():
    inv = inventory.loads(INVENTORY, "hosts.toml")
    return {name: ssh_config.render_block(sshconfig.person_entries(inv, name)) for name in ("alice", "bob")}


@pytest.mark.parametrize("name", ["alice", "bob"])
def test_a_persons_block_golden(name):
    check_golden(GOLDEN / f"{name}.ssh_config", blocks()[name].encode())


def test_a_persons_block_holds_their_hosts_only_and_ssh_reads_it(tmp_path):
    """Alice: her containers (dev on gpu1 and gpu2, the shared one), their servers as the forwarding account,
    the bastion as her own login; never bob's box nor gpu3 (nobody's container there)."""
    config = tmp_path / "alice.config"
    config.write_text(blocks()["alice"])
    text = config.read_text()
    assert "bobbox" not in text and "gpu3" not in text and "robert" not in text
    expect = {
        "bastion": ("bastion.example.com", "2200", "alice", "none"),
        "gpu1": ("10.0.0.11", "22", "gpufleet-fwd", "bastion"),
        "gpu2": ("10.0.0.12", "22", "tunnels", "bastion"),
        "gpu1-dev": ("127.0.0.1", "2222", "root", "gpu1"),
        "gpu1-shared": ("127.0.0.1", "2224", "root", "gpu1"),
        "gpu2-dev": ("127.0.0.1", "2222", "root", "gpu2"),
    }
    for alias, (hostname, port, user, jump) in expect.items():
        rc, options, err = ssh_resolve(config, alias)
        assert rc == 0, err
        assert (options["hostname"], options["port"], options["user"]) == (hostname, port, user), alias
        assert options.get("proxyjump", "none") == jump if jump != "none" else "proxyjump" not in options
        assert options["hostkeyalias"] == alias and options["stricthostkeychecking"] == "true"
        assert options["identityfile"].endswith("/.ssh/id_alice")
    assert ssh_resolve(config, "gpu1-bobbox")[1]["hostname"] == "gpu1-bobbox"  # not in her block: ssh's default


def test_the_forwarding_account_lets_each_person_open_their_own_containers_only():
    inv = inventory.loads(INVENTORY, "hosts.toml")
    people = {name: [PublicKey(*line.split()[:2])] for name, line in (("alice", ALICE), ("bob", BOB))}
    ports = forwarded_ports(inv.host("gpu1"))
    assert ports == {"alice": [2222, 2224], "bob": [2223, 2224]}
    text = forwarding.authorized_keys({p: (people[p], ports[p]) for p in ports})
    check_golden(GOLDEN / "gpu1-forward.authorized_keys", text.encode())
    assert forwarding.authorized_keys({"alice": (people["alice"], [])}).count("\n") == 1  # no container: no line


SSHD_DUMPS = [  # (sshd -T lines, AllowUsers to extend?, problems)
    ("allowtcpforwarding yes\n", False, []),
    ("allowusers root@10.77.46.2\nallowusers dev@10.77.46.2\nallowtcpforwarding yes\n", True,
     ["AllowUsers does not list gpufleet-fwd (does sshd_config Include /etc/ssh/sshd_config.d?)"]),
    ("allowusers root@10.77.46.2\nallowusers gpufleet-fwd\nallowtcpforwarding local\n", True, []),
    ("allowusers gpufleet-fwd\nallowtcpforwarding no\n", False, ["AllowTcpForwarding is no for gpufleet-fwd"]),
    ("allowtcpforwarding remote\nallowgroups staff\n", False,
     ["AllowTcpForwarding is remote for gpufleet-fwd", "allowgroups is set (staff): check that it lets gpufleet-fwd in"]),
]


@pytest.mark.parametrize("dump,extend,problems", SSHD_DUMPS)
def test_sshd_settings_the_account_needs(dump, extend, problems):
    parsed = forwarding.parse_sshd_dump(dump)
    assert forwarding.others_in_allow_users(parsed, "gpufleet-fwd") == extend
    assert forwarding.forwarding_problems(parsed, "gpufleet-fwd") == problems
    drop_in = forwarding.sshd_drop_in("gpufleet-fwd", extend)
    assert ("AllowUsers gpufleet-fwd\n" in drop_in) == extend  # never a new AllowUsers list: it would lock others out


def test_person_option_errors_through_the_real_command_line(tmp_path, isolated_home):
    path = tmp_path / "hosts.toml"
    path.write_text(INVENTORY)
    for args, message in ((["--person", "carol", "--output", str(tmp_path / "c")],
                           f"{path}: people: unknown person 'carol' (add a [people.carol] table)"),
                          (["--person", "alice"], "gen-ssh-config: --person and --output go together")):
        done = subprocess.run([sys.executable, "-m", "fabric", "-r", str(REPO), "gen-ssh-config", *args],
                              capture_output=True, text=True, env={"FABRIC_INVENTORY": str(path),
                                                                   "HOME": str(isolated_home), "PATH": "/usr/bin:/bin"})
        assert (done.returncode, done.stderr.strip().splitlines()[-1]) == (2, f"error: {message}")
    assert not (tmp_path / "c").exists()


def test_person_block_written_by_the_real_command_line_dry_run_first(tmp_path, isolated_home):
    known = tmp_path / "known_hosts"
    known.write_text("bastion ssh-ed25519 AAAAB\ngpu1 ssh-ed25519 AAAAG1\ngpu1-bobbox ssh-ed25519 AAAABOB\n"
                     "gpu1-dev ssh-ed25519 AAAAD\n")
    path = tmp_path / "hosts.toml"
    path.write_text(INVENTORY.replace("/srv/admin/known_hosts", str(known)))
    output = tmp_path / "out" / "alice.conf"

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "fabric", "-r", str(REPO), "gen-ssh-config", "--person", "alice",
                               "--output", str(output), *extra], capture_output=True, text=True,
                              env={"FABRIC_INVENTORY": str(path), "HOME": str(isolated_home), "PATH": "/usr/bin:/bin"})
    dry = run("--dry-run")
    assert dry.returncode == 0 and "+Host gpu1-dev" in dry.stdout and f"dry run: {output} not written" in dry.stdout
    assert not output.exists()
    done = run()
    assert done.returncode == 0, done.stderr
    assert output.read_text() == blocks()["alice"]
    # her hosts' pinned keys and no one else's
    assert Path(f"{output}.known_hosts").read_text() == ("bastion ssh-ed25519 AAAAB\ngpu1 ssh-ed25519 AAAAG1\n"
                                                         "gpu1-dev ssh-ed25519 AAAAD\n")
    assert run().stdout.count("no changes") == 2


class Server:
    """Runs nothing: answers `sshd -t` with the exit code and message a real sshd gave, records every argv."""

    def __init__(self, sshd_t: tuple[int, str]):
        self.sshd_t, self.ran = sshd_t, []

    def run(self, argv, sudo=False, check=True):
        from gpufleet.remote import Result
        self.ran.append(argv)
        if argv[-1] == "-t":
            return Result(self.sshd_t[0], "", self.sshd_t[1])
        return Result(0, "allowusers root@10.77.46.2\nallowusers gpufleet-fwd\nallowtcpforwarding local\n", "")


# (the drop-in there before?, what `sshd -t` says) -> the commands run after it
RELOADS = [
    (False, (0, ""), [["/usr/sbin/sshd", "-t"], ["sh", "-c", 'kill -HUP "$(cat /run/sshd.pid)"'],
                      ["/usr/sbin/sshd", "-T", "-C", "user=gpufleet-fwd,host=localhost,addr=127.0.0.1"],
                      # then it waits until sshd answers again (the dump names no listenaddress: port 22)
                      ["bash", "-c", forwarding.sshd_answers_script("127.0.0.1", 22)]]),
    (False, (255, "/etc/ssh/sshd_config.d/40-gpufleet-forward.conf line 3: Directive 'AllowUsers' is not allowed "
                  "within a Match block"),
     [["/usr/sbin/sshd", "-t"], ["rm", "-f", "--", "/etc/ssh/sshd_config.d/40-gpufleet-forward.conf"]]),
    (True, (255, "line 1: Bad configuration option: Nope"),
     [["/usr/sbin/sshd", "-t"], ["mv", "-f", "-T", "--", "/etc/ssh/sshd_config.d/40-gpufleet-forward.conf.gpufleet.bak",
                                 "/etc/ssh/sshd_config.d/40-gpufleet-forward.conf"]]),
]


@pytest.mark.parametrize("existed,sshd_t,commands", RELOADS)
def test_sshd_reloads_only_after_sshd_t_passes_and_a_failing_drop_in_is_taken_back(existed, sshd_t, commands):
    from gpufleet.errors import ValidationFailed
    from gpufleet.facts import RemoteFile
    from gpufleet.files import FileChange
    from gpufleet.paths import SSHD_DROP_IN
    from tasks.keys import check_and_reload_sshd
    server = Server(sshd_t)
    change = FileChange(SSHD_DROP_IN, RemoteFile(existed, b"old", "0644", "root", "root"), b"new")
    if sshd_t[0]:
        with pytest.raises(ValidationFailed, match=r"40-gpufleet-forward\.conf failed validation \(/usr/sbin/sshd -t\)"):
            check_and_reload_sshd(server, change, "gpufleet-fwd")
    else:
        check_and_reload_sshd(server, change, "gpufleet-fwd")
    assert server.ran == commands
