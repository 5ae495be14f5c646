"""Host facts: one batched probe command per host, and pure parsers of its output.

The probe is a shell script that prints one line per section,

    @@gpufleet NAME BASE64(output + "\n" + exit code)@@

so that every fact the stages need (OS, init system, packages, Docker, daemon.json,
GPUs, managed files, containers and what is inside them) costs one round trip.  The
framing is out of band: what a command prints (a container's files and output among
it) is inside the base64 and can never end its section or begin another; a line that
is not a section, or a section that comes twice, fails the host.  What is read inside
a container is a section of its own (`inside:N`) whose payload is that container's
sections: it can only ever be a fact about that container.
"""
from __future__ import annotations

import base64
import json
import re
import shlex
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from gpufleet import containerd_config, gpu, osinfo
from gpufleet.docker_reader import section as frame  # noqa: F401  (the one Python framer, for all)
from gpufleet.errors import CommandFailed, FleetError
from gpufleet.remote import Script, Session

SECTION_RE = re.compile(r"^@@gpufleet ([A-Za-z0-9_:.-]+) ([A-Za-z0-9+/]*={0,2})@@$")
MANAGED_LABEL = "gpufleet.container"
MANAGED_FILTER = "/containers/json?all=1&filters=" + urllib.parse.quote(json.dumps({"label": [MANAGED_LABEL]}))
SNAPSHOT_LABEL = "gpufleet.snapshot-of"
SNAPSHOT_FILTER = "/images/json?filters=" + urllib.parse.quote(json.dumps({"label": [SNAPSHOT_LABEL]}))
CONTAINER_DIR = "/var/lib/gpufleet/containers"

# `sec NAME COMMAND...` prints what `frame` (docker_reader.section) prints; `ourfile` reads a file of a
# folder a container can see, never following a link there
PROBE_FUNCTIONS = r"""
sec() { n=$1; shift; printf '@@gpufleet %s ' "$n"; { "$@" 2>&1; printf '\n%d' "$?"; } | base64 -w0; echo '@@'; }
readfile() { if [ -e "$1" ]; then stat -c '%a %U %G' "$1" && { [ ! -f "$1" ] || base64 -w0 "$1"; }; else echo absent; fi; }
ourfile() { if [ -L "$1" ]; then echo link; else readfile "$1"; fi; }
"""
PROBE_DONE = "@@gpufleet-probe-done@@"

# Docker's Engine API through curl where the host has it, the docker CLI where it has no curl or
# no /var/run/docker.sock: `docker info` costs ~70 ms of CPU (the CLI runs each of its plugins to
# list them), the API's /info ~15 ms; each CLI call starts a Go program (~25 ms of CPU).  The API's
# answers are the CLI's JSON, without its ClientInfo.  Only a whole answer is printed.
ENGINE_API = "curl -sf --max-time 30 --unix-socket /var/run/docker.sock"
API_FUNCTIONS = f"""
api() {{ out=$({ENGINE_API} "http://localhost$1" 2>/dev/null) && printf '%s\\n' "$out"; }}
"""

# Docker's sections from one Python process on the server (gpufleet/docker_reader.py: the Engine API,
# and our containers' files read from the host) where it has python3 and the daemon's socket
READER_GUARD = "command -v python3 >/dev/null 2>&1 && [ -S /var/run/docker.sock ]"
READER_SOURCE = (Path(__file__).parent / "docker_reader.py").read_text()

# The docker calls are most of the probe's time (docker info ~100 ms, a docker exec ~130 ms), so
# they run as jobs side by side, each into its own file of a temp dir, printed when all are done.
# A job whose file did not come out whole (a full /tmp) runs again at the end, in the foreground;
# without a temp dir every job runs there.  `gather` checks that every section came back.
PROBE_JOBS = r"""
T=$(mktemp -d 2>/dev/null) && trap 'rm -rf "$T"' EXIT && trap 'exit 129' HUP INT TERM PIPE || T=
job() { if [ -n "$T" ]; then "j$1" > "$T/$1" 2>&1 & fi; }
finish() { if [ -n "$T" ] && tail -n 1 "$T/$1" 2>/dev/null | grep -q '^@@gpufleet .*@@$'; then cat "$T/$1"; else "j$1"; fi; }
"""

