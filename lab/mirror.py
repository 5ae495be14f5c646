"""The lab's package mirror: Docker CE and the NVIDIA Container Toolkit in their upstream layouts, made by us.

    <root>/docker-ce/linux/debian/gpg                                  the signing key, ASCII-armoured
    <root>/docker-ce/linux/debian/dists/<codename>/InRelease           signed (+ Release, Release.gpg)
    <root>/docker-ce/linux/debian/dists/<codename>/stable/binary-amd64/Packages(.gz)
    <root>/docker-ce/linux/debian/dists/<codename>/pool/stable/amd64/*.deb
    <root>/docker-ce/linux/ubuntu/...                                  the same for noble
    <root>/libnvidia-container/gpgkey
    <root>/libnvidia-container/stable/deb/nvidia-container-toolkit.list
    <root>/libnvidia-container/stable/deb/amd64/                       flat repo: Packages, InRelease, *.deb
    <root>/MIRROR.json                                                 what was built, key fingerprints

Docker's packages (docker-ce, docker-ce-cli, containerd.io, docker-buildx-plugin,
docker-compose-plugin) are Debian's own binaries (docker.io, docker-cli, containerd,
runc, tini, docker-buildx, docker-compose), fetched from Debian's archive with the
host's apt under a private configuration (its own sources, lists and cache under
CACHE/apt; the system's apt state is not touched) and repackaged with dpkg-deb. NVIDIA's
two toolkit packages are made from the binaries and NVIDIA's packaging files in
../shared/gpu-stack. Both repos are signed with lab keys made once (CACHE/gnupg).

Today's stack, in the same dists beside the older versions (as Docker's and NVIDIA's repos
hold several): docker-ce/-cli 29.7.2 and runc 1.3.6 from ../shared/stack's builds, with
containerd 2.x from Debian unstable in containerd.io, and the toolkit 1.20.0 from
../shared/stack. Without ../shared/stack, docker-ce is Debian unstable's docker.io (28.5).

`python -m lab.mirror --out DIR --docker noble --nvidia` builds a tree into DIR.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lab.common import CACHE, LAB_FILES, LabError, exclusive, remove_tree, run, write_atomic

REPO = Path(__file__).resolve().parent.parent
GPU_STACK = REPO.parent / "shared" / "gpu-stack"
TOOLKIT_VERSION = "1.18.0"
TOOLKIT_TARBALL = GPU_STACK / f"nvidia-container-toolkit-{TOOLKIT_VERSION}-amd64.tar.xz"
PACKAGING = LAB_FILES / "packages"
# Today's stack (../shared/stack/README.md): Docker 29 and runc 1.3 built from their tags, the toolkit 1.20.
STACK = REPO.parent / "shared" / "stack"
TODAY_DOCKER, TODAY_RUNC, TODAY_TOOLKIT = "29.7.2", "1.3.6", "1.20.0"
TOOLKIT_VERSIONS = (TOOLKIT_VERSION, TODAY_TOOLKIT)
# containerd 2.x for Docker 29 (and, without ../shared/stack, docker.io 28.5, docker-cli and runc 1.3)
TODAY_FROM = "sid"

DOCKER_BASE = "docker-ce/linux"           # as in https://download.docker.com/linux
NVIDIA_BASE = "libnvidia-container"       # as in https://nvidia.github.io/libnvidia-container
ARCH = "amd64"
MAINTAINER = "gpufleet lab <lab@gpufleet.invalid>"
# Bump when what this module makes changes in a way its inputs do not show.
FORMAT = 1


@dataclass(frozen=True)
class Codename:
    """A release the Docker repo serves, and the Debian release whose binaries it gets."""
    name: str
    family: str          # debian or ubuntu: the path under docker-ce/linux
    os_version: str      # in the package versions: 5:26.1.5-1~debian.13~trixie
    binaries_from: str   # the Debian release whose docker.io etc. are repackaged


CODENAMES = {
    "bookworm": Codename("bookworm", "debian", "12", "bookworm"),
    "trixie": Codename("trixie", "debian", "13", "trixie"),
    # Ubuntu 24.04 has glibc 2.39; trixie's binaries need 2.38 at most.
    "noble": Codename("noble", "ubuntu", "24.04", "trixie"),
}
# buildx and compose v2 exist in Debian from trixie on; their binaries need glibc 2.34 only.
PLUGINS_FROM = "trixie"


# --- what Debian gives ---

def sources_list(suites: list[str], archive: str, keyring: str) -> str:
    """The private apt configuration's sources: main of each suite, nothing else."""
    return "".join(f"deb [signed-by={keyring}] {archive} {suite} main\n" for suite in suites)


class DebianArchive:
    """Debian's .deb files, fetched with the host's apt under a private configuration and kept in CACHE/apt."""

    KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

    def __init__(self, root: Path, suites: list[str], archive: str = "http://deb.debian.org/debian", log=print):
        self.root, self.suites, self.archive, self.log = root, sorted(set(suites)), archive, log
        self._updated = False

    @property
    def config(self) -> Path:
        return self.root / "apt.conf"

    def _setup(self) -> None:
        if not shutil.which("apt-get"):
            raise LabError("the package mirror needs apt-get on this machine (Debian or Ubuntu)")
        if not Path(self.KEYRING).exists():
            raise LabError(f"the package mirror needs {self.KEYRING}: apt-get install debian-archive-keyring")
        for d in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "status").touch()
        (self.root / "sources.list").write_text(sources_list(self.suites, self.archive, self.KEYRING))
        r = self.root
        self.config.write_text("\n".join([
            f'Dir::Etc::SourceList "{r}/sources.list";',
            f'Dir::Etc::SourceParts "{r}/sources.list.d";',
            f'Dir::Etc::Preferences "{r}/preferences";',
            f'Dir::Etc::PreferencesParts "{r}/preferences.d";',
            f'Dir::State "{r}";',
            f'Dir::State::Lists "{r}/lists";',
            f'Dir::State::status "{r}/status";',
            f'Dir::Cache "{r}/cache";',
            'APT::Architecture "amd64";',
            'APT::Architectures { "amd64"; };',
            'Acquire::Languages "none";',
            'APT::Sandbox::User "root";',
            "",
        ]))

    def _apt(self, *argv: str, cwd: Path | None = None) -> str:
        return run(["apt-get", "-q", *argv], f"apt-get {argv[0]} (private configuration {self.config})",
                   env={"APT_CONFIG": str(self.config), "LC_ALL": "C"}, cwd=cwd)

    def fetch(self, suite: str, package: str) -> Path:
        """The .deb of `package` in `suite`: from the cache, else downloaded once (the cache pins it)."""
        directory = self.root / "debs" / suite
        found = sorted(directory.glob(f"{package}_*_{ARCH}.deb"))
        if found:
            return found[-1]
        if not self._updated:
            self._setup()
            self.log(f"apt-get update ({', '.join(self.suites)} main, private configuration in {self.root})")
            self._apt("update")
            self._updated = True
        directory.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=directory, prefix=".download-"))
        try:
            self._apt("download", f"{package}/{suite}", cwd=partial)
            debs = list(partial.glob("*.deb"))
            if len(debs) != 1:
                raise LabError(f"apt-get download {package}/{suite} gave {[d.name for d in debs]}")
            target = directory / debs[0].name.replace("%3a", "_")
            debs[0].replace(target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return target


def deb_field(deb: Path, name: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), name], f"reading {deb.name}").strip()


