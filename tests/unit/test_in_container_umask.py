"""What the tool runs in a container sets umask 022 itself: `docker exec` hands down the engine's umask,
which was 0000 under Docker 29 on the GPU proof's host (docs/gpu-proof.md). Each argv that in_container
builds is run here, without its `docker exec -i -u root -- NAME` head, under umask 000."""
import subprocess

import pytest

from gpufleet.files import in_container
from gpufleet.remote import Script

HEAD = ["docker", "exec", "-i", "-u", "root", "--", "dev"]


@pytest.mark.parametrize("form", ["argv", "script"])
def test_a_folder_made_in_a_container_is_0755_under_umask_000(tmp_path, form):
    made = tmp_path / "made"
    command = ["mkdir", str(made)] if form == "argv" else Script(f"set -e\nmkdir {made}\n")
    argv = in_container("dev", command)
    assert argv[:len(HEAD)] == HEAD
    subprocess.run(["sh", "-c", 'umask 000; exec "$@"', "sh", *argv[len(HEAD):]], check=True)
    assert oct(made.stat().st_mode & 0o777) == "0o755", argv


def test_an_argv_keeps_its_words_whatever_they_hold(tmp_path):
    words = ["printf", "%s|", "a b", "$HOME", "'quoted'", "; rm -rf /", ""]
    argv = in_container("dev", words)
    out = subprocess.run(argv[len(HEAD):], capture_output=True, text=True, check=True).stdout
    assert out == "a b|$HOME|'quoted'|; rm -rf /||"