# What the stages read of each managed container; not its Env, which holds secrets in clear
# (everything a command prints goes to the command log)
CONTAINER_FORMAT = ('{"Name":{{json .Name}},"Id":{{json .Id}},"Image":{{json .Image}},"State":{{json .State}},'
                    '"Config":{"Image":{{json .Config.Image}},"Labels":{{json .Config.Labels}}},'
                    '"HostConfig":{"PortBindings":{{json .HostConfig.PortBindings}}},"Mounts":{{json .Mounts}}}')

# a wedged GPU or driver makes nvidia-smi hang for minutes: it fails the GPU facts, not the probe
NVIDIA_SMI_TIMEOUT = 30

HOST_PACKAGES = ("docker.io", "docker-ce", "docker-ce-cli", "containerd.io", "containerd", "runc",
                 "docker-compose-plugin", "docker-buildx-plugin", "podman-docker", "docker-doc",
                 "nvidia-container-toolkit", "pciutils", "curl", "ca-certificates",
                 "nvidia-container-toolkit-base", "libnvidia-container-tools", "libnvidia-container1")
# the toolkit's packages, installed at one version (gpufleet.toolkit)
TOOLKIT_PACKAGES = ("nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools",
                    "libnvidia-container1")


@dataclass(frozen=True)
class RemoteFile:
    """A file as it is on the host: absent, or its content, mode and owner."""
    exists: bool
    content: bytes = b""
    mode: str = ""
    owner: str = ""
    group: str = ""

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


ABSENT = RemoteFile(False)
LINK = RemoteFile(True, mode="link")  # a symbolic link where the tool keeps a file of its own: never followed


@dataclass
class ProbeRequest:
    """What to read besides the fixed facts: files, images and containers."""
    files: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)  # users whose home is read (getent passwd)
    containers: dict[str, list[str]] = field(default_factory=dict)  # name -> files inside it
    container_packages: list[str] = field(default_factory=list)
    apt_sources_dir: str = "/etc/apt/sources.list.d"  # every *.list and *.sources in it is read
    toolkit: str = "auto"  # the host's nvidia_toolkit: which versions of the toolkit apt has are read where it counts

    @property
    def packages_inside(self) -> list[str]:
        """The packages asked of dpkg in each container."""
        return self.container_packages or ["openssh-server"]


@dataclass
class ContainerFacts:
    """What the probe saw inside one running container."""
    files: dict[str, RemoteFile]
    sshd_installed: bool
    sshd_running: bool
    packages: dict[str, str]

    def file(self, path: str) -> RemoteFile:
        return self.files.get(path, ABSENT)


@dataclass
class HostFacts:
    os: osinfo.OsRelease
    kernel: str
    arch: str
    systemd: bool
    wsl: bool
    packages: dict[str, str]
    docker_info: dict | None
    docker_error: str
    docker_enabled: str
    gpus: list
    gpu_driver: str
    gpu_cuda: str
    gpu_source: str
    files: dict[str, RemoteFile]
    images: dict[str, dict]
    users: dict[str, list[str] | None]
    containers: dict[str, dict]
    snapshots: list[dict]
    inside: dict[str, ContainerFacts]
    mem_total_mb: int
    disk_free_mb: dict[str, int]
    homes: dict[str, str | None] = field(default_factory=dict)  # user -> home on the server; None: no such user
    toolkit_version: str = ""  # `nvidia-ctk --version`; "" where there is none
    toolkit_versions: dict[str, list[str]] = field(default_factory=dict)  # package -> versions apt knows, newest first
    cdi_spec: str | None = None  # the toolkit's CDI spec (gpu.CDI_SPEC); None where it is missing
    cdi_mtimes: dict[str, int] = field(default_factory=dict)  # the spec's and nvidia-ctk's modification times
    cdi_units: dict[str, dict[str, str]] = field(default_factory=dict)  # nvidia-cdi-refresh units, as systemd has them
    apt_source_files: dict[str, bytes] = field(default_factory=dict)  # path -> content, of apt_sources_dir
    docker_ce_policy: str = ""  # `apt-cache policy docker-ce` (gpufleet.apt_policy parses it)
    containerd_root: str = ""  # what `containerd config dump` says; "" where it did not run

    @property
    def image_store(self) -> "containerd_config.ImageStore | None":
        """The running engine's image store, or None where Docker does not answer."""
        return containerd_config.image_store(self.docker_info) if self.docker_info is not None else None

    @property
    def images_path(self) -> str:
        """Where the running engine's images and layers really are ("" where Docker does not answer)."""
        if self.docker_info is None:
            return ""
        return self.image_store.images_path(self.docker_info.get("DockerRootDir", "/var/lib/docker"),
                                            self.containerd_root or containerd_config.CONTAINERD_DEFAULT_ROOT)
    migs: list = field(default_factory=list)  # MIG instances (gpu.MigDevice), from nvidia-smi -L

    @property
    def docker_running(self) -> bool:
        return self.docker_info is not None

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def file(self, path: str) -> RemoteFile:
        return self.files[path]