def upstream_version(debian_version: str) -> str:
    """26.1.5+dfsg1-9+deb13u1+b1 -> 26.1.5; 1.7.24~ds1-6 -> 1.7.24; 2:1.0-1 -> 1.0."""
    match = re.match(r"(?:\d+:)?(\d+(?:\.\d+)*)", debian_version)
    if not match:
        raise LabError(f"cannot read an upstream version from {debian_version!r}")
    return match.group(1)


def library_depends(depends: str) -> list[str]:
    """The shared-library part of a Debian Depends line (what dpkg-shlibdeps found for the binaries)."""
    return [d.strip() for d in depends.split(",") if d.strip().startswith("lib")]


def merge_depends(entries: list[str]) -> str:
    """One entry per package, the highest `>=` bound kept: libc6 (>= 2.34), libc6 (>= 2.38) -> libc6 (>= 2.38)."""
    merged: dict[str, str] = {}
    for entry in entries:
        name = entry.split()[0]
        bound = re.search(r"\(>= ([^)]+)\)", entry)
        kept = re.search(r"\(>= ([^)]+)\)", merged.get(name, ""))
        if name not in merged or (bound and (not kept or _numeric(bound.group(1)) > _numeric(kept.group(1)))):
            merged[name] = entry
    return ", ".join(merged.values())


