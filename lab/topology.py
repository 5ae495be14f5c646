"""The local lab: real hosts for the tool to work on, as containers on the local Docker engine.

One internal Docker network (fixed subnet, no route out) holds:

    127.0.0.1:PORT -> bastion   sshd only; the one way in (also on the default bridge)
                      aptproxy  apt-cacher-ng, the servers' only way to Debian packages
                      mirror    registry serving pytorch/pytorch:lab-bookworm as a Hub mirror
                      pkgmirror plain HTTP serving the lab's Docker CE and NVIDIA apt repos (lab/mirror.py)
                      gpu1      Debian 12, systemd as PID 1, docker-ce from the lab's repo
                      gpu2      Debian 12, no systemd (like WSL2), Debian's docker.io
                      gpu3      Debian 13, systemd, docker-ce 26 and the toolkit 1.18 (pinned) from the lab's repos
                      gpu4      Debian 13, systemd, today's stack: docker-ce 29, containerd.io 2.x, the toolkit 1.20

Servers start bare (no Docker) and accept SSH only from the bastion's address.
Everything goes through the Docker SDK; base images come from one debootstrap per
Debian release and are reused by tag (lab/images.py). Every container, network and
volume carries the label `gpufleet.lab=<prefix>`, which is how `down()` finds all of it.

What survives `down()`: the images (`gpufleet-lab/*`), the package mirror's cache
(CACHE, /var/tmp/gpufleet-lab) and the apt cache volume `<prefix>-aptcache`.
`down(purge=True)` also removes the apt cache volume and the lab's keys, inventory and
known_hosts. The registry volume is always removed; `up()` pushes the lab image again.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

from lab.common import LAB_FILES, LABEL, NAME_LABEL, ROLE_LABEL, SPEC_LABEL, LabError, http_status, poll, \
    remove_container, tail, tar_bytes, write_atomic
from lab.images import BOOKWORM, PYTORCH, SERVERS, SERVICES, TRIXIE, ImageBuilder

DEFAULT_PREFIX = "gpufleet-lab"
DEFAULT_SUBNET = "10.77.10.0/24"
DEFAULT_HOSTS = 4

HUB_REPOSITORY = "pytorch/pytorch"
HUB_TAG = f"lab-{BOOKWORM}"
LAB_IMAGE = f"{HUB_REPOSITORY}:{HUB_TAG}"   # what the inventory asks for; the mirror serves it
APT_PROXY_PORT = 3142
MIRROR_PORT = 5000
PKGMIRROR_PORT = 80                          # apt-cacher-ng forwards plain HTTP to port 80 only
DEV_USER, DEV_UID = "dev", 1000
SYSV_INIT = "/usr/local/sbin/gpufleet-lab-init"
PKGMIRROR_ROOT = "/srv/www"

SERVICE_ROLES = ("bastion", "aptproxy", "mirror", "pkgmirror")
SYSTEMD, SYSV = "server-systemd", "server-sysv"
RELEASES = {BOOKWORM: "Debian 12", TRIXIE: "Debian 13"}

# What a server container needs to run systemd and its own Docker engine here
# (--privileged is refused on these machines; see shared/LAB-NOTES.md).
SERVER_POWERS = dict(
    cap_add=["ALL"],
    cap_drop=["SYS_RESOURCE"],
    security_opt=["seccomp=unconfined", "apparmor=unconfined"],
    device_cgroup_rules=["a *:* rwm"],
    tmpfs={"/run": "", "/run/lock": ""},
)


# --- topology ---

class Member(NamedTuple):
    """One container of the lab, as `status()` reports it."""
    name: str
    role: str
    state: str
    address: str


@dataclass(frozen=True)
class MemberPlan:
    name: str
    role: str
    ip: str
    suite: str = BOOKWORM           # servers: the Debian release they run
    today: bool = False             # servers: gets today's stack (docker-ce 29), the newest the repos hold

    @property
    def is_server(self) -> bool:
        return self.role in (SYSTEMD, SYSV)


def server_role(index: int) -> str:
    """gpu2, gpu6, ... do not run systemd as PID 1 (like WSL2); the others do."""
    return SYSV if index % 4 == 2 else SYSTEMD


def server_suite(index: int) -> str:
    """gpu3, gpu4, gpu7, gpu8, ... run Debian 13 (trixie); the others Debian 12 (bookworm)."""
    return TRIXIE if index % 4 in (3, 0) else BOOKWORM


def server_today(index: int) -> bool:
    """gpu4, gpu8, ... get today's stack (docker-ce 29); gpu3, gpu7, ... stay on docker-ce 26 (pinned)."""
    return index % 4 == 0


def plan_members(subnet: str, hosts: int) -> list[MemberPlan]:
    """Names, roles and static addresses: .2 bastion, .3 aptproxy, .4 mirror, .5 pkgmirror, .11 gpu1, ..."""
    net = ipaddress.ip_network(subnet)
    if net.version != 4:
        raise LabError(f"lab subnet {subnet} must be IPv4")
    if not 1 <= hosts <= net.num_addresses - 12:
        raise LabError(f"--hosts {hosts}: the subnet {subnet} holds 1 to {net.num_addresses - 12} servers")
    members = [MemberPlan(role, role, str(net[2 + i])) for i, role in enumerate(SERVICE_ROLES)]
    members += [MemberPlan(f"gpu{i}", server_role(i), str(net[10 + i]), server_suite(i), server_today(i))
                for i in range(1, hosts + 1)]
    return members


