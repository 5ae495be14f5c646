"""Stage plans from facts (no host): the toolkit path with real nvidia-smi output, docker, containers.

The NVIDIA apt repository and a GPU cannot be reached here, so the toolkit stage is
tested on real captured nvidia-smi outputs, its rendered files and planned actions.
"""
import json
from pathlib import Path

import pytest

from gpufleet import facts, inventory
from gpufleet.errors import FleetError
from gpufleet.paths import probe_request
from gpufleet.plan import HostContext
from gpufleet.remote import LocalSession
from tasks import containers, docker, inside, keys, nvidia
from tests.conftest import REPO
from tests.unit.test_facts import gpu_probe_output, section

INVENTORY = """
[local]
known_hosts = "/nonexistent/known_hosts"
[defaults]
registry_mirrors = ["http://10.9.0.3:5000"]
data_root = "/data/docker"
nvidia_mirror = "https://mirrors.ustc.edu.cn/libnvidia-container"
[hosts.gpu1]
address = "10.0.0.1"
[hosts.gpu1.containers.dev]
image = "pytorch/pytorch:1.13.1-cuda11.6-cudnn8-runtime"
ssh_port = 2222
volumes = ["/data/w:/workspace"]
env = { TZ = "UTC" }
"""


def context(probe_text, inv_text=INVENTORY):
    inv = inventory.loads(inv_text)
    ctx = HostContext(inv.host("gpu1"), inv, LocalSession(), dry_run=True)
    ctx._facts = facts.parse_probe(probe_text, probe_request(ctx))
    return ctx


def with_sections(base, **bodies):
    return base + "".join(section(k.replace("__", ":"), v) for k, v in bodies.items())


def test_toolkit_planned_on_a_gpu_host_with_mirror_repo_file():
    ctx = context(gpu_probe_output())
    plan = nvidia.plan_toolkit(ctx)
    summaries = [a.summary for a in plan.actions]
    assert summaries == [
        "install curl ca-certificates (to fetch signing keys)",
        "fetch NVIDIA's signing key from https://mirrors.ustc.edu.cn/libnvidia-container/gpgkey, check it is "
        "C95B321B61E88C1809C4F759DDCAE044F796ECB0 (nvidia_key_fingerprint), write "
        "/etc/apt/keyrings/nvidia-container-toolkit.asc",
        "create /etc/apt/sources.list.d/nvidia-container-toolkit.sources",
        "install nvidia-container-toolkit, nvidia-container-toolkit-base, libnvidia-container-tools, "
        "libnvidia-container1 (those the mirror has) at one version: the newest the mirror has, read after "
        "apt-get update from https://mirrors.ustc.edu.cn/libnvidia-container"]
    assert ("+URIs: https://mirrors.ustc.edu.cn/libnvidia-container/stable/deb/$(ARCH)\n+Suites: /\n"
            "+Signed-By: /etc/apt/keyrings/nvidia-container-toolkit.asc\n") in plan.actions[2].diff


def test_toolkit_skipped_without_gpu():
    text = gpu_probe_output(smi_rc=127)
    plan = nvidia.plan_toolkit(context(text))
    assert plan.skip == "no NVIDIA GPU (nvidia_toolkit = auto)"


def test_toolkit_refuses_gpu_without_driver():
    text = gpu_probe_output(smi_rc=9)
    text += section("lspci", "00:06.0 3D controller [0302]: NVIDIA Corporation GH100 [H200 SXM 141GB] [10de:2335] (rev a1)")
    with pytest.raises(FleetError, match="nvidia-smi does not work: install the NVIDIA driver first"):
        nvidia.plan_toolkit(context(text))