@dataclass(frozen=True)
class Fact:
    """One fact of the probe: the section it is printed in, the shell command that prints it, and the pure
    parser of that section's exit code and output (a section that is not there parses as (1, ""))."""
    name: str
    command: str
    parse: Callable[[int, str], Any]


def strip(rc: int, out: str) -> str:
    return out.strip()


def facts_table(request: ProbeRequest) -> tuple[list[Fact], list[list[Fact]]]:
    """Every fact of the probe for `request`: those read in order, and the jobs read side by side (the
    facts of one job in order).  The first job is the host's own (init system, apt); the others, Docker's,
    are printed by the reader where it runs (docker_reader.main prints exactly their sections)."""
    q = shlex.quote
    smi = f"timeout -k 5 {NVIDIA_SMI_TIMEOUT} nvidia-smi"
    old_docker = "|".join(codename for _, codename in osinfo.DOCKER_CE_LAST)
    in_order = [
        Fact("os_release", "cat /etc/os-release", lambda rc, out: osinfo.parse_os_release(out)),
        Fact("uname", "uname -a", strip),
        Fact("arch", "dpkg --print-architecture", strip),
        Fact("systemd", "test -d /run/systemd/system", lambda rc, out: rc == 0),
        Fact("packages", "dpkg-query -W -f '${Package}\\t${db:Status-Abbrev}\\t${Version}\\n' "
             + " ".join(HOST_PACKAGES), lambda rc, out: parse_packages(out)),
        Fact("meminfo", "grep MemTotal /proc/meminfo", parse_meminfo),
        Fact("nvidia_smi", f"{smi} --query-gpu=index,name,uuid,driver_version,memory.total,compute_cap,"
             "pci.bus_id --format=csv,noheader,nounits",
             lambda rc, out: (rc, gpu.parse_query_gpu(out) if rc == 0 else None)),
        Fact("nvidia_smi_list", f"{smi} -L", lambda rc, out: gpu.parse_mig_devices(out) if rc == 0 else []),
        Fact("nvidia_smi_table", f"sh -c '{smi} | head -n 5'", lambda rc, out: gpu.parse_smi_table_cuda(out)),
        Fact("lspci", "sh -c 'lspci -nn 2>/dev/null | grep -i \"\\[10de:\"'",
             lambda rc, out: gpu.parse_lspci_nvidia(out) if rc == 0 and out.strip() else []),
        *(Fact(f"file:{i}", f"{'ourfile' if path.startswith(CONTAINER_DIR + '/') else 'readfile'} {q(path)}",
               lambda rc, out: parse_file(out)) for i, path in enumerate(request.files)),
        *(Fact(f"user:{i}", f"id -nG {q(user)}", lambda rc, out: out.split() if rc == 0 else None)
          for i, user in enumerate(request.users)),
        *(Fact(f"passwd:{i}", f"getent passwd {q(user)}",
               lambda rc, out, user=user: parse_home(out, user) if rc == 0 else None)
          for i, user in enumerate(request.accounts)),
        Fact("df", "df -Pm /var/lib/docker /data /", lambda rc, out: parse_df(out)),
        Fact("nvidia_ctk", "nvidia-ctk --version", gpu.parse_ctk_version),
        Fact("cdi_spec", f"cat {gpu.CDI_SPEC}", lambda rc, out: out if rc == 0 else None),
        Fact("cdi_mtimes", f"stat -L -c '%Y %n' {gpu.CDI_SPEC} /usr/bin/nvidia-ctk",
             lambda rc, out: gpu.parse_mtimes(out)),
        Fact("cdi_units", "systemctl show --property=Id,LoadState,UnitFileState,ActiveState "
             + " ".join(gpu.CDI_REFRESH_UNITS), lambda rc, out: gpu.parse_unit_states(out) if rc == 0 else {}),
        Fact("apt_sources_d", f"sh -c {q(APT_SOURCES_D)} - {q(request.apt_sources_dir)}",
             lambda rc, out: parse_source_files(out)),
        # apt-cache policy can take a second (no pkgcache.bin): read only on the releases it is for
        Fact("docker_ce_policy", "sh -c " + q(f"grep -qE '^(UBUNTU_|VERSION_)CODENAME=\"?({old_docker})\"?$' "
                                              "/etc/os-release && LC_ALL=C apt-cache policy docker-ce"),
             lambda rc, out: out if rc == 0 else ""),
        # the root of the system's containerd (docker-ce's containerd.io), where the containerd image store is
        Fact("containerd_root", "containerd config dump", containerd_config.parse_dump_root),
    ]
    inside = [[Fact(f"inside:{i}", f"inside {q(name)} {q(inside_script(request, files))}",
                    lambda rc, out, name=name, files=files: parse_inside(name, files, rc, out))]
              for i, (name, files) in enumerate(request.containers.items())]
    # apt-cache reads its whole package cache (~0.5 s of CPU where it has no pkgcache.bin): beside Docker's
    # calls, and only where the toolkit may be installed (nvidia.install plans with what it prints)
    madison = {"never": "true", "always": "apt-cache madison " + " ".join(TOOLKIT_PACKAGES)}.get(
        request.toolkit, "sh -c " + q("command -v nvidia-smi >/dev/null || [ -e /dev/nvidiactl ] || exit 0; "
                                      "exec apt-cache madison " + " ".join(TOOLKIT_PACKAGES)))
    jobs = [[Fact("docker_enabled", "systemctl is-enabled docker", strip),
             Fact("toolkit_madison", madison, lambda rc, out: parse_madison(out))],
            [Fact("docker_info", "dinfo", parse_docker_info)],
            [Fact("containers", "listed", lambda rc, out: parse_containers(out) if rc == 0 else {})],
            *inside,
            [*(Fact(f"image:{i}", f"image {q(image)}", parse_image) for i, image in enumerate(request.images)),
             Fact("snapshots", "snapshots", lambda rc, out: parse_snapshots(out) if rc == 0 else [])]]
    return in_order, jobs


