"""Every file the tool owns on a host or in a container, and the probe that reads them."""
from __future__ import annotations

from gpufleet import pending
from gpufleet.containerd_config import CONTAINERD_CONFIG
from gpufleet.gpu_assign import GPU_RECORD
from gpufleet.facts import ProbeRequest

APT_PROXY_CONF = "/etc/apt/apt.conf.d/90gpufleet-proxy"
APT_KEYRINGS = "/etc/apt/keyrings"
DOCKER_KEYRING = f"{APT_KEYRINGS}/docker.asc"
DOCKER_SOURCES = "/etc/apt/sources.list.d/docker.sources"
DAEMON_JSON = "/etc/docker/daemon.json"
# which daemon.json keys the tool set, so that it can remove those the inventory drops
DAEMON_JSON_KEYS = "/var/lib/gpufleet/daemon-json-keys.json"
# which people's keys the tool put in each container's authorized_keys (so that it can remove them)
PEOPLE_KEYS = "/var/lib/gpufleet/people-keys.json"
NVIDIA_KEYRING = f"{APT_KEYRINGS}/nvidia-container-toolkit.asc"
NVIDIA_SOURCES = "/etc/apt/sources.list.d/nvidia-container-toolkit.sources"
CONTAINER_DIR = "/var/lib/gpufleet/containers"
# where the per-container host directory is mounted inside the container
IN_CONTAINER_DIR = "/etc/gpufleet"

CONTAINER_AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"
# the forwarding-only account's (see gpufleet.forwarding)
FORWARD_HOME = "/var/lib/gpufleet/forward"
FORWARD_AUTHORIZED_KEYS = f"{FORWARD_HOME}/.ssh/authorized_keys"
SSHD_DROP_IN = "/etc/ssh/sshd_config.d/40-gpufleet-forward.conf"
CONTAINER_OS_RELEASE = "/etc/os-release"
CONTAINER_GITCONFIG = "/root/.gitconfig"
CONTAINER_KNOWN_HOSTS = "/root/.ssh/known_hosts"
CONTAINER_DEPLOY_KEY = "/root/.ssh/id_ed25519_github"
CONTAINER_APT_SOURCES = ("/etc/apt/sources.list", "/etc/apt/sources.list.d/debian.sources",
                         "/etc/apt/sources.list.d/ubuntu.sources")


def home_of(user: str, homes: dict[str, str] | None = None) -> str:
    """The user's home: as the server said (`homes`, from getent passwd), else where it usually is."""
    if homes and user in homes:
        return homes[user]
    return "/root" if user == "root" else f"/home/{user}"


def authorized_keys_of(user: str, homes: dict[str, str] | None = None) -> str:
    return f"{home_of(user, homes)}/.ssh/authorized_keys"


def container_dir(name: str) -> str:
    return f"{CONTAINER_DIR}/{name}"


def container_host_files(name: str) -> list[str]:
    d = container_dir(name)
    return [f"{d}/entrypoint.sh", f"{d}/sshd_config", f"{d}/ssh_host_ed25519_key.pub"]


def probe_request(ctx) -> ProbeRequest:
    """Everything any stage may need to read on this host, in one probe."""
    host = ctx.host
    # the home read by an earlier probe of this run (keys.authorized asks again where it is elsewhere)
    homes = ctx.run_state.get("homes")
    files = [APT_PROXY_CONF, DOCKER_KEYRING, DOCKER_SOURCES, DAEMON_JSON, DAEMON_JSON_KEYS, PEOPLE_KEYS,
             NVIDIA_KEYRING, NVIDIA_SOURCES, authorized_keys_of(host.user, homes), f"{home_of(host.user, homes)}/.ssh",
             pending.DOCKER_RESTART, FORWARD_AUTHORIZED_KEYS, SSHD_DROP_IN, CONTAINERD_CONFIG,
             pending.CONTAINERD_RESTART, GPU_RECORD]
    for name in host.containers:
        files += [*container_host_files(name), pending.container_restart(name), pending.sshd_reload(name)]
    inner = [CONTAINER_OS_RELEASE, CONTAINER_AUTHORIZED_KEYS, "/root/.ssh", APT_PROXY_CONF, CONTAINER_GITCONFIG,
             CONTAINER_KNOWN_HOSTS, CONTAINER_DEPLOY_KEY + ".pub",
             *CONTAINER_APT_SOURCES]
    return ProbeRequest(
        files=files,
        images=sorted({spec.image for spec in host.containers.values()}),
        users=list(host.docker_users),
        accounts=[host.user, host.forward_user],
        containers={name: inner for name in host.containers},
        container_packages=["openssh-server", *host.tools],
        toolkit=host.nvidia_toolkit,
    )
