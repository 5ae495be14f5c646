"""container_changes: the user's entries of `docker diff` told from the tool's own writes, on real outputs
of the state command (gpufleet.container_changes.state_script) captured on a container of the lab's image run as
the tool runs it (--init, our entrypoint, volumes /workspace and /etc/gpufleet):

fresh.txt    just created (the entrypoint ran once)
tool.txt     then the tool's kind of writes: known_hosts, .gitconfig, sources.list set aside, debian.sources
user.txt     then the user's: /root/work.txt, a line added to known_hosts, `/opt/my data/x`, /etc/issue deleted
stopped.txt  then stopped: no stamps and no footprint can be read

packed-gone.txt and packed-forged.txt are the state command's real output as it travels (its sections
gzipped and base64-encoded, every section's body base64-encoded, the stamps read from the upper layer on
the server, the installed packages) for a container that no longer exists, and for one holding a file
whose name carries a section end;
changed-since.bin the `find UPPER -printf CHANGED_FORMAT` of ops.rm for a container where, after the
moment SNAPSHOT_AT, files were written with old mtimes (touch -d 2001-01-01, tar x, cp -p) and deleted;

and which snapshots keep_snapshots prunes.
"""
from pathlib import Path

import pytest

from gpufleet import container_changes as cc
from gpufleet.facts import frame
from tasks import containers

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "container_changes"
MOUNTS = ["/workspace", "/etc/gpufleet"]


def state(name):
    return cc.parse_state((FIXTURES / f"{name}.txt").read_text())


def footprint_after_the_tool():
    fresh, tool = state("fresh"), state("tool")
    return cc.record_tool_writes(fresh.footprint, fresh.diff, fresh.stamps, tool.diff, tool.stamps, MOUNTS,
                                 claimed=cc.tool_claims([], installed_packages=False))


def test_parse_state_of_a_real_capture():
    fresh = state("fresh")
    assert fresh.diff["/etc/environment"] == "C" and fresh.diff["/workspace"] == "A" and len(fresh.diff) == 12
    assert fresh.stamps["/root/.ssh/environment"] == "2026-12-01 22:59:20.664307603 +0000 142"  # mtime, size
    assert fresh.footprint == {} and fresh.footprint_text is None and fresh.error == ""  # none yet
    assert "/etc/apt/sources.list" not in state("tool").stamps  # deleted: stat has nothing to say
    assert state("tool").diff["/etc/apt/sources.list"] == "D"


def test_a_fresh_container_has_no_changes_of_the_user():
    fresh = state("fresh")  # entrypoint writes, mount points, docker's --init binary
    assert cc.user_changes(fresh.diff, fresh.stamps, {}, MOUNTS) == []


def test_the_tool_writes_are_recorded_and_are_not_the_users():
    footprint = footprint_after_the_tool()
    assert footprint == {
        "/etc/apt/sources.list": ("D", ""),
        "/etc/apt/sources.list.d/debian.sources": ("A", "2026-12-01 22:59:24.010639821 +0000 11"),
        "/etc/apt/sources.list.gpufleet.orig": ("A", "2026-12-01 22:06:43.000000000 +0000 47"),  # mv keeps mtime
        "/root/.gitconfig": ("A", "2026-12-01 22:59:24.001994376 +0000 19"),
        "/root/.ssh/known_hosts": ("A", "2026-12-01 22:59:24.001994376 +0000 28"),
    }
    tool = state("tool")
    assert cc.user_changes(tool.diff, tool.stamps, footprint, MOUNTS) == []
    # without a footprint (a container set up before the tool kept one) the tool's writes count: a snapshot too many
    assert cc.user_changes(tool.diff, tool.stamps, {}, MOUNTS) == [
        "A /root/.gitconfig", "A /root/.ssh/known_hosts", "A /etc/apt/sources.list.d/debian.sources",
        "A /etc/apt/sources.list.gpufleet.orig", "D /etc/apt/sources.list"]