def inside_script(request: ProbeRequest, files: list[str]) -> str:
    """What `docker exec` runs in a container to read it."""
    q = shlex.quote
    packages = " ".join(q(p) for p in request.packages_inside)
    return "\n".join([PROBE_FUNCTIONS,
                      "sec sshd_bin test -x /usr/sbin/sshd",
                      "sec sshd_run sh -c 'test -s /run/sshd.pid && kill -0 $(cat /run/sshd.pid)'",
                      f"sec pkgs dpkg-query -W -f '${{Package}}\\t${{db:Status-Abbrev}}\\t${{Version}}\\n' {packages}",
                      *(f"sec ifile:{j} readfile {q(p)}" for j, p in enumerate(files))])


def reader_request(request: ProbeRequest) -> dict:
    """What the Docker reader (gpufleet/docker_reader.py) is asked, as JSON on its command line."""
    return {"managed": MANAGED_FILTER, "snapshots": SNAPSHOT_FILTER, "label": MANAGED_LABEL,
            "containers": [[name, files] for name, files in request.containers.items()],
            "packages": request.packages_inside,
            "exec_scripts": [inside_script(request, files) for files in request.containers.values()],
            "images": request.images}


def reader_argv(request: ProbeRequest) -> list[str]:
    """The reader's command line on the server: its source and the request, in isolated mode."""
    return ["python3", "-I", "-S", "-c", READER_SOURCE, json.dumps(reader_request(request))]


