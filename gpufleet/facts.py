"""Host facts: one batched probe command per host, and pure parsers of its output.

The probe is a shell script that prints sections

    @@gpufleet-begin NAME@@
    ...output...
    @@gpufleet-end NAME rc=N@@

so that every fact the stages need (OS, init system, packages, Docker, daemon.json,
GPUs, managed files, containers and what is inside them) costs one round trip.
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

from gpufleet import gpu, osinfo
from gpufleet.errors import CommandFailed
from gpufleet.remote import Script, Session

BEGIN = "@@gpufleet-begin "
END_RE = re.compile(r"^@@gpufleet-end (\S+) rc=(\d+)@@$")
MANAGED_LABEL = "gpufleet.container"
MANAGED_FILTER = "/containers/json?all=1&filters=" + urllib.parse.quote(json.dumps({"label": [MANAGED_LABEL]}))
SNAPSHOT_LABEL = "gpufleet.snapshot-of"
SNAPSHOT_FILTER = "/images/json?filters=" + urllib.parse.quote(json.dumps({"label": [SNAPSHOT_LABEL]}))
CONTAINER_DIR = "/var/lib/gpufleet/containers"

PROBE_FUNCTIONS = r"""
sec() { n=$1; shift; echo "@@gpufleet-begin $n@@"; "$@" 2>&1; r=$?; echo; echo "@@gpufleet-end $n rc=$r@@"; }
readfile() { if [ -e "$1" ]; then stat -c '%a %U %G' "$1" && { [ ! -f "$1" ] || base64 -w0 "$1"; }; else echo absent; fi; }
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
finish() { if [ -n "$T" ] && tail -n 1 "$T/$1" 2>/dev/null | grep -q '^@@gpufleet-end '; then cat "$T/$1"; else "j$1"; fi; }
"""

# What the stages read of each managed container; not its Env, which holds secrets in clear
# (everything a command prints goes to the command log)
CONTAINER_FORMAT = ('{"Name":{{json .Name}},"Id":{{json .Id}},"Image":{{json .Image}},"State":{{json .State}},'
                    '"Config":{"Image":{{json .Config.Image}},"Labels":{{json .Config.Labels}}},'
                    '"HostConfig":{"PortBindings":{{json .HostConfig.PortBindings}}},"Mounts":{{json .Mounts}}}')

HOST_PACKAGES = ("docker.io", "docker-ce", "docker-ce-cli", "containerd.io", "containerd", "runc",
                 "docker-compose-plugin", "docker-buildx-plugin", "podman-docker", "docker-doc",
                 "nvidia-container-toolkit", "pciutils", "curl", "ca-certificates")


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


@dataclass
class ProbeRequest:
    """What to read besides the fixed facts: files, images and containers."""
    files: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)  # users whose home is read (getent passwd)
    containers: dict[str, list[str]] = field(default_factory=dict)  # name -> files inside it
    container_packages: list[str] = field(default_factory=list)

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

    @property
    def docker_running(self) -> bool:
        return self.docker_info is not None

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def file(self, path: str) -> RemoteFile:
        return self.files[path]


def probe_sections(request: ProbeRequest) -> tuple[list[tuple[str, str]], list[list[tuple[str, str]]]]:
    """(name, command) of every section of the probe: those run in order, and the jobs run side
    by side (the sections of one job in order)."""
    q = shlex.quote
    in_order = [
        ("os_release", "cat /etc/os-release"),
        ("uname", "uname -a"),
        ("arch", "dpkg --print-architecture"),
        ("systemd", "test -d /run/systemd/system"),
        ("packages", "dpkg-query -W -f '${Package}\\t${db:Status-Abbrev}\\t${Version}\\n' " + " ".join(HOST_PACKAGES)),
        ("meminfo", "grep MemTotal /proc/meminfo"),
        ("nvidia_smi", "nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total,compute_cap,pci.bus_id "
                       "--format=csv,noheader,nounits"),
        ("nvidia_smi_table", "sh -c 'nvidia-smi | head -n 5'"),
        ("lspci", "sh -c 'lspci -nn 2>/dev/null | grep -i \"\\[10de:\"'"),
        *((f"file:{i}", f"readfile {q(path)}") for i, path in enumerate(request.files)),
        *((f"user:{i}", f"id -nG {q(user)}") for i, user in enumerate(request.users)),
        *((f"passwd:{i}", f"getent passwd {q(user)}") for i, user in enumerate(request.accounts)),
        ("df", "df -Pm /var/lib/docker /data /"),
    ]
    inside = [[(f"inside:{i}", f"inside {q(name)} {q(inside_script(request, files))}")]
              for i, (name, files) in enumerate(request.containers.items())]
    # the first job is the init system's; the others, Docker's, are the reader's where it runs
    jobs = [[("docker_enabled", "systemctl is-enabled docker")],
            [("docker_info", "dinfo")],
            [("containers", "listed")],
            *inside,
            [*((f"image:{i}", f"image {q(image)}") for i, image in enumerate(request.images)),
             ("snapshots", "snapshots")]]
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


def section_names(request: ProbeRequest) -> list[str]:
    """Every top-level section a whole probe output holds for `request`."""
    in_order, jobs = probe_sections(request)
    return [name for name, _ in in_order + [section for job in jobs for section in job]]


def probe_script(request: ProbeRequest) -> Script:
    q = shlex.quote
    in_order, jobs = probe_sections(request)
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
        lines.append(f"j{k}() {{ " + "; ".join(f"sec {name} {command}" for name, command in job) + "; }")
    docker = range(1, len(jobs))
    # the reader prints all of Docker's sections or nothing; where it cannot, its job runs theirs
    lines += [f"jr() {{ {shlex.join(reader_argv(request))} 2>/dev/null || {{ {'; '.join(f'j{k}' for k in docker)}; }}; }}",
              f"if {READER_GUARD}; then R=1; job r; else R=; {'; '.join(f'job {k}' for k in docker)}; fi",
              "job 0"]
    lines += [f"sec {name} {command}" for name, command in in_order]
    lines += ['[ -z "$T" ] || wait', "finish 0",
              f"if [ -n \"$R\" ]; then finish r; else {'; '.join(f'finish {k}' for k in docker)}; fi",
              f"echo {PROBE_DONE}"]
    return Script("\n".join(lines) + "\n")


def missing_sections(text: str, request: ProbeRequest) -> list[str]:
    """Pure: the sections a probe output lacks (a cut connection loses some);
    facts read from an incomplete probe would make a step rewrite or restart what is fine."""
    if PROBE_DONE not in text:
        return ["the end of the probe"]
    s = split_sections(text)
    missing = [name for name in section_names(request) if name not in s]
    for i, files in enumerate(request.containers.values()):
        inner = split_sections(s.get(f"inside:{i}", (1, ""))[1])
        if "sshd_bin" in inner:
            missing += [f"inside:{i}/{n}" for n in ["sshd_run", "pkgs", *(f"ifile:{j}" for j in range(len(files)))]
                        if n not in inner]
    return missing


def split_sections(text: str) -> dict[str, tuple[int, str]]:
    """Pure: the probe's output as {section: (exit code, body)}; nested sections stay in the body."""
    sections: dict[str, tuple[int, str]] = {}
    current, body = None, []
    for line in text.split("\n"):
        if current is None:
            if line.startswith(BEGIN) and line.endswith("@@"):
                current, body = line[len(BEGIN):-2], []
            continue
        m = END_RE.match(line)
        if m and m.group(1) == current:
            # `sec` echoes one newline so that the end marker starts a line; the
            # split has already consumed it, so the joined body is the exact output
            sections[current] = (int(m.group(2)), "\n".join(body))
            current = None
        else:
            body.append(line)
    return sections