def test_the_users_changes_are_found_also_in_a_file_the_tool_wrote():
    user = state("user")
    assert cc.user_changes(user.diff, user.stamps, footprint_after_the_tool(), MOUNTS) == [
        "A /root/.ssh/known_hosts",  # the tool wrote it, the user added a line: mtime and size moved
        "A /root/work.txt", "D /etc/issue", "A /opt/my data/x"]


def test_in_a_stopped_container_every_change_counts():
    stopped = state("stopped")  # docker diff works, docker exec does not
    assert stopped.stamps == {} and stopped.footprint_text is None and stopped.error == ""
    changes = cc.user_changes(stopped.diff, stopped.stamps, footprint_after_the_tool(), MOUNTS)
    assert "A /root/work.txt" in changes and "A /root/.gitconfig" in changes  # the tool's own too: safe side


def test_a_file_the_user_changed_stays_the_users_when_the_tool_writes_again():
    user = state("user")
    # the tool acts again (it changes nothing here): the user's edit of known_hosts is not absorbed
    again = cc.record_tool_writes(footprint_after_the_tool(), user.diff, user.stamps, user.diff, user.stamps, MOUNTS,
                                  claimed=cc.tool_claims([], installed_packages=False))
    assert "/root/.ssh/known_hosts" not in again and "/root/work.txt" not in again
    assert again["/root/.gitconfig"] == footprint_after_the_tool()["/root/.gitconfig"]
    assert "A /root/.ssh/known_hosts" in cc.user_changes(user.diff, user.stamps, again, MOUNTS)


def test_the_user_recreating_a_file_the_tool_deleted_is_a_change():
    footprint = {"/etc/apt/sources.list": ("D", "")}
    assert cc.user_changes({"/etc/apt/sources.list": "C"}, {"/etc/apt/sources.list": "t"}, footprint) == [
        "C /etc/apt/sources.list"]
    assert cc.user_changes({"/etc/apt/sources.list": "D"}, {}, footprint) == []


# entries → the leaves (a parent directory of another entry is not a change of its own)
LEAVES = [
    ({"/root": "C", "/root/a": "A"}, {"/root/a": "A"}),
    ({"/opt": "C", "/opt/x": "A", "/opt/x/y": "A", "/opt/z": "D"}, {"/opt/x/y": "A", "/opt/z": "D"}),
    ({"/root": "C", "/rootfs": "A"}, {"/root": "C", "/rootfs": "A"}),  # a name prefix is not a parent
    ({"/a": "A"}, {"/a": "A"}),
]


@pytest.mark.parametrize("entries,leaves", LEAVES)
def test_leaves(entries, leaves):
    assert cc.leaves(entries) == leaves


OWN = [
    ("/etc/environment", (), True), ("/run/sshd.pid", (), True), ("/tmp/x", (), True),
    ("/var/log/wtmp", (), True), (cc.FOOTPRINT, (), True), (cc.SNAPSHOT_MARKER, (), True),
    ("/workspace", ("/workspace",), True), ("/workspace/deep", ("/workspace/",), True),
    ("/workspaces", ("/workspace",), False), ("/runner", (), False), ("/etc/environment.d/x", (), False),
    ("/root/.ssh/known_hosts", (), False), ("/root/.ssh/authorized_keys", (), False),
]


@pytest.mark.parametrize("path,mounts,own", OWN)
def test_is_own(path, mounts, own):
    assert cc.is_own(path, mounts) is own


def test_footprint_file_round_trip_and_what_it_does_not_understand():
    footprint = footprint_after_the_tool()
    text = cc.render_footprint(footprint)
    assert cc.parse_footprint(text) == footprint
    assert text.splitlines()[:2] == ["container\t", "D\t\t/etc/apt/sources.list"]
    assert cc.parse_footprint("X\tt\t/a\nA\tt\nA\tt\trelative\n\nC\tt\t/ok\n") == {"/ok": ("C", "t")}


