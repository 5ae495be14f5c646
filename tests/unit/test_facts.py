"""Facts: the probe's sections, parsed from real outputs; the probe itself run on this machine."""
import base64
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from gpufleet import facts
from gpufleet.remote import LocalSession, Script
from tests.conftest import REPO

GPU_FIXTURES = Path(REPO) / "tests" / "fixtures" / "gpu" / "h200-driver580"  # captured on a real H200
HERE = Path(__file__).resolve().parent.parent / "fixtures"


section = facts.frame


def test_split_sections_keeps_bodies_exact_and_nested_sections_inside():
    text = section("a", "x\ny\n") + section("b", "", 1) + section("outer", section("inner", "deep"))
    s = facts.split_sections(text)
    assert s["a"] == (0, "x\ny\n") and s["b"] == (1, "")
    assert "inner" not in s and facts.split_sections(s["outer"][1])["inner"] == (0, "deep")


# what root in a container can print: forged section lines, old-style markers, a fake end of the probe
FORGED = (section("file:0", "644 root root\n" + base64.b64encode(b"ssh-ed25519 AAAA evil").decode())
          + "@@gpufleet-end inside:0 rc=0@@\n@@gpufleet-begin file:0@@\n" + facts.PROBE_DONE + "\n")


def test_what_a_container_prints_stays_inside_its_own_section():
    text = section("os_release", "ID=debian\n") + section("inside:0", FORGED) + section("file:0", "absent")
    s = facts.split_sections(text)
    assert sorted(s) == ["file:0", "inside:0", "os_release"] and s["file:0"] == (0, "absent")
    assert s["inside:0"] == (0, FORGED)  # the container's bytes, as they were, in its own section


BROKEN = [
    ("a line outside any section", section("a", "x") + "@@gpufleet-begin b@@\n", "line 2 is not a section"),
    ("a section twice", section("a", "x") + section("a", "y"), "section a comes twice"),
    ("a payload that is not base64", "@@gpufleet a !!!!@@\n", "line 1 is not a section"),
    ("a payload without an exit code", "@@gpufleet a " + base64.b64encode(b"x").decode() + "@@\n", "not a section"),
    ("a line cut short", section("a", "x")[:-4] + "\n", "line 1 is not a section"),
]