class ServerEntry(NamedTuple):
    """One server as the inventory names it."""
    name: str
    address: str
    user: str
    role: str
    suite: str
    today: bool = False


@dataclass(frozen=True)
class PackageRepos:
    """The lab's package mirror as the inventory names it; nvidia_* empty where it was not built."""
    docker_mirror: str
    docker_key_fingerprint: str
    engines: tuple[tuple[str, str], ...]           # (suite, Docker version the repo gives it)
    nvidia_mirror: str = ""
    nvidia_key_fingerprint: str = ""
    today_engine: str = ""     # today's docker-ce beside `engines` in trixie: 29.7.2, or unstable's 28.5.2
    today_from: str = ""       # "stack" (../shared/stack) or "sid" (Debian unstable's docker.io)


@dataclass(frozen=True)
class InventoryData:
    """Everything the generated inventory says, gathered by `up()`."""
    directory: Path
    bastion_port: int
    apt_proxy: str
    registry_mirror: str
    image: str
    servers: tuple[ServerEntry, ...]
    repos: PackageRepos


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def server_docker_source(entry: ServerEntry) -> str:
    """Servers without systemd keep Debian's docker.io; the others get docker-ce from the lab's repo."""
    return "distro" if entry.role == SYSV else "docker-ce"


def describe_server(entry: ServerEntry, repos: PackageRepos) -> str:
    init = "systemd" if entry.role == SYSTEMD else "no systemd (like WSL2)"
    if server_docker_source(entry) == "distro":
        docker = "Debian's docker.io"
    elif entry.today:
        docker = f"docker-ce {repos.today_engine or '?'} + containerd.io 2.x from the lab mirror (today's stack" + (
            ", Debian unstable's docker.io with the containerd image store on)" if repos.today_from == "sid" else ")")
    else:
        docker = f"docker-ce {dict(repos.engines).get(entry.suite, '?')} from the lab mirror"
    toolkit = ", the NVIDIA toolkit with no GPU (nvidia_toolkit = always)" if wants_toolkit(entry, repos) else ""
    return f"{RELEASES[entry.suite]} ({entry.suite}), {init}; {docker}{toolkit}"


def wants_toolkit(entry: ServerEntry, repos: PackageRepos) -> bool:
    return bool(repos.nvidia_mirror) and entry.suite == TRIXIE and entry.role == SYSTEMD


def render_inventory(data: InventoryData) -> str:
    """The lab's hosts.toml (same schema as the hand-written one)."""
    d, repos = data.directory, data.repos
    lines = [
        "# Generated by `fab lab.up` — do not edit; re-run lab.up to regenerate.",
        "# Servers (all behind the bastion, no GPU):",
        *[f"#   {entry.name}: {describe_server(entry, repos)}" for entry in data.servers],
        "[run]",
        "parallel = 8",
        "",
        "[local]",
        f"ssh_config = {_toml_str(str(d / 'ssh_config'))}",
        f"known_hosts = {_toml_str(str(d / 'known_hosts'))}",
        f"identity = {_toml_str(str(d / 'id_ed25519'))}",
        f"public_keys = [{_toml_str(str(d / 'id_ed25519.pub'))}]",
        "",
        "[defaults]",
        'user = "root"',
        f"apt_proxy = {_toml_str(data.apt_proxy)}",
        "# the lab's package mirror (pkgmirror): Debian's binaries repackaged, signed with lab keys",
        'docker_source = "docker-ce"',
        f"docker_mirror = {_toml_str(repos.docker_mirror)}",
        f"docker_key_fingerprint = {_toml_str(repos.docker_key_fingerprint)}",
    ]
    if repos.nvidia_mirror:
        lines += [f"nvidia_mirror = {_toml_str(repos.nvidia_mirror)}",
                  f"nvidia_key_fingerprint = {_toml_str(repos.nvidia_key_fingerprint)}"]
    else:
        lines.append("# no NVIDIA repo: ../shared/gpu-stack was not there when the mirror was built")
    lines += [
        f"registry_mirrors = [{_toml_str(data.registry_mirror)}]",
        "# every container's open files: the lab's nested engines cannot go past 20000 (the default is 1048576)",
        'ulimit_nofile = "20000:20000"',
        'data_root = "/data/docker"',
        f"docker_users = [{_toml_str(DEV_USER)}]",
        "",
        "[groups.servers]",
        'jump = "bastion"',
        "",
        "[groups.servers.containers.dev]",
        f"image = {_toml_str(data.image)}",
        "ssh_port = 2222",
        'shm_size = "1g"',
        'volumes = ["/data/workspace:/workspace"]',
        "",
        "[hosts.bastion]",
        'address = "127.0.0.1"',
        f"port = {int(data.bastion_port)}",
    ]
    for entry in data.servers:
        lines += ["", f"[hosts.{entry.name}]",
                  f"address = {_toml_str(entry.address)}", 'groups = ["servers"]']
        if entry.user != "root":
            lines.append(f"user = {_toml_str(entry.user)}          # logs in as the sudo user, to exercise sudo")
        if server_docker_source(entry) == "distro":
            lines.append('docker_source = "distro"')
        if wants_toolkit(entry, repos):
            lines.append('nvidia_toolkit = "always"')
            if not entry.today:  # the older server keeps the older toolkit (the mirror holds 1.20 beside it)
                from lab.mirror import TOOLKIT_VERSION
                lines.append(f'nvidia_toolkit_version = "{TOOLKIT_VERSION}"')
        if entry.today and repos.today_from == "sid":
            # Debian's docker.io 28.5 stores images as Docker 29 does once this is on (29's default)
            lines.append('daemon_json = { features = { containerd-snapshotter = true } }')
    return "\n".join(lines) + "\n"


