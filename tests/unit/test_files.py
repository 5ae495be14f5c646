"""The remote file primitive: plan (ok vs changed, diff) and the install script, run for real."""
import os
import stat
import subprocess

import pytest

from gpufleet.errors import InputError, ValidationFailed
from gpufleet.facts import ABSENT, RemoteFile, parse_file
from gpufleet.files import FileChange, apply_file, render_template, unified_diff, write_script
from gpufleet.remote import LocalSession, Script

ME = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
GROUP = subprocess.run(["id", "-gn"], capture_output=True, text=True).stdout.strip()


def state(path):
    """What the probe's readfile would report, read with the real shell function."""
    out = subprocess.run(["sh", "-c", "readfile() { if [ -e \"$1\" ]; then stat -c '%a %U %G' \"$1\" && "
                          "{ [ ! -f \"$1\" ] || base64 -w0 \"$1\"; }; else echo absent; fi; }; readfile \"$1\"",
                          "sh", str(path)], capture_output=True, text=True).stdout
    return parse_file(out)


CASES = [
    # (id, current, new content, mode, needed, summary start)
    ("absent", ABSENT, b"a\n", "0644", True, "create"),
    ("same", RemoteFile(True, b"a\n", "0644", "root", "root"), b"a\n", "0644", False, ""),
    ("content", RemoteFile(True, b"a\n", "0644", "root", "root"), b"b\n", "0644", True, "update"),
    ("mode", RemoteFile(True, b"a\n", "0664", "root", "root"), b"a\n", "0644", True, "fix owner/mode"),
    ("owner", RemoteFile(True, b"a\n", "0644", "ada", "root"), b"a\n", "0644", True, "fix owner/mode"),
]


@pytest.mark.parametrize("current,content,mode,needed,summary", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_of_a_file_change(current, content, mode, needed, summary):
    change = FileChange("/etc/x.conf", current, content, mode=mode)
    assert change.needed is needed
    if needed:
        assert change.summary().startswith(summary)


def test_diff_text():
    change = FileChange("/etc/x.conf", RemoteFile(True, b"keep\nold\n", "0644", "root", "root"), b"keep\nnew")
    assert change.diff() == ("--- /etc/x.conf\n+++ /etc/x.conf\n@@ -1,2 +1,2 @@\n keep\n-old\n+new\n"
                             "\\ No newline at end of file\n")
    assert unified_diff("/f", None, b"x\n").startswith("--- /dev/null\n+++ /f\n")


def test_apply_writes_atomically_with_backup_owner_and_mode(tmp_path):
    target = tmp_path / "etc" / "thing.conf"
    session = LocalSession()
    change = FileChange(str(target), ABSENT, b"one\n", mode="0640", owner=ME, group=GROUP)
    apply_file(session, change)
    assert target.read_bytes() == b"one\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    now = state(target)
    assert now == RemoteFile(True, b"one\n", "0640", ME, GROUP)
    assert not FileChange(str(target), now, b"one\n", mode="0640", owner=ME, group=GROUP).needed
    apply_file(session, FileChange(str(target), now, b"two\n", mode="0640", owner=ME, group=GROUP))
    assert target.read_bytes() == b"two\n"
    assert (tmp_path / "etc" / "thing.conf.gpufleet.bak").read_bytes() == b"one\n"
    assert [p.name for p in target.parent.iterdir() if "gpufleet-tmp" in p.name] == []


def test_failed_validation_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "daemon.json"
    target.write_text('{"ok": true}\n')
    change = FileChange(str(target), state(target), b"{not json", owner=ME, group=GROUP,
                        validate=lambda p: ["python3", "-m", "json.tool", p])
    with pytest.raises(ValidationFailed) as err:
        apply_file(LocalSession(), change)
    assert "daemon.json failed validation" in str(err.value) and "Expecting property name" in str(err.value)
    assert target.read_text() == '{"ok": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["daemon.json"]


def test_full_disk_fails_clearly_and_keeps_the_old_file(tmp_path):
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tmp_path)]).returncode:
        pytest.skip("needs root to mount a tiny tmpfs")
    try:
        target = tmp_path / "config"
        target.write_bytes(b"old\n")
        big = os.urandom(200_000)
        with pytest.raises(Exception) as err:
            apply_file(LocalSession(), FileChange(str(target), state(target), big, owner=ME, group=GROUP))
        assert "No space left on device" in str(err.value)
        assert target.read_bytes() == b"old\n"
        assert [p.name for p in tmp_path.iterdir()] == ["config"]
    finally:
        subprocess.run(["umount", str(tmp_path)])