def all_facts(request: ProbeRequest) -> list[Fact]:
    in_order, jobs = facts_table(request)
    return in_order + [fact for job in jobs for fact in job]


def section_names(request: ProbeRequest) -> list[str]:
    """Every top-level section a whole probe output holds for `request`."""
    return [fact.name for fact in all_facts(request)]


def probe_script(request: ProbeRequest) -> Script:
    q = shlex.quote
    in_order, jobs = facts_table(request)
    lines = [
        "# gpufleet facts probe (read only)", PROBE_FUNCTIONS, API_FUNCTIONS, PROBE_JOBS,
        "dinfo() { api /info || docker info --format '{{json .}}'; }",
        "image() { api \"/images/$1/json\" || docker image inspect --format '{{json .}}' \"$1\"; }",
        f"snapshots() {{ api {q(SNAPSHOT_FILTER)} || docker image ls --filter label={SNAPSHOT_LABEL} "
        "--format '{{json .}}'; }",
        # our containers from the API's list (their ids, names, labels; not their environment),
        # once, before the jobs start
        f"LISTED=$(api {q(MANAGED_FILTER)}) || LISTED=",
        "ids() { if [ -n \"$LISTED\" ]; then printf '%s\\n' \"$LISTED\" "
        "| grep -o '\"Id\":\"[0-9a-f]\\{64\\}\"' | cut -d'\"' -f4; "
        f"else docker ps -aq --filter label={MANAGED_LABEL}; fi; }}",
        f"listed() {{ ids=$(ids) || return 1; [ -z \"$ids\" ] || docker inspect --format {q(CONTAINER_FORMAT)} $ids; }}",
        # the exec runs beside the listing, so it first asks whether the container is one of ours (its
        # label names it: one run from a snapshot image inherits a label naming another); a container of
        # someone else's that has the name is not read (its files would reach the log).  The API's list
        # is one line, split into one object a line where the next object's Id begins
        "ours() { if [ -n \"$LISTED\" ]; then printf '%s\\n' \"$LISTED\" | sed 's/},{\"Id\":/}\\n{\"Id\":/g' "
        f"| grep -F \"\\\"Names\\\":[\\\"/$1\\\"\" | grep -qF \"\\\"{MANAGED_LABEL}\\\":\\\"$1\\\"\"; "
        f"else [ \"$(docker inspect --format '{{{{index .Config.Labels \"{MANAGED_LABEL}\"}}}}' -- \"$1\" 2>/dev/null)\" "
        f"= \"$1\" ]; fi; }}",
        'inside() { ours "$1" && docker exec "$1" sh -c "$2"; }',
    ]
    for k, job in enumerate(jobs):
        lines.append(f"j{k}() {{ " + "; ".join(f"sec {fact.name} {fact.command}" for fact in job) + "; }")
    docker = range(1, len(jobs))
    # the reader prints all of Docker's sections or nothing; where it cannot, its job runs theirs
    lines += [f"jr() {{ {shlex.join(reader_argv(request))} 2>/dev/null || {{ {'; '.join(f'j{k}' for k in docker)}; }}; }}",
              f"if {READER_GUARD}; then R=1; job r; else R=; {'; '.join(f'job {k}' for k in docker)}; fi",
              "job 0"]
    lines += [f"sec {fact.name} {fact.command}" for fact in in_order]
    lines += ['[ -z "$T" ] || wait', "finish 0",
              f"if [ -n \"$R\" ]; then finish r; else {'; '.join(f'finish {k}' for k in docker)}; fi",
              f"echo {PROBE_DONE}"]
    return Script("\n".join(lines) + "\n")


class ProbeOutputError(FleetError):
    """Output that should be sections and is not: a line outside any section, a section twice."""


