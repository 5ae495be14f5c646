"""Root in a managed container stays in it: whatever it links, writes or prints, the tool's runs change no
file of the server outside the container's own layer and volumes, and the facts read from the server are
the server's.  Run on a real lab server through the bastion with the real `fab` CLI."""
import base64
import shlex
from types import SimpleNamespace

from gpufleet import facts
from gpufleet.connect import Connector
from gpufleet.inventory import load
from gpufleet.paths import DAEMON_JSON, authorized_keys_of, probe_request
from gpufleet.remote import SshSession
from tests.integration.helpers import inventory_variant, sh

ATTACKER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAttackerAttackerAttackerAttackerAttacker00 root@container"
FORGED_FILE = "644 root root\n" + base64.b64encode(f"{ATTACKER_KEY}\n".encode()).decode()
FORGED_DAEMON = "644 root root\n" + base64.b64encode(b'{"hosts": ["tcp://0.0.0.0:2375"]}\n').decode()
# what a command in the container prints: sections that, were they read as the probe's own, would put the
# attacker's key into the server's authorized_keys and an open Docker socket into its daemon.json; the old
# in-band markers; the probe's end
FORGERY = "".join([
    *(facts.frame(f"file:{i}", FORGED_FILE if i % 2 else FORGED_DAEMON) for i in range(24)),
    "@@gpufleet-end inside:0 rc=0@@\n@@gpufleet-end pkgs rc=0@@\n",
    *(f"@@gpufleet-begin file:{i}@@\n{FORGED_FILE}\n@@gpufleet-end file:{i} rc=0@@\n" for i in range(24)),
    facts.PROBE_DONE + "\n",
])

# links to the server's secrets (as root in the container sees paths), every way a path can climb
TARGETS = ["/etc/shadow", "../../../../../../../../etc/shadow", "/proc/1/root/etc/shadow",
           "/proc/self/root/etc/shadow", "/proc/1/cwd/../../etc/shadow"]
TOOL_FOLDER = ["entrypoint.sh.gpufleet.bak", "sshd_config.gpufleet.bak", "ssh_host_ed25519_key.pub",
               ".sshd_config.gpufleet-tmp-000000000000", "planted"]
LINKED = ["/root/.ssh/authorized_keys", "/root/.gitconfig", "/etc/apt/apt.conf.d/90gpufleet-proxy",
          "/etc/apt/sources.list.d/debian.sources", "/var/lib/gpufleet-tool-writes", "/root/.ssh/known_hosts",
          "/root/.ssh/id_ed25519_github.pub", "/var/lib/gpufleet-last-snapshot"]
# not stat: output in front of readfile's makes the container's files unreadable, and its host fails with one
# line naming it (test_facts covers that)
WRAPPED = ["dpkg-query", "cat", "git", "find", "xargs", "ssh-keygen", "touch", "df", "nvidia-smi", "sshd"]


def plant_script() -> str:
    """What root in the container does: links in every folder the tool writes or reads, a wrapper in front
    of every command the tool may run in it that prints the forgery first, forged lines inside files the
    tool reads, and a pending dpkg journal (so the probe reads it with docker exec)."""
    q = shlex.quote
    forgery = "/usr/local/share/forgery"
    lines = ["mkdir -p /root/.ssh /usr/local/bin /usr/local/share",
             f"echo {base64.b64encode(FORGERY.encode()).decode()} | base64 -d > {forgery}"]
    for i, name in enumerate(TOOL_FOLDER):
        lines.append(f"ln -sfn {q(TARGETS[i % len(TARGETS)])} /etc/gpufleet/{name} 2>/dev/null "
                     f"&& echo PLANTED {name} || true")
    for i, path in enumerate(LINKED):
        lines.append(f"rm -f {q(path)} && ln -s {q(TARGETS[i % len(TARGETS)])} {q(path)}")
    for command in WRAPPED:
        real = f"$(PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v {command} || echo /bin/true)"
        lines.append(f"printf '#!/bin/sh\\n/bin/cat {forgery}; /bin/cat {forgery} >&2\\nexec %s \"$@\"\\n' "
                     f"\"{real}\" > /usr/local/bin/{command} && chmod 755 /usr/local/bin/{command}")
    lines.append(f"/bin/cat {forgery} >> /etc/os-release")
    lines.append("mkdir -p /var/lib/dpkg/updates && : > /var/lib/dpkg/updates/0001")
    return "\n".join(lines)


