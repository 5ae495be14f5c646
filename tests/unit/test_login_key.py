"""sync-keys never revokes the key the tool logged in with, also when that key came from the ssh agent
(no `identity` in the inventory): a real sshd on loopback, a real ssh-agent started here."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests import loopback
from tests.conftest import REPO
from tasks import keys


def test_fingerprint_is_openssh_s(tmp_path):
    key = loopback.keygen(tmp_path / "k")
    shown = subprocess.run(["ssh-keygen", "-l", "-f", f"{key}.pub"], capture_output=True, text=True, check=True).stdout
    assert keys.fingerprint(Path(f"{key}.pub").read_text().split()[1]) == shown.split()[1]


@pytest.fixture
def agent_login(tmp_path):
    """A loopback sshd that lets in only a key held by an ssh-agent of this test (in no file the tool reads)."""
    home = tmp_path / "home"
    home.mkdir()
    login = loopback.keygen(tmp_path / "agent_key")
    other = loopback.keygen(tmp_path / "other_key")
    server = loopback.LoopbackSshd(tmp_path / "sshd", Path(f"{login}.pub"))
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not socket_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "SSH_AUTH_SOCK": str(socket_path),
           "HOME": str(home)}
    subprocess.run(["ssh-add", "-q", str(login)], env=env, check=True, capture_output=True)
    Path(login).unlink()  # only the agent has it now

    def inventory(revoked: Path) -> Path:
        path = tmp_path / "hosts.toml"
        path.write_text(textwrap.dedent(f"""
            [local]
            known_hosts = "{tmp_path}/known_hosts"
            ssh_config = "{tmp_path}/ssh_config"
            public_keys = ["{login}.pub"]
            revoked_keys = ["{revoked}"]
            [run]
            log_dir = "{tmp_path}/logs"
            [hosts.a]
            address = "127.0.0.1"
            port = {server.port}
            """))
        return path
    yield env, inventory, Path(f"{login}.pub"), Path(f"{other}.pub")
    agent.terminate()
    agent.wait(timeout=10)
    server.stop()


def sync_keys_dry_run(env, inventory: Path):
    return subprocess.run([sys.executable, "-m", "fabric", "-H", "a", "sync-keys", "--dry-run"], cwd=REPO,
                          env={**env, "PYTHONPATH": REPO, "FABRIC_INVENTORY": str(inventory)},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not loopback.available(), reason="needs root and OpenSSH's sshd")
def test_sync_keys_refuses_to_revoke_the_agent_key_it_logged_in_with(agent_login):
    env, inventory, login_pub, other_pub = agent_login
    fingerprint = keys.fingerprint(login_pub.read_text().split()[1])
    refused = sync_keys_dry_run(env, inventory(revoked=login_pub))
    out = refused.stdout + refused.stderr
    said = [line for line in out.splitlines() if line.startswith("a failed at keys.authorized: ")]
    assert refused.returncode == 1 and len(said) == 1, out[-3000:]
    assert "revokes the key this tool logged in to a with (ssh-ed25519 " + fingerprint in said[0], said
    assert "Traceback" not in out
    # revoking another key is planned as usual, over the same agent login
    allowed = sync_keys_dry_run(env, inventory(revoked=other_pub))
    assert allowed.returncode == 0 and "revokes the key" not in allowed.stdout, allowed.stdout[-3000:]