def missing_sections(text: str, request: ProbeRequest) -> list[str]:
    """Pure: the sections a probe output lacks (a cut connection loses some);
    facts read from an incomplete probe would make a step rewrite or restart what is fine."""
    if not text.endswith(PROBE_DONE + "\n"):
        return ["the end of the probe"]
    s = split_sections(text)
    missing = [name for name in section_names(request) if name not in s]
    for i, (name, files) in enumerate(request.containers.items()):
        inner = inside_sections(name, s.get(f"inside:{i}", (1, "")))
        if inner and "sshd_bin" in inner:
            missing += [f"inside:{i}/{n}" for n in ["sshd_run", "pkgs", *(f"ifile:{j}" for j in range(len(files)))]
                        if n not in inner]
    return missing


def split_sections(text: str) -> dict[str, tuple[int, str]]:
    """Pure: output of `sec` lines as {section: (exit code, output)}; the output of a section that ran
    sections of its own is their lines, split in turn by whoever reads them.  Raises ProbeOutputError
    for a line that is not a whole section and for a section that comes twice."""
    sections: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line or line == PROBE_DONE:  # the probe's own last line (a container's is inside a payload)
            continue
        m = SECTION_RE.match(line)
        try:
            payload = base64.b64decode(m.group(2), validate=True) if m else b""
        except ValueError:
            m = None
        body, newline, rc = payload.rpartition(b"\n")
        if not m or not newline or not rc.isdigit():
            raise ProbeOutputError(f"line {number} is not a section: {line[:60]!r}")
        if m.group(1) in sections:
            raise ProbeOutputError(f"section {m.group(1)} comes twice")
        sections[m.group(1)] = (int(rc), body.decode("utf-8", "replace"))
    return sections


def inside_sections(name: str, section: tuple[int, str]) -> dict[str, tuple[int, str]] | None:
    """Pure: the sections read inside container `name` (the payload of its `inside:N`), or None where it
    was not read (not running, not ours).  What a container printed can only be about that container:
    output of its that does not frame fails the host, naming it."""
    if section[0] != 0:
        return None
    try:
        return split_sections(section[1])
    except ProbeOutputError as e:
        raise ProbeOutputError(f"what was read inside container {name} is not sections ({e})") from None


def parse_file(body: str) -> RemoteFile:
    """Pure: the output of `readfile` (stat line + base64, or `absent`) or `ourfile` (also `link`)."""
    lines = body.strip().split("\n")
    if not lines[0] or lines[0] == "absent":
        return ABSENT
    if lines[0] == "link":
        return LINK
    mode, owner, group = (lines[0].split() + ["", "", ""])[:3]
    try:
        if not mode.isdigit() or len(lines) > 2:
            raise ValueError(lines[0][:40])
        content = base64.b64decode(lines[1], validate=True) if len(lines) > 1 else b""
    except ValueError:
        raise ProbeOutputError(f"not what readfile prints: {body[:60]!r}") from None
    return RemoteFile(True, content, mode.zfill(4), owner, group)


def parse_packages(body: str) -> dict[str, str]:
    """Pure: `dpkg-query -W -f '${Package}\\t${db:Status-Abbrev}\\t${Version}'` → installed {name: version}.
    Installed is the state (the second letter), whatever was asked of it: `hi` is held, `ri` marked
    for removal, both still installed."""
    out = {}
    for line in body.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1][1:3] == "i ":
            out[parts[0]] = parts[2]
    return out


# one line per apt source file: its path and its content in base64 (what apt reads: *.list, *.sources)
APT_SOURCES_D = ('for f in "$1"/*.list "$1"/*.sources; do [ -f "$f" ] || continue; '
                 'printf "%s %s\\n" "$f" "$(base64 -w0 < "$f")"; done')


def parse_source_files(body: str) -> dict[str, bytes]:
    """Pure: the apt source files that APT_SOURCES_D printed, {path: content}."""
    files = {}
    for line in body.splitlines():
        path, _, data = line.rpartition(" ")
        if path.startswith("/"):
            try:
                files[path] = base64.b64decode(data, validate=True)
            except ValueError:
                raise ProbeOutputError(f"not what the apt sources listing prints: {line[:60]!r}") from None
    return files


def parse_df(body: str) -> dict[str, int]:
    """Pure: `df -Pm PATHS` → {mount point: free MiB} (missing paths are skipped)."""
    out = {}
    for line in body.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 6 and parts[3].isdigit():
            out[parts[5]] = int(parts[3])
    return out


