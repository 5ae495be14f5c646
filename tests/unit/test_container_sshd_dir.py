"""sshd refuses a world-writable /run/sshd ("must be owned by root and not group or world-writable"): the
tool gives the folder its mode itself where it makes it, whatever umask `docker exec` hands down (on a GPU
host with Docker 29 a plain `mkdir -p` left sshd unable to start). Each command is run here with umask 000
and /run/sshd moved under tmp_path."""
import subprocess

import pytest

from gpufleet.files import render_template
from tasks import containers


def first_command(script: str) -> str:
    return script.split("&&")[0].split(";")[0].strip()


COMMANDS = {
    "sshd -t of a new sshd_config": lambda: containers.sshd_validator("dev")("/var/lib/gpufleet/containers/dev/x")[6],
    "the entrypoint": lambda: next(line for line in render_template("entrypoint.sh.j2", name="dev", config_dir="/c")
                                   .splitlines() if "/run/sshd" in line and "mkdir" in line),
}


@pytest.mark.parametrize("where", COMMANDS)
def test_the_sshd_folder_is_made_0755_under_any_umask(tmp_path, where):
    made = first_command(COMMANDS[where]()).replace("/run/sshd", str(tmp_path / "sshd"))
    subprocess.run(["sh", "-c", f"umask 000; {made}"], check=True)
    assert oct((tmp_path / "sshd").stat().st_mode & 0o777) == "0o755", made