def test_parse_diff_ignores_what_is_not_an_entry():
    assert cc.parse_diff("C /root\nA /root/my file\nwarning: x\nD /gone\n\n") == {
        "/root": "C", "/root/my file": "A", "/gone": "D"}


def test_the_packed_state_is_unpacked():
    gone = cc.parse_sections(cc.unpack_state((FIXTURES / "packed-gone.txt").read_text()))
    assert gone.error == "Error response from daemon: No such container: owner-fx"
    assert gone.container_id == "" and gone.packages is None and gone.stamps == {}
    for broken in ("", "@@gpufleet-begin state@@\nnot base64!\n@@gpufleet-end state rc=0@@\n",  # not framed
                   frame("state", "not base64!"), frame("state", "")):  # gzip missing: nothing
        assert cc.parse_sections(cc.unpack_state(broken)).error, broken


def test_state_of_a_failed_docker_diff():
    text = frame("diff", "Error: No such container: dev\n", 1)
    assert cc.parse_state(text).error == "Error: No such container: dev"


def snap(tag: str, created: int, repository: str = "dev-snapshot") -> dict:
    return {"Repository": repository, "Tag": tag, "Created": created}


PRUNE = [
    ([snap("20260101-000003", 3), snap("20260101-000001", 1), snap("20260101-000002", 2)], 1, None,
     ["dev-snapshot:20260101-000001", "dev-snapshot:20260101-000002"]),
    ([snap("20260101-000001", 10), snap("20251231-235959", 9)], 3, None, []),
    ([snap("20260101-000001", 10), snap("20251231-235959", 9)], 1, None, ["dev-snapshot:20251231-235959"]),
    ([snap("20260101-000001", 1), snap("20260101-000002", 2)], 0, None, []),  # 0 keeps them all
    ([], 2, None, []),
    # two admins: one in UTC+9 (tag 09:00 local), then one in UTC-5 an hour later (tag 20:00 the day
    # before); the text says the first is newer, the images' creation times say otherwise
    ([snap("20260601-090000", 1780272000), snap("20260531-200000", 1780275600)], 1, None,
     ["dev-snapshot:20260601-090000"]),
    # a DST change: 02:30 before the clocks went back, 02:10 after it
    ([snap("20261025-023000", 1792888200), snap("20261025-021000", 1792890600)], 1, None,
     ["dev-snapshot:20261025-023000"]),
    # two in one second (their suffixes differ): the one just taken is the newest whatever its suffix
    ([snap("20260101-000001Z-ffffff", 1), snap("20260101-000001Z-000000", 1)], 1, "dev-snapshot:20260101-000001Z-000000",
     ["dev-snapshot:20260101-000001Z-ffffff"]),
]


@pytest.mark.parametrize("snapshots,keep,newest,pruned", PRUNE)
def test_keep_snapshots_prunes_the_oldest(snapshots, keep, newest, pruned):
    assert containers.snapshots_to_prune(snapshots, keep, newest=newest) == pruned


def test_a_snapshot_tag_is_utc_and_unique():
    # 2026-07-01 12:00:00 UTC, whatever zone the workstation is in
    assert containers.snapshot_tag(1782907200, "a1b2c3") == "20260701-120000Z-a1b2c3"


@pytest.mark.parametrize("name,repository", [
    ("dev", "dev-snapshot"),  # a lower-case name keeps the repository its earlier snapshots have
    ("my_box.2", "my_box.2-snapshot"),
    ("Dev", "dev-" + __import__("hashlib").sha256(b"Dev").hexdigest()[:8] + "-snapshot"),
])
def test_snapshot_repositories(name, repository):
    assert containers.snapshot_repository(name) == repository


def test_names_that_differ_in_case_have_their_own_snapshots():
    names = ["dev", "Dev", "DEV", "dEv"]
    assert len({containers.snapshot_repository(n) for n in names}) == len(names)