def parse_home(body: str, user: str) -> str | None:
    """Pure: the home folder in `getent passwd USER`'s line (name:password:uid:gid:gecos:home:shell); None
    when the line is not that user's or names no absolute home."""
    for line in body.splitlines():
        fields = line.split(":")
        if len(fields) == 7 and fields[0] == user and fields[5].startswith("/"):
            return fields[5]
    return None


def parse_snapshots(body: str) -> list[dict]:
    """Pure: snapshot images as [{Repository, Tag, Created}] (Created: the image's creation time on the
    server, seconds since the epoch, UTC), from the Engine API's image list (one JSON array) or from
    `docker image ls --format '{{json .}}'` (an object per line)."""
    text = body.strip()
    if text.startswith("["):
        tagged = [(*ref.rsplit(":", 1), int(image.get("Created") or 0))
                  for image in json.loads(text) for ref in image.get("RepoTags") or [] if ":" in ref]
    else:
        tagged = [(row.get("Repository", ""), row.get("Tag", ""), cli_created(row.get("CreatedAt", "")))
                  for row in (json.loads(line) for line in text.splitlines() if line.startswith("{"))]
    # an image left without a tag is no snapshot of anything
    return [{"Repository": repo, "Tag": tag, "Created": created}
            for repo, tag, created in tagged if "<none>" not in (repo, tag)]


def cli_created(text: str) -> int:
    """Pure: the docker CLI's CreatedAt (`2026-12-02 01:31:22 +0000 UTC`, in the server's zone) as
    seconds since the epoch; 0 when it does not read."""
    try:
        return int(datetime.strptime(" ".join(text.split()[:3]), "%Y-%m-%d %H:%M:%S %z").timestamp())
    except ValueError:
        return 0


def parse_madison(out: str) -> dict[str, list[str]]:
    """Pure: `apt-cache madison PKG...` (` pkg | version | source Packages` lines) → {package: [versions]},
    newest first as apt lists them, each version once."""
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) == 3 and cells[0] and cells[1] and " " not in cells[1]:
            versions = found.setdefault(cells[0], [])
            if cells[1] not in versions:
                versions.append(cells[1])
    return found


def parse_meminfo(rc: int, out: str) -> int:
    """Pure: `grep MemTotal /proc/meminfo` → MiB."""
    mem = re.search(r"(\d+)", out)
    return int(mem.group(1)) // 1024 if mem else 0


def parse_docker_info(rc: int, out: str) -> tuple[dict | None, str]:
    """Pure: (docker info as JSON, or None where no daemon answered; why not)."""
    if rc != 0:
        return None, out.strip()[-300:]
    try:
        info = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None, out.strip()[-300:]
    # a CLI of Docker 23+ prints its own half and exits 0 when no daemon answers
    if info.get("ServerErrors") or not info.get("ServerVersion"):
        return None, "; ".join(info.get("ServerErrors") or ["no server version"])
    return info, ""


def parse_containers(out: str) -> dict[str, dict]:
    """Pure: our containers (the label names the container) from the listing's JSON lines, by name."""
    containers = {}
    for line in out.splitlines():
        if line.startswith("{"):
            item = json.loads(line)
            name = item["Name"].lstrip("/")
            # a container run from a snapshot image inherits the label, naming the snapshot's container
            if ((item.get("Config") or {}).get("Labels") or {}).get(MANAGED_LABEL) != name:
                continue
            # Docker lists the mounts in no fixed order
            item["Mounts"] = sorted(item.get("Mounts") or [], key=lambda m: m.get("Destination", ""))
            containers[name] = item
    return containers


def parse_image(rc: int, out: str) -> dict | None:
    """Pure: an image's inspect JSON, or None where there is no such image."""
    if rc != 0:
        return None
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def parse_inside(name: str, files: list[str], rc: int, out: str) -> ContainerFacts | None:
    """Pure: what was read inside container `name` (its own sections), or None where it was not read."""
    inner = inside_sections(name, (rc, out))
    if not inner or "sshd_bin" not in inner:
        return None
    try:
        return ContainerFacts(
            files={p: parse_file(inner.get(f"ifile:{j}", (1, "absent"))[1]) for j, p in enumerate(files)},
            sshd_installed=inner["sshd_bin"][0] == 0,
            sshd_running=inner.get("sshd_run", (1, ""))[0] == 0,
            packages=parse_packages(inner.get("pkgs", (1, ""))[1]),
        )
    except ProbeOutputError as e:
        raise ProbeOutputError(f"what was read inside container {name} is {e}") from None