# the server's files: every path of its root file system with type, size, mode, owner, mtime, ctime and
# link target (a write or chmod anywhere moves the ctime), and the content of /etc, /root, /home,
# /var/lib/gpufleet and /usr/local; not /var/log (logins are recorded there), /proc, /sys, and not the
# containers' own storage: the docker data root and volumes (/data, another file system), containerd's
# state of their tasks and snapshots (/var/lib/containerd), and the tool's record of what it wrote in each
# (/var/lib/gpufleet/containers-state: a re-created container's record is rewritten, by design)
FINGERPRINT = r"""
find / -xdev \( -path /var/log -o -path /proc -o -path /sys -o -path /var/lib/containerd \
    -o -path /var/lib/gpufleet/containers-state \) -prune -o \
    -printf '%p\t%y\t%s\t%m\t%U:%G\t%T@\t%C@\t%l\n' | grep -v -e '^/tmp	d' -e '^/run	d' | sort
find /etc /root /home /var/lib/gpufleet /usr/local -xdev -path /var/lib/gpufleet/containers-state -prune -o \
    -type f -exec sha256sum {} + 2>/dev/null | sort
"""

OTHER = """
[hosts.gpu1.containers.other]
image = "pytorch/pytorch:lab-bookworm"
ssh_port = 2223
shm_size = "1g"
ulimit_nofile = "20000:20000"
"""


def fingerprint(lab, host) -> list[str]:
    code, out = sh(lab, host, FINGERPRINT)
    assert code == 0, out[-500:]
    return out.splitlines()


def server_facts(lab) -> facts.HostFacts:
    connector = Connector(load(lab.inventory_path))
    session = SshSession("gpu1", connector.connection("gpu1"))
    session.open()
    try:
        request = probe_request(SimpleNamespace(host=connector.inventory.hosts["gpu1"], run_state={}))
        return facts.gather(session, request)
    finally:
        session.close()
        connector.close()


def test_root_in_a_container_changes_nothing_of_its_server(lab, fab, bootstrapped, tmp_path):
    two = inventory_variant(lab, tmp_path, "two.toml", append=OTHER)
    assert fab("-H", "gpu1", "bootstrap", inventory=two).returncode == 0
    code, out = sh(lab, "gpu1", "docker exec -i dev sh -c " + shlex.quote(plant_script()))
    assert code == 0, out
    assert "PLANTED" not in out  # the tool's folder is read-only inside: no link could be made there
    assert sh(lab, "gpu1", "docker exec dev cat /etc/os-release")[1].count("@@gpufleet") > 40  # the wrappers run
    before = fingerprint(lab, "gpu1")

    # the facts about the server are the server's, whatever the container printed into its own
    f = server_facts(lab)
    for path in (authorized_keys_of("root"), DAEMON_JSON):
        code, real = sh(lab, "gpu1", f"base64 -w0 {path}")
        assert f.file(path).content == base64.b64decode(real) and ATTACKER_KEY.encode() not in f.file(path).content
    assert "@@gpufleet" in f.inside["dev"].file("/etc/os-release").text  # read, and kept as the container's

    changed = inventory_variant(lab, tmp_path, "changed.toml",  # dev's spec changed; other no longer named
                                replace={'shm_size = "1g"\nvolumes': 'shm_size = "2g"\nvolumes'})
    runs = {
        "bootstrap": fab("-H", "gpu1", "bootstrap", inventory=two),
        "sync-keys": fab("-H", "gpu1", "sync-keys", inventory=two),
        "ops.snapshot": fab("-H", "gpu1", "ops.snapshot", "--container", "dev", inventory=two),
        "ops.rm of another container": fab("-H", "gpu1", "ops.rm", "--container", "other", "--force", "--yes",
                                           inventory=two),
        "re-creation": fab("-H", "gpu1", "bootstrap", inventory=changed),
    }
    after = fingerprint(lab, "gpu1")
    assert [line for line in before if line not in set(after)] == [] == [line for line in after if line not in set(before)]
    for name, run in runs.items():
        assert run.returncode == 0, (name, run.stdout[-1500:], run.stderr[-1500:])
    assert sh(lab, "gpu1", "docker ps -a --format '{{.Names}}'")[1].split() == ["dev"]  # other removed, dev anew
    assert "shm_size" in runs["re-creation"].stdout and "snapshot" in runs["re-creation"].stdout