def _numeric(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


# --- packages we make ---

@dataclass(frozen=True)
class FileFrom:
    """One file of a package: `source` is "DEB:path" (a file inside a Debian .deb), "lab:path"
    (under lab/files/packages) or "text:" with `text`."""
    dest: str
    source: str
    mode: int = 0o644
    text: str = ""
    rewrite: tuple[tuple[str, str], ...] = ()   # (old, new) replacements in a text file


@dataclass(frozen=True)
class DebPackage:
    """A binary package to build: control fields, files, maintainer scripts."""
    name: str
    version: str
    fields: tuple[tuple[str, str], ...]             # after Package/Version/Architecture/Maintainer/Installed-Size
    description: str                               # first line, then the long text
    files: tuple[FileFrom, ...]
    scripts: tuple[tuple[str, str], ...] = ()       # (postinst|prerm|postrm, source as in FileFrom)
    conffiles: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        version = self.version.split(":", 1)[-1]
        return f"{self.name}_{version}_{ARCH}.deb"


def control_text(pkg: DebPackage, installed_size_kib: int) -> str:
    """The DEBIAN/control file of a package (deb-control(5))."""
    lines = [f"Package: {pkg.name}", f"Version: {pkg.version}", f"Architecture: {ARCH}",
             f"Maintainer: {MAINTAINER}", f"Installed-Size: {installed_size_kib}"]
    lines += [f"{key}: {value}" for key, value in pkg.fields if value]
    summary, _, body = pkg.description.partition("\n")
    lines.append(f"Description: {summary}")
    for i, paragraph in enumerate(p for p in body.strip("\n").split("\n\n") if p.strip()):
        if i:
            lines.append(" .")
        lines += [" " + line for line in textwrap.wrap(" ".join(paragraph.split()), width=78, break_on_hyphens=False)]
    return "\n".join(lines) + "\n"


def installed_size(sizes: list[int]) -> int:
    """Installed-Size as dpkg-gencontrol counts it: KiB per file, rounded up, at least 1 per entry."""
    return sum(max(1, math.ceil(s / 1024)) for s in sizes)


def docker_version(cli: str, version: str, codename: Codename) -> str:
    """Docker's own version scheme: 5:26.1.5-1~debian.13~trixie (epoch 5 for docker-ce and -cli)."""
    epoch = "5:" if cli else ""
    return f"{epoch}{version}-1~{codename.family}.{codename.os_version}~{codename.name}"


DOCKER_DESCRIPTION = """\
Docker: the open-source application container engine
Docker is a product for you to build, ship and run any application as a
lightweight container.

gpufleet lab build: Debian's {source} {debian} repackaged under Docker's
package name and file layout; not a build by Docker, Inc."""


def docker_packages(codename: Codename, versions: dict[str, str], depends: dict[str, str],
                    plugins: bool = True) -> list[DebPackage]:
    """Docker's five packages for `codename`, from Debian's binaries.

    `versions` and `depends`: the Debian Version and Depends of each source package
    (docker.io, docker-cli where it exists, containerd, runc, tini, docker-buildx, docker-compose)."""
    engine = upstream_version(versions["docker.io"])
    own_cli = "docker-cli" in versions         # from trixie on the CLI is its own package
    cli_from = "docker-cli" if own_cli else "docker.io"
    ce_version = docker_version("5", engine, codename)
    containerd = upstream_version(versions["containerd"])
    # as Docker's own docker-ce has it: 20.10 wanted containerd 1.4.1, 23 and later 1.6.24
    containerd_bound = "1.4.1" if _numeric(engine) < (23,) else "1.6.24"
    deps = lambda *names: merge_depends([d for n in names for d in library_depends(depends.get(n, ""))])
    copyright_of = lambda deb, pkg: FileFrom(f"/usr/share/doc/{pkg}/copyright", f"{deb}:/usr/share/doc/{deb}/copyright")
    packages = [
        DebPackage(
            "docker-ce", ce_version,
            fields=(("Depends", f"containerd.io (>= {containerd_bound}), docker-ce-cli, iptables, {deps('docker.io')}"),
                    ("Recommends", "apparmor, ca-certificates, docker-ce-rootless-extras, git, libltdl7, pigz, "
                                   "procps, xz-utils"),
                    ("Suggests", "aufs-tools, cgroupfs-mount | cgroup-lite"),
                    ("Conflicts", "docker (<< 1.5~), docker-engine, docker.io"),
                    ("Replaces", "docker-engine"),
                    ("Section", "admin"), ("Priority", "optional"), ("Homepage", "https://www.docker.com")),
            description=DOCKER_DESCRIPTION.format(source="docker.io", debian=versions["docker.io"]),
            files=(FileFrom("/usr/bin/dockerd", "docker.io:/usr/sbin/dockerd", 0o755),
                   FileFrom("/usr/bin/docker-proxy", "docker.io:/usr/sbin/docker-proxy", 0o755),
                   FileFrom("/usr/bin/docker-init", "tini:/usr/bin/tini-static", 0o755),
                   FileFrom("/usr/lib/systemd/system/docker.service", "lab:docker.service"),
                   FileFrom("/usr/lib/systemd/system/docker.socket", "lab:docker.socket"),
                   FileFrom("/etc/init.d/docker", "docker.io:/etc/init.d/docker", 0o755,
                            rewrite=(("DOCKERD=/usr/sbin/dockerd", "DOCKERD=/usr/bin/dockerd"),)),
                   FileFrom("/etc/default/docker", "docker.io:/etc/default/docker"),
                   copyright_of("docker.io", "docker-ce")),
            scripts=(("postinst", "lab:docker-ce.postinst"), ("prerm", "lab:docker-ce.prerm"),
                     ("postrm", "lab:docker-ce.postrm")),
            conffiles=("/etc/default/docker", "/etc/init.d/docker")),
        DebPackage(
            "docker-ce-cli", ce_version,
            # bookworm's CLI is inside docker.io, whose other libraries are the daemon's
            fields=(("Depends", deps(cli_from) if own_cli else merge_depends(
                        [d for d in library_depends(depends.get(cli_from, "")) if d.startswith("libc6")])),
                    ("Recommends", "docker-buildx-plugin, docker-compose-plugin"),
                    ("Conflicts", "docker (<< 1.5~), docker-engine, docker-engine-cs, docker.io, lxc-docker, "
                                  "lxc-docker-virtual-package"),
                    ("Replaces", "docker-ce (<< 5:0), docker-engine, docker-engine-cs"),
                    ("Breaks", "docker-ce (<< 5:0)"),
                    ("Section", "admin"), ("Priority", "optional"), ("Homepage", "https://www.docker.com")),
            description=DOCKER_DESCRIPTION.replace("Docker: the", "Docker CLI: the").format(
                source=cli_from, debian=versions[cli_from]),
            files=(FileFrom("/usr/bin/docker", f"{cli_from}:/usr/bin/docker", 0o755),
                   FileFrom("/usr/share/bash-completion/completions/docker",
                            f"{cli_from}:/usr/share/bash-completion/completions/docker"),
                   copyright_of(cli_from, "docker-ce-cli"))),
        DebPackage(
            "containerd.io", f"{containerd}-1",
            fields=(("Depends", deps("containerd", "runc")),
                    ("Provides", "containerd, runc"), ("Conflicts", "containerd, runc"),
                    ("Replaces", "containerd, runc"),
                    ("Section", "devel"), ("Priority", "optional"), ("Homepage", "https://containerd.io")),
            description=(f"An open and reliable container runtime\n"
                         f"containerd with runc, as Docker's containerd.io package has them.\n\n"
                         f"gpufleet lab build: Debian's containerd {versions['containerd']} and runc "
                         f"{versions['runc']} repackaged; not a build by Docker, Inc."),
            files=(FileFrom("/usr/bin/containerd", "containerd:/usr/bin/containerd", 0o755),
                   FileFrom("/usr/bin/containerd-shim-runc-v2", "containerd:/usr/bin/containerd-shim-runc-v2", 0o755),
                   FileFrom("/usr/bin/ctr", "containerd:/usr/bin/ctr", 0o755),
                   FileFrom("/usr/bin/runc", "runc:/usr/sbin/runc", 0o755),
                   FileFrom("/etc/containerd/config.toml", "lab:containerd-config.toml"),
                   FileFrom("/usr/lib/systemd/system/containerd.service", "lab:containerd.service"),
                   copyright_of("containerd", "containerd.io")),
            scripts=(("postinst", "lab:containerd.io.postinst"), ("prerm", "lab:containerd.io.prerm")),
            conffiles=("/etc/containerd/config.toml",)),
    ]
    if plugins:
        for plugin, source in (("buildx", "docker-buildx"), ("compose", "docker-compose")):
            packages.append(DebPackage(
                f"docker-{plugin}-plugin", docker_version("", upstream_version(versions[source]), codename),
                fields=(("Depends", deps(source)), ("Enhances", "docker-ce-cli"),
                        ("Section", "admin"), ("Priority", "optional"), ("Homepage", "https://github.com/docker")),
                description=(f"Docker {plugin.capitalize()} CLI plugin.\n"
                             f"gpufleet lab build: Debian's {source} {versions[source]} repackaged; "
                             f"not a build by Docker, Inc."),
                files=(FileFrom(f"/usr/libexec/docker/cli-plugins/docker-{plugin}",
                                f"{source}:/usr/libexec/docker/cli-plugins/docker-{plugin}", 0o755),
                       copyright_of(source, f"docker-{plugin}-plugin"))))
    return packages


def today_docker_packages(codename: Codename, versions: dict[str, str], depends: dict[str, str],
                          built: bool) -> list[DebPackage]:
    """docker-ce, docker-ce-cli and containerd.io of today's stack for `codename`.

    `built`: Docker 29 and runc from ../shared/stack ("stack-docker", "stack-runc"); else Debian
    unstable's docker.io, docker-cli and runc ("sid-..."). containerd is unstable's in both.
    Docker's packaging: containerd runs as its own containerd.service and docker.service starts
    dockerd with --containerd=/run/containerd/containerd.sock."""
    engine = TODAY_DOCKER if built else upstream_version(versions["sid-docker.io"])
    ce_version = docker_version("5", engine, codename)
    containerd = upstream_version(versions["sid-containerd"])
    deps = lambda *names: merge_depends([d for n in names for d in library_depends(depends.get(n, ""))])
    if built:
        engine_files = (FileFrom("/usr/bin/dockerd", "stack-docker:bin/dockerd", 0o755),
                        FileFrom("/usr/bin/docker-proxy", "stack-docker:bin/docker-proxy", 0o755),
                        FileFrom("/usr/lib/systemd/system/docker.service", "stack-docker:systemd/docker.service"),
                        FileFrom("/usr/lib/systemd/system/docker.socket", "stack-docker:systemd/docker.socket"),
                        FileFrom("/etc/init.d/docker", "docker.io:/etc/init.d/docker", 0o755,
                                 rewrite=(("DOCKERD=/usr/sbin/dockerd", "DOCKERD=/usr/bin/dockerd"),)),
                        FileFrom("/etc/default/docker", "docker.io:/etc/default/docker"),
                        FileFrom("/usr/share/doc/docker-ce/copyright", "stack-docker:licenses/LICENSE.moby"))
        cli_files = (FileFrom("/usr/bin/docker", "stack-docker:bin/docker", 0o755),
                     FileFrom("/usr/share/doc/docker-ce-cli/copyright", "stack-docker:licenses/LICENSE.cli"))
        runc = FileFrom("/usr/bin/runc", "stack-runc:runc", 0o755)
        source = f"docker {TODAY_DOCKER} and runc {TODAY_RUNC} built from their tags (../shared/stack)"
        # static binaries: no shared libraries to depend on
        engine_deps, cli_deps, runtime_deps = "", "", deps("sid-containerd")
    else:
        engine_files = (FileFrom("/usr/bin/dockerd", "sid-docker.io:/usr/sbin/dockerd", 0o755),
                        FileFrom("/usr/bin/docker-proxy", "sid-docker.io:/usr/sbin/docker-proxy", 0o755),
                        FileFrom("/usr/lib/systemd/system/docker.service", "lab:docker.service"),
                        FileFrom("/usr/lib/systemd/system/docker.socket", "lab:docker.socket"),
                        FileFrom("/etc/init.d/docker", "sid-docker.io:/etc/init.d/docker", 0o755,
                                 rewrite=(("DOCKERD=/usr/sbin/dockerd", "DOCKERD=/usr/bin/dockerd"),)),
                        FileFrom("/etc/default/docker", "sid-docker.io:/etc/default/docker"),
                        FileFrom("/usr/share/doc/docker-ce/copyright", "sid-docker.io:/usr/share/doc/docker.io/copyright"))
        cli_files = (FileFrom("/usr/bin/docker", "sid-docker-cli:/usr/bin/docker", 0o755),
                     FileFrom("/usr/share/doc/docker-ce-cli/copyright",
                              "sid-docker-cli:/usr/share/doc/docker-cli/copyright"))
        runc = FileFrom("/usr/bin/runc", "sid-runc:/usr/sbin/runc", 0o755)
        source = f"Debian unstable's docker.io {versions['sid-docker.io']}"
        engine_deps, cli_deps = deps("sid-docker.io"), deps("sid-docker-cli")
        runtime_deps = deps("sid-containerd", "sid-runc")
    note = f"\n\ngpufleet lab build: {source} repackaged under Docker's package name and file layout; " \
           f"not a build by Docker, Inc."
    return [
        DebPackage(
            "docker-ce", ce_version,
            # Docker's packaging of 29 requires containerd.io >= 2.1.5
            fields=(("Depends", ", ".join(filter(None, ["containerd.io (>= 2.1.5), docker-ce-cli, iptables",
                                                        engine_deps]))),
                    ("Recommends", "apparmor, ca-certificates, docker-ce-rootless-extras, git, libltdl7, pigz, "
                                   "procps, xz-utils"),
                    ("Suggests", "aufs-tools, cgroupfs-mount | cgroup-lite"),
                    ("Conflicts", "docker (<< 1.5~), docker-engine, docker.io"),
                    ("Replaces", "docker-engine"),
                    ("Section", "admin"), ("Priority", "optional"), ("Homepage", "https://www.docker.com")),
            description=DOCKER_DESCRIPTION.split("\n\n")[0] + note,
            files=(*engine_files, FileFrom("/usr/bin/docker-init", "tini:/usr/bin/tini-static", 0o755)),
            scripts=(("postinst", "lab:docker-ce.postinst"), ("prerm", "lab:docker-ce.prerm"),
                     ("postrm", "lab:docker-ce.postrm")),
            conffiles=("/etc/default/docker", "/etc/init.d/docker")),
        DebPackage(
            "docker-ce-cli", ce_version,
            fields=(("Depends", cli_deps),
                    ("Recommends", "docker-buildx-plugin, docker-compose-plugin"),
                    ("Conflicts", "docker (<< 1.5~), docker-engine, docker-engine-cs, docker.io, lxc-docker, "
                                  "lxc-docker-virtual-package"),
                    ("Replaces", "docker-ce (<< 5:0), docker-engine, docker-engine-cs"),
                    ("Breaks", "docker-ce (<< 5:0)"),
                    ("Section", "admin"), ("Priority", "optional"), ("Homepage", "https://www.docker.com")),
            description=DOCKER_DESCRIPTION.split("\n\n")[0].replace("Docker: the", "Docker CLI: the") + note,
            files=cli_files),
        DebPackage(
            "containerd.io", docker_version("", containerd, codename),
            fields=(("Depends", runtime_deps),
                    ("Provides", "containerd, runc"), ("Conflicts", "containerd, runc"),
                    ("Replaces", "containerd, runc"),
                    ("Section", "devel"), ("Priority", "optional"), ("Homepage", "https://containerd.io")),
            description=(f"An open and reliable container runtime\n"
                         f"containerd with runc, as Docker's containerd.io package has them.\n\n"
                         f"gpufleet lab build: Debian unstable's containerd {versions['sid-containerd']} and "
                         f"runc {TODAY_RUNC if built else versions['sid-runc']} "
                         f"({'built from its tag, ../shared/stack' if built else 'Debian unstable'}) "
                         f"repackaged; not a build by Docker, Inc."),
            files=(FileFrom("/usr/bin/containerd", "sid-containerd:/usr/bin/containerd", 0o755),
                   FileFrom("/usr/bin/containerd-shim-runc-v2", "sid-containerd:/usr/bin/containerd-shim-runc-v2",
                            0o755),
                   FileFrom("/usr/bin/ctr", "sid-containerd:/usr/bin/ctr", 0o755),
                   runc,
                   FileFrom("/etc/containerd/config.toml", "lab:containerd-config.toml"),
                   FileFrom("/usr/lib/systemd/system/containerd.service", "lab:containerd.service"),
                   FileFrom("/usr/share/doc/containerd.io/copyright",
                            "sid-containerd:/usr/share/doc/containerd/copyright")),
            scripts=(("postinst", "lab:containerd.io.postinst"), ("prerm", "lab:containerd.io.prerm")),
            conffiles=("/etc/containerd/config.toml",)),
    ]


TOOLKIT_NOTE = """\
gpufleet lab build of NVIDIA's toolkit {version} (built from NVIDIA's source);
libnvidia-container (nvidia-container-cli) is not included, so Docker's
built-in `--gpus` hook (legacy mode) cannot work: run GPU containers with the
nvidia runtime (`--runtime=nvidia --gpus all`, or it as the default runtime)."""


def toolkit_packages(version: str = TOOLKIT_VERSION) -> list[DebPackage]:
    """nvidia-container-toolkit-base and nvidia-container-toolkit, as NVIDIA's debian/control has them,
    less the dependency on libnvidia-container-tools (not built here)."""
    full = f"{version}-1"
    up = "up:"    # NVIDIA's packaging files in the toolkit tarball
    # 1.20's tarball (../shared/stack) has bin/, packaging/debian/ and systemd/ (NVIDIA's nvidia-cdi-refresh
    # units, which -base ships from 1.20 on); 1.18's has usr/bin/ and upstream-debian-packaging/.
    today = _numeric(version) >= (1, 20)
    bin_dir, debian = ("bin/", "packaging/debian/") if today else ("usr/bin/", "upstream-debian-packaging/")
    units = (FileFrom("/lib/systemd/system/nvidia-cdi-refresh.service", f"{up}systemd/nvidia-cdi-refresh.service"),
             FileFrom("/lib/systemd/system/nvidia-cdi-refresh.path", f"{up}systemd/nvidia-cdi-refresh.path"),
             FileFrom("/etc/nvidia-container-toolkit/nvidia-cdi-refresh.env", f"{up}systemd/nvidia-cdi-refresh.env"),
             ) if today else ()
    return [
        DebPackage(
            "nvidia-container-toolkit-base", full,
            fields=(("Breaks", "nvidia-container-runtime (<= 3.5.0-1), nvidia-container-runtime-hook, "
                               "nvidia-container-toolkit (<= 1.10.0-1)"),
                    ("Replaces", "nvidia-container-runtime (<= 3.5.0-1), nvidia-container-runtime-hook"),
                    ("Section", "utils"), ("Priority", "optional"),
                    ("Homepage", "https://github.com/NVIDIA/nvidia-container-toolkit")),
            description=("NVIDIA Container Toolkit Base\n"
                         "Provides tools such as the NVIDIA Container Runtime and NVIDIA Container Toolkit CLI "
                         "to enable GPU support in containers.\n\n" + TOOLKIT_NOTE.format(version=version)),
            files=(FileFrom("/usr/bin/nvidia-container-runtime", f"{up}{bin_dir}nvidia-container-runtime", 0o755),
                   FileFrom("/usr/bin/nvidia-ctk", f"{up}{bin_dir}nvidia-ctk", 0o755),
                   FileFrom("/usr/bin/nvidia-cdi-hook", f"{up}{bin_dir}nvidia-cdi-hook", 0o755),
                   *units,
                   FileFrom("/usr/share/doc/nvidia-container-toolkit-base/copyright", f"{up}{debian}copyright")),
            # NVIDIA's postinst writes config.toml with `nvidia-ctk config`; 1.18's tarball has no
            # nvidia-cdi-refresh units, so that part of it is left out there. 1.20: NVIDIA's postinst, and
            # what `dh --with systemd` adds to it (enable the units; start none: without a GPU they do nothing).
            scripts=(("postinst", "text:"),),
            conffiles=("/etc/nvidia-container-toolkit/nvidia-cdi-refresh.env",) if today else ()),
        DebPackage(
            "nvidia-container-toolkit", full,
            fields=(("Depends", f"nvidia-container-toolkit-base (= {full})"),
                    ("Breaks", "nvidia-container-runtime (<= 3.5.0-1), nvidia-container-runtime-hook"),
                    ("Replaces", "nvidia-container-runtime (<= 3.5.0-1), nvidia-container-runtime-hook"),
                    ("Section", "utils"), ("Priority", "optional"),
                    ("Homepage", "https://github.com/NVIDIA/nvidia-container-toolkit")),
            description=("NVIDIA Container toolkit\n"
                         "Provides tools and utilities to enable GPU support in containers.\n\n"
                         + TOOLKIT_NOTE.format(version=version)),
            files=(FileFrom("/usr/bin/nvidia-container-runtime-hook", f"{up}{bin_dir}nvidia-container-runtime-hook",
                            0o755),
                   FileFrom("/usr/share/doc/nvidia-container-toolkit/copyright", f"{up}{debian}copyright")),
            scripts=(("postinst", f"{up}{debian}nvidia-container-toolkit.postinst"),
                     ("postrm", f"{up}{debian}nvidia-container-toolkit.postrm"))),
    ]


TOOLKIT_BASE_POSTINST = """\
#!/bin/sh
# NVIDIA's nvidia-container-toolkit-base postinst, less the nvidia-cdi-refresh units (not shipped here).
set -e
case "$1" in
    configure)
        /usr/bin/nvidia-ctk --quiet config --config-file=/etc/nvidia-container-runtime/config.toml --in-place
    ;;
    abort-upgrade|abort-remove|abort-deconfigure)
    ;;
    *)
        echo "postinst called with unknown argument \\`$1'" >&2
        exit 1
    ;;
esac
exit 0
"""
TOOLKIT_UNITS_POSTINST = """\
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
    systemctl enable nvidia-cdi-refresh.path nvidia-cdi-refresh.service >/dev/null 2>&1 || true
fi
"""


def toolkit_base_postinst(version: str) -> str:
    """-base's postinst: NVIDIA's, plus enabling the nvidia-cdi-refresh units where the package has them (1.20)."""
    if _numeric(version) < (1, 20):
        return TOOLKIT_BASE_POSTINST
    return TOOLKIT_BASE_POSTINST.replace("less the nvidia-cdi-refresh units (not shipped here)",
                                         "and what dh --with systemd adds for its units").replace(
        "exit 0\n", TOOLKIT_UNITS_POSTINST + "exit 0\n")


# --- indexes ---

HASHES = (("MD5Sum", "md5"), ("SHA1", "sha1"), ("SHA256", "sha256"), ("SHA512", "sha512"))


def packages_stanza(control: str, filename: str, content_size: int, digests: dict[str, str]) -> str:
    """A Packages entry: the control file with Filename, Size and checksums after Installed-Size's block."""
    lines = control.rstrip("\n").split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("Description:"))
    extra = [f"Filename: {filename}", f"Size: {content_size}", f"MD5sum: {digests['md5']}",
             f"SHA1: {digests['sha1']}", f"SHA256: {digests['sha256']}", f"SHA512: {digests['sha512']}"]
    return "\n".join(lines[:at] + extra + lines[at:]) + "\n"