def test_restore_and_ps_take_the_newest_snapshot_by_creation_time_and_only_the_containers_own():
    from types import SimpleNamespace
    from tasks import ops
    dev_repo = containers.snapshot_repository("Dev")
    facts = SimpleNamespace(snapshots=[
        snap("20260601-090000", 1780272000), snap("20260531-200000", 1780275600),  # written by two time zones
        snap("20260701-120000Z-a1b2c3", 1782907200, dev_repo)])  # Dev's, newer than all of dev's
    assert [s["Tag"] for s in ops.snapshots_of(facts, "dev")] == ["20260601-090000", "20260531-200000"]
    assert [s["Tag"] for s in ops.snapshots_of(facts, "Dev")] == ["20260701-120000Z-a1b2c3"]


def test_a_file_the_user_writes_while_the_tool_acts_stays_the_users():
    fresh, tool = state("fresh"), state("tool")
    # the user writes beside the tool's actions (a long apt run), in a folder the tool also writes in
    during = {**tool.diff, "/root/during.txt": "A", "/etc/apt/mine.list": "A", "/usr/lib/x/pkgfile": "A"}
    stamps = {**tool.stamps, "/root/during.txt": "t 5", "/etc/apt/mine.list": "t 6", "/usr/lib/x/pkgfile": "t 7"}
    footprint = cc.record_tool_writes(fresh.footprint, fresh.diff, fresh.stamps, during, stamps, MOUNTS,
                                      claimed=cc.tool_claims(["/usr/lib/x", "/usr/lib/x/pkgfile"], True))
    assert footprint == {**footprint_after_the_tool(), "/usr/lib/x/pkgfile": ("A", "t 7")}  # a package's file
    assert cc.user_changes(during, stamps, footprint, MOUNTS) == ["A /root/during.txt", "A /etc/apt/mine.list"]


def test_a_file_of_the_tool_the_user_changes_while_the_tool_acts_stays_the_users():
    user = state("user")
    changed = {**user.stamps, "/root/.gitconfig": "later 99"}  # the tool's file, changed meanwhile, by no action
    footprint = cc.record_tool_writes(footprint_after_the_tool(), user.diff, user.stamps, user.diff, changed, MOUNTS,
                                      claimed=lambda path: False)
    assert "/root/.gitconfig" not in footprint and "/etc/apt/sources.list.d/debian.sources" in footprint
    assert "A /root/.gitconfig" in cc.user_changes(user.diff, changed, footprint, MOUNTS)


CLAIMS = [  # path, package files, installed packages, claimed
    ("/root/.gitconfig", [], False, True), ("/root/.ssh/authorized_keys.gpufleet.bak", [], False, True),
    ("/etc/apt/sources.list.gpufleet.orig", [], False, True), ("/root/.ssh/id_ed25519_github.pub", [], False, True),
    ("/usr/bin/tree", ["/usr/bin/tree"], True, True), ("/usr/bin/tree", [], True, False),
    ("/var/lib/dpkg/status", [], True, True), ("/var/lib/dpkg/status", [], False, False),
    ("/etc/ssh/ssh_host_rsa_key", [], True, True), ("/var/lib/dpkgx", [], True, False),
    ("/root/work.txt", ["/usr/bin/tree"], True, False), ("/etc/passwd", [], False, False),
    ("/usr/lib/x86_64-linux-gnu/libproc2.so.0", ["/lib/x86_64-linux-gnu/libproc2.so.0"], True, True),  # merged /usr
    ("/usr/libexec/x", ["/libexec/x"], True, False), ("/etc/rc2.d/S01ssh", [], True, True),
]


@pytest.mark.parametrize("path,files,installed,claimed", CLAIMS)
def test_tool_claims(path, files, installed, claimed):
    assert cc.tool_claims(files, installed)(path) is claimed


