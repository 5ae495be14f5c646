"""A login user whose home is not /home/NAME: sync-keys writes its authorized_keys in the home the server
names (getent passwd), twice (changed, then unchanged), and the key it added logs in."""
import subprocess
import tomllib

from tests.integration.helpers import sh

HOST = "gpu1"


def test_keys_go_to_the_home_the_server_names(lab, fab, tmp_path):
    lab_inventory = tomllib.loads(lab.inventory_path.read_text())
    local, bastion, server = lab_inventory["local"], lab_inventory["hosts"]["bastion"], lab_inventory["hosts"][HOST]
    # the lab's sudo user `dev` (its key in its home, sshd lets it in from the bastion), its home moved
    code, out = sh(lab, HOST, "usermod -d /srv/dev -m dev && test ! -e /home/dev")
    assert code == 0, out
    try:
        new_key = tmp_path / "dev_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(new_key)], check=True)
        inventory = tmp_path / "moved-home.toml"
        inventory.write_text(
            f'[local]\nssh_config = "{tmp_path / "ssh_config"}"\nknown_hosts = "{local["known_hosts"]}"\n'
            f'identity = "{local["identity"]}"\npublic_keys = ["{local["public_keys"][0]}", "{new_key}.pub"]\n'
            f'[hosts.bastion]\naddress = "{bastion["address"]}"\nport = {bastion["port"]}\n'
            f'[hosts.{HOST}]\naddress = "{server["address"]}"\njump = "bastion"\nuser = "dev"\n')
        first = fab("-H", HOST, "sync-keys", inventory=inventory)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
        assert first.hosts[HOST]["changed"] == 1, first.hosts[HOST]
        code, keys = sh(lab, HOST, "cat /srv/dev/.ssh/authorized_keys")
        assert code == 0 and new_key.with_suffix(".pub").read_text().split()[1] in keys, keys
        code, owner = sh(lab, HOST, "stat -c '%U:%G %a' /srv/dev/.ssh/authorized_keys; test ! -e /home/dev")
        assert code == 0 and owner == "dev:dev 600", owner  # and nothing was made at /home/dev
        second = fab("-H", HOST, "sync-keys", inventory=inventory)
        assert second.returncode == 0 and second.hosts[HOST]["changed"] == 0, second.hosts[HOST]
        # the key it added is the one sshd reads: dev logs in with it
        assert fab("gen-ssh-config", inventory=inventory).returncode == 0
        config = (tmp_path / "ssh_config").read_text()
        head, server_block = config.split(f"\nHost {HOST}\n", 1)  # the new key for the server only
        (tmp_path / "ssh_config").write_text(f"{head}\nHost {HOST}\n" + server_block.replace(
            local["identity"], str(new_key), 1))
        done = subprocess.run(["ssh", "-F", str(tmp_path / "ssh_config"), "-o", "BatchMode=yes", "-o",
                               "ConnectTimeout=10", HOST, "id -un"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == "dev", done.stderr
    finally:
        sh(lab, HOST, "usermod -d /home/dev -m dev")
