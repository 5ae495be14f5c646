"""The local lab: real hosts for the tool to work on, as containers on the local Docker engine.

One internal Docker network (fixed subnet, no route out) holds:

    127.0.0.1:PORT -> bastion  sshd only; the one way in (also on the default bridge)
                      gpu1     systemd as PID 1      (odd servers)
                      gpu2     no systemd, like WSL2 (even servers; `service` works)
                      aptproxy apt-cacher-ng, the servers' only way to Debian packages
                      mirror   registry serving pytorch/pytorch:lab-bookworm as a Hub mirror

Servers start bare (no Docker) and accept SSH only from the bastion's address.
Everything goes through the Docker SDK; base images come from one debootstrap
and are reused by tag (the tag is a digest of the recipe, so a changed recipe
rebuilds). Every container, network and volume carries the label
`gpufleet.lab=<prefix>`, which is how `down()` finds all of it.

What survives `down()`: the images (`gpufleet-lab/*`) and the apt cache volume
`<prefix>-aptcache`. `down(purge=True)` also removes the apt cache volume and
the lab's keys, inventory and known_hosts. The registry volume is always removed;
`up()` pushes the lab image again.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

from gpufleet.errors import FleetError

LAB_FILES = Path(__file__).resolve().parent.parent / "lab"

SUITE = "bookworm"
ARCHIVE = "http://deb.debian.org/debian"

LABEL = "gpufleet.lab"              # value: the lab's prefix; on every container, network and volume
ROLE_LABEL = "gpufleet.lab.role"
NAME_LABEL = "gpufleet.lab.name"
SPEC_LABEL = "gpufleet.lab.spec"    # digest of a container's whole spec: a changed spec recreates it
RECIPE_LABEL = "gpufleet.lab.recipe"

DEFAULT_PREFIX = "gpufleet-lab"
DEFAULT_SUBNET = "10.77.10.0/24"

HUB_REPOSITORY = "pytorch/pytorch"
HUB_TAG = f"lab-{SUITE}"
LAB_IMAGE = f"{HUB_REPOSITORY}:{HUB_TAG}"   # what the inventory asks for; the mirror serves it
APT_PROXY_PORT = 3142
MIRROR_PORT = 5000
DEV_USER, DEV_UID = "dev", 1000
SYSV_INIT = "/usr/local/sbin/gpufleet-lab-init"

SERVICE_ROLES = ("bastion", "aptproxy", "mirror")
SYSTEMD, SYSV = "server-systemd", "server-sysv"

# What a server container needs to run systemd and its own Docker engine here
# (--privileged is refused on these machines; see shared/LAB-NOTES.md).
SERVER_POWERS = dict(
    cap_add=["ALL"],
    cap_drop=["SYS_RESOURCE"],
    security_opt=["seccomp=unconfined", "apparmor=unconfined"],
    device_cgroup_rules=["a *:* rwm"],
    tmpfs={"/run": "", "/run/lock": ""},
)


class LabError(FleetError):
    """The lab could not be built, started or reached."""


# --- images ---

@dataclass(frozen=True)
class ImageRecipe:
    """How one lab image is made. Its tag is a digest of the recipe, so a changed recipe rebuilds."""
    repository: str
    base: ImageRecipe | None = None                # None: debootstrap a root filesystem
    include: tuple[str, ...] = ()                  # debootstrap --include (base images only)
    script: str = ""                               # file under lab/images/, run in a build container
    files: tuple[tuple[str, str], ...] = ()        # (file under lab/, absolute path in the image)
    changes: tuple[str, ...] = ()                  # Dockerfile instructions: ENV, CMD
    version: int = 1                               # bump when the code that builds it changes

    @property
    def digest(self) -> str:
        h = hashlib.sha256(repr((self.repository, self.base.reference if self.base else (ARCHIVE, SUITE),
                                 self.include, self.files, self.changes, self.version)).encode())
        for rel in ([f"images/{self.script}"] if self.script else []) + [src for src, _ in self.files]:
            h.update((LAB_FILES / rel).read_bytes())
        return h.hexdigest()[:10]

    @property
    def reference(self) -> str:
        return f"{self.repository}:{SUITE}-{self.digest}"


ROOTFS = ImageRecipe("gpufleet-lab/rootfs", include=("python3",), changes=('CMD ["bash"]',))
# Stands in for pytorch/pytorch: minimal Debian with python3, no sshd (the tool installs it),
# and the environment the real images carry.
PYTORCH = ImageRecipe("gpufleet-lab/pytorch", base=ROOTFS, changes=(
    "ENV LAB_IMAGE=1",
    "ENV PATH=/opt/lab/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV NVIDIA_REQUIRE_CUDA=cuda>=11.6",
    "ENV CUDA_VERSION=11.6.2",
    'CMD ["bash"]',
))
SERVER = ImageRecipe("gpufleet-lab/server", base=ROOTFS, script="server.sh",
                     files=(("relax-docker-ulimits.sh", "/tmp/relax-docker-ulimits"),), changes=('CMD ["/sbin/init"]',))
SERVICES = ImageRecipe("gpufleet-lab/services", base=ROOTFS, script="services.sh",
                       files=(("registry.yml", "/etc/gpufleet-lab/registry.yml"),), changes=('CMD ["bash"]',))
IMAGES = (ROOTFS, PYTORCH, SERVER, SERVICES)
BUILD_LOCK = Path("/var/tmp/gpufleet-lab-build.lock")


class ImageBuilder:
    """Builds the lab images that are missing: one debootstrap, the rest derived from it."""

    def __init__(self, client, log: Callable[[str], None]):
        self.client, self.log = client, log

    def exists(self, recipe: ImageRecipe) -> bool:
        import docker.errors
        try:
            self.client.images.get(recipe.reference)
            return True
        except docker.errors.ImageNotFound:
            return False

    def ensure_all(self) -> list[str]:
        """Build every missing image; returns the references built."""
        if all(self.exists(r) for r in IMAGES):
            return []
        # Another lab may be building the same images on this engine right now: take turns.
        with _exclusive(BUILD_LOCK, lambda: self.log(f"waiting for another lab build to finish ({BUILD_LOCK})")):
            return self._build_missing()

    def _build_missing(self) -> list[str]:
        built = []
        if not self.exists(ROOTFS) and any(not self.exists(r) for r in IMAGES):
            self._debootstrap(ROOTFS)
            built.append(ROOTFS.reference)
        missing = [r for r in IMAGES if r.base is not None and not self.exists(r)]
        with ThreadPoolExecutor(max_workers=max(1, len(missing))) as pool:
            for recipe in pool.map(self._derive, missing):
                built.append(recipe.reference)
        for recipe in IMAGES:
            self._remove_older_tags(recipe)
        return built

    def _remove_older_tags(self, recipe: ImageRecipe) -> None:
        """Drop tags of earlier recipes that no container uses any more (in use: kept)."""
        import docker.errors
        for image in self.client.images.list(name=recipe.repository):
            for tag in image.tags:
                if tag.startswith(f"{recipe.repository}:") and tag != recipe.reference:
                    try:
                        self.client.images.remove(tag)
                        self.log(f"removed {tag} (an earlier recipe)")
                    except docker.errors.APIError:
                        pass

    def _debootstrap(self, recipe: ImageRecipe) -> None:
        if os.geteuid() != 0:
            raise LabError(f"building {recipe.reference} needs root (debootstrap); run `fab lab.up` as root once")
        if not shutil.which("debootstrap"):
            raise LabError("debootstrap is not installed; run scripts/ensure-docker.sh (apt-get install debootstrap)")
        self.log(f"building {recipe.reference} with debootstrap (about a minute)")
        root = Path(tempfile.mkdtemp(prefix="gpufleet-lab-rootfs-", dir="/var/tmp"))
        try:
            argv = ["debootstrap", "--variant=minbase", f"--include={','.join(recipe.include)}", SUITE, str(root), ARCHIVE]
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                raise LabError(f"debootstrap exited {proc.returncode}: {_tail(proc.stdout)}")
            # An image carries no downloaded packages or package lists, like Debian's own images.
            for leftover in [*root.glob("var/cache/apt/archives/*.deb"), *root.glob("var/lib/apt/lists/*_*")]:
                leftover.unlink()
            self._import(root, recipe)
        finally:
            _remove_tree(root)

    def _import(self, root: Path, recipe: ImageRecipe) -> None:
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        repository, tag = recipe.reference.rsplit(":", 1)
        try:
            answer = self.client.api.import_image_from_data(
                iter(lambda: tar.stdout.read(1 << 20), b""), repository=repository, tag=tag,
                changes=[*recipe.changes, f"LABEL {RECIPE_LABEL}={recipe.digest}"])
        finally:
            tar.stdout.close()
            code = tar.wait()
        if code != 0 or "error" in str(answer).lower():
            raise LabError(f"importing {recipe.reference} failed (tar exited {code}): {_tail(str(answer))}")

    def _derive(self, recipe: ImageRecipe) -> ImageRecipe:
        repository, tag = recipe.reference.rsplit(":", 1)
        labels = {RECIPE_LABEL: recipe.digest}
        if not recipe.script:
            self.log(f"building {recipe.reference}")
            dockerfile = "\n".join([f"FROM {recipe.base.reference}", *recipe.changes]) + "\n"
            self.client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=recipe.reference,
                                     labels=labels, rm=True, forcerm=True, pull=False)
            return recipe
        self.log(f"building {recipe.reference} (apt-get install in a build container)")
        name = f"gpufleet-lab-build-{repository.rsplit('/', 1)[-1]}"
        _remove_container(self.client, name)  # left over from an interrupted build (we hold BUILD_LOCK)
        script = (LAB_FILES / "images" / recipe.script).read_text()
        container = self.client.containers.create(recipe.base.reference, ["sh", "-c", script], name=name,
                                                  network_mode="bridge")
        try:
            if recipe.files:
                container.put_archive("/", _tar({dest.lstrip("/"): ((LAB_FILES / src).read_bytes(), 0o644, 0)
                                                 for src, dest in recipe.files}))
            container.start()
            status = container.wait(timeout=1200)["StatusCode"]
            if status != 0:
                logs = container.logs(tail=30).decode(errors="replace")
                raise LabError(f"building {recipe.reference}: {recipe.script} exited {status}: {_tail(logs)}")
            container.commit(repository=repository, tag=tag,
                             changes=[*recipe.changes, f"LABEL {RECIPE_LABEL}={recipe.digest}"])
        finally:
            container.remove(force=True)
        return recipe


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

    @property
    def is_server(self) -> bool:
        return self.role in (SYSTEMD, SYSV)


def server_role(index: int) -> str:
    """Odd servers run systemd as PID 1, even ones do not (like WSL2)."""
    return SYSTEMD if index % 2 else SYSV


def plan_members(subnet: str, hosts: int) -> list[MemberPlan]:
    """Names, roles and static addresses: .2 bastion, .3 aptproxy, .4 mirror, .11 gpu1, .12 gpu2, ..."""
    net = ipaddress.ip_network(subnet)
    if net.version != 4:
        raise LabError(f"lab subnet {subnet} must be IPv4")
    if not 1 <= hosts <= net.num_addresses - 12:
        raise LabError(f"--hosts {hosts}: the subnet {subnet} holds 1 to {net.num_addresses - 12} servers")
    members = [MemberPlan(role, role, str(net[2 + i])) for i, role in enumerate(SERVICE_ROLES)]
    members += [MemberPlan(f"gpu{i}", server_role(i), str(net[10 + i])) for i in range(1, hosts + 1)]
    return members


@dataclass(frozen=True)
class InventoryData:
    """Everything the generated inventory says, gathered by `up()`."""
    directory: Path
    bastion_port: int
    apt_proxy: str
    registry_mirror: str
    image: str
    servers: tuple[tuple[str, str, str], ...]      # (name, address, user)


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def render_inventory(data: InventoryData) -> str:
    """The lab's hosts.toml (same schema as the hand-written one)."""
    d = data.directory
    lines = [
        "# Generated by `fab lab.up` — do not edit; re-run lab.up to regenerate.",
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
        'docker_source = "distro"',
        f"registry_mirrors = [{_toml_str(data.registry_mirror)}]",
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
    for name, address, user in data.servers:
        lines += ["", f"[hosts.{name}]", f"address = {_toml_str(address)}", 'groups = ["servers"]']
        if user != "root":
            lines.append(f"user = {_toml_str(user)}          # logs in as the sudo user, to exercise sudo")
    return "\n".join(lines) + "\n"


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
        return {f"{self.prefix}-{name}-docker": "/var/lib/docker", f"{self.prefix}-{name}-data": "/data"}

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

    def up(self, hosts: int = 2) -> LabInfo:
        """Bring the lab up, or reconcile a running one to this shape; writes the inventory."""
        started = time.monotonic()
        members = plan_members(self.subnet, hosts)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ensure_keys([m.name for m in members if m.role == "bastion" or m.is_server])
        built = ImageBuilder(self.client, self.log).ensure_all()
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
        by_role = {m.role: m for m in members}
        bastion_port = self.published_port("bastion", "22/tcp")
        mirror_port = self.published_port("mirror", f"{MIRROR_PORT}/tcp")
        with ThreadPoolExecutor(max_workers=2) as pool:
            push = pool.submit(self._ensure_lab_image_pushed, mirror_port)
            self._wait_ssh_banner("bastion", "127.0.0.1", bastion_port)
            self._wait_from_bastion({f"{m.ip}:22": m.name for m in members if m.is_server}
                                    | {f"{by_role['aptproxy'].ip}:{APT_PROXY_PORT}": "aptproxy"})
            push.result()
        servers = [m for m in members if m.is_server]
        data = InventoryData(
            directory=self.directory, bastion_port=bastion_port,
            apt_proxy=f"http://{by_role['aptproxy'].ip}:{APT_PROXY_PORT}",
            registry_mirror=f"http://{by_role['mirror'].ip}:{MIRROR_PORT}", image=LAB_IMAGE,
            servers=tuple((m.name, m.ip, DEV_USER if m.role == SYSV else "root") for m in servers))
        _write_atomic(self.inventory_path, render_inventory(data).encode(), 0o644)
        return LabInfo(prefix=self.prefix, subnet=self.subnet, inventory=self.inventory_path, identity=self.identity,
                       bastion_port=bastion_port, mirror_port=mirror_port,
                       addresses={m.name: m.ip for m in members}, servers=[m.name for m in servers],
                       image=LAB_IMAGE, built_images=built, seconds=time.monotonic() - started)

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
            spec.update(image=SERVER.reference, init=True,
                        command=["sh", "-c", "mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e"],
                        ports={"22/tcp": ("127.0.0.1", self.bastion_port)})
        elif member.role == "aptproxy":
            spec.update(image=SERVICES.reference, user="apt-cacher-ng",
                        command=["/usr/sbin/apt-cacher-ng", "-c", "/etc/apt-cacher-ng", "ForeGround=1"],
                        volumes={self.apt_cache_volume: {"bind": "/var/cache/apt-cacher-ng", "mode": "rw"}})
        elif member.role == "mirror":
            spec.update(image=SERVICES.reference, init=True,
                        command=["docker-registry", "serve", "/etc/gpufleet-lab/registry.yml"],
                        ports={f"{MIRROR_PORT}/tcp": ("127.0.0.1", None)},
                        volumes={self.registry_volume: {"bind": "/var/lib/registry", "mode": "rw"}})
        else:
            volumes = {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}}
            volumes |= {vol: {"bind": path, "mode": "rw"} for vol, path in self.server_volumes(member.name).items()}
            # Nothing outside the lab resolves: fail in a second, not after ten.
            spec.update(image=SERVER.reference, volumes=volumes, dns_opt=["timeout:1", "attempts:1"],
                        **SERVER_POWERS)
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
            if member.role in SERVICE_ROLES:
                # The bastion is reached from 127.0.0.1; the apt proxy reaches the Debian archive;
                # the mirror is pushed to from the outer engine.
                self.client.networks.get("bridge").connect(container)
            if files:
                container.put_archive("/", _tar(files))
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
            raise LabError(f"removing the default route in {container.name}: {_tail(result.output.decode())}")

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
        raise LabError(f"{name} has no published {port} ({container.status}): {self._logs_tail(name)}")

    # -- readiness --

    def _check_running(self, name: str) -> None:
        container = self._container(name)
        if container.status != "running":
            raise LabError(f"{self.container_name(name)} is {container.status}: {self._logs_tail(name)}")

    def _logs_tail(self, name: str) -> str:
        try:
            return _tail(self._container(name).logs(tail=20).decode(errors="replace")) or "(no output)"
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
        _poll(f"sshd of {name} on {host}:{port}", answered, timeout,
              on_timeout=lambda: self._logs_tail(name))

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
            return "; ".join(f"{name} ({target}): {self._logs_tail(name)}" for target, name in waiting.items())
        _poll("lab services answering from the bastion", all_up, timeout, on_timeout=report)

    # -- the mirror --

    def _ensure_lab_image_pushed(self, mirror_port: int) -> None:
        base = f"http://127.0.0.1:{mirror_port}"
        _poll(f"registry mirror on 127.0.0.1:{mirror_port}", lambda: _http_status(f"{base}/v2/") == 200, 60,
              on_timeout=lambda: self._logs_tail("mirror"))
        manifest = f"{base}/v2/{HUB_REPOSITORY}/manifests/{HUB_TAG}"
        if _http_status(manifest, method="HEAD", accept="application/vnd.docker.distribution.manifest.v2+json") == 200:
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