def packages_index(stanzas: list[str]) -> str:
    return "\n".join(stanzas)


def digests_of(data: bytes) -> dict[str, str]:
    return {algo: hashlib.new(algo, data).hexdigest() for _, algo in HASHES}


def release_file(fields: list[tuple[str, str]], files: dict[str, bytes]) -> str:
    """A Release file: the fields, then each checksum list of `files` (path relative to the Release)."""
    lines = [f"{key}: {value}" for key, value in fields]
    for title, algo in HASHES:
        lines.append(f"{title}:")
        for path, data in sorted(files.items()):
            lines.append(f" {hashlib.new(algo, data).hexdigest()} {len(data):>16} {path}")
    return "\n".join(lines) + "\n"


def release_date(epoch: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime(epoch))


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def nvidia_list(base_url: str) -> str:
    """What NVIDIA serves as stable/deb/nvidia-container-toolkit.list, for this mirror."""
    return f"deb {base_url}/stable/deb/$(ARCH) /\n"


# --- signing ---

class SigningKey:
    """One OpenPGP key in a GnuPG home: made once, then used to sign Release files."""

    def __init__(self, home: Path, uid: str):
        self.home, self.uid = home, uid

    def _gpg(self, *argv: str, what: str) -> str:
        if not shutil.which("gpg"):
            raise LabError("the package mirror needs gpg: apt-get install gnupg")
        return run(["gpg", "--homedir", str(self.home), "--batch", "--quiet", "--no-tty", *argv], what)

    def fingerprint(self) -> str:
        """The key's fingerprint (40 hex digits), making the key on first use."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.home.chmod(0o700)
        found = self._find()
        if not found:
            self._gpg("--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key", self.uid,
                      "rsa4096", "sign", "never", what=f"making the signing key {self.uid}")
            found = self._find()
        if not found:
            raise LabError(f"gpg made no key {self.uid!r} in {self.home}")
        return found

    def _find(self) -> str:
        proc = subprocess.run(["gpg", "--homedir", str(self.home), "--batch", "--with-colons", "--list-keys",
                               f"={self.uid}"], capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith("fpr:"):
                return line.split(":")[9]
        return ""

    def public_key(self) -> bytes:
        """The ASCII-armoured public key, as Docker serves <base>/debian/gpg."""
        return self._gpg("--armor", "--export", self.fingerprint(), what="exporting the signing key").encode()

    def sign_release(self, release: Path) -> None:
        """InRelease (clear-signed) and Release.gpg (detached) beside `release`."""
        fpr = self.fingerprint()
        common = ["--yes", "--local-user", f"{fpr}!", "--digest-algo", "SHA512"]
        self._gpg(*common, "--clearsign", "-o", str(release.with_name("InRelease")), str(release), what="signing")
        self._gpg(*common, "--armor", "--detach-sign", "-o", str(release.with_name("Release.gpg")), str(release),
                  what="signing")

    def stop_agent(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"], capture_output=True)


def lab_keys(home: Path | None = None) -> dict[str, SigningKey]:
    """The lab's two signing keys (one per repo, as upstream has), in CACHE/gnupg."""
    home = home or CACHE / "gnupg"
    return {"docker": SigningKey(home, "gpufleet lab Docker CE mirror <docker@gpufleet-lab.invalid>"),
            "nvidia": SigningKey(home, "gpufleet lab NVIDIA mirror <nvidia@gpufleet-lab.invalid>")}