def parse_probe(text: str, request: ProbeRequest) -> HostFacts:
    """Pure: build HostFacts from the probe's whole output, each section by its fact's parser."""
    s = split_sections(text)
    v = {fact.name: fact.parse(*s.get(fact.name, (1, ""))) for fact in all_facts(request)}
    gpus, driver, cuda, source = [], "", "", ""
    smi_rc, smi_gpus = v["nvidia_smi"]
    if smi_gpus is not None:
        gpus, source = smi_gpus, "nvidia-smi"
        driver = gpus[0].driver_version if gpus else ""
        if v["nvidia_smi_table"]:
            driver, cuda = v["nvidia_smi_table"][0] or driver, v["nvidia_smi_table"][1] or ""
    elif v["lspci"]:
        gpus, source = v["lspci"], "lspci (no working nvidia-smi)"
    if smi_rc in (124, 137):
        source = (f"lspci (nvidia-smi hung: no answer within {NVIDIA_SMI_TIMEOUT}s, stopped; a wedged GPU or driver)"
                  if gpus else f"none (nvidia-smi hung: no answer within {NVIDIA_SMI_TIMEOUT}s, stopped)")
    docker_info, docker_error = v["docker_info"]
    containers = v["containers"]
    running = {name for name, item in containers.items() if (item.get("State") or {}).get("Running")}
    inside = {name: v[f"inside:{i}"] for i, name in enumerate(request.containers)
              if v[f"inside:{i}"] is not None and name in running}  # not running, or not one of ours
    return HostFacts(
        os=v["os_release"],
        kernel=v["uname"],
        arch=v["arch"],
        systemd=v["systemd"],
        wsl=osinfo.is_wsl(v["uname"]),
        packages=v["packages"],
        docker_info=docker_info,
        docker_error=docker_error,
        docker_enabled=v["docker_enabled"],
        gpus=gpus,
        gpu_driver=driver,
        gpu_cuda=cuda,
        gpu_source=source,
        files={p: v[f"file:{i}"] for i, p in enumerate(request.files)},
        images={image: v[f"image:{i}"] for i, image in enumerate(request.images) if v[f"image:{i}"] is not None},
        users={u: v[f"user:{i}"] for i, u in enumerate(request.users)},
        containers=containers,
        snapshots=v["snapshots"],
        inside=inside,
        mem_total_mb=v["meminfo"],
        disk_free_mb=v["df"],
        homes={u: v[f"passwd:{i}"] for i, u in enumerate(request.accounts)},
        toolkit_version=v["nvidia_ctk"],
        toolkit_versions=v["toolkit_madison"],
        cdi_spec=v["cdi_spec"],
        cdi_mtimes=v["cdi_mtimes"],
        cdi_units=v["cdi_units"],
        apt_source_files=v["apt_sources_d"],
        docker_ce_policy=v["docker_ce_policy"],
        containerd_root=v["containerd_root"],
        migs=v["nvidia_smi_list"] if source == "nvidia-smi" else [],
    )


def gather(session: Session, request: ProbeRequest) -> HostFacts:
    """Run the probe on a host (one command) and parse it."""
    result = session.run(probe_script(request), sudo=True, check=False, kind="probe")
    if "@@gpufleet os_release " not in result.stdout:
        raise CommandFailed("fact probe", result.exit_code, result.stderr or result.stdout, session.name)
    try:
        missing = missing_sections(result.stdout, request)
        if missing:
            raise CommandFailed("fact probe", result.exit_code,
                                f"output incomplete, missing {', '.join(missing[:5])}: {result.stderr}", session.name)
        return parse_probe(result.stdout, request)
    except ProbeOutputError as e:
        raise FleetError(f"fact probe: {e}; nothing was changed") from None