def parse_file(body: str) -> RemoteFile:
    """Pure: the output of `readfile` (stat line + base64, or `absent`)."""
    lines = body.strip().split("\n")
    if not lines[0] or lines[0] == "absent":
        return ABSENT
    mode, owner, group = (lines[0].split() + ["", "", ""])[:3]
    content = base64.b64decode(lines[1]) if len(lines) > 1 else b""
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


def parse_probe(text: str, request: ProbeRequest) -> HostFacts:
    """Pure: build HostFacts from the probe's whole output."""
    s = split_sections(text)
    body = lambda name: s.get(name, (1, ""))[1]  # noqa: E731
    rc = lambda name: s.get(name, (1, ""))[0]  # noqa: E731

    docker_info, docker_error = None, body("docker_info").strip()[-300:]
    if rc("docker_info") == 0:
        try:
            docker_info = json.loads(body("docker_info").strip().splitlines()[-1])
        except (ValueError, IndexError):
            docker_info = None
        # a CLI of Docker 23+ prints its own half and exits 0 when no daemon answers
        if docker_info is not None and (docker_info.get("ServerErrors") or not docker_info.get("ServerVersion")):
            docker_error = "; ".join(docker_info.get("ServerErrors") or ["no server version"])
            docker_info = None
    gpus, driver, cuda, source = [], "", "", ""
    if rc("nvidia_smi") == 0:
        gpus = gpu.parse_query_gpu(body("nvidia_smi"))
        source = "nvidia-smi"
        driver = gpus[0].driver_version if gpus else ""
        header = gpu.parse_smi_table_cuda(body("nvidia_smi_table"))
        if header:
            driver, cuda = header[0] or driver, header[1] or ""
    elif rc("lspci") == 0 and body("lspci").strip():
        gpus = gpu.parse_lspci_nvidia(body("lspci"))
        source = "lspci (no working nvidia-smi)"
    images = {}
    for i, image in enumerate(request.images):
        if rc(f"image:{i}") == 0:
            try:
                images[image] = json.loads(body(f"image:{i}").strip().splitlines()[-1])
            except (ValueError, IndexError):
                pass
    containers = {}
    if rc("containers") == 0:
        for line in body("containers").splitlines():
            if line.startswith("{"):
                item = json.loads(line)
                name = item["Name"].lstrip("/")
                # a container run from a snapshot image inherits the label, naming the snapshot's container
                if ((item.get("Config") or {}).get("Labels") or {}).get(MANAGED_LABEL) != name:
                    continue
                # Docker lists the mounts in no fixed order
                item["Mounts"] = sorted(item.get("Mounts") or [], key=lambda m: m.get("Destination", ""))
                containers[name] = item
    inside = {}
    for i, (name, files) in enumerate(request.containers.items()):
        if rc(f"inside:{i}") not in (0, 1) or f"inside:{i}" not in s:
            continue
        inner = split_sections(body(f"inside:{i}"))
        if "sshd_bin" not in inner or not (containers.get(name) or {}).get("State", {}).get("Running"):
            continue  # not running, or not one of ours
        inside[name] = ContainerFacts(
            files={p: parse_file(inner.get(f"ifile:{j}", (1, "absent"))[1]) for j, p in enumerate(files)},
            sshd_installed=inner["sshd_bin"][0] == 0,
            sshd_running=inner.get("sshd_run", (1, ""))[0] == 0,
            packages=parse_packages(inner.get("pkgs", (1, ""))[1]),
        )
    mem = re.search(r"(\d+)", body("meminfo"))
    uname = body("uname").strip()
    return HostFacts(
        os=osinfo.parse_os_release(body("os_release")),
        kernel=uname,
        arch=body("arch").strip(),
        systemd=rc("systemd") == 0,
        wsl=osinfo.is_wsl(uname),
        packages=parse_packages(body("packages")),
        docker_info=docker_info,
        docker_error="" if docker_info is not None else docker_error,
        docker_enabled=body("docker_enabled").strip(),
        gpus=gpus,
        gpu_driver=driver,
        gpu_cuda=cuda,
        gpu_source=source,
        files={p: parse_file(body(f"file:{i}")) for i, p in enumerate(request.files)},
        images=images,
        users={u: (body(f"user:{i}").split() if rc(f"user:{i}") == 0 else None) for i, u in enumerate(request.users)},
        containers=containers,
        snapshots=parse_snapshots(body("snapshots")) if rc("snapshots") == 0 else [],
        inside=inside,
        mem_total_mb=int(mem.group(1)) // 1024 if mem else 0,
        disk_free_mb=parse_df(body("df")),
        homes={u: (parse_home(body(f"passwd:{i}"), u) if rc(f"passwd:{i}") == 0 else None)
               for i, u in enumerate(request.accounts)},
    )


def gather(session: Session, request: ProbeRequest) -> HostFacts:
    """Run the probe on a host (one command) and parse it."""
    result = session.run(probe_script(request), sudo=True, check=False)
    if "@@gpufleet-end os_release" not in result.stdout:
        raise CommandFailed("fact probe", result.exit_code, result.stderr or result.stdout, session.name)
    missing = missing_sections(result.stdout, request)
    if missing:
        raise CommandFailed("fact probe", result.exit_code,
                            f"output incomplete, missing {', '.join(missing[:5])}: {result.stderr}", session.name)
    return parse_probe(result.stdout, request)