# --- building ---

@dataclass
class MirrorSpec:
    """What to build: Docker repos for these codenames, the NVIDIA repo or not."""
    docker: tuple[str, ...] = ("bookworm", "trixie")
    nvidia: bool = True
    plugins: bool = True
    compression: str = "gzip"      # dpkg-deb -Z: gzip (-z1, quick) for the lab, xz for a small tree to carry
    list_url: str = ""             # where the tree is served, for nvidia-container-toolkit.list ("": not written)
    today: tuple[str, ...] = ()    # codenames whose dist also holds today's docker-ce (29, or unstable's 28.5)
    toolkits: tuple[str, ...] = (TOOLKIT_VERSION,)   # toolkit versions in the NVIDIA repo, where their tarball is

    def check(self) -> None:
        unknown = [c for c in (*self.docker, *self.today) if c not in CODENAMES]
        if unknown:
            raise LabError(f"unknown codename {', '.join(unknown)}: one of {', '.join(CODENAMES)}")
        if self.compression not in ("gzip", "xz", "none"):
            raise LabError(f"compression {self.compression!r}: gzip, xz or none")
        if set(self.today) - set(self.docker):
            raise LabError(f"today's docker-ce for {', '.join(sorted(set(self.today) - set(self.docker)))}: "
                           f"also give that codename's Docker repo")
        unknown = [v for v in self.toolkits if v not in TOOLKIT_VERSIONS]
        if unknown:
            raise LabError(f"toolkit {', '.join(unknown)}: one of {', '.join(TOOLKIT_VERSIONS)}")


