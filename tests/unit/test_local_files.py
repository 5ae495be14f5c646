"""The one local writer: the workstation's ssh config and the tool's known_hosts file."""
import os
import stat

import pytest

from gpufleet.connect import KnownHosts
from gpufleet.local_files import write_atomically


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_file_is_0600_in_a_new_0700_folder(tmp_path):
    target = tmp_path / "new" / "config"
    write_atomically(target, b"Host a\n")
    assert target.read_bytes() == b"Host a\n" and mode(target) == 0o600 and mode(target.parent) == 0o700


def test_an_existing_files_mode_is_kept_and_its_old_content_backed_up_when_asked(tmp_path):
    target = tmp_path / "config"
    target.write_bytes(b"old\n")
    os.chmod(target, 0o644)
    write_atomically(target, b"new\n", backup=True)
    assert target.read_bytes() == b"new\n" and mode(target) == 0o644
    assert (tmp_path / "config.gpufleet.bak").read_bytes() == b"old\n"
    write_atomically(target, b"newer\n")
    assert (tmp_path / "config.gpufleet.bak").read_bytes() == b"old\n"


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "config"
    target.write_bytes(b"old\n")
    with pytest.raises(TypeError):
        write_atomically(target, "not bytes")
    assert target.read_bytes() == b"old\n" and os.listdir(tmp_path) == ["config"]


def test_known_hosts_goes_through_it(tmp_path):
    path = tmp_path / "known_hosts"
    store = KnownHosts(path)
    assert store.pin("gpu1", "ssh-ed25519", "AAAA1") and not store.pin("gpu1", "ssh-ed25519", "AAAA1")
    assert path.read_text() == "gpu1 ssh-ed25519 AAAA1\n" and mode(path) == 0o600
    assert os.listdir(tmp_path) == ["known_hosts"]
    assert KnownHosts(path).get("gpu1") == [("ssh-ed25519", "AAAA1")]
