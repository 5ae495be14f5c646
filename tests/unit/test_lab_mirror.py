"""The package mirror's pure parts: package control files, Packages and Release files, versions.

The inputs are the Debian versions and Depends lines of the real packages the lab repackages
(bookworm's docker.io 20.10.24, trixie's docker.io/docker-cli 26.1.5, ...), as `dpkg-deb -f` gives them.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.mirror import (CODENAMES, LAB_SPEC, PACKAGING, STACK, TODAY_DOCKER, TOOLKIT_TARBALL, Mirror, MirrorBuilder,
                        MirrorSpec, control_text, lab_keys, docker_packages, docker_version, installed_size,
                        merge_depends, nvidia_list, packages_index, packages_stanza, digests_of, release_date,
                        release_file, sources_list, today_docker_packages, toolkit_base_postinst, toolkit_packages,
                        upstream_version)
from lab.topology import older_engine_pins
from tests.goldens import check_golden

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "lab"
REPO = Path(__file__).resolve().parents[2]

BOOKWORM = {
    "versions": {"docker.io": "20.10.24+dfsg1-1+deb12u1+b6", "containerd": "1.6.20~ds1-1+deb12u3",
                 "runc": "1.1.5+ds1-1+deb12u1", "tini": "0.19.0-1+b3", "docker-buildx": "0.13.1+ds1-3",
                 "docker-compose": "2.26.1-4"},
    "depends": {"docker.io": "libc6 (>= 2.34), libdevmapper1.02.1 (>= 2:1.02.97), libsystemd0, adduser, "
                             "containerd (>= 1.4~), iptables, lsb-base, runc (>= 1.0.0~rc8~), tini",
                "containerd": "runc (>= 0.1.0~), libc6 (>= 2.34)", "runc": "libc6 (>= 2.34), libseccomp2 (>= 2.5.0)",
                "tini": "libc6 (>= 2.34)", "docker-buildx": "libc6 (>= 2.34)", "docker-compose": "libc6 (>= 2.34)"},
}
TRIXIE = {
    "versions": {"docker.io": "26.1.5+dfsg1-9+deb13u1+b1", "docker-cli": "26.1.5+dfsg1-9+deb13u1+b1",
                 "containerd": "1.7.24~ds1-6+deb13u1", "runc": "1.1.15+ds1-2+b4", "tini": "0.19.0-3+b8",
                 "docker-buildx": "0.13.1+ds1-3", "docker-compose": "2.26.1-4"},
    "depends": {"docker.io": "libc6 (>= 2.34), libsystemd0, adduser, containerd (>= 1.4~), iptables, "
                             "sysvinit-utils (>= 3.05-4~), runc (>= 1.0.0~rc8~), tini",
                "docker-cli": "libc6 (>= 2.34)", "containerd": "runc (>= 0.1.0~), libc6 (>= 2.34)",
                "runc": "libc6 (>= 2.38), libseccomp2 (>= 2.5.0)", "tini": "libc6 (>= 2.38)",
                "docker-buildx": "libc6 (>= 2.34)", "docker-compose": "libc6 (>= 2.34)"},
}

# Debian unstable's packages today's docker-ce is made of (`dpkg-deb -f` of the .debs fetched 2026-12-07),
# beside trixie's above (docker.io's /etc/init.d/docker, tini)
SID = {
    "versions": {**TRIXIE["versions"], "sid-containerd": "2.1.9+ds1-5", "sid-docker.io": "28.5.2+dfsg4-5",
                 "sid-docker-cli": "28.5.2+dfsg4-5", "sid-runc": "1.3.6+ds1-1"},
    "depends": {**TRIXIE["depends"], "sid-containerd": "runc (>= 0.1.0~), libc6 (>= 2.34)",
                "sid-docker.io": "debconf (>= 0.5) | debconf-2.0, systemd | systemd-standalone-sysusers | "
                                 "systemd-sysusers, libc6 (>= 2.34), libsystemd0, containerd (>= 1.4~), iptables, "
                                 "sysvinit-utils (>= 3.05-4~), runc (>= 1.0.0~rc8~), tini-static",
                "sid-docker-cli": "libc6 (>= 2.34)", "sid-runc": "libc6 (>= 2.38), libseccomp2 (>= 2.5.0)"},
}


def controls(packages) -> bytes:
    return "\n".join(control_text(p, installed_size([1024 * 1000, 10])) for p in packages).encode()


@pytest.mark.parametrize("codename, debian", [("bookworm", BOOKWORM), ("trixie", TRIXIE), ("noble", TRIXIE)])
def test_docker_control_files(codename, debian):
    packages = docker_packages(CODENAMES[codename], debian["versions"], debian["depends"])
    assert [p.name for p in packages] == ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin",
                                          "docker-compose-plugin"]
    check_golden(GOLDEN / f"control-docker-{codename}.txt", controls(packages))


def test_docker_packages_replace_debians_as_dockers_own_do():
    ce, cli, containerd = (dict(p.fields) for p in docker_packages(CODENAMES["trixie"], **TRIXIE)[:3])
    assert "docker.io" in ce["Conflicts"] and "docker.io" in cli["Conflicts"]
    assert containerd["Provides"] == containerd["Conflicts"] == containerd["Replaces"] == "containerd, runc"
    assert ce["Depends"].startswith("containerd.io (>= 1.6.24), docker-ce-cli, iptables")


def test_docker_ce_carries_both_init_systems_and_makes_the_docker_group():
    ce = docker_packages(CODENAMES["bookworm"], **BOOKWORM)[0]
    dests = {f.dest for f in ce.files}
    assert {"/usr/lib/systemd/system/docker.service", "/usr/lib/systemd/system/docker.socket",
            "/etc/init.d/docker", "/etc/default/docker", "/usr/bin/dockerd", "/usr/bin/docker-init"} <= dests
    assert dict(ce.scripts)["postinst"] == "lab:docker-ce.postinst"
    postinst = (Path(__file__).resolve().parents[2] / "lab/files/packages/docker-ce.postinst").read_text()
    assert "groupadd --system docker" in postinst


def test_without_plugins_there_are_three_packages():
    names = [p.name for p in docker_packages(CODENAMES["noble"], TRIXIE["versions"], TRIXIE["depends"],
                                             plugins=False)]
    assert names == ["docker-ce", "docker-ce-cli", "containerd.io"]


def test_toolkit_control_files():
    packages = toolkit_packages("1.18.0")
    check_golden(GOLDEN / "control-nvidia.txt", controls(packages))
    toolkit = dict(packages[1].fields)
    assert toolkit["Depends"] == "nvidia-container-toolkit-base (= 1.18.0-1)"   # no libnvidia-container-tools
    assert "--runtime=nvidia" in packages[0].description


@pytest.mark.parametrize("debian, upstream", [
    ("26.1.5+dfsg1-9+deb13u1+b1", "26.1.5"), ("1.7.24~ds1-6+deb13u1", "1.7.24"), ("2:1.02.97-1", "1.02.97"),
    ("5:26.1.5-1~debian.13~trixie", "26.1.5"), ("0.13.1+ds1-3", "0.13.1"),
])
def test_upstream_version(debian, upstream):
    assert upstream_version(debian) == upstream


@pytest.mark.parametrize("codename, epoch, version", [
    ("bookworm", "5", "5:20.10.24-1~debian.12~bookworm"), ("trixie", "5", "5:26.1.5-1~debian.13~trixie"),
    ("noble", "5", "5:26.1.5-1~ubuntu.24.04~noble"), ("noble", "", "26.1.5-1~ubuntu.24.04~noble"),
])
def test_docker_version_scheme(codename, epoch, version):
    assert docker_version(epoch, version.split(":")[-1].split("-")[0], CODENAMES[codename]) == version


@pytest.mark.parametrize("entries, merged", [
    (["libc6 (>= 2.34)", "libc6 (>= 2.38)", "libseccomp2 (>= 2.5.0)"], "libc6 (>= 2.38), libseccomp2 (>= 2.5.0)"),
    (["libc6 (>= 2.38)", "libsystemd0", "libc6 (>= 2.34)"], "libc6 (>= 2.38), libsystemd0"),
    (["libc6", "libc6 (>= 2.34)"], "libc6 (>= 2.34)"),
    ([], ""),
])
def test_merge_depends(entries, merged):
    assert merge_depends(entries) == merged


@pytest.mark.parametrize("sizes, kib", [([], 0), ([0], 1), ([1024], 1), ([1025, 1], 3)])
def test_installed_size_counts_kib_per_file(sizes, kib):
    assert installed_size(sizes) == kib


def test_packages_and_release_files():
    package = toolkit_packages("1.18.0")[1]
    control = control_text(package, 4467)
    stanza = packages_stanza(control, package.filename, 3, digests_of(b"deb"))
    index = packages_index([stanza, stanza.replace("Package: nvidia-container-toolkit", "Package: other")]).encode()
    check_golden(GOLDEN / "Packages", index)
    release = release_file([("Origin", "NVIDIA"), ("Label", "NVIDIA Container Toolkit"),
                            ("Date", release_date(1700000000)), ("Architectures", "amd64")],
                           {"Packages": index, "Packages.gz": b"not really gzip"})
    check_golden(GOLDEN / "Release", release.encode())
    assert release_date(1700000000) == "Tue, 14 Nov 2023 22:13:20 UTC"


def test_private_apt_sources_and_nvidias_list():
    assert sources_list(["bookworm", "trixie"], "http://deb.debian.org/debian", "/k.gpg") == (
        "deb [signed-by=/k.gpg] http://deb.debian.org/debian bookworm main\n"
        "deb [signed-by=/k.gpg] http://deb.debian.org/debian trixie main\n")
    assert nvidia_list("http://10.0.0.5/libnvidia-container") == \
        "deb http://10.0.0.5/libnvidia-container/stable/deb/$(ARCH) /\n"


def test_without_shared_the_nvidia_part_is_skipped_with_one_line(tmp_path):
    lines = []
    builder = MirrorBuilder(MirrorSpec(docker=(), nvidia=True), keys=lab_keys(tmp_path / "gnupg"),
                            apt_root=tmp_path / "apt", toolkit=tmp_path / "absent.tar.xz", log=lines.append)
    mirror = builder.build(tmp_path / "tree")
    assert lines == [f"NVIDIA part skipped: {tmp_path / 'absent.tar.xz'} is not there (a clone without ../shared)"]
    assert mirror.nvidia == {} and not (tmp_path / "tree" / "libnvidia-container").exists()
    assert Mirror.load(tmp_path / "tree").nvidia_key_fingerprint == ""


@pytest.mark.skipif(not TOOLKIT_TARBALL.is_file(), reason=f"{TOOLKIT_TARBALL} is absent (no ../shared)")
def test_the_cli_builds_a_signed_nvidia_repo_that_gpgv_accepts(tmp_path):
    env = dict(os.environ, GPUFLEET_LAB_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "www"
    result = subprocess.run([sys.executable, "-m", "lab.mirror", "--out", str(out), "--nvidia", "--compression",
                             "gzip", "--url", "http://127.0.0.1:8000"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    flat = out / "libnvidia-container/stable/deb/amd64"
    assert sorted(p.name for p in flat.iterdir()) == [
        "InRelease", "Packages", "Packages.gz", "Release", "Release.gpg",
        "nvidia-container-toolkit-base_1.18.0-1_amd64.deb", "nvidia-container-toolkit_1.18.0-1_amd64.deb"]
    assert (out / "libnvidia-container/stable/deb/nvidia-container-toolkit.list").read_text() == \
        "deb http://127.0.0.1:8000/libnvidia-container/stable/deb/$(ARCH) /\n"
    fingerprint = json.loads((out / "MIRROR.json").read_text())["nvidia_key_fingerprint"]
    assert f'nvidia_key_fingerprint = "{fingerprint}"' in result.stdout
    # gpgv with the served key only, as apt does with signed-by
    keyring = tmp_path / "nvidia.gpg"
    subprocess.run(["gpg", "--batch", "--dearmor", "-o", str(keyring), str(out / "libnvidia-container/gpgkey")],
                   check=True)
    for argv in (["gpgv", "--keyring", str(keyring), str(flat / "InRelease")],
                 ["gpgv", "--keyring", str(keyring), str(flat / "Release.gpg"), str(flat / "Release")]):
        assert subprocess.run(argv, capture_output=True).returncode == 0, argv
    # the Release lists the Packages file it signs, and Packages the .debs as they are
    assert hashlib.sha256((flat / "Packages").read_bytes()).hexdigest() in (flat / "Release").read_text()
    deb = flat / "nvidia-container-toolkit_1.18.0-1_amd64.deb"
    assert f"SHA256: {hashlib.sha256(deb.read_bytes()).hexdigest()}" in (flat / "Packages").read_text()
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Depends"], capture_output=True,
                            text=True).stdout
    assert fields == ("Package: nvidia-container-toolkit\nVersion: 1.18.0-1\n"
                      "Depends: nvidia-container-toolkit-base (= 1.18.0-1)\n")
    contents = subprocess.run(["dpkg-deb", "-c", str(flat / "nvidia-container-toolkit-base_1.18.0-1_amd64.deb")],
                              capture_output=True, text=True).stdout
    assert "./usr/bin/nvidia-ctk" in contents and "./usr/bin/nvidia-container-runtime" in contents


# --- today's stack: docker-ce 29 (or unstable's 28.5), containerd.io 2.x, the toolkit 1.20 ---

@pytest.mark.parametrize("built, golden", [(True, "control-docker-trixie-today.txt"),
                                           (False, "control-docker-trixie-today-unstable.txt")])
def test_todays_docker_control_files(built, golden):
    packages = today_docker_packages(CODENAMES["trixie"], SID["versions"], SID["depends"], built)
    assert [p.name for p in packages] == ["docker-ce", "docker-ce-cli", "containerd.io"]
    check_golden(GOLDEN / golden, controls(packages))


@pytest.mark.parametrize("built, engine", [(True, "29.7.2"), (False, "28.5.2")])
def test_todays_versions_are_in_dockers_scheme_and_newer_than_the_older_in_the_same_dist(built, engine):
    ce, cli, containerd = today_docker_packages(CODENAMES["trixie"], SID["versions"], SID["depends"], built)
    older = {p.name: p.version for p in docker_packages(CODENAMES["trixie"], TRIXIE["versions"], TRIXIE["depends"])}
    assert ce.version == cli.version == f"5:{engine}-1~debian.13~trixie"
    assert containerd.version == "2.1.9-1~debian.13~trixie"
    # apt's own comparison: today's packages are the candidates where nothing pins the older ones
    for package in (ce, cli, containerd):
        assert subprocess.run(["dpkg", "--compare-versions", package.version, "gt", older[package.name]]).returncode == 0
    assert {p.filename for p in (ce, cli, containerd)}.isdisjoint(
        {p.filename for p in docker_packages(CODENAMES["trixie"], TRIXIE["versions"], TRIXIE["depends"])})


@pytest.mark.parametrize("built", [True, False])
def test_todays_packaging_runs_containerd_as_its_own_service_as_dockers_does(built):
    ce, cli, containerd = (dict(p.fields) for p in today_docker_packages(CODENAMES["trixie"], **SID, built=built))
    assert ce["Depends"].startswith("containerd.io (>= 2.1.5), docker-ce-cli, iptables")   # Docker 29's own bound
    assert containerd["Provides"] == containerd["Conflicts"] == containerd["Replaces"] == "containerd, runc"
    assert "docker.io" in ce["Conflicts"] and "docker.io" in cli["Conflicts"]
    ce_files, _, containerd_files = ({f.dest: f.source for f in p.files}
                                     for p in today_docker_packages(CODENAMES["trixie"], **SID, built=built))
    assert containerd_files["/usr/lib/systemd/system/containerd.service"] == "lab:containerd.service"
    assert containerd_files["/usr/bin/containerd"] == "sid-containerd:/usr/bin/containerd"
    assert containerd_files["/usr/bin/runc"] == ("stack-runc:runc" if built else "sid-runc:/usr/sbin/runc")
    assert ce_files["/usr/bin/dockerd"] == ("stack-docker:bin/dockerd" if built else "sid-docker.io:/usr/sbin/dockerd")
    service = ce_files["/usr/lib/systemd/system/docker.service"]
    assert service == ("stack-docker:systemd/docker.service" if built else "lab:docker.service")
    unit = (PACKAGING / "containerd.service").read_text()
    assert "ExecStart=/usr/bin/containerd\n" in unit and "Type=notify" in unit


def exec_start(unit: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]


def test_the_fallbacks_docker_service_starts_dockerd_on_the_system_containerd():
    unit = (PACKAGING / "docker.service").read_text()
    assert exec_start(unit) == ["/usr/bin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock"]
    assert "containerd.service" in unit.split("Wants=")[1].splitlines()[0]


@pytest.mark.skipif(not (STACK / f"docker-{TODAY_DOCKER}-amd64.tar.xz").is_file(), reason="no ../shared/stack")
def test_docker_29s_own_docker_service_starts_dockerd_on_the_system_containerd():
    import tarfile
    with tarfile.open(STACK / f"docker-{TODAY_DOCKER}-amd64.tar.xz") as tar:
        unit = tar.extractfile(f"docker-{TODAY_DOCKER}-amd64/systemd/docker.service").read().decode()
    assert exec_start(unit) == ["/usr/bin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock"]
    assert "containerd.service" in unit.split("Wants=")[1].splitlines()[0]


def test_toolkit_120_control_files_and_units():
    packages = toolkit_packages("1.20.0")
    check_golden(GOLDEN / "control-nvidia-1.20.txt", controls(packages))
    base, toolkit = packages
    assert dict(toolkit.fields)["Depends"] == "nvidia-container-toolkit-base (= 1.20.0-1)"  # no libnvidia-container-tools
    files = {f.dest: f.source for f in base.files}
    assert files["/usr/bin/nvidia-ctk"] == "up:bin/nvidia-ctk"                # 1.20's tarball layout
    assert files["/lib/systemd/system/nvidia-cdi-refresh.path"] == "up:systemd/nvidia-cdi-refresh.path"
    assert base.conffiles == ("/etc/nvidia-container-toolkit/nvidia-cdi-refresh.env",)
    assert "systemctl enable nvidia-cdi-refresh.path" in toolkit_base_postinst("1.20.0")
    assert "systemctl" not in toolkit_base_postinst("1.18.0")                # 1.18 ships no units
    assert {f.dest for f in toolkit_packages("1.18.0")[0].files}.isdisjoint(files.keys() - {
        "/usr/bin/nvidia-container-runtime", "/usr/bin/nvidia-ctk", "/usr/bin/nvidia-cdi-hook",
        "/usr/share/doc/nvidia-container-toolkit-base/copyright"})


def test_the_lab_mirror_holds_both_generations_in_one_dist():
    assert LAB_SPEC.docker == ("bookworm", "trixie") and LAB_SPEC.today == ("trixie",)
    assert LAB_SPEC.toolkits == ("1.18.0", "1.20.0")


@pytest.mark.parametrize("spec", [MirrorSpec(docker=("bookworm",), today=("trixie",)),
                                  MirrorSpec(today=("jammy",)), MirrorSpec(toolkits=("1.19.0",))])
def test_impossible_mirror_specs_are_refused(spec):
    from lab.common import LabError
    with pytest.raises(LabError):
        spec.check()


def test_a_server_that_stays_on_the_older_versions_pins_each_one_that_differs():
    older = {p.name: p.version for p in docker_packages(CODENAMES["trixie"], TRIXIE["versions"], TRIXIE["depends"])}
    older |= {p.name: p.version for p in toolkit_packages("1.18.0")}
    today = {p.name: p.version for p in today_docker_packages(CODENAMES["trixie"], **SID, built=True)}
    today |= {p.name: p.version for p in toolkit_packages("1.20.0")}
    check_golden(GOLDEN / "apt-pins-gpu3", older_engine_pins(older, today).encode())
    pinned = [line.split()[1] for line in older_engine_pins(older, today).splitlines() if line.startswith("Package:")]
    assert pinned == ["containerd.io", "docker-ce", "docker-ce-cli", "nvidia-container-toolkit",
                      "nvidia-container-toolkit-base"]           # the plugins exist once: nothing to pin
    assert older_engine_pins(older, {}) == ""
