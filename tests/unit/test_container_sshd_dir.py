"""sshd refuses a /run/sshd that is not root's 0755 ("must be owned by root and not group or world-writable"):
the tool sets the folder's owner and mode itself wherever sshd is about to run, whatever umask `docker exec`
hands down (on a GPU host with Docker 29 a plain `mkdir -p` left sshd unable to start) and whatever mode an
earlier run or the image left. Each command is run here with umask 000 and /run/sshd moved under tmp_path."""
import subprocess

import pytest

from gpufleet.files import render_template
from tasks import containers

COMMANDS = {
    "sshd -t of a new sshd_config": lambda: next(word for word in containers.sshd_validator("dev")(
        "/var/lib/gpufleet/containers/dev/x") if "/run/sshd" in word),
    "the entrypoint": lambda: next(line for line in render_template(
        "entrypoint.sh.j2", name="dev", config_dir="/c", sshd_dir=containers.SSHD_DIR).splitlines()
        if "/run/sshd" in line and "mkdir" in line),
}


@pytest.mark.parametrize("before", [None, 0o777, 0o775])
@pytest.mark.parametrize("where", COMMANDS)
def test_the_sshd_folder_is_roots_and_0755_under_any_umask(tmp_path, where, before):
    folder = tmp_path / "sshd"
    if before is not None:
        folder.mkdir()
        folder.chmod(before)
    line = COMMANDS[where]()
    assert containers.SSHD_DIR in line, line
    made = containers.SSHD_DIR.replace("/run/sshd", str(folder))
    if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0":
        made = made.replace(f"chown 0:0 {folder} && ", "")  # only root may chown; the tool runs as root there
    subprocess.run(["sh", "-c", f"umask 000; {made}"], check=True)
    assert oct(folder.stat().st_mode & 0o777) == "0o755", made