def test_parse_installed_and_package_files():
    assert cc.parse_installed("ii \tgit\t1:2.39\nrc \told\t1\niU \thalf\t2\nii \tlibc6:amd64\t2.36\n\nbroken\n") \
        == {"git": "1:2.39", "libc6:amd64": "2.36"}
    assert cc.changed_packages({"git": "1", "libssl3:amd64": "3.0.11", "vim": "9"},
                               {"git": "1", "libssl3:amd64": "3.0.17", "vim": "9", "tree": "2"}) == ["libssl3:amd64", "tree"]
    assert cc.parse_package_files("/.\n/usr/bin/tree\npackage diverts others to: /x\n/usr/share/doc/tree\n") == [
        "/.", "/usr/bin/tree", "/usr/share/doc/tree"]


def test_the_footprint_is_only_trusted_for_its_own_container():
    text = cc.render_footprint({"/root/.gitconfig": ("A", "t 1")}, "abc")
    assert text.startswith("container\tabc\n")
    assert cc.parse_footprint(text, "abc") == {"/root/.gitconfig": ("A", "t 1")}
    assert cc.parse_footprint(text, "def") == {}  # a record of the container of that name before a re-creation
    assert cc.parse_footprint("A\tt 1\t/root/.gitconfig\n", "abc") == {}  # no owner named


def test_no_path_in_the_container_frames_a_section_of_the_state():
    forged = cc.parse_sections(cc.unpack_state((FIXTURES / "packed-forged.txt").read_text()))
    assert forged.error == "" and len(forged.container_id) == 64 and "git" not in forged.packages
    assert "dpkg" in forged.packages and forged.footprint_text is None  # no record on the server yet
    assert "/root/new\n@@gpufleet-end stamps rc=0@@" in forged.stamps  # one path, whole
    assert forged.stamps["/root/touched.txt"] == "978307200.0000000000 2"  # touch -d 2001-01-01
    assert {"/root/saved.txt", "/root/copied.txt", "/opt/data/d/unpacked.txt"} <= set(forged.stamps)
    assert "A /root/saved.txt" in cc.user_changes(forged.diff, forged.stamps, {}, MOUNTS)


SNAPSHOT_AT = 1796606337.507416980  # the capture's snapshot moment (saved.txt and rm /etc/issue came before)


def test_changed_since_sees_files_with_old_mtimes_and_deletions():
    text = (FIXTURES / "changed-since.bin").read_text()
    assert cc.changed_since(text, SNAPSHOT_AT, MOUNTS) == [
        # overlayfs links every whiteout to one inode: a later deletion renews the earlier ones' ctime
        "D /etc/debian_version", "D /etc/issue",
        "/root/touched.txt", "/root/copied.txt", "/root/new\n@@gpufleet-end stamps rc=0@@",
        "/opt/data/d/unpacked.txt"]  # /tmp is the tool's (OWN_FILES)
    assert cc.changed_since(text, SNAPSHOT_AT + 5, MOUNTS) == []  # a snapshot after them: nothing unsaved
    assert cc.changed_since(text, SNAPSHOT_AT, ["/opt/data"]) == [
        "D /etc/debian_version", "D /etc/issue", "/root/touched.txt", "/root/copied.txt",
        "/root/new\n@@gpufleet-end stamps rc=0@@"]  # a volume is not in the layer's care
    assert cc.changed_since("garbage\0" "1.5\td\t/root\0", 0) == []


MOMENTS = [
    ('2026-12-01T22:59:24.123456789Z\t{"gpufleet.snapshot-started":"1796606160.213496022"}', [1796606160.213496022]),
    ('2026-12-01T22:59:24.5Z\t{"gpufleet.snapshot-of":"dev"}', [1796165964.5]),  # an older snapshot: Created
    ("2026-12-01T22:59:24Z\tnull", [1796165964.0]),
    ('not a time\t{"gpufleet.snapshot-started":"soon"}', []),
    ("", []),
]


@pytest.mark.parametrize("text,moments", MOMENTS)
def test_parse_snapshot_moments(text, moments):
    assert cc.parse_snapshot_moments(text) == pytest.approx(moments, abs=1e-6)