def test_daemon_json_gets_the_nvidia_runtime_once_the_toolkit_is_installed():
    info = {"ServerVersion": "27.3.1", "DockerRootDir": "/var/lib/docker", "Images": 0, "Containers": 0,
            "ContainersRunning": 0, "Runtimes": {"runc": {}}}
    text = gpu_probe_output(edits=[("pciutils\tii \t1:3.10.0-2\n", "pciutils\tii \t1\nnvidia-container-toolkit\tii \t"
                                    "1.17.8-1\ndocker-ce\tii \t5:27.3.1\n")], docker_info=info)
    ctx = context(text)
    assert docker.wanted_daemon_keys(ctx) == {
        "data-root": "/data/docker", "registry-mirrors": ["http://10.9.0.3:5000"],
        "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}
    plan = docker.plan_configure(ctx)
    assert "update /etc/docker/daemon.json" in plan.actions[0].summary
    assert "runtimes" in plan.actions[0].diff and "data-root" in plan.actions[0].diff
    assert nvidia.plan_toolkit(ctx).actions[1].summary.startswith("fetch NVIDIA's signing key")


def test_a_dry_run_on_a_server_without_docker_yet_plans_daemon_json():
    """docker.install comes first in the same run: the real run then writes daemon.json."""
    plan = docker.plan_configure(context(gpu_probe_output(smi_rc=127)))
    assert [a.summary for a in plan.actions] == [
        "update /etc/docker/daemon.json (data-root, registry-mirrors) and restart Docker once it runs",
        "record the daemon.json keys gpufleet sets (data-root, registry-mirrors) in /var/lib/gpufleet/daemon-json-keys.json"]
    assert '+ data-root: "/data/docker"' in plan.actions[0].diff


@pytest.mark.parametrize("systemd_rc,plan", [
    (0, "skipped: Docker is not installed yet"),  # its package starts and enables it
    (1, "changed: start Docker: service docker start (no systemd) once it is installed")])
def test_a_dry_run_on_a_server_without_docker_yet_plans_its_start_where_no_systemd_does(systemd_rc, plan):
    text = gpu_probe_output(smi_rc=127).replace(section("systemd", "", 0), section("systemd", "", systemd_rc))
    result = docker.plan_service(context(text))
    assert (f"skipped: {result.skip}" if result.skip else f"changed: {result.actions[0].summary}") == plan


def test_old_driver_refuses_a_newer_cuda_image():
    text = gpu_probe_output(edits=[("CUDA Version: 13.0", "CUDA Version: 11.4")])
    ctx = context(text)
    with pytest.raises(FleetError, match=r"needs CUDA 11.6 but driver .* supports CUDA 11.4"):
        containers.cuda_check(ctx, ctx.host.containers["dev"])
    allowed = context(text, INVENTORY + "allow_driver_mismatch = true\n")
    assert "allowed by allow_driver_mismatch" in containers.cuda_check(allowed, allowed.host.containers["dev"])
    assert containers.cuda_check(context(gpu_probe_output()), ctx.host.containers["dev"]) == ""


RUN_ARGV = [
    ("gpu", {"image": "pytorch/pytorch:x", "ssh_port": 2222, "volumes": ["/d:/w"], "shm_size": "16g", "gpus": "all",
             "env": {"TZ": "UTC"}, "restart": "unless-stopped", "hostname": "gpu1-dev", "runtime": "nvidia"},
     ["--runtime", "nvidia", "--gpus", "all"], ["-v", "/d:/w"]),
    ("secret env", {"image": "img", "ssh_port": 2200, "volumes": [], "shm_size": "1g", "gpus": "none",
                    "env": {"HF_TOKEN": "secret:sha256:0123456789abcdef", "TZ": "UTC"}, "restart": "always",
                    "hostname": "h-c"}, ["-e", "HF_TOKEN", "-e", "TZ=UTC"], ["--restart", "always"]),
    ("cpu", {"image": "img", "ssh_port": 2200, "volumes": [], "shm_size": "1g", "gpus": "none", "env": {},
             "restart": "always", "hostname": "h-c"}, ["--restart", "always"], ["-p", "127.0.0.1:2200:22"]),
]


@pytest.mark.parametrize("doc,has1,has2", [r[1:] for r in RUN_ARGV], ids=[r[0] for r in RUN_ARGV])
def test_docker_run_argv(doc, has1, has2):
    argv = containers.run_argv("dev", doc)
    joined = " ".join(argv)
    assert argv[:6] == ["docker", "run", "-d", "--name", "dev", "--hostname"]
    assert " ".join(has1) in joined and " ".join(has2) in joined
    assert ("--gpus" in argv) == (doc["gpus"] == "all") == ("--runtime" in argv)
    assert argv[-3:] == ["/etc/gpufleet/entrypoint.sh", "--", doc["image"]]
    label = argv[argv.index("--label", argv.index("--label") + 1) + 1]
    assert json.loads(label.split("=", 1)[1]) == doc


def test_spec_differences_field_by_field():
    old = {"image": "a", "shm_size": "1g", "volumes": ["/d:/w"]}
    new = {"image": "a", "shm_size": "2g", "volumes": ["/d:/w", "/e:/x"]}
    assert containers.spec_differences(old, new) == [
        "shm_size: '1g' -> '2g'", "volumes: ['/d:/w'] -> ['/d:/w', '/e:/x']"]


@pytest.mark.parametrize("mem_mb,size", [(2048, "1g"), (16384, "4g"), (131072, "32g"), (2_000_000, "64g")])
def test_default_shm_size_is_a_share_of_memory(mem_mb, size):
    assert containers.default_shm_size(mem_mb) == size


def test_docker_ce_from_a_mirror_with_a_signed_by_keyring_and_conflicts_removed():
    text = gpu_probe_output(edits=[("pciutils\tii \t1:3.10.0-2\n", "containerd\tii \t1.6\nrunc\tii \t1.1\n")])
    inv_text = INVENTORY.replace(
        '[defaults]\n', '[defaults]\ndocker_source = "docker-ce"\ndocker_mirror = "https://mirrors.aliyun.com/docker-ce/linux"\n')
    plan = docker.plan_install(context(text, inv_text))
    summaries = [a.summary for a in plan.actions]
    assert summaries == [
        "install curl ca-certificates (to fetch signing keys)",
        "fetch Docker's signing key from https://mirrors.aliyun.com/docker-ce/linux/ubuntu/gpg, check it is "
        "9DC858229FC7DD38854AE2D88D81803C0EBFCD88 (docker_key_fingerprint), write /etc/apt/keyrings/docker.asc",
        "create /etc/apt/sources.list.d/docker.sources",
        "remove containerd, runc, which conflict with docker-ce",
        "install docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin from "
        "https://mirrors.aliyun.com/docker-ce/linux",
    ]
    assert ("+URIs: https://mirrors.aliyun.com/docker-ce/linux/ubuntu\n+Suites: noble\n+Components: stable\n"
            "+Architectures: amd64\n+Signed-By: /etc/apt/keyrings/docker.asc\n") in plan.actions[2].diff


def test_switching_docker_engines_is_refused_not_done():
    text = gpu_probe_output(edits=[("pciutils\tii \t1:3.10.0-2\n", "docker.io\tii \t24.0.7\n")])
    inv_text = INVENTORY.replace('[defaults]\n', '[defaults]\ndocker_source = "docker-ce"\n')
    with pytest.raises(FleetError, match="docker.io is installed but docker_source = 'docker-ce'"):
        docker.plan_install(context(text, inv_text))


CONTAINER_INVENTORY = """
[local]
known_hosts = "/nonexistent/known_hosts"
public_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM3N1L6DeM/8otc6zjIeMwkGrHSLDqEXxjhLAy9irGS2 alice"]
[defaults]
tools = ["git", "vim"]
git_name = "Alice"
[hosts.gpu1]
address = "10.0.0.1"
[hosts.gpu1.containers.dev]
image = "pytorch/pytorch:lab-bookworm"
ssh_port = 2222
volumes = ["/data/workspace:/workspace"]
shm_size = "1g"
"""
DOCKER_INFO = {"ServerVersion": "27.3.1", "DockerRootDir": "/var/lib/docker", "Runtimes": {"runc": {}}}
# `docker inspect` of the lab's dev container (real capture), its folder mounted read-only as the inventory asks
# and its label with the open-files limit a container of this version has
LISTED = (Path(REPO) / "tests" / "fixtures" / "docker" / "inspect-format-dev.txt").read_text().replace(
    '"RW":true,"Source":"/var/lib/gpufleet', '"RW":false,"Source":"/var/lib/gpufleet').replace(
    '{\\"env\\": {}', '{\\"ulimit_nofile\\": \\"1048576:1048576\\", \\"env\\": {}')
# what the probe read in the running container: sshd and every package in place
INSIDE = (section("sshd_bin", "") + section("sshd_run", "")
          + section("pkgs", "openssh-server\tii \t1\ngit\tii \t1\nvim\tii \t1\n"))
CONTAINER_PLANS = [
    ("a fresh server: Docker comes in this run", gpu_probe_output(smi_rc=127), CONTAINER_INVENTORY,
     "pull pytorch/pytorch:lab-bookworm and run container dev once Docker runs"),
    ("no container yet", gpu_probe_output(smi_rc=127, docker_info=DOCKER_INFO), CONTAINER_INVENTORY,
     "pull pytorch/pytorch:lab-bookworm; run container dev"),
    ("a stopped container", gpu_probe_output(smi_rc=127, docker_info=DOCKER_INFO)
     + section("containers", LISTED.replace('"Running":true', '"Running":false')), CONTAINER_INVENTORY,
     "pull pytorch/pytorch:lab-bookworm; start container dev"),
    ("a container to re-create", gpu_probe_output(smi_rc=127, docker_info=DOCKER_INFO)
     + section("containers", LISTED) + section("inside:0", INSIDE), CONTAINER_INVENTORY.replace('"1g"', '"2g"'),
     "pull pytorch/pytorch:lab-bookworm; re-create container dev (shm_size: '1g' -> '2g')"),
]
ONCE_IT_RUNS = {
    "inside.apt-mirror": "point apt at the official archive for the release of pytorch/pytorch:lab-bookworm "
                         "in dev once it runs",
    "inside.tools": "install those of openssh-server git vim that pytorch/pytorch:lab-bookworm lacks in dev once it runs",
    "containers.sshd": "set up sshd in dev once it runs",
    "keys.authorized": "write /root/.ssh/authorized_keys with the 1 key(s) in dev once it runs",
    "inside.git": "git config --global user.name 'Alice', pin github.com's host keys in dev once it runs",
}


@pytest.mark.parametrize("probe,inv_text,run", [c[1:] for c in CONTAINER_PLANS], ids=[c[0] for c in CONTAINER_PLANS])
def test_a_dry_run_says_what_each_step_does_in_a_container_the_plan_runs(probe, inv_text, run):
    """The steps after containers.run cannot read a container that is not running yet (or one that is
    re-created from its image): each says what it will do there, instead of ok or what the old one needed."""
    ctx = context(probe, inv_text)
    report = ctx.run_steps(containers.UP + [keys.KEYS, inside.GIT])
    steps = {s.step: s for s in report.steps}
    assert not report.error and run in steps["containers.run"].message, steps["containers.run"]
    for step, action in ONCE_IT_RUNS.items():
        assert steps[step].status == "changed" and action in steps[step].message, steps[step]
