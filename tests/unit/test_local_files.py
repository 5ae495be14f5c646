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


@pytest.mark.parametrize("link_text", ["absolute", "relative", "chain"])
def test_a_config_that_is_a_symbolic_link_stays_one_and_its_target_is_written(tmp_path, link_text):
    """A dotfile manager's ~/.ssh/config -> ~/dotfiles/ssh/config: the link is kept, the file it leads to gets
    the new content (atomically, in its own folder, its mode kept), the backup sits beside the link."""
    dotfiles = tmp_path / "dotfiles" / "ssh"
    dotfiles.mkdir(parents=True)
    target = dotfiles / "config"
    target.write_bytes(b"old\n")
    os.chmod(target, 0o640)
    ssh_dir = tmp_path / "home" / ".ssh"
    ssh_dir.mkdir(parents=True)
    link = ssh_dir / "config"
    if link_text == "absolute":
        link.symlink_to(target)
    elif link_text == "relative":
        link.symlink_to(os.path.relpath(target, ssh_dir))
    else:  # a link to a link
        (dotfiles / "current").symlink_to("config")
        link.symlink_to(dotfiles / "current")
    pointed = os.readlink(link)
    write_atomically(link, b"new\n", backup=True)
    assert link.is_symlink() and os.readlink(link) == pointed
    assert target.read_bytes() == b"new\n" and not target.is_symlink() and mode(target) == 0o640
    assert (ssh_dir / "config.gpufleet.bak").read_bytes() == b"old\n"
    assert sorted(os.listdir(ssh_dir)) == ["config", "config.gpufleet.bak"]  # no temp file left anywhere
    assert sorted(os.listdir(dotfiles)) == sorted(["config"] + (["current"] if link_text == "chain" else []))


def test_a_link_to_a_file_not_there_yet_gets_it(tmp_path):
    link = tmp_path / "config"
    link.symlink_to(tmp_path / "dotfiles" / "config")
    write_atomically(link, b"Host a\n")
    assert link.is_symlink() and (tmp_path / "dotfiles" / "config").read_bytes() == b"Host a\n"
    assert mode(tmp_path / "dotfiles" / "config") == 0o600