def older_engine_pins(older: dict[str, str], today: dict[str, str]) -> str:
    """/etc/apt/preferences.d of a server that stays on the older versions a dist also holds (gpu3):
    each package whose version differs, pinned to the older one, as an admin would pin it."""
    stanzas = [f"Package: {name}\nPin: version {version}\nPin-Priority: 1001\n"
               for name, version in sorted(older.items()) if today.get(name, version) != version]
    if not stanzas:
        return ""
    return "# gpufleet lab: this server stays on the older engine and toolkit\n" + "\n".join(stanzas)


@dataclass
class LabInfo:
    """What `up()` brought up."""
    prefix: str
    subnet: str
    inventory: Path
    identity: Path
    bastion_port: int
    mirror_port: int
    addresses: dict[str, str]       # lab name -> address on the lab network
    servers: list[str]
    image: str                      # the Docker Hub name the mirror serves
    repos: PackageRepos | None = None
    mirror_tree: Path | None = None  # the package mirror's tree on this machine
    built_images: list[str] = field(default_factory=list)
    seconds: float = 0.0


# --- the lab ---

class Lab:
    """A lab on the local Docker engine; `directory` holds its keys and inventory."""

    def __init__(self, directory: Path | str, prefix: str = DEFAULT_PREFIX, subnet: str = DEFAULT_SUBNET,
                 client=None, bastion_port: int | None = None, log: Callable[[str], None] | None = None):
        self.directory = Path(directory).absolute()
        self.prefix = prefix
        self.subnet = str(ipaddress.ip_network(subnet))
        self.bastion_port = bastion_port
        self.log = log or (lambda message: None)
        self._client = client
        self.package_mirror = None       # lab.mirror.Mirror, set by up()

    # -- paths and names --

    @property
    def client(self):
        if self._client is None:
            import docker
            import docker.errors
            try:
                self._client = docker.from_env(timeout=600)
                self._client.ping()
            except docker.errors.DockerException as e:
                self._client = None
                raise LabError(f"no Docker engine answers ({e}); run scripts/ensure-docker.sh") from None
        return self._client

    @property
    def inventory_path(self) -> Path:
        return self.directory / "hosts.toml"

    @property
    def identity(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def network_name(self) -> str:
        return f"{self.prefix}-net"

    @property
    def apt_cache_volume(self) -> str:
        return f"{self.prefix}-aptcache"

    @property
    def registry_volume(self) -> str:
        return f"{self.prefix}-registry"

    def container_name(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def server_volumes(self, name: str) -> dict[str, str]:
        """Volume name -> mount point: the inner engine's data must not sit on overlayfs."""
        return {f"{self.prefix}-{name}-docker": "/var/lib/docker", f"{self.prefix}-{name}-data": "/data",
                # Docker 29's containerd image store keeps its overlay snapshots under containerd's root
                f"{self.prefix}-{name}-containerd": "/var/lib/containerd"}

    @property
    def server_names(self) -> list[str]:
        """The lab's servers that exist now (gpu1, gpu2, ...)."""
        names = [c.labels.get(NAME_LABEL, "") for c in self._containers()
                 if c.labels.get(ROLE_LABEL) in (SYSTEMD, SYSV)]
        return sorted(names, key=_natural)

    def _labels(self, name: str = "", role: str = "") -> dict[str, str]:
        labels = {LABEL: self.prefix}
        if name:
            labels[NAME_LABEL] = name
        if role:
            labels[ROLE_LABEL] = role
        return labels

    def _containers(self):
        return self.client.containers.list(all=True, filters={"label": f"{LABEL}={self.prefix}"})

    def _container(self, name: str):
        import docker.errors
        try:
            return self.client.containers.get(self.container_name(name))
        except docker.errors.NotFound:
            raise LabError(f"lab {self.prefix}: no container for {name!r}; run `fab lab.up`") from None

    # -- public operations --

    def up(self, hosts: int = DEFAULT_HOSTS) -> LabInfo:
        """Bring the lab up, or reconcile a running one to this shape; writes the inventory."""
        from lab.mirror import ensure_lab_mirror
        started = time.monotonic()
        members = plan_members(self.subnet, hosts)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ensure_keys([m.name for m in members if m.role == "bastion" or m.is_server])
        mirror = []
        built = ImageBuilder(self.client, self.log).ensure_all(
            alongside=lambda: mirror.append(ensure_lab_mirror(log=self.log)))
        self.package_mirror = mirror[0]
        network = self._ensure_network()
        wanted = {m.name for m in members}
        for container in self._containers():
            name = container.labels.get(NAME_LABEL, "")
            if name not in wanted:
                self.log(f"removing {name or container.name}: not in a lab of {hosts} servers")
                container.remove(force=True, v=True)
                if container.labels.get(ROLE_LABEL) in (SYSTEMD, SYSV):
                    self._remove_volumes(self.server_volumes(name))
        bastion_ip = next(m.ip for m in members if m.role == "bastion")
        self._ensure_volume(self.apt_cache_volume)
        self._ensure_volume(self.registry_volume)
        for member in members:
            self._ensure_member(member, network, bastion_ip)
        self._remove_unused_mirror_trees()
        by_role = {m.role: m for m in members}
        bastion_port = self.published_port("bastion", "22/tcp")
        mirror_port = self.published_port("mirror", f"{MIRROR_PORT}/tcp")
        with ThreadPoolExecutor(max_workers=2) as pool:
            push = pool.submit(self._ensure_lab_image_pushed, mirror_port)
            self._wait_ssh_banner("bastion", "127.0.0.1", bastion_port)
            self._wait_from_bastion({f"{m.ip}:22": m.name for m in members if m.is_server}
                                    | {f"{by_role['aptproxy'].ip}:{APT_PROXY_PORT}": "aptproxy",
                                       f"{by_role['pkgmirror'].ip}:{PKGMIRROR_PORT}": "pkgmirror"})
            push.result()
        servers = [m for m in members if m.is_server]
        repos = self.package_repos(by_role["pkgmirror"].ip)
        data = InventoryData(
            directory=self.directory, bastion_port=bastion_port,
            apt_proxy=f"http://{by_role['aptproxy'].ip}:{APT_PROXY_PORT}",
            registry_mirror=f"http://{by_role['mirror'].ip}:{MIRROR_PORT}", image=LAB_IMAGE,
            servers=tuple(ServerEntry(m.name, m.ip, DEV_USER if m.role == SYSV else "root", m.role, m.suite,
                                      m.today) for m in servers),
            repos=repos)
        write_atomic(self.inventory_path, render_inventory(data).encode(), 0o644)
        return LabInfo(prefix=self.prefix, subnet=self.subnet, inventory=self.inventory_path, identity=self.identity,
                       bastion_port=bastion_port, mirror_port=mirror_port,
                       addresses={m.name: m.ip for m in members}, servers=[m.name for m in servers],
                       image=LAB_IMAGE, repos=repos, mirror_tree=self.package_mirror.root,
                       built_images=built, seconds=time.monotonic() - started)

    def package_repos(self, pkgmirror_ip: str) -> PackageRepos:
        """The package mirror's URLs and key fingerprints, as the inventory gives them."""
        from lab.mirror import DOCKER_BASE, NVIDIA_BASE, upstream_version
        mirror, base = self.package_mirror, f"http://{pkgmirror_ip}"
        engines = tuple((suite, upstream_version(packages["docker-ce"])) for suite, packages in mirror.docker.items())
        today = mirror.docker_today.get(TRIXIE, {})
        today_fields = dict(today_engine=upstream_version(today["docker-ce"]) if today else "",
                            today_from=mirror.docker_today_from)
        if not mirror.nvidia:
            return PackageRepos(f"{base}/{DOCKER_BASE}", mirror.docker_key_fingerprint, engines, **today_fields)
        return PackageRepos(f"{base}/{DOCKER_BASE}", mirror.docker_key_fingerprint, engines,
                            f"{base}/{NVIDIA_BASE}", mirror.nvidia_key_fingerprint, **today_fields)

    def status(self) -> list[Member]:
        """Every lab container: (name, role, state, address on the lab network)."""
        members = []
        for container in self._containers():
            nets = container.attrs.get("NetworkSettings", {}).get("Networks", {})
            address = (nets.get(self.network_name) or {}).get("IPAddress", "")
            if container.labels.get(ROLE_LABEL) == "bastion" and container.status == "running":
                ports = container.attrs["NetworkSettings"]["Ports"].get("22/tcp") or []
                address += "".join(f" (ssh {p['HostIp']}:{p['HostPort']})" for p in ports[:1])
            members.append(Member(container.labels.get(NAME_LABEL, container.name),
                                  container.labels.get(ROLE_LABEL, "?"), container.status, address))
        order = {role: i for i, role in enumerate(SERVICE_ROLES)}
        return sorted(members, key=lambda m: (order.get(m.role, len(order)), _natural(m.name)))

    def down(self, purge: bool = False) -> list[str]:
        """Remove the lab's containers, network and volumes (not the apt cache unless `purge`)."""
        removed = []
        for container in self._containers():
            container.remove(force=True, v=True)
            removed.append(f"container {container.name}")
        for network in self.client.networks.list(filters={"label": f"{LABEL}={self.prefix}"}):
            network.remove()
            removed.append(f"network {network.name}")
        for volume in self.client.volumes.list(filters={"label": f"{LABEL}={self.prefix}"}):
            if volume.name == self.apt_cache_volume and not purge:
                continue
            volume.remove(force=True)
            removed.append(f"volume {volume.name}")
        if purge:
            for path in (self.inventory_path, self.identity, self.identity.with_suffix(".pub"),
                         self.directory / "known_hosts", self.directory / "hostkeys"):
                if path.is_dir():
                    shutil.rmtree(path)
                    removed.append(f"{path}/")
                elif path.exists():
                    path.unlink()
                    removed.append(str(path))
        return removed

    def recreate_server(self, name: str) -> None:
        """Replace a server with a fresh bare one (same address, same host key, empty volumes)."""
        self.recreate_servers([name])

    def recreate_servers(self, names: list[str] | None = None) -> None:
        """Replace several servers (all by default) with fresh bare ones, started together."""
        names = list(self.server_names if names is None else names)
        if not names:
            return
        network = self._lab_network()
        if network is None:
            raise LabError(f"lab {self.prefix} is not up; run `fab lab.up`")
        plans = {m.name: m for m in plan_members(self.subnet, max(_index(n) for n in names))}
        bastion_ip = plans["bastion"].ip
        for name in names:
            self._container(name).remove(force=True, v=True)
            self._remove_volumes(self.server_volumes(name))
            self._ensure_member(plans[name], network, bastion_ip)
        self._wait_from_bastion({f"{plans[n].ip}:22": n for n in names})

    def stop_server(self, name: str) -> None:
        """Stop a server the way a shutdown would (systemd gets SIGRTMIN+3)."""
        self._container(name).stop(timeout=30)

    def start_server(self, name: str) -> None:
        """Start a stopped server and wait until its sshd answers the bastion."""
        container = self._container(name)
        container.start()
        self._drop_default_route(container)
        container.reload()
        ip = container.attrs["NetworkSettings"]["Networks"][self.network_name]["IPAddress"]
        self._wait_from_bastion({f"{ip}:22": name})

    def exec(self, name: str, argv: list[str], user: str = "root",
             environment: dict[str, str] | None = None) -> tuple[int, str]:
        """Run argv inside a lab container (not over SSH); returns (exit code, stdout+stderr)."""
        result = self._container(name).exec_run(argv, user=user, environment=environment)
        return result.exit_code, result.output.decode(errors="replace")

    # -- keys --

    def _ensure_keys(self, ssh_members: list[str]) -> None:
        if not self.identity.exists():
            self.log(f"generating the lab key {self.identity}")
            _keygen(self.identity, f"gpufleet-lab {self.prefix}")
        self.identity.chmod(0o600)
        hostkeys = self.directory / "hostkeys"
        hostkeys.mkdir(mode=0o700, exist_ok=True)
        for name in ssh_members:
            key = hostkeys / f"{name}_ed25519"
            if not key.exists():
                _keygen(key, f"root@{name}")

    def host_public_key(self, name: str) -> str:
        """The host key `name` presents, as "ssh-ed25519 BASE64" (kept across recreate, down and up)."""
        return " ".join((self.directory / "hostkeys" / f"{name}_ed25519.pub").read_text().split()[:2])

    # -- docker objects --

    def _lab_network(self):
        for network in self.client.networks.list(filters={"label": f"{LABEL}={self.prefix}"}):
            if network.name == self.network_name:
                return network
        return None

    def _ensure_network(self):
        import docker.types
        network = self._lab_network()
        if network is not None:
            configs = network.attrs.get("IPAM", {}).get("Config") or [{}]
            if configs[0].get("Subnet") == self.subnet and network.attrs.get("Internal"):
                return network
            self.log(f"the lab network has subnet {configs[0].get('Subnet')}, not {self.subnet}: recreating the lab")
            self.down()
        if any(n.name == self.network_name for n in self.client.networks.list(names=[self.network_name])):
            raise LabError(f"a Docker network named {self.network_name} exists and is not this lab's; remove it")
        self._check_subnet_free()
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(
            subnet=self.subnet, gateway=str(ipaddress.ip_network(self.subnet)[1]))])
        return self.client.networks.create(self.network_name, driver="bridge", internal=True, ipam=ipam,
                                           labels=self._labels())

    def _check_subnet_free(self) -> None:
        mine = ipaddress.ip_network(self.subnet)
        for network in self.client.networks.list():
            for config in network.attrs.get("IPAM", {}).get("Config") or []:
                other = config.get("Subnet", "")
                if other and ":" not in other and mine.overlaps(ipaddress.ip_network(other, strict=False)):
                    raise LabError(f"lab subnet {self.subnet} overlaps Docker network {network.name} ({other}); "
                                   f"choose another subnet")
        for route, device in _routes():
            if route.prefixlen and mine.overlaps(route):
                raise LabError(f"lab subnet {self.subnet} overlaps the route {route} on {device}; choose another subnet")

    def _ensure_volume(self, name: str):
        import docker.errors
        try:
            volume = self.client.volumes.get(name)
        except docker.errors.NotFound:
            return self.client.volumes.create(name, labels=self._labels())
        if volume.attrs.get("Labels", {}).get(LABEL) != self.prefix:
            raise LabError(f"a Docker volume named {name} exists and is not this lab's; remove it")
        return volume

    def _remove_volumes(self, names) -> None:
        import docker.errors
        for name in names:
            try:
                self.client.volumes.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass

    def _member_spec(self, member: MemberPlan, bastion_ip: str) -> tuple[dict, dict]:
        """(create kwargs without networking, files to put in before start) for one member."""
        labels = self._labels(member.name, member.role)
        spec: dict = dict(name=self.container_name(member.name), hostname=member.name, labels=labels)
        files: dict[str, tuple[bytes, int, int]] = {}
        if member.role == "bastion" or member.is_server:
            allow = f"root@{bastion_ip} {DEV_USER}@{bastion_ip}" if member.is_server else "root"
            files.update(self._ssh_files(member.name, allow, dev=member.is_server))
        if member.role == "bastion":
            spec.update(image=SERVERS[BOOKWORM].reference, init=True,
                        command=["sh", "-c", "mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e"],
                        ports={"22/tcp": ("127.0.0.1", self.bastion_port)})
        elif member.role == "aptproxy":
            # The package mirror is forwarded, never cached: its packages change with the lab's recipe
            # under the same file names, and the proxy would keep serving the old ones.
            pkgmirror = re.escape(self.member_ip("pkgmirror"))
            spec.update(image=SERVICES.reference, user="apt-cacher-ng",
                        command=["/usr/sbin/apt-cacher-ng", "-c", "/etc/apt-cacher-ng", "ForeGround=1",
                                 f"DontCacheRequested=(^|/){pkgmirror}[:/]"],
                        volumes={self.apt_cache_volume: {"bind": "/var/cache/apt-cacher-ng", "mode": "rw"}})
        elif member.role == "mirror":
            spec.update(image=SERVICES.reference, init=True,
                        command=["docker-registry", "serve", "/etc/gpufleet-lab/registry.yml"],
                        ports={f"{MIRROR_PORT}/tcp": ("127.0.0.1", None)},
                        volumes={self.registry_volume: {"bind": "/var/lib/registry", "mode": "rw"}})
        elif member.role == "pkgmirror":
            tree = self.package_mirror.root
            spec.update(image=SERVICES.reference, init=True, working_dir=PKGMIRROR_ROOT,
                        command=["python3", "-m", "http.server", "--bind", "0.0.0.0", str(PKGMIRROR_PORT)],
                        volumes={str(tree): {"bind": "/srv/mirror", "mode": "ro"}})
            files.update(self._pkgmirror_files(member.ip))
        else:
            volumes = {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}}
            volumes |= {vol: {"bind": path, "mode": "rw"} for vol, path in self.server_volumes(member.name).items()}
            # Nothing outside the lab resolves: fail in a second, not after ten.
            spec.update(image=SERVERS[member.suite].reference, volumes=volumes, dns_opt=["timeout:1", "attempts:1"],
                        **SERVER_POWERS)
            mirror = self.package_mirror
            pins = older_engine_pins({**mirror.docker.get(member.suite, {}), **mirror.nvidia},
                                     {**mirror.docker_today.get(member.suite, {}), **mirror.nvidia_today})
            if pins and mirror.docker_today.get(member.suite) and not member.today:
                files["etc/apt/preferences.d/gpufleet-lab-pins"] = (pins.encode(), 0o644, 0)
            if member.today:
                files["etc/systemd/system/docker.service.d/gpufleet-lab-proc-sys-net.conf"] = (
                    (LAB_FILES / "docker-proc-sys-net.conf").read_bytes(), 0o644, 0)
            if member.role == SYSTEMD:
                spec.update(command=["/sbin/init"], stop_signal="SIGRTMIN+3", environment={"container": "docker"})
            else:
                spec.update(command=["/bin/sh", SYSV_INIT], init=True)
                files[SYSV_INIT.lstrip("/")] = ((LAB_FILES / "sysv-init.sh").read_bytes(), 0o755, 0)
        digest = hashlib.sha256(json.dumps([spec, member.ip, sorted(
            (path, hashlib.sha256(content).hexdigest(), mode, uid) for path, (content, mode, uid) in files.items())],
            sort_keys=True, default=str).encode()).hexdigest()[:16]
        labels[SPEC_LABEL] = digest
        return spec, files

    def _pkgmirror_files(self, ip: str) -> dict[str, tuple[bytes, int, int]]:
        """The web root: links into the shared tree (mounted read-only), and NVIDIA's .list naming this lab's URL.
        Tests may add their own repos beside them."""
        from lab.mirror import DOCKER_BASE, NVIDIA_BASE, nvidia_list
        top = DOCKER_BASE.split("/")[0]
        www = PKGMIRROR_ROOT.lstrip("/")
        files = {f"{www}/": (b"", 0o755, 0), f"{www}/{top}": (f"->/srv/mirror/{top}".encode(), 0o777, 0)}
        if self.package_mirror.nvidia:
            deb = f"{NVIDIA_BASE}/stable/deb"
            files |= {
                f"{www}/{NVIDIA_BASE}/": (b"", 0o755, 0),
                f"{www}/{NVIDIA_BASE}/stable/": (b"", 0o755, 0),
                f"{www}/{deb}/": (b"", 0o755, 0),
                f"{www}/{NVIDIA_BASE}/gpgkey": (f"->/srv/mirror/{NVIDIA_BASE}/gpgkey".encode(), 0o777, 0),
                f"{www}/{deb}/amd64": (f"->/srv/mirror/{deb}/amd64".encode(), 0o777, 0),
                f"{www}/{deb}/nvidia-container-toolkit.list":
                    (nvidia_list(f"http://{ip}/{NVIDIA_BASE}").encode(), 0o644, 0),
            }
        return files

    def member_ip(self, role: str) -> str:
        """The lab-network address of a service member (bastion, aptproxy, mirror, pkgmirror)."""
        return next(m.ip for m in plan_members(self.subnet, 1) if m.role == role)

    def _remove_unused_mirror_trees(self) -> None:
        """Package mirror trees of earlier recipes that no lab's pkgmirror mounts any more."""
        from lab.mirror import older_trees
        in_use = {mount.get("Source", "") for c in self.client.containers.list(
            all=True, filters={"label": f"{ROLE_LABEL}=pkgmirror"}) for mount in c.attrs.get("Mounts", [])}
        for tree in older_trees(self.package_mirror.root, in_use):
            self.log(f"removing {tree} (an earlier package mirror)")
            shutil.rmtree(tree, ignore_errors=True)

    def _ssh_files(self, name: str, allow_users: str, dev: bool) -> dict[str, tuple[bytes, int, int]]:
        key = self.directory / "hostkeys" / f"{name}_ed25519"
        authorized = self.identity.with_suffix(".pub").read_bytes()
        sshd = "\n".join([
            "# gpufleet lab: key logins only" + (", and only from the bastion." if dev else "."),
            "HostKey /etc/ssh/ssh_host_ed25519_key",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {allow_users}",
            "",
        ])
        files = {
            "etc/ssh/ssh_host_ed25519_key": (key.read_bytes(), 0o600, 0),
            "etc/ssh/ssh_host_ed25519_key.pub": (key.with_suffix(".pub").read_bytes(), 0o644, 0),
            "etc/ssh/sshd_config.d/50-gpufleet-lab.conf": (sshd.encode(), 0o644, 0),
            "root/.ssh/": (b"", 0o700, 0),
            "root/.ssh/authorized_keys": (authorized, 0o600, 0),
        }
        if dev:
            files[f"home/{DEV_USER}/.ssh/"] = (b"", 0o700, DEV_UID)
            files[f"home/{DEV_USER}/.ssh/authorized_keys"] = (authorized, 0o600, DEV_UID)
        return files

    def _ensure_member(self, member: MemberPlan, network, bastion_ip: str) -> None:
        import docker.errors
        spec, files = self._member_spec(member, bastion_ip)
        try:
            existing = self.client.containers.get(spec["name"])
        except docker.errors.NotFound:
            existing = None
        if existing is not None:
            if existing.labels.get(LABEL) != self.prefix:
                raise LabError(f"a container named {spec['name']} exists and is not this lab's; remove it")
            if existing.labels.get(SPEC_LABEL) == spec["labels"][SPEC_LABEL]:
                if existing.status != "running":
                    self.log(f"starting {member.name}")
                    existing.start()
                if member.is_server:
                    self._drop_default_route(existing)
                return
            self.log(f"recreating {member.name}: its spec changed")
            existing.remove(force=True, v=True)
            if member.is_server:  # a changed server starts bare again, volumes included
                self._remove_volumes(self.server_volumes(member.name))
        if member.is_server:
            for volume in self.server_volumes(member.name):
                self._ensure_volume(volume)
        self.log(f"starting {member.name} ({member.role}, {member.ip})")
        endpoint = self.client.api.create_endpoint_config(ipv4_address=member.ip)
        container = self.client.containers.create(**spec, network=network.name,
                                                  networking_config={network.name: endpoint})
        try:
            if member.role in ("bastion", "aptproxy", "mirror"):
                # The bastion is reached from 127.0.0.1; the apt proxy reaches the Debian archive;
                # the mirror is pushed to from the outer engine.
                self.client.networks.get("bridge").connect(container)
            if files:
                container.put_archive("/", tar_bytes(files))
            container.start()
            if member.is_server:
                self._drop_default_route(container)
        except Exception:
            container.remove(force=True, v=True)
            raise

    def _drop_default_route(self, container) -> None:
        """Docker 20.10 gives a container on an internal network a default route to the bridge
        (whose traffic iptables then drops); a lab server has no route out at all."""
        result = container.exec_run(["sh", "-c", "ip route show default | grep -q . || exit 0; ip route del default"])
        if result.exit_code != 0:
            raise LabError(f"removing the default route in {container.name}: {tail(result.output.decode())}")

    def published_port(self, name: str, port: str) -> int:
        """The 127.0.0.1 port on which a member's `port` ("22/tcp") is published."""
        container = self._container(name)
        for _ in range(50):
            container.reload()
            bindings = container.attrs["NetworkSettings"]["Ports"].get(port)
            if bindings:
                return int(bindings[0]["HostPort"])
            if container.status not in ("running", "created", "restarting"):
                break
            time.sleep(0.1)
        raise LabError(f"{name} has no published {port} ({container.status}): {self._logstail(name)}")

    # -- readiness --

    def _check_running(self, name: str) -> None:
        container = self._container(name)
        if container.status != "running":
            raise LabError(f"{self.container_name(name)} is {container.status}: {self._logstail(name)}")

    def _logstail(self, name: str) -> str:
        try:
            return tail(self._container(name).logs(tail=20).decode(errors="replace")) or "(no output)"
        except LabError:
            return "(no container)"

    def _wait_ssh_banner(self, name: str, host: str, port: int, timeout: float = 60) -> None:
        def answered():
            self._check_running(name)
            try:
                with socket.create_connection((host, port), timeout=2) as s:
                    s.settimeout(2)
                    return s.recv(64).startswith(b"SSH-")
            except OSError:
                return False
        poll(f"sshd of {name} on {host}:{port}", answered, timeout,
              on_timeout=lambda: self._logstail(name))

    def _wait_from_bastion(self, targets: dict[str, str], timeout: float = 120) -> None:
        """Poll from inside the bastion until every ip:port answers (sshd: with its banner)."""
        probe = (
            "import json, socket, sys\n"
            "up = []\n"
            "for target in sys.argv[1:]:\n"
            "    host, port = target.rsplit(':', 1)\n"
            "    try:\n"
            "        with socket.create_connection((host, int(port)), timeout=1) as s:\n"
            "            s.settimeout(2)\n"
            "            if port != '22' or s.recv(64).startswith(b'SSH-'):\n"
            "                up.append(target)\n"
            "    except OSError:\n"
            "        pass\n"
            "print(json.dumps(up))\n"
        )
        bastion = self._container("bastion")
        waiting = dict(targets)

        def all_up():
            self._check_running("bastion")
            result = bastion.exec_run(["python3", "-c", probe, *waiting])
            if result.exit_code == 0:
                for target in json.loads(result.output.decode().strip().splitlines()[-1]):
                    waiting.pop(target, None)
            return not waiting

        def report():
            return "; ".join(f"{name} ({target}): {self._logstail(name)}" for target, name in waiting.items())
        poll("lab services answering from the bastion", all_up, timeout, on_timeout=report)

    # -- the mirror --

    def _ensure_lab_image_pushed(self, mirror_port: int) -> None:
        base = f"http://127.0.0.1:{mirror_port}"
        poll(f"registry mirror on 127.0.0.1:{mirror_port}", lambda: http_status(f"{base}/v2/") == 200, 60,
              on_timeout=lambda: self._logstail("mirror"))
        manifest = f"{base}/v2/{HUB_REPOSITORY}/manifests/{HUB_TAG}"
        if http_status(manifest, method="HEAD", accept="application/vnd.docker.distribution.manifest.v2+json") == 200:
            return
        self.log(f"pushing the lab image to the mirror as {LAB_IMAGE}")
        target = f"127.0.0.1:{mirror_port}/{HUB_REPOSITORY}"
        self.client.images.get(PYTORCH.reference).tag(target, HUB_TAG)
        try:
            for line in self.client.api.push(target, tag=HUB_TAG, stream=True, decode=True):
                if "error" in line:
                    raise LabError(f"pushing {LAB_IMAGE} to the lab mirror failed: {line['error']}")
        finally:
            self.client.images.remove(f"{target}:{HUB_TAG}")



# --- small helpers ---

def _keygen(path: Path, comment: str) -> None:
    if not shutil.which("ssh-keygen"):
        raise LabError("ssh-keygen is not installed; run scripts/ensure-docker.sh (apt-get install openssh-client)")
    proc = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise LabError(f"ssh-keygen for {path} exited {proc.returncode}: {tail(proc.stdout)}")




def _routes() -> list[tuple[ipaddress.IPv4Network, str]]:
    """IPv4 routes of this machine from /proc/net/route, as (network, device)."""
    routes = []
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return routes
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        dest = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
        routes.append((ipaddress.IPv4Network(f"{dest}/{mask}", strict=False), fields[0]))
    return routes


def _natural(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _index(server: str) -> int:
    match = re.fullmatch(r"gpu(\d+)", server)
    if not match:
        raise LabError(f"{server!r} is not a lab server name (gpu1, gpu2, ...)")
    return int(match.group(1))