def test_write_script_never_contains_the_content_in_clear():
    script, temp = write_script(FileChange("/etc/secret.conf", ABSENT, b"token=abc123\n"))
    assert "abc123" not in script and temp.startswith("/etc/.secret.conf.gpufleet-tmp-")


def test_templates_are_strict():
    with pytest.raises(InputError, match=r"template apt-proxy.conf.j2: 'proxy' is undefined"):
        render_template("apt-proxy.conf.j2", https=False)
    assert 'Acquire::http::Proxy "http://10.9.0.2:3142";' in render_template("apt-proxy.conf.j2", proxy="http://10.9.0.2:3142", https=False)


def test_a_write_killed_halfway_leaves_the_old_file_and_no_temp(tmp_path):
    """What a dropped SSH connection does to the remote shell: it dies mid-transfer."""
    import base64
    import signal
    import time
    target = tmp_path / "sshd_config"
    target.write_bytes(b"old\n")
    change = FileChange(str(target), state(target), b"new content\n" * 50_000, owner=ME, group=GROUP)
    script, temp = write_script(change)
    proc = subprocess.Popen(["sh", "-c", str(script)], stdin=subprocess.PIPE, start_new_session=True)
    payload = base64.b64encode(change.content)
    proc.stdin.write(payload[: len(payload) // 2])
    proc.stdin.flush()
    deadline = time.monotonic() + 5
    while not any(p.name.startswith(".sshd_config.gpufleet-tmp-") for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline, "the temp file never appeared"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGHUP)
    # and its stdin goes: a SIGHUP that reaches base64 between fork and exec is lost, and the shell
    # runs its trap only once base64 ends (a flake when stdin stayed open)
    proc.stdin.close()
    proc.wait(timeout=5)
    assert target.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sshd_config"]
    apply_file(LocalSession(), change)  # a re-run converges
    assert target.read_bytes() == change.content


def test_content_cut_at_a_base64_boundary_is_never_installed(tmp_path):
    """stdin that ends early but decodes cleanly (what a dropped connection without a tty gives)."""
    import base64
    target = tmp_path / "daemon.json"
    target.write_bytes(b"old\n")
    change = FileChange(str(target), state(target), b"new content\n" * 1000, owner=ME, group=GROUP)
    script, _ = write_script(change)
    payload = base64.b64encode(change.content)
    cut = payload[: len(payload) // 2 // 4 * 4]  # whole base64 quads: decodes without an error
    assert base64.b64decode(cut)
    result = LocalSession().run(script, check=False, stdin=cut.decode())
    assert result.exit_code == 98 and "incomplete transfer" in result.stderr
    assert target.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["daemon.json"]


def test_a_temp_file_left_by_a_killed_shell_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "sources.list"
    target.write_bytes(b"old\n")
    (tmp_path / ".sources.list.gpufleet-tmp-0123456789ab").write_bytes(b"half a fi")
    (tmp_path / ".other.gpufleet-tmp-0123456789ab").write_bytes(b"another file's")
    apply_file(LocalSession(), FileChange(str(target), state(target), b"new\n", owner=ME, group=GROUP))
    assert target.read_bytes() == b"new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.gpufleet-tmp-0123456789ab", "sources.list", "sources.list.gpufleet.bak"]


def test_a_missing_parent_is_created_with_the_files_owner_and_parent_mode(tmp_path):
    target = tmp_path / "home" / ".ssh" / "authorized_keys"
    apply_file(LocalSession(), FileChange(str(target), ABSENT, b"ssh-ed25519 AAAA\n", mode="0600", owner=ME,
                                          group=GROUP, parent_mode="0700"))
    ssh_dir = state(target.parent)
    assert (ssh_dir.mode, ssh_dir.owner, ssh_dir.group) == ("0700", ME, GROUP)


def test_a_missing_parent_without_parent_mode_is_world_readable(tmp_path):
    # /etc/apt/keyrings: apt reads keyrings as its own user; the temp file's umask 077 must not leak to the folder
    target = tmp_path / "keyrings" / "docker.asc"
    apply_file(LocalSession(), FileChange(str(target), ABSENT, b"key\n", owner=ME, group=GROUP))
    assert state(target.parent).mode == "0755"


# links someone who can write the target's folder plants there (root in a container in its mounted folder,
# a user in ~/.ssh): the write never follows one, and the server's file they point at stays as it was
PLANTED = [
    # (id, name in the folder -> the victim, keep_original)
    ("backup", "thing.conf.gpufleet.bak", False),
    ("original", "thing.conf.gpufleet.orig", True),
    ("the target itself", "thing.conf", False),
]


@pytest.mark.parametrize("planted,keep_original", [p[1:] for p in PLANTED], ids=[p[0] for p in PLANTED])
def test_a_write_never_follows_a_planted_link(tmp_path, planted, keep_original):
    folder, victim = tmp_path / "shared", tmp_path / "victim"
    folder.mkdir()
    victim.write_bytes(b"server secret\n")
    victim.chmod(0o600)
    target = folder / "thing.conf"
    if planted != "thing.conf":
        target.write_bytes(b"old\n")
    (folder / planted).symlink_to(victim)
    apply_file(LocalSession(), FileChange(str(target), state(target), b"new\n", mode="0644", owner=ME, group=GROUP,
                                          keep_original=keep_original))
    assert victim.read_bytes() == b"server secret\n" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert not target.is_symlink() and target.read_bytes() == b"new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    if planted == "thing.conf":  # the backup is the link itself, not what it points at
        assert os.readlink(folder / "thing.conf.gpufleet.bak") == str(victim)
    else:
        assert not (folder / "thing.conf.gpufleet.bak").is_symlink()
        assert (folder / "thing.conf.gpufleet.bak").read_bytes() == b"old\n"


def test_a_link_at_the_temp_name_fails_the_write_and_is_not_followed(tmp_path):
    folder, victim = tmp_path / "shared", tmp_path / "victim"
    folder.mkdir()
    victim.write_bytes(b"server secret\n")
    target = folder / "thing.conf"
    script, temp = write_script(FileChange(str(target), ABSENT, b"new\n", owner=ME, group=GROUP))
    # planted after the stale temp files are removed, as a racing writer of the folder would
    script = Script(script.replace("set -C\n", f"ln -s {victim} \"$t\"\nset -C\n"))
    result = LocalSession().run(script, check=False, stdin="bmV3Cg==")
    assert result.exit_code != 0 and "exists" in result.stderr
    assert victim.read_bytes() == b"server secret\n" and not target.exists()


def test_the_probe_reports_a_link_in_our_folders_and_never_its_content(tmp_path):
    from gpufleet.facts import LINK, PROBE_FUNCTIONS
    victim, link = tmp_path / "victim", tmp_path / "entrypoint.sh"
    victim.write_bytes(b"server secret\n")
    link.symlink_to(victim)
    out = subprocess.run(["sh", "-c", PROBE_FUNCTIONS + 'ourfile "$1"', "sh", str(link)], capture_output=True,
                         text=True).stdout
    assert parse_file(out) is LINK and "c2VydmVy" not in out
    change = FileChange(str(link), LINK, b"#!/bin/sh\n", mode="0755")
    assert change.needed and change.summary() == f"replace the symbolic link {link} with the file"