@dataclass
class Mirror:
    """A built tree and what it holds."""
    root: Path
    docker_key_fingerprint: str
    nvidia_key_fingerprint: str
    docker: dict[str, dict[str, str]] = field(default_factory=dict)    # codename -> package -> version
    nvidia: dict[str, str] = field(default_factory=dict)               # package -> version; empty: not built
    sizes: dict[str, int] = field(default_factory=dict)                # path under root -> bytes, of each .deb
    # today's stack beside the packages above: codename -> package -> version, and where its engine came
    # from ("stack": ../shared/stack's Docker 29; "sid": Debian unstable's docker.io)
    docker_today: dict[str, dict[str, str]] = field(default_factory=dict)
    docker_today_from: str = ""
    nvidia_today: dict[str, str] = field(default_factory=dict)         # toolkit 1.20, beside `nvidia` (1.18)

    @classmethod
    def load(cls, root: Path) -> Mirror:
        data = json.loads((root / "MIRROR.json").read_text())
        return cls(root=root, **data)

    def save(self) -> None:
        data = {k: v for k, v in self.__dict__.items() if k != "root"}
        write_atomic(self.root / "MIRROR.json", (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), 0o644)


class MirrorBuilder:
    """Builds a mirror tree from Debian's archive, the toolkit tarball and the lab's keys."""

    def __init__(self, spec: MirrorSpec, keys: dict[str, SigningKey] | None = None,
                 apt_root: Path | None = None, toolkit: Path = TOOLKIT_TARBALL, log=print, stack: Path = STACK):
        spec.check()
        self.spec, self.log, self.toolkit, self.stack = spec, log, toolkit, stack
        self.keys = keys or lab_keys()
        self.archive = DebianArchive(apt_root or CACHE / "apt",
                                     [CODENAMES[c].binaries_from for c in spec.docker] + [PLUGINS_FROM]
                                     + ([TODAY_FROM] if spec.today else []), log=log)

    def toolkit_tarball(self, version: str) -> Path:
        return self.toolkit if version == TOOLKIT_VERSION else self.stack / f"nvidia-container-toolkit-{version}-amd64.tar.xz"

    @property
    def toolkits_available(self) -> list[str]:
        """The toolkit versions asked for whose tarball is there."""
        return [v for v in self.spec.toolkits if self.toolkit_tarball(v).is_file()]

    @property
    def nvidia_available(self) -> bool:
        return bool(self.toolkits_available)

    @property
    def stack_tarballs(self) -> dict[str, Path]:
        """../shared/stack's Docker 29 and runc builds, by source name; empty where one is missing."""
        tarballs = {"docker": self.stack / f"docker-{TODAY_DOCKER}-amd64.tar.xz",
                    "runc": self.stack / f"runc-{TODAY_RUNC}-amd64.tar.xz"}
        return tarballs if all(p.is_file() for p in tarballs.values()) else {}

    def source_debs(self) -> dict[str, dict[str, Path]]:
        """Debian release -> source package -> its .deb (downloaded when not in the cache)."""
        wanted: dict[str, set[str]] = {}
        for name in self.spec.docker:
            suite = CODENAMES[name].binaries_from
            wanted.setdefault(suite, set()).update(("docker.io", "containerd", "runc", "tini"))
            if suite != "bookworm":
                wanted[suite].add("docker-cli")
        if self.spec.plugins and self.spec.docker:
            wanted.setdefault(PLUGINS_FROM, set()).update(("docker-buildx", "docker-compose"))
        if self.spec.today:
            wanted.setdefault(TODAY_FROM, set()).add("containerd")
            if not self.stack_tarballs:
                wanted[TODAY_FROM].update(("docker.io", "docker-cli", "runc"))
        debs = {suite: {pkg: self.archive.fetch(suite, pkg) for pkg in sorted(pkgs)} for suite, pkgs in wanted.items()}
        if self.spec.today and self.stack_tarballs:
            debs["stack"] = dict(self.stack_tarballs)
        return debs

    def inputs_digest(self, debs: dict[str, dict[str, Path]]) -> str:
        """Changes when anything the tree is made of changes: the debs, this code, the packaging files, the keys."""
        h = hashlib.sha256(repr((FORMAT, sorted(self.spec.__dict__.items()),
                                 {s: sorted(p.name for p in d.values()) for s, d in sorted(debs.items())})).encode())
        h.update(Path(__file__).read_bytes())
        for path in sorted(PACKAGING.iterdir()):
            h.update(path.name.encode() + path.read_bytes())
        h.update(self.keys["docker"].fingerprint().encode())
        tarballs = list(debs.get("stack", {}).values())
        if self.spec.nvidia and self.nvidia_available:
            h.update(self.keys["nvidia"].fingerprint().encode())
            tarballs += [self.toolkit_tarball(v) for v in self.toolkits_available]
        for tarball in tarballs:
            stat = tarball.stat()
            h.update(f"{tarball.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
        return h.hexdigest()[:12]

    def build(self, out: Path, debs: dict[str, dict[str, Path]] | None = None) -> Mirror:
        """Build the whole tree into `out` (which must not exist yet)."""
        debs = debs if debs is not None else self.source_debs()
        out.mkdir(parents=True)
        mirror = Mirror(out, self.keys["docker"].fingerprint(), "")
        work = Path(tempfile.mkdtemp(prefix=".work-", dir=out.parent))
        try:
            unpacked: dict[tuple[str, str], Path] = {}
            lock = threading.Lock()

            def unpack(suite: str, pkg: str) -> Path:
                with lock:
                    if (suite, pkg) not in unpacked:
                        target = work / "src" / suite / pkg
                        target.mkdir(parents=True)
                        if suite == "stack":
                            with tarfile.open(debs[suite][pkg]) as tar:
                                tar.extractall(target, filter="data")
                            target = single_folder(target)
                        else:
                            run(["dpkg-deb", "-x", str(debs[suite][pkg]), str(target)],
                                f"unpacking {debs[suite][pkg].name}")
                        unpacked[suite, pkg] = target
                    return unpacked[suite, pkg]

            # one thread per repo: dpkg-deb does the work, in processes of its own
            with ThreadPoolExecutor(max_workers=len(self.spec.docker) + 1) as pool:
                docker = {name: pool.submit(self._docker_repo, out, work / name, CODENAMES[name], debs, unpack,
                                            mirror) for name in self.spec.docker}
                nvidia = None
                if self.spec.nvidia:
                    if self.nvidia_available:
                        mirror.nvidia_key_fingerprint = self.keys["nvidia"].fingerprint()
                        nvidia = pool.submit(self._nvidia_repo, out, work / "nvidia", mirror)
                    else:
                        self.log(f"NVIDIA part skipped: {self.toolkit} is not there (a clone without ../shared)")
                for name, repo in docker.items():
                    mirror.docker[name], today = repo.result()
                    if today:
                        mirror.docker_today[name] = today
                        mirror.docker_today_from = "stack" if "stack" in debs else TODAY_FROM
                if nvidia:
                    mirror.nvidia, mirror.nvidia_today = nvidia.result()
        finally:
            remove_tree(work)
            for key in self.keys.values():
                key.stop_agent()
        mirror.save()
        return mirror

    def _build_deb(self, pkg: DebPackage, work: Path, pool: Path, resolve) -> tuple[Path, str]:
        """Stage a package's files, write its control and scripts, run dpkg-deb. Returns (deb, control)."""
        stage = work / pkg.name
        (stage / "DEBIAN").mkdir(parents=True)
        sizes = []
        for item in pkg.files:
            target = stage / item.dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            data = resolve(item.source, item.text)
            for old, new in item.rewrite:
                if old.encode() not in data:
                    raise LabError(f"{pkg.name}: {item.dest} from {item.source} no longer has {old!r}")
                data = data.replace(old.encode(), new.encode())
            target.write_bytes(data)
            target.chmod(item.mode)
            sizes.append(len(data))
        for script, source in pkg.scripts:
            path = stage / "DEBIAN" / script
            data = resolve(source, toolkit_base_postinst(upstream_version(pkg.version)) if source == "text:" else "")
            path.write_bytes(data.replace(b"#DEBHELPER#\n", b""))
            path.chmod(0o755)
        if pkg.conffiles:
            (stage / "DEBIAN" / "conffiles").write_text("".join(f"{c}\n" for c in pkg.conffiles))
        control = control_text(pkg, installed_size(sizes))
        (stage / "DEBIAN" / "control").write_text(control)
        for directory in [stage, *[p for p in stage.rglob("*") if p.is_dir()]]:
            directory.chmod(0o755)
        deb = pool / pkg.filename
        level = {"gzip": ["-Zgzip", "-z1"], "xz": ["-Zxz", "-z9"], "none": ["-Znone"]}[self.spec.compression]
        run(["dpkg-deb", "--root-owner-group", *level, "--build", str(stage), str(deb)], f"building {pkg.filename}",
            env={"SOURCE_DATE_EPOCH": "1700000000"})
        shutil.rmtree(stage)
        return deb, control

    def _index(self, debs: list[tuple[Path, str]], relative_to: Path) -> bytes:
        stanzas = []
        for deb, control in sorted(debs, key=lambda d: d[0].name):
            data = deb.read_bytes()
            stanzas.append(packages_stanza(control, str(deb.relative_to(relative_to)), len(data), digests_of(data)))
        return packages_index(stanzas).encode()

    def _docker_repo(self, out: Path, work: Path, codename: Codename, debs, unpack, mirror: Mirror) -> dict[str, str]:
        suite = codename.binaries_from
        versions, depends = {}, {}
        sources = {pkg: (suite, pkg) for pkg in ("docker.io", "containerd", "runc", "tini", "docker-cli")
                   if pkg in debs.get(suite, {})}
        if self.spec.plugins:
            sources |= {pkg: (PLUGINS_FROM, pkg) for pkg in ("docker-buildx", "docker-compose")}
        today = codename.name in self.spec.today
        if today:
            sources |= {f"{TODAY_FROM}-{pkg}": (TODAY_FROM, pkg) for pkg in debs.get(TODAY_FROM, {})}
            sources |= {f"stack-{name}": ("stack", name) for name in debs.get("stack", {})}
        for pkg, (from_suite, name) in sources.items():
            if from_suite == "stack":
                continue
            versions[pkg] = deb_field(debs[from_suite][name], "Version")
            depends[pkg] = deb_field(debs[from_suite][name], "Depends")

        def resolve(source: str, text: str) -> bytes:
            where, _, path = source.partition(":")
            if where == "lab":
                return (PACKAGING / path).read_bytes()
            if where == "text":
                return text.encode()
            return (unpack(*sources[where]) / path.lstrip("/")).read_bytes()

        family = out / DOCKER_BASE / codename.family
        dist = family / "dists" / codename.name
        pool = dist / "pool" / "stable" / ARCH
        pool.mkdir(parents=True)
        self.log(f"making docker-ce {upstream_version(versions['docker.io'])} for {codename.name} "
                 f"from Debian {suite}'s binaries ({self.spec.compression})")
        older_packages = docker_packages(codename, versions, depends, self.spec.plugins)
        today_packages = today_docker_packages(codename, versions, depends, "stack" in debs) if today else []
        if today_packages:
            self.log(f"making today's docker-ce {upstream_version(today_packages[0].version)} and containerd.io "
                     f"{upstream_version(today_packages[2].version)} for {codename.name} "
                     f"({'../shared/stack' if 'stack' in debs else 'Debian unstable'})")
        built = [self._build_deb(pkg, work, pool, resolve) for pkg in older_packages + today_packages]
        for deb, _ in built:
            mirror.sizes[str(deb.relative_to(out))] = deb.stat().st_size
        packages = self._index(built, family)
        binary = dist / "stable" / f"binary-{ARCH}"
        binary.mkdir(parents=True)
        (binary / "Packages").write_bytes(packages)
        (binary / "Packages.gz").write_bytes(gz(packages))
        release = release_file([
            ("Origin", "Docker"), ("Label", "Docker CE"), ("Suite", codename.name), ("Codename", codename.name),
            ("Date", release_date(time.time())), ("Architectures", ARCH), ("Components", "stable"),
            ("Description", f"Docker CE packages for {codename.family.capitalize()} {codename.name} "
                            f"(gpufleet lab: Debian's binaries repackaged)"),
        ], {f"stable/binary-{ARCH}/Packages": packages, f"stable/binary-{ARCH}/Packages.gz": gz(packages)})
        (dist / "Release").write_text(release)
        self.keys["docker"].sign_release(dist / "Release")
        (family / "gpg").write_bytes(self.keys["docker"].public_key())
        return ({pkg.name: pkg.version for pkg in older_packages},
                {pkg.name: pkg.version for pkg in today_packages})

    def _nvidia_repo(self, out: Path, work: Path, mirror: Mirror) -> tuple[dict[str, str], dict[str, str]]:
        base = out / NVIDIA_BASE
        flat = base / "stable" / "deb" / ARCH
        flat.mkdir(parents=True)
        built, versions = [], {}
        for version in self.toolkits_available:
            tarball = self.toolkit_tarball(version)
            unpacked = work / f"toolkit-{version}"
            unpacked.mkdir(parents=True)
            with tarfile.open(tarball) as tar:
                tar.extractall(unpacked, filter="data")
            top = single_folder(unpacked)

            def resolve(source: str, text: str, top=top) -> bytes:
                where, _, path = source.partition(":")
                if where == "text":
                    return text.encode()
                return (top / path).read_bytes()

            self.log(f"making nvidia-container-toolkit {version} from {tarball.name} ({self.spec.compression})")
            packages = toolkit_packages(version)
            built += [self._build_deb(pkg, work, flat, resolve) for pkg in packages]
            versions[version] = {pkg.name: pkg.version for pkg in packages}
        ordered = [versions[v] for v in self.toolkits_available]
        for deb, _ in built:
            mirror.sizes[str(deb.relative_to(out))] = deb.stat().st_size
        index = self._index(built, flat)
        (flat / "Packages").write_bytes(index)
        (flat / "Packages.gz").write_bytes(gz(index))
        release = release_file([
            ("Origin", "NVIDIA"), ("Label", "NVIDIA Container Toolkit"), ("Date", release_date(time.time())),
            ("Architectures", ARCH),
            ("Description", "NVIDIA Container Toolkit (gpufleet lab: built from NVIDIA's source, "
                            "without libnvidia-container)"),
        ], {"Packages": index, "Packages.gz": gz(index)})
        (flat / "Release").write_text(release)
        self.keys["nvidia"].sign_release(flat / "Release")
        (base / "gpgkey").write_bytes(self.keys["nvidia"].public_key())
        if self.spec.list_url:
            (base / "stable" / "deb" / "nvidia-container-toolkit.list").write_text(
                nvidia_list(f"{self.spec.list_url.rstrip('/')}/{NVIDIA_BASE}"))
        return ordered[0], ordered[1] if len(ordered) > 1 else {}


# --- the lab's cached mirror ---

LAB_SPEC = MirrorSpec(docker=("bookworm", "trixie"), nvidia=True, plugins=True, compression="gzip",
                      today=("trixie",), toolkits=TOOLKIT_VERSIONS)


def ensure_lab_mirror(log=print, spec: MirrorSpec = LAB_SPEC, cache: Path | None = None) -> Mirror:
    """The lab's mirror tree in CACHE/pkgmirror/<digest>: built when its inputs changed, else reused."""
    cache = cache or CACHE
    with exclusive(cache / "pkgmirror.lock", lambda: log("waiting for another lab's package mirror build")):
        builder = MirrorBuilder(spec, log=log)
        debs = builder.source_debs()
        root = cache / "pkgmirror" / builder.inputs_digest(debs)
        if (root / "MIRROR.json").exists():
            return Mirror.load(root)
        partial = root.with_name(f".{root.name}.partial")
        remove_tree(partial)
        started = time.monotonic()
        mirror = builder.build(partial, debs)
        partial.replace(root)
        mirror.root = root
        log(f"package mirror {root} built in {time.monotonic() - started:.0f}s")
        return mirror


def older_trees(current: Path, in_use: set[str]) -> list[Path]:
    """Trees beside `current` that no container mounts: safe to remove."""
    return [p for p in current.parent.iterdir()
            if p.is_dir() and p != current and not p.name.startswith(".") and str(p) not in in_use]


# --- the command line ---

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.mirror",
        description="Build the lab's package mirror (Docker CE repo, NVIDIA toolkit repo) into a directory "
                    "to serve over plain HTTP (e.g. python3 -m http.server -d DIR).")
    parser.add_argument("--out", type=Path, required=True, help="directory to create (must not exist)")
    parser.add_argument("--docker", action="append", default=[], metavar="CODENAME",
                        help=f"a Docker repo for this codename ({', '.join(CODENAMES)}); repeatable")
    parser.add_argument("--nvidia", action="store_true", help="the NVIDIA toolkit repo (needs ../shared/gpu-stack)")
    parser.add_argument("--today", action="append", default=[], metavar="CODENAME",
                        help=f"that codename's dist also holds docker-ce {TODAY_DOCKER} and containerd.io 2.x "
                             f"(../shared/stack; without it Debian unstable's docker.io); repeatable")
    parser.add_argument("--toolkit", action="append", default=[], choices=TOOLKIT_VERSIONS,
                        help=f"with --nvidia: the toolkit versions to build (default {TOOLKIT_VERSION}); repeatable")
    parser.add_argument("--plugins", action="store_true",
                        help="also docker-buildx-plugin and docker-compose-plugin (about 26 MB more with xz)")
    parser.add_argument("--url", default="http://127.0.0.1:8000",
                        help="where DIR will be served, for nvidia-container-toolkit.list (default %(default)s)")
    parser.add_argument("--compression", default="xz", choices=("xz", "gzip", "none"),
                        help="dpkg-deb compression (default xz: smallest)")
    args = parser.parse_args(argv)
    try:
        if args.out.exists():
            raise LabError(f"--out {args.out} exists; give a new directory")
        spec = MirrorSpec(docker=tuple(args.docker), nvidia=args.nvidia, plugins=args.plugins,
                          compression=args.compression, list_url=args.url, today=tuple(args.today),
                          toolkits=tuple(args.toolkit) or (TOOLKIT_VERSION,))
        if not spec.docker and not spec.nvidia:
            raise LabError("nothing to build: give --docker CODENAME and/or --nvidia")
        builder = MirrorBuilder(spec, log=lambda line: print(line, file=sys.stderr))
        if spec.nvidia and not builder.nvidia_available:
            raise LabError(f"--nvidia needs {builder.toolkit_tarball(spec.toolkits[0])} (../shared beside the checkout)")
        mirror = builder.build(args.out.absolute())
    except LabError as e:
        print(f"lab.mirror: {e}", file=sys.stderr)
        return 1
    total = sum(mirror.sizes.values())
    for path, size in sorted(mirror.sizes.items()):
        print(f"{size / 1e6:8.1f} MB  {path}")
    print(f"{total / 1e6:8.1f} MB  in {len(mirror.sizes)} packages; the tree: {tree_size(args.out) / 1e6:.1f} MB")
    url = args.url.rstrip("/")
    print(f"serve {args.out} at {url} (python3 -m http.server --directory DIR PORT); then in hosts.toml:")
    if mirror.docker:
        print(f'  docker_mirror = "{url}/{DOCKER_BASE}"')
        print(f'  docker_key_fingerprint = "{mirror.docker_key_fingerprint}"')
    if mirror.nvidia:
        print(f'  nvidia_mirror = "{url}/{NVIDIA_BASE}"')
        print(f'  nvidia_key_fingerprint = "{mirror.nvidia_key_fingerprint}"')
    return 0


def single_folder(directory: Path) -> Path:
    """The one folder an unpacked tarball holds (docker-29.7.2-amd64/, ...)."""
    entries = list(directory.iterdir())
    if len(entries) != 1 or not entries[0].is_dir():
        raise LabError(f"{directory}: expected one top folder, found {sorted(e.name for e in entries)}")
    return entries[0]


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


if __name__ == "__main__":
    sys.exit(main())