def _poll(what: str, check: Callable[[], bool], timeout: float, on_timeout: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}: {on_timeout()}")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


@contextlib.contextmanager
def _exclusive(path: Path, on_wait: Callable[[], None]):
    """Hold an exclusive lock on `path` (shared by every process on this machine)."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _http_status(url: str, method: str = "GET", accept: str = "") -> int:
    request = urllib.request.Request(url, method=method, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def _tar(files: dict[str, tuple[bytes, int, int]]) -> bytes:
    """A tar of {path: (content, mode, uid)}; a path ending in '/' is a directory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, (content, mode, uid) in sorted(files.items()):
            info = tarfile.TarInfo(path.rstrip("/"))
            info.mode, info.uid, info.gid, info.mtime = mode, uid, uid, int(time.time())
            if path.endswith("/"):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _keygen(path: Path, comment: str) -> None:
    if not shutil.which("ssh-keygen"):
        raise LabError("ssh-keygen is not installed; run scripts/ensure-docker.sh (apt-get install openssh-client)")
    proc = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise LabError(f"ssh-keygen for {path} exited {proc.returncode}: {_tail(proc.stdout)}")


def _write_atomic(path: Path, content: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(content)
    tmp.chmod(mode)
    tmp.replace(path)


def _remove_container(client, name: str) -> None:
    import docker.errors
    try:
        client.containers.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass


def _remove_tree(root: Path) -> None:
    """rm -rf a debootstrap target, first unmounting anything a failed run left mounted inside it."""
    prefix = str(root) + "/"
    with open("/proc/self/mounts") as mounts:
        inside = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for mount in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)
    shutil.rmtree(root, ignore_errors=True)


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


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())