@pytest.mark.parametrize("text,message", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_output_that_does_not_frame_is_refused(text, message):
    with pytest.raises(facts.ProbeOutputError, match=message):
        facts.split_sections(text)


def test_a_container_that_prints_sections_twice_fails_the_host_naming_it():
    request = facts.ProbeRequest(containers={"dev": ["/etc/os-release"]})
    inner = section("sshd_bin", "") + section("sshd_run", "") + section("pkgs", "") + section("ifile:0", "absent")
    text = section("os_release", "ID=debian\n") + section("inside:0", inner + inner)
    with pytest.raises(facts.ProbeOutputError, match="inside container dev is not sections .*sshd_bin comes twice"):
        facts.parse_probe(text, request)


def test_a_container_whose_files_read_as_garbage_fails_the_host_naming_it():
    """A wrapper in front of `stat` in the container (found by the adversarial lab test: a traceback)."""
    request = facts.ProbeRequest(containers={"dev": ["/etc/os-release"]})
    garbage = FORGED + "644 root root\nAAAA"
    inner = section("sshd_bin", "") + section("sshd_run", "") + section("pkgs", "") + section("ifile:0", garbage)
    text = section("os_release", "ID=debian\n") + section("inside:0", inner)
    with pytest.raises(facts.ProbeOutputError, match="inside container dev is not what readfile prints"):
        facts.parse_probe(text, request)


def test_the_shell_and_the_reader_frame_alike():
    """The probe's `sec` (shell) and the reader's `section` (Python) print the same bytes."""
    for body, rc in [("", 0), ("x\ny\n", 3), ("no newline", 1), ("ünïcode\n\n", 0)]:
        script = Script(facts.PROBE_FUNCTIONS + "sec name sh -c 'printf \"%s\" \"$0\"; exit $1' \"$1\" \"$2\"")
        out = subprocess.run(["sh", "-c", script, "sh", body, str(rc)], capture_output=True, text=True).stdout
        assert out == facts.frame("name", body, rc)


FILES = [
    ("absent", "absent", facts.ABSENT),
    ("file", "644 root root\n" + base64.b64encode(b"{}\n").decode(), facts.RemoteFile(True, b"{}\n", "0644", "root", "root")),
    ("empty", "600 ada ada\n", facts.RemoteFile(True, b"", "0600", "ada", "ada")),
    ("dir", "700 root root", facts.RemoteFile(True, b"", "0700", "root", "root")),
]


@pytest.mark.parametrize("body,expected", [f[1:] for f in FILES], ids=[f[0] for f in FILES])
def test_parse_file(body, expected):
    assert facts.parse_file(body) == expected


def test_parse_packages_keeps_only_installed():
    body = ("docker.io\tii \t20.10.24+dfsg1-1+b3\nnvidia-container-toolkit\tun \t\n"
            "containerd\trc \t1.6.20~ds1-1+b1\ndocker-ce\thi \t5:26.1.5-1\ncurl\tri \t7.88\n"
            "git\tiU \t1:2.39\nvim\tiF \t2:9.0\nless\tiiR\t590\n")
    assert facts.parse_packages(body) == {"docker.io": "20.10.24+dfsg1-1+b3", "docker-ce": "5:26.1.5-1",
                                          "curl": "7.88"}


def test_parse_df():
    body = ("Filesystem     1048576-blocks   Used Available Capacity Mounted on\n"
            "/dev/vda              257936  22114     81920      22% /\n")
    assert facts.parse_df(body) == {"/": 81920}


def gpu_probe_output(smi_rc=0, edits=(), docker_info=None):
    """The probe's output on the H200 host (real captures), each body edited by the (old, new) pairs."""
    csv = (GPU_FIXTURES / "query-gpu.csv").read_text()
    table = "\n".join((GPU_FIXTURES / "nvidia-smi.txt").read_text().splitlines()[:5])

    def sec(name, body, rc=0):
        for old, new in edits:
            body = body.replace(old, new)
        return section(name, body, rc)
    return (sec("os_release", (GPU_FIXTURES / "os-release").read_text())
            + sec("uname", (GPU_FIXTURES / "uname.txt").read_text())
            + sec("arch", "amd64") + sec("systemd", "", 0)
            + sec("packages", "pciutils\tii \t1:3.10.0-2\n")
            + (sec("docker_info", json.dumps(docker_info)) if docker_info else sec("docker_info", "command not found", 127))
            + sec("nvidia_smi", csv, smi_rc) + sec("nvidia_smi_table", table)
            + sec("meminfo", (GPU_FIXTURES / "meminfo.txt").read_text())
            + sec("passwd:0", "root:x:0:0:root:/root:/bin/bash\n"))  # the inventory's user (root) is the first asked


def test_h200_host_facts_from_real_nvidia_smi_output():
    f = facts.parse_probe(gpu_probe_output(), facts.ProbeRequest())
    assert f.os.id == "ubuntu" and f.os.codename == "noble"
    assert f.has_gpu and len(f.gpus) == 1 and f.gpus[0].name == "NVIDIA H200"
    assert f.gpu_driver == "580.159.04" and f.gpu_cuda == "13.0" and f.gpu_source == "nvidia-smi"
    assert f.systemd and not f.docker_running and f.mem_total_mb == 128868


def test_probe_runs_on_this_machine(tmp_path):
    target = tmp_path / "managed.conf"
    target.write_text("hello\n")
    request = facts.ProbeRequest(files=[str(target), str(tmp_path / "missing")], users=["root", "nobody-here-x"],
                                 accounts=["root", "nobody", "nobody-here-x"])
    f = facts.gather(LocalSession(), request)
    assert f.os.id and f.arch
    assert f.file(str(target)).content == b"hello\n"
    assert not f.file(str(tmp_path / "missing")).exists
    assert "root" in f.users["root"] and f.users["nobody-here-x"] is None
    assert f.homes == {"root": "/root", "nobody": "/nonexistent", "nobody-here-x": None}  # read, not assumed
    assert f.mem_total_mb > 0 and "/" in f.disk_free_mb


def run_probe(request, before="", replace=("", "")):
    """The real probe on this machine, with shell lines put before it and one piece of it replaced."""
    script = facts.probe_script(request)
    assert replace[0] in script
    text = LocalSession().run(Script(before + script.replace(*replace)), sudo=True, check=False).stdout
    assert facts.missing_sections(text, request) == []
    return facts.parse_probe(text, request)


@pytest.fixture
def local_request(tmp_path):
    target = tmp_path / "managed.conf"
    target.write_text("hello\n")
    return facts.ProbeRequest(files=[str(target), str(tmp_path / "missing")], users=["root"],
                              images=["no-such-image:gpufleet-test"])


def same_facts(a, b):
    assert (a.files, a.users, a.images, a.containers) == (b.files, b.users, b.images, b.containers)
    assert a.docker_running == b.docker_running


def test_probe_without_a_temp_dir_runs_its_jobs_one_by_one(tmp_path, local_request):
    """The docker calls run side by side through files in a temp dir; where none can be made, in order."""
    same_facts(run_probe(local_request), run_probe(local_request, f"TMPDIR={tmp_path}/no-such-dir; export TMPDIR\n"))


def test_a_job_whose_file_cannot_be_written_runs_again_and_no_temp_dir_is_left(tmp_path, local_request):
    """A full /tmp: every job's writes fail (ENOSPC, as /dev/full gives), so each runs again at the end."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    full = run_probe(local_request, f"TMPDIR={temp}; export TMPDIR\n",
                     ('"j$1" > "$T/$1" 2>&1 &', '"j$1" > /dev/full 2>&1 &'))
    same_facts(full, run_probe(local_request))
    assert list(temp.iterdir()) == []


def whole_probe(request, leave_out=(), inner_leave_out=(), done=True):
    inner = "".join(section(n, "") for n in ["sshd_bin", "sshd_run", "pkgs", "ifile:0", "ifile:1"]
                    if n not in inner_leave_out)
    text = "".join(section(name, inner, 0) if name.startswith("inside:") else section(name, "", 1)
                   for name in facts.section_names(request) if name not in leave_out)
    return text + (facts.PROBE_DONE + "\n" if done else "")


PROBE_REQUEST = facts.ProbeRequest(files=["/a", "/b"], images=["img"], users=["ada"],
                                   containers={"dev": ["/etc/os-release", "/root/.ssh"]})
INCOMPLETE = [
    ("whole", {}, []),
    ("cut before the end", {"done": False}, ["the end of the probe"]),
    ("a lost job's file", {"leave_out": ["docker_info"]}, ["docker_info"]),
    ("a lost file section", {"leave_out": ["file:1"]}, ["file:1"]),
    ("a container's lost file", {"inner_leave_out": ["ifile:1"]}, ["inside:0/ifile:1"]),
]


@pytest.mark.parametrize("kwargs,missing", [c[1:] for c in INCOMPLETE], ids=[c[0] for c in INCOMPLETE])
def test_an_incomplete_probe_is_named_not_read_as_absent_files(kwargs, missing):
    assert facts.missing_sections(whole_probe(PROBE_REQUEST, **kwargs), PROBE_REQUEST) == missing


def test_snapshots_read_alike_from_the_engine_api_and_the_cli():
    """Both captured on a lab server (Docker 20.10) with one snapshot image tagged twice."""
    api = facts.parse_snapshots((HERE / "docker" / "images-snapshots-api.json").read_text())
    cli = facts.parse_snapshots((HERE / "docker" / "images-snapshots-cli.txt").read_text())
    rows = lambda snaps: sorted((s["Repository"], s["Tag"], s["Created"]) for s in snaps)  # noqa: E731
    # the image's creation time on the server (2026-12-02 01:31:22 UTC), read alike from both
    assert rows(api) == rows(cli) == [("dev-snapshot", "20261202-014000", 1796175082),
                                      ("dev-snapshot", "20261202-014500", 1796175082)]
    assert facts.parse_snapshots('[{"RepoTags":["reg:5000/dev-snapshot:t1"],"Created":5},{"RepoTags":null}]') == [
        {"Repository": "reg:5000/dev-snapshot", "Tag": "t1", "Created": 5}]
    # an untagged image: the API and the CLI say so differently, neither is a snapshot
    assert facts.parse_snapshots('[{"RepoTags":["<none>:<none>"]}]') == [] == facts.parse_snapshots(
        '{"Repository":"<none>","Tag":"<none>","ID":"b17f4e32ffa7"}\n')


@pytest.mark.parametrize("created_at,epoch", [
    ("2026-12-02 01:31:22 +0000 UTC", 1796175082),
    ("2026-12-02 02:31:22 +0100 CET", 1796175082),  # a server (or CLI) in another zone: the same moment
    ("2026-03-29 03:00:05 +0200 CEST", 1774746005),  # just after a DST change
    ("2026-03-29 01:59:55 +0100 CET", 1774745995),  # ten seconds earlier, an hour "later" as text
    ("", 0), ("yesterday", 0),
])
def test_snapshot_creation_time_from_the_cli_is_a_moment_not_a_text(created_at, epoch):
    line = '{"Repository":"dev-snapshot","Tag":"t","CreatedAt":"%s"}' % created_at
    assert facts.parse_snapshots(line) == [{"Repository": "dev-snapshot", "Tag": "t", "Created": epoch}]


@pytest.mark.skipif(not shutil.which("docker") or not shutil.which("curl"), reason="needs docker and curl here")
def test_probe_reads_docker_alike_through_the_reader_the_engine_api_and_the_cli(tmp_path):
    """This machine's engine (the one `make test` starts), read by the reader, through curl with the
    reader turned off, and through the docker CLI with the API call turned off too."""
    request = facts.ProbeRequest(images=["no-such-image:gpufleet-test"])
    script = facts.probe_script(request)
    no_reader = script.replace(facts.READER_GUARD, "false")
    paths = {"reader": script, "Engine API": no_reader, "CLI": no_reader.replace(facts.ENGINE_API, "false"),
             # a python3 too old for the reader (or any failure of it): its job runs the shell's
             "reader fails": script.replace(shlex.quote(facts.READER_SOURCE), "'import sys; sys.exit(1)'")}
    assert all(a != b for a in paths.values() for b in paths.values() if a is not b)
    read = {path: facts.parse_probe(LocalSession().run(Script(s), sudo=True, check=False).stdout, request)
            for path, s in paths.items()}
    if not read["CLI"].docker_running:
        pytest.skip("no Docker engine answers here")
    info = lambda info: (info["ServerVersion"], info["DockerRootDir"], info["Containers"],  # noqa: E731
                         info["ContainersRunning"], info["Images"], sorted(info["Runtimes"]),
                         info["RegistryConfig"]["Mirrors"], info.get("ServerErrors"))
    direct = subprocess.run(facts.reader_argv(request), capture_output=True, text=True)
    # the reader ran, not the shell behind it, and printed exactly the sections of the table's Docker jobs
    docker_jobs = [fact.name for job in facts.facts_table(request)[1][1:] for fact in job]
    assert direct.returncode == 0 and sorted(facts.split_sections(direct.stdout)) == sorted(docker_jobs) == [
        "containers", "docker_info", "image:0", "snapshots"]
    a = read["reader"]
    for path, b in read.items():
        assert info(a.docker_info) == info(b.docker_info), path  # what the steps read of it
        assert a.containers == b.containers and a.snapshots == b.snapshots and a.images == b.images == {}, path


def test_what_docker_exec_read_counts_only_for_a_running_container_of_ours():
    """The exec runs beside the listing: a container of that name that is not ours, or is stopped, is
    not read as ours."""
    request = facts.ProbeRequest(containers={"dev": ["/etc/os-release"]})
    inner = section("sshd_bin", "") + section("sshd_run", "") + section("pkgs", "") + section("ifile:0", "absent")
    listing = (Path(REPO) / "tests" / "fixtures" / "docker" / "inspect-format-dev.txt").read_text()
    stopped = listing.replace('"Running":true', '"Running":false')
    for containers, read in ((listing, True), (stopped, False), ("", False)):
        text = section("os_release", "ID=debian\n") + section("containers", containers) + section("inside:0", inner)
        assert ("dev" in facts.parse_probe(text, request).inside) is read


def test_a_container_run_from_a_snapshot_image_is_not_ours():
    """`docker commit` copies the container's labels into the snapshot image, so a container someone runs
    from it carries `gpufleet.container=dev` under another name: neither listed nor read as ours."""
    listing = (Path(REPO) / "tests" / "fixtures" / "docker" / "inspect-format-dev.txt").read_text()
    theirs = listing.replace('"Name":"/dev"', '"Name":"/theirs"')
    assert '"gpufleet.container":"dev"' in theirs and '"/theirs"' in theirs
    request = facts.ProbeRequest(containers={"theirs": ["/etc/os-release"]})
    inner = section("sshd_bin", "") + section("sshd_run", "") + section("pkgs", "") + section("ifile:0", "absent")
    text = section("os_release", "ID=debian\n") + section("containers", listing + theirs) + section("inside:0", inner)
    f = facts.parse_probe(text, request)
    assert list(f.containers) == ["dev"] and f.inside == {}


def test_a_probe_output_cut_short_fails_the_host():
    """What gather does with the incomplete outputs the table above names: a clear error, no facts."""
    from gpufleet.errors import CommandFailed
    from gpufleet.remote import Session

    class CutShort(Session):
        name = "gpu1"

        def _exec(self, command, **_):
            return 0, whole_probe(PROBE_REQUEST, leave_out=["docker_info"]), ""
    with pytest.raises(CommandFailed, match="output incomplete, missing docker_info"):
        facts.gather(CutShort(), PROBE_REQUEST)


def test_managed_containers_from_the_probes_inspect_format_carry_no_env():
    """Captured with `docker inspect --format CONTAINER_FORMAT dev` on a lab server (Docker 20.10)."""
    body = (Path(REPO) / "tests" / "fixtures" / "docker" / "inspect-format-dev.txt").read_text()
    f = facts.parse_probe(section("os_release", "ID=debian\n") + section("containers", body), facts.ProbeRequest())
    dev = f.containers["dev"]
    assert dev["State"]["Running"] is True and dev["Config"]["Labels"]["gpufleet.container"] == "dev"
    assert dev["HostConfig"]["PortBindings"]["22/tcp"][0]["HostIp"] == "127.0.0.1"
    assert "Env" not in json.dumps(dev)


def test_docker_info_of_a_client_without_its_daemon_is_not_a_running_docker():
    """Docker 26's CLI, no dockerd running: it prints its client half and ServerErrors, and exits 0
    (captured on the GPU proof's host)."""
    body = (Path(REPO) / "tests" / "fixtures" / "docker" / "info-26-no-daemon.json").read_text()
    f = facts.parse_probe(section("os_release", "ID=debian\n") + section("docker_info", body), facts.ProbeRequest())
    assert not f.docker_running and "Cannot connect to the Docker daemon" in f.docker_error


@pytest.mark.parametrize("body,user,home", [
    ("root:x:0:0:root:/root:/bin/bash\n", "root", "/root"),  # captured on this machine (Debian 12)
    ("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", "nobody", "/nonexistent"),
    ("alice:x:1001:1001::/srv/alice:/bin/sh\n", "alice", "/srv/alice"),  # useradd -d /srv/alice
    # SSSD joined to AD (fallback_homedir = /home/%d/%u): the name has the realm, the home a folder per domain
    ("alice@corp.example.com:*:1668601103:1668600513:Alice Smith:/home/corp.example.com/alice:/bin/bash\n",
     "alice@corp.example.com", "/home/corp.example.com/alice"),
    ("", "ghost", None),  # getent found no one (exit 2)
    ("bob:x:1002:1002::/home/bob:/bin/sh\n", "alice", None),  # not that user's line
    ("alice:x:1001:1001::relative:/bin/sh\n", "alice", None),
])
def test_home_from_getent_passwd(body, user, home):
    assert facts.parse_home(body, user) == home
